//! `?ttl=DURATION` on writes and `PUT /counters/{name}/ttl`: how long a
//! counter lives, one rule for nodes and gateways.
//!
//! A ttl is a whole number and a unit, `ms`, `s`, `m`, `h` or `d`
//! (`500ms`, `2s`, `5m`, `1h`, `7d`): above zero, at most [`MAX_TTL`].
use std::time::Duration;

/// The longest ttl accepted: a year.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a ttl was refused (one line, for a 400 answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// Not a number and a unit.
    #[error(
        "ttl {0:?} is not a duration: use a whole number and a unit, ms, s, m, h or d \
         (500ms, 2s, 5m, 1h, 7d)"
    )]
    Malformed(String),
    /// Zero.
    #[error("ttl must be above zero (500ms, 2s, 5m, 1h, 7d)")]
    Zero,
    /// Over [`MAX_TTL`].
    #[error("ttl {0:?} is longer than the most accepted, 365d")]
    TooLong(String),
}

/// Parses a ttl (`500ms`, `2s`, `5m`, `1h`, `7d`).
pub fn parse_ttl(text: &str) -> Result<Duration, TtlError> {
    let malformed = || TtlError::Malformed(text.chars().take(64).collect());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() || number.len() > 20 {
        return Err(malformed());
    }
    let number: u64 = number.parse().map_err(|_| malformed())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(malformed()),
    };
    if number == 0 {
        return Err(TtlError::Zero);
    }
    let ms = number
        .checked_mul(unit_ms)
        .ok_or_else(|| TtlError::TooLong(text.to_owned()))?;
    let ttl = Duration::from_millis(ms);
    if ttl > MAX_TTL {
        return Err(TtlError::TooLong(text.to_owned()));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("365d", MAX_TTL),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_ttl(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_zero_and_absurd_ttls_are_refused() {
        for text in [
            "",
            "5",
            "m",
            "5 m",
            "-5s",
            "1.5s",
            "5w",
            "5S",
            "99999999999999999999999d",
        ] {
            assert!(
                matches!(parse_ttl(text), Err(TtlError::Malformed(_))),
                "{text}"
            );
        }
        assert_eq!(parse_ttl("0s"), Err(TtlError::Zero));
        assert!(matches!(parse_ttl("366d"), Err(TtlError::TooLong(_))));
        assert!(matches!(
            parse_ttl("18446744073709551615d"),
            Err(TtlError::TooLong(_))
        ));
    }
}
