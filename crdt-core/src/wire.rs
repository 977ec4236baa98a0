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
    let (value, rest) = take(bytes)?;
    if !rest.is_empty() {
        return Err(CrdtError::Decode("trailing bytes"));
    }
    Ok(value)
}

/// Decodes one value from the front of `bytes`; returns it and the rest
/// (for formats that are a sequence of values, such as chunked snapshots).
pub fn take<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CrdtError> {
    postcard::take_from_bytes(bytes).map_err(|e| CrdtError::Decode(describe(&e)))
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

#[cfg(test)]
mod tests {
    use alloc::{string::String, vec, vec::Vec};

    use super::*;
    use crate::legacy::{EntriesOnly, EntryWithoutRun};
    use crate::{CounterMap, Entry};

    /// `Entry` as it was encoded while the totals were `u64`.
    #[derive(serde::Serialize)]
    struct U64Entry {
        inc: u64,
        dec: u64,
        seq: u64,
    }

    /// WAL records and snapshots written with `u64` totals must decode to
    /// the same entries now the totals are `u128` (postcard encodes both as
    /// LEB128 varints).
    #[test]
    fn entries_encoded_with_u64_totals_decode_unchanged() {
        let samples = [
            (0, 0, 0),
            (1, 0, 1),
            (0, 3, 2),
            (127, 128, 129),
            (i64::MAX as u64, 1 << 63, 1 << 40),
            (u64::MAX, u64::MAX, u64::MAX),
            (u64::MAX - 1, 300, 7),
        ];
        for (inc, dec, seq) in samples {
            let old = encode(&U64Entry { inc, dec, seq });
            let expected = Entry {
                inc: u128::from(inc),
                dec: u128::from(dec),
                seq,
                since: 0,
            };
            let decoded = decode::<EntryWithoutRun>(&old).map(Entry::from);
            assert_eq!(decoded, Ok(expected), "{inc} {dec} {seq}");
        }

        // A whole map, as a snapshot or a WAL record held it.
        let old_map: Vec<(String, Vec<(String, U64Entry)>)> = vec![
            (
                "default".into(),
                vec![
                    (
                        "node-1~a".into(),
                        U64Entry {
                            inc: u64::MAX,
                            dec: 5,
                            seq: 9,
                        },
                    ),
                    (
                        "node-2~b".into(),
                        U64Entry {
                            inc: 0,
                            dec: 1 << 63,
                            seq: 1,
                        },
                    ),
                ],
            ),
            (
                "z".into(),
                vec![(
                    "node-1~a".into(),
                    U64Entry {
                        inc: 2,
                        dec: 0,
                        seq: 10,
                    },
                )],
            ),
        ];
        let map: CounterMap = decode::<EntriesOnly>(&encode(&old_map))
            .expect("old map decodes")
            .0;
        let entry = |name: &str, actor: &str| map.get(name).and_then(|c| c.entry(actor)).copied();
        assert_eq!(
            entry("default", "node-1~a"),
            Some(Entry {
                inc: u128::from(u64::MAX),
                dec: 5,
                seq: 9,
                since: 0
            })
        );
        assert_eq!(
            entry("default", "node-2~b"),
            Some(Entry {
                inc: 0,
                dec: 1 << 63,
                seq: 1,
                since: 0
            })
        );
        assert_eq!(
            entry("z", "node-1~a"),
            Some(Entry {
                inc: 2,
                dec: 0,
                seq: 10,
                since: 0
            })
        );
        assert_eq!(
            map.value("default"),
            Some(i128::from(u64::MAX) - 5 - (1 << 63))
        );
        let again: CounterMap = decode(&encode(&map)).expect("round trip");
        assert_eq!(again, map, "the current format holds the same entries");
    }

    #[test]
    fn totals_beyond_u64_round_trip_and_oversized_varints_are_refused() {
        for total in [
            1u128 << 64,
            u128::from(u64::MAX) + 1,
            u128::MAX - 1,
            u128::MAX,
        ] {
            let entry = Entry {
                inc: total,
                dec: total / 3,
                seq: 1,
                since: 0,
            };
            assert_eq!(decode::<Entry>(&encode(&entry)), Ok(entry));
        }
        // u128::MAX is 19 varint bytes; a 20th continuation, or a 19th
        // byte carrying bits beyond 128, is an error, not a panic.
        let mut too_long = vec![0xff; 19];
        too_long.extend([0x01, 0x00, 0x00]);
        assert!(decode::<Entry>(&too_long).is_err());
        let mut too_wide = vec![0xff; 18];
        too_wide.extend([0x7f, 0x00, 0x00]);
        assert!(decode::<Entry>(&too_wide).is_err());
    }
}
