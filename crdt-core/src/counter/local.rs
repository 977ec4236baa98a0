//! Stamping local operations on a counter: the entry an operation would
//! leave, checked before anything changes.
use alloc::collections::BTreeMap;

use super::PnCounter;
use crate::{ActorId, CrdtError, Entry, Op};

impl PnCounter {
    /// Adds `amount` on behalf of `actor`, returning the delta to ship to peers.
    pub fn increment(&mut self, actor: &ActorId, amount: u64) -> Result<PnCounter, CrdtError> {
        self.apply_next(actor, Op::Increment(amount))
    }

    /// Subtracts `amount` on behalf of `actor`, returning the delta to ship to peers.
    pub fn decrement(&mut self, actor: &ActorId, amount: u64) -> Result<PnCounter, CrdtError> {
        self.apply_next(actor, Op::Decrement(amount))
    }

    fn apply_next(&mut self, actor: &ActorId, op: Op) -> Result<PnCounter, CrdtError> {
        // A seq at u64::MAX can only come from a damaged or hostile peer.
        let seq = self
            .entry(actor.as_str())
            .map_or(0, |e| e.seq)
            .checked_add(1)
            .ok_or(CrdtError::Overflow)?;
        let entry = self.prepare(actor.as_str(), op, seq)?;
        self.merge_entry(actor, entry);
        let mut delta = PnCounter::new();
        delta.merge_entry(actor, entry);
        Ok(delta)
    }

    /// The entry `actor` would have after `op` stamped `seq`, without applying it.
    ///
    /// Fails on a zero amount, on a value that would move (further) outside
    /// `i64`, or on a `u128` total that would overflow — which no sequence
    /// of accepted operations can reach (2^64 operations of `u64::MAX`),
    /// only a damaged or hostile peer. On failure nothing changes.
    pub fn prepare(&self, actor: &str, op: Op, seq: u64) -> Result<Entry, CrdtError> {
        let (current, mut next) = match self.entry(actor) {
            Some(entry) if !self.run_is_over(actor, entry) => (*entry, Entry { seq, ..*entry }),
            _ => (Entry::start(seq), Entry::start(seq)),
        };
        match op {
            Op::Increment(0) | Op::Decrement(0) => return Err(CrdtError::ZeroAmount),
            Op::Increment(amount) => {
                next.inc = current
                    .inc
                    .checked_add(u128::from(amount))
                    .ok_or(CrdtError::Overflow)?
            }
            Op::Decrement(amount) => {
                next.dec = current
                    .dec
                    .checked_add(u128::from(amount))
                    .ok_or(CrdtError::Overflow)?
            }
        }
        // Only refuse moving *further* out of i64: a value pushed past the
        // range by concurrent merges must still accept operations toward it.
        let value_after = self.value().saturating_add(op.signed());
        let leaves_range = match op {
            Op::Increment(_) => value_after > i128::from(i64::MAX),
            Op::Decrement(_) => value_after < i128::from(i64::MIN),
        };
        if leaves_range {
            return Err(CrdtError::Overflow);
        }
        Ok(next)
    }

    /// True when `actor`'s next write must start a new run: everything in
    /// its `entry` was removed (by a removal, an earlier run's end, or a
    /// takeover). Only what every replica agrees on decides it: whether the
    /// live part holds a write depends on which applications of a key a
    /// replica holds, and a run restarted on a partial view would drop a
    /// write for good. (A counter is collected whole only once every entry
    /// in it is so removed: `CounterMap::drop_removed`.)
    pub(crate) fn run_is_over(&self, actor: &str, entry: &Entry) -> bool {
        self.removed_through(actor) >= entry.seq
    }

    /// Whether departed actor `from` can be taken over here now: `None`
    /// when there is nothing to take over (no entry, or already taken
    /// over), `Some(false)` when it must wait (it is the survivor of a
    /// takeover still recorded, which only its own record explains),
    /// `Some(true)` when it can. Registrations of `from` do not hold it
    /// back: their amounts move with its entry, and what removes them is
    /// followed through the fold ([`super::tally::Coverage::removes`]).
    pub fn takeover_ready(&self, from: &ActorId) -> Option<bool> {
        self.entry(from.as_str())?;
        let lifecycle = self.lifecycle.as_deref();
        if lifecycle.is_some_and(|l| l.takeover_of(from.as_str()).is_some()) {
            return None;
        }
        let survivor =
            lifecycle.is_some_and(|l| l.takeovers.iter().any(|((_, into), _)| into == from));
        Some(!survivor)
    }

    /// A working copy for stamping local operations, exact in everything
    /// stamping reads (entries, sums, value, whether a run is over). A
    /// copy per batch must not copy a day of keys: while the counter has no
    /// lifecycle and no removed key, the registrations stay behind (stamping
    /// an entry then moves no excess); otherwise it is a whole copy.
    pub fn without_registrations(&self) -> PnCounter {
        if self.lifecycle.is_some() || !self.keys_plain {
            return self.clone();
        }
        PnCounter {
            entries: self.entries.clone(),
            registrations: BTreeMap::new(),
            ..self.clone_cache()
        }
    }

    /// The cached sums alone, on an empty state.
    fn clone_cache(&self) -> PnCounter {
        PnCounter {
            entries: alloc::vec::Vec::new(),
            registrations: BTreeMap::new(),
            lifecycle: None,
            total_inc: self.total_inc,
            total_dec: self.total_dec,
            excess: self.excess,
            written: self.written,
            keys_plain: self.keys_plain,
            digest: self.digest,
        }
    }
}
