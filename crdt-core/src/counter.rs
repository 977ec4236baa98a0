use alloc::vec::Vec;

use crate::{digest, ActorId, CrdtError};

/// One actor's running totals in one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// Sum of every increment this actor made.
    pub inc: u64,
    /// Sum of every decrement this actor made.
    pub dec: u64,
    /// The actor's operation number that last changed this entry.
    pub seq: u64,
}

impl Entry {
    /// The per-field maximum: the merge of two views of one actor's entry.
    pub fn join(self, other: Entry) -> Entry {
        Entry {
            inc: self.inc.max(other.inc),
            dec: self.dec.max(other.dec),
            seq: self.seq.max(other.seq),
        }
    }
}

/// A local operation on a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// A PN-Counter: per-actor increment and decrement totals.
///
/// `value()` is O(1): the sums and the digest are updated on every change.
#[derive(Debug, Clone, Default)]
pub struct PnCounter {
    /// Sorted by actor. A counter has few actors (nodes × incarnations), and
    /// a sorted vector costs ~40 bytes per entry where a B-tree node costs
    /// ~450: it matters with a million counters.
    entries: Vec<(ActorId, Entry)>,
    total_inc: u128,
    total_dec: u128,
    digest: u64,
}

impl PartialEq for PnCounter {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}
impl Eq for PnCounter {}

impl PnCounter {
    /// An empty counter (value 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// `Σinc − Σdec`, exact.
    pub fn value(&self) -> i128 {
        // Both sums are below 2^64 · 2^64 = 2^128 only in theory; in practice
        // they are bounded by actors × u64::MAX, far inside i128 for any real cluster.
        (self.total_inc as i128).wrapping_sub(self.total_dec as i128)
    }

    fn position(&self, actor: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(known, _)| known.as_str().cmp(actor))
    }

    /// The 64-bit digest of this counter's entries.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Every actor's entry, ordered by actor id.
    pub fn entries(&self) -> impl Iterator<Item = (&ActorId, &Entry)> {
        self.entries.iter().map(|(actor, entry)| (actor, entry))
    }

    /// One actor's entry.
    pub fn entry(&self, actor: &str) -> Option<&Entry> {
        self.position(actor)
            .ok()
            .map(|index| &self.entries[index].1)
    }

    /// Number of actors that ever touched this counter.
    pub fn actors(&self) -> usize {
        self.entries.len()
    }

    /// Adds `amount` on behalf of `actor`, returning the delta to ship to peers.
    pub fn increment(&mut self, actor: &ActorId, amount: u64) -> Result<PnCounter, CrdtError> {
        self.apply_next(actor, Op::Increment(amount))
    }

    /// Subtracts `amount` on behalf of `actor`, returning the delta to ship to peers.
    pub fn decrement(&mut self, actor: &ActorId, amount: u64) -> Result<PnCounter, CrdtError> {
        self.apply_next(actor, Op::Decrement(amount))
    }

    fn apply_next(&mut self, actor: &ActorId, op: Op) -> Result<PnCounter, CrdtError> {
        let seq = self.entry(actor.as_str()).map_or(0, |e| e.seq) + 1;
        let entry = self.prepare(actor.as_str(), op, seq)?;
        self.merge_entry(actor, entry);
        let mut delta = PnCounter::new();
        delta.merge_entry(actor, entry);
        Ok(delta)
    }

    /// The entry `actor` would have after `op` stamped `seq`, without applying it.
    ///
    /// Fails on a zero amount or on overflow, and then nothing changes.
    pub fn prepare(&self, actor: &str, op: Op, seq: u64) -> Result<Entry, CrdtError> {
        let current = self.entry(actor).copied().unwrap_or_default();
        let mut next = Entry { seq, ..current };
        match op {
            Op::Increment(0) | Op::Decrement(0) => return Err(CrdtError::ZeroAmount),
            Op::Increment(amount) => {
                next.inc = current.inc.checked_add(amount).ok_or(CrdtError::Overflow)?
            }
            Op::Decrement(amount) => {
                next.dec = current.dec.checked_add(amount).ok_or(CrdtError::Overflow)?
            }
        }
        // Only refuse moving *further* out of i64: a value pushed past the
        // range by concurrent merges must still accept operations toward it.
        let value_after = self.value() + op.signed();
        let leaves_range = match op {
            Op::Increment(_) => value_after > i128::from(i64::MAX),
            Op::Decrement(_) => value_after < i128::from(i64::MIN),
        };
        if leaves_range {
            return Err(CrdtError::Overflow);
        }
        Ok(next)
    }

    /// Merges one actor's entry; returns the joined entry when anything changed.
    pub fn merge_entry(&mut self, actor: &ActorId, incoming: Entry) -> Option<Entry> {
        let position = self.position(actor.as_str());
        let old = position
            .ok()
            .map(|index| self.entries[index].1)
            .unwrap_or_default();
        let joined = old.join(incoming);
        if joined == old {
            return None;
        }
        match position {
            Ok(index) => self.entries[index].1 = joined,
            Err(index) => self.entries.insert(index, (actor.clone(), joined)),
        }
        self.total_inc += u128::from(joined.inc - old.inc);
        self.total_dec += u128::from(joined.dec - old.dec);
        let was_new = old == Entry::default();
        if !was_new {
            self.digest =
                self.digest
                    .wrapping_sub(digest::entry_hash(actor.as_str(), old.inc, old.dec));
        }
        self.digest =
            self.digest
                .wrapping_add(digest::entry_hash(actor.as_str(), joined.inc, joined.dec));
        Some(joined)
    }

    /// Merges another replica (or a delta) into this one; true when anything changed.
    pub fn merge(&mut self, other: &PnCounter) -> bool {
        let mut changed = false;
        for (actor, entry) in other.entries() {
            changed |= self.merge_entry(actor, *entry).is_some();
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: &str) -> ActorId {
        ActorId::new(id).unwrap()
    }

    #[test]
    fn value_is_increments_minus_decrements() {
        let mut counter = PnCounter::new();
        counter.increment(&actor("a"), 5).unwrap();
        counter.decrement(&actor("b"), 2).unwrap();
        counter.increment(&actor("a"), 1).unwrap();
        assert_eq!(counter.value(), 4);
        assert_eq!(
            counter.entry("a"),
            Some(&Entry {
                inc: 6,
                dec: 0,
                seq: 2
            })
        );
    }

    #[test]
    fn overflow_and_zero_are_refused_without_change() {
        let mut counter = PnCounter::new();
        counter.increment(&actor("a"), i64::MAX as u64).unwrap();
        let before = counter.clone();
        assert_eq!(counter.increment(&actor("b"), 1), Err(CrdtError::Overflow));
        assert_eq!(
            counter.increment(&actor("a"), 0),
            Err(CrdtError::ZeroAmount)
        );
        assert_eq!(counter, before);
        assert_eq!(counter.digest(), before.digest());
    }

    #[test]
    fn delta_merges_like_the_state() {
        let mut left = PnCounter::new();
        let delta = left.increment(&actor("a"), 3).unwrap();
        let mut right = PnCounter::new();
        assert!(right.merge(&delta));
        assert!(!right.merge(&delta));
        assert_eq!(left, right);
        assert_eq!(left.digest(), right.digest());
    }
}
