//! Lower-case hex, for keys, nonces and MACs in HTTP headers.

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Exactly `N` bytes from `2N` hex digits; `None` for anything else.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(decode::<2>(&encode(&[0xab, 0x01])), Some([0xab, 0x01]));
        assert_eq!(decode::<2>("abc"), None);
        assert_eq!(decode::<2>("zzzz"), None);
        assert_eq!(decode::<2>("éé"), None);
    }
}
