//! One actor's running totals in one counter, and the operations that move them.
use crate::CrdtError;

/// One actor's running totals in one counter.
///
/// The totals are `u128` while a single operation's amount is a `u64`: an
/// actor would need 2^64 operations of `u64::MAX` to exhaust a total, so no
/// sequence of accepted operations can leave a counter unwritable. On the
/// wire (postcard) `u64` and `u128` are both LEB128 varints, so entries
/// written when the totals were `u64` decode to the same values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "UncheckedEntry"))]
pub struct Entry {
    /// Sum of every increment this actor made in this run.
    pub inc: u128,
    /// Sum of every decrement this actor made in this run.
    pub dec: u128,
    /// The actor's operation number that last changed this entry.
    pub seq: u64,
    /// The seq that began this *run* of totals: an actor whose entry was
    /// wholly removed (deleted, reset, expired) starts again from zero at
    /// its next write (see [`crate::lifecycle`]). 0 for entries of before runs.
    pub since: u64,
}

/// An entry as it arrives, before [`Entry::checked`].
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct UncheckedEntry {
    inc: u128,
    dec: u128,
    seq: u64,
    since: u64,
}

#[cfg(feature = "serde")]
impl TryFrom<UncheckedEntry> for Entry {
    type Error = CrdtError;

    fn try_from(raw: UncheckedEntry) -> Result<Entry, CrdtError> {
        Entry {
            inc: raw.inc,
            dec: raw.dec,
            seq: raw.seq,
            since: raw.since,
        }
        .checked()
    }
}

impl Entry {
    /// The entry, if some actor could have written it. Every write is
    /// stamped with a seq from 1 on, so only the empty entry has seq 0 (one
    /// held at seq 0 would sit below every watermark, out of reach of
    /// anti-entropy); and a run begins at or before the seq that last
    /// changed it (an entry with `since > seq` would win every join and
    /// hand out seqs that were already used).
    pub fn checked(self) -> Result<Entry, CrdtError> {
        if self.seq == 0 && self != Entry::default() {
            return Err(CrdtError::Decode("entry without a seq"));
        }
        if self.since > self.seq {
            return Err(CrdtError::Decode("entry whose run begins after it"));
        }
        Ok(self)
    }

    /// The merge of two views of one actor's entry: the later run, and
    /// within one run the per-field maximum (a run's totals only grow).
    pub fn join(self, other: Entry) -> Entry {
        match self.since.cmp(&other.since) {
            core::cmp::Ordering::Greater => self,
            core::cmp::Ordering::Less => other,
            core::cmp::Ordering::Equal => Entry {
                inc: self.inc.max(other.inc),
                dec: self.dec.max(other.dec),
                seq: self.seq.max(other.seq),
                since: self.since,
            },
        }
    }

    /// The first entry of a run begun by an operation stamped `seq`.
    pub fn start(seq: u64) -> Entry {
        Entry {
            inc: 0,
            dec: 0,
            seq,
            since: seq,
        }
    }

    /// `inc + dec`, saturating: how much was written in this run, both ways.
    pub(crate) fn volume(&self) -> u128 {
        self.inc.saturating_add(self.dec)
    }
}

/// A local operation on a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Op {
    /// Add the amount.
    Increment(u64),
    /// Subtract the amount.
    Decrement(u64),
}

impl Op {
    /// The operation's effect on the value, as a signed number.
    pub fn signed(self) -> i128 {
        match self {
            Op::Increment(amount) => i128::from(amount),
            Op::Decrement(amount) => -i128::from(amount),
        }
    }

    /// The amount, whatever the direction.
    pub fn amount(self) -> u64 {
        match self {
            Op::Increment(amount) | Op::Decrement(amount) => amount,
        }
    }

    /// A total order on operations (for joining hostile duplicates).
    pub(crate) fn rank(self) -> (bool, u64) {
        match self {
            Op::Increment(amount) => (true, amount),
            Op::Decrement(amount) => (false, amount),
        }
    }
}

/// An exact sum of `u128` totals: `high · 2^128 + low`.
///
/// Entries come from peers, and a damaged or hostile one may hold totals
/// near `u128::MAX`; their sum must neither panic nor wrap. One carry word
/// suffices: it would take 2^64 entries to exhaust it (it saturates rather
/// than wrap even then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WideSum {
    high: u64,
    low: u128,
}

impl WideSum {
    pub(crate) fn add(&mut self, amount: u128) {
        let (low, carry) = self.low.overflowing_add(amount);
        self.low = low;
        self.high = self.high.saturating_add(u64::from(carry));
    }

    /// `self − other`, as an `i128` clamped to its range.
    pub(crate) fn minus(self, other: WideSum) -> i128 {
        if self >= other {
            i128::try_from(self.distance(other)).unwrap_or(i128::MAX)
        } else {
            // −magnitude, down to −2^127 = i128::MIN.
            0i128
                .checked_sub_unsigned(other.distance(self))
                .unwrap_or(i128::MIN)
        }
    }

    /// `self − other` for `self ≥ other`, clamped to `u128::MAX`.
    fn distance(self, other: WideSum) -> u128 {
        let (low, borrow) = self.low.overflowing_sub(other.low);
        // `self ≥ other`, so this cannot underflow.
        let high = self.high - other.high - u64::from(borrow);
        if high == 0 {
            low
        } else {
            u128::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_some_actor_could_write_are_accepted() {
        let entry = |seq, since| Entry {
            inc: 1,
            dec: 0,
            seq,
            since,
        };
        assert!(entry(3, 1).checked().is_ok());
        assert!(entry(3, 0).checked().is_ok(), "entries of before runs");
        assert!(entry(0, 0).checked().is_err());
        assert!(entry(3, 4).checked().is_err(), "a run that begins later");
        assert!(Entry::default().checked().is_ok());
    }

    #[test]
    fn wide_sums_neither_wrap_nor_panic() {
        let mut big = WideSum::default();
        big.add(u128::MAX);
        big.add(u128::MAX);
        let mut small = WideSum::default();
        small.add(5);
        assert_eq!(big.minus(small), i128::MAX);
        assert_eq!(small.minus(big), i128::MIN);
        assert_eq!(small.minus(small), 0);
    }
}
