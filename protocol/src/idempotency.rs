//! The `Idempotency-Key` header: one name and one parser for nodes and the
//! gateway, so a keyed write gets the same answer whichever it reaches.
use crdt_core::IdempotencyKey;

/// The request header naming a logical write (1–128 visible ASCII bytes).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The header's value as a key: `Ok(None)` without the header, an error
/// (for a 400) when it is not a valid key.
pub fn parse_key(value: Option<&[u8]>) -> Result<Option<IdempotencyKey>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value)
        .map_err(|_| "Idempotency-Key must be 1 to 128 visible ASCII characters".to_owned())?;
    IdempotencyKey::new(text)
        .map(Some)
        .map_err(|e| format!("Idempotency-Key: {e} (1 to 128 visible ASCII characters)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_or_refused_in_one_line() {
        assert_eq!(parse_key(None), Ok(None));
        assert_eq!(
            parse_key(Some(b"order-7")).unwrap().unwrap().as_str(),
            "order-7"
        );
        for bad in [&b""[..], b"two words", b"\xff\xfe", &[b'k'; 129]] {
            let error = parse_key(Some(bad)).unwrap_err();
            assert!(error.starts_with("Idempotency-Key"), "{error}");
            assert!(!error.contains('\n'));
        }
    }
}
