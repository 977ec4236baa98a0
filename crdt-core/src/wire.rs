//! The compact binary encoding shared by every part of Tally: postcard
//! (a stable, documented serde format that needs no `std`).
use alloc::vec::Vec;

use serde::{de::DeserializeOwned, Serialize};

use crate::CrdtError;

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising our own types into a Vec cannot fail: no map keys that
    // aren't strings, no sequences of unknown length.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decodes a value; garbage gives an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CrdtError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| CrdtError::Decode(describe(&e)))?;
    if !rest.is_empty() {
        return Err(CrdtError::Decode("trailing bytes"));
    }
    Ok(value)
}

fn describe(error: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match error {
        E::DeserializeUnexpectedEnd => "unexpected end of input",
        E::DeserializeBadVarint => "bad varint",
        E::DeserializeBadUtf8 => "bad UTF-8",
        E::DeserializeBadEnum => "unknown variant",
        E::SerdeDeCustom => "invalid value",
        _ => "malformed input",
    }
}
