//! Text the page shows for numbers and durations, kept apart from the DOM
//! so it can be tested natively.

/// A counter value with thin-space thousands separators: `-1 234 567`.
pub fn value(value: i128) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3 * 3 + 1);
    if value < 0 {
        grouped.push('−');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push('\u{2009}');
        }
        grouped.push(digit);
    }
    grouped
}

/// A short duration: `850 ms`, `1.5 s`, `2 min 5 s`.
pub fn duration(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "—".to_owned();
    }
    if ms < 1000.0 {
        format!("{} ms", ms.round())
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        let seconds = (ms / 1000.0).round() as u64;
        format!("{} min {} s", seconds / 60, seconds % 60)
    }
}

/// Time left before an expiry, whole units rounded up (a counter that
/// expires in 0.2 s reads "1 s", never "0 s"): `4 s`, `2 min 5 s`,
/// `3 h 20 min`, `7 d 0 h`.
pub fn countdown(ms: f64) -> String {
    if !ms.is_finite() || ms <= 0.0 {
        return "—".to_owned();
    }
    let seconds = (ms / 1000.0).ceil() as u64;
    let (minutes, hours, days) = (seconds / 60, seconds / 3_600, seconds / 86_400);
    if seconds < 60 {
        format!("{seconds} s")
    } else if minutes < 60 {
        format!("{minutes} min {} s", seconds % 60)
    } else if hours < 24 {
        format!("{hours} h {} min", minutes % 60)
    } else {
        format!("{days} d {} h", hours % 24)
    }
}

/// `1 entry`, `3 entries`: a count with the noun in the right number.
pub fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// How far a node is behind the gateway's merged view, for its card: the
/// default counter's increments and decrements it has not seen yet.
pub fn lag(value_behind: i128, in_sync: bool) -> String {
    if in_sync {
        return "in sync".to_owned();
    }
    if value_behind == 0 {
        // The default counter is current, some other counter is not.
        return "catching up".to_owned();
    }
    let sign = if value_behind > 0 { "+" } else { "" };
    format!("Δ {sign}{}", value(value_behind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_grouped_by_thousands() {
        assert_eq!(value(0), "0");
        assert_eq!(value(999), "999");
        assert_eq!(value(1000), "1\u{2009}000");
        assert_eq!(value(-1_234_567), "−1\u{2009}234\u{2009}567");
        assert_eq!(
            value(i128::from(i64::MIN)),
            "−9\u{2009}223\u{2009}372\u{2009}036\u{2009}854\u{2009}775\u{2009}808"
        );
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(duration(12.4), "12 ms");
        assert_eq!(duration(1500.0), "1.5 s");
        assert_eq!(duration(125_000.0), "2 min 5 s");
        assert_eq!(duration(f64::NAN), "—");
    }

    #[test]
    fn countdowns_round_up_and_pick_two_units() {
        assert_eq!(countdown(200.0), "1 s");
        assert_eq!(countdown(4_000.0), "4 s");
        assert_eq!(countdown(125_000.0), "2 min 5 s");
        assert_eq!(countdown(3.0 * 3_600_000.0 + 1_200_000.0), "3 h 20 min");
        assert_eq!(countdown(7.0 * 86_400_000.0), "7 d 0 h");
        assert_eq!(countdown(0.0), "—");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(0, "entry", "entries"), "0 entries");
        assert_eq!(count(1, "counter", "counters"), "1 counter");
        assert_eq!(count(12, "actor", "actors"), "12 actors");
    }

    #[test]
    fn lag_reads_naturally() {
        assert_eq!(lag(0, true), "in sync");
        assert_eq!(lag(0, false), "catching up");
        assert_eq!(lag(3, false), "Δ +3");
        assert_eq!(lag(-2, false), "Δ −2");
    }
}
