//! Record framing: `len: u32 LE | crc32c: u32 LE (over kind + payload) | kind: u8 | payload`.

use super::WalError;

/// Bytes before the payload: len (4) + crc32c (4) + kind (1).
pub const RECORD_HEADER_LEN: usize = 9;

/// Largest payload a log record may carry.
pub const MAX_RECORD_PAYLOAD: usize = 16 << 20;

/// Builds the header for `payload`, refusing payloads above `max`.
pub(crate) fn header(
    kind: u8,
    payload: &[u8],
    max: usize,
) -> Result<[u8; RECORD_HEADER_LEN], WalError> {
    let too_large = || WalError::RecordTooLarge {
        len: payload.len(),
        max,
    };
    if payload.len() > max {
        return Err(too_large());
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    let mut header = [0; RECORD_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&checksum(kind, payload).to_le_bytes());
    header[8] = kind;
    Ok(header)
}

fn checksum(kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload)
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadRecord {
    #[error("short header ({available} of {RECORD_HEADER_LEN} bytes)")]
    ShortHeader { available: usize },
    #[error("length {len} exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("short payload ({available} of {len} bytes)")]
    ShortPayload { len: usize, available: usize },
    #[error("crc32c mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
}

pub(crate) enum Decoded<'a> {
    /// `buf` is empty: a clean end.
    End,
    Record {
        kind: u8,
        payload: &'a [u8],
    },
    /// `framed_len` is the length the header claims, when the header is complete:
    /// it lets the caller look past the bad record for valid data.
    Bad {
        reason: BadRecord,
        framed_len: Option<usize>,
    },
}

/// Decodes the record at the start of `buf`. Never panics, whatever the bytes.
pub(crate) fn decode(buf: &[u8], max_payload: usize) -> Decoded<'_> {
    if buf.is_empty() {
        return Decoded::End;
    }
    let Some((header, rest)) = buf.split_first_chunk::<RECORD_HEADER_LEN>() else {
        let reason = BadRecord::ShortHeader {
            available: buf.len(),
        };
        return Decoded::Bad {
            reason,
            framed_len: None,
        };
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3, kind] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let framed_len = len.checked_add(RECORD_HEADER_LEN);
    let reason = if len > max_payload {
        BadRecord::TooLarge {
            len,
            max: max_payload,
        }
    } else if let Some(payload) = rest.get(..len) {
        let stored = u32::from_le_bytes([c0, c1, c2, c3]);
        let computed = checksum(kind, payload);
        if stored == computed {
            return Decoded::Record { kind, payload };
        }
        BadRecord::Checksum { stored, computed }
    } else {
        BadRecord::ShortPayload {
            len,
            available: rest.len(),
        }
    };
    Decoded::Bad { reason, framed_len }
}
