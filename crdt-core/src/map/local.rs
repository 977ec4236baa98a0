//! Local operations on the map: each stamped with its actor's next seq and
//! merged like any change, returning the delta to persist and ship.
use alloc::vec::Vec;

use super::{Change, CounterMap, KeyedWrite};
use crate::keyed::{open_attempt, IdempotencyKey, KeyCheck, Registration};
use crate::lifecycle::RemovalKind;
use crate::{ActorId, CounterName, CrdtError, Entry, Op, PnCounter};

impl CounterMap {
    /// Applies a local operation by `actor` on `name`, stamped with the
    /// actor's next seq. Returns the delta to persist and ship.
    pub fn apply(
        &mut self,
        actor: &ActorId,
        name: &CounterName,
        op: Op,
    ) -> Result<CounterMap, CrdtError> {
        let seq = self.next_seq(actor)?;
        let entry = self.prepare(actor, name, op, seq)?;
        self.merge_entry(name, actor, entry);
        Ok(CounterMap::single(name, actor, entry))
    }

    /// The entry `actor` would hold in `name` after `op` stamped `seq`, without applying it.
    pub fn prepare(
        &self,
        actor: &ActorId,
        name: &CounterName,
        op: Op,
        seq: u64,
    ) -> Result<Entry, CrdtError> {
        match self.counters.get(name) {
            Some(counter) => counter.prepare(actor.as_str(), op, seq),
            None => PnCounter::new().prepare(actor.as_str(), op, seq),
        }
    }

    /// What the replica holds of `key` at `now_ms`: nothing (or only
    /// attempts whose window closed), the same write (answer with it), or
    /// another write under the same key.
    pub fn check_key(
        &self,
        key: &IdempotencyKey,
        name: &CounterName,
        op: Op,
        now_ms: u64,
    ) -> KeyCheck {
        let holders = self
            .keys
            .range((key.clone(), CounterName::lowest())..)
            .map(|(pair, _)| pair)
            .take_while(|(known, _)| known == key);
        for (_, counter_name) in holders {
            let Some(counter) = self.counters.get(counter_name) else {
                continue;
            };
            let Some(kept) = open_attempt(counter.registrations_of(key.as_str()), now_ms) else {
                continue;
            };
            if counter_name == name && kept.op == op {
                return KeyCheck::Replay(kept.clone());
            }
            return KeyCheck::Mismatch {
                counter: alloc::string::String::from(counter_name.as_str()),
                op: kept.op,
            };
        }
        KeyCheck::New
    }

    /// Applies a keyed write by `actor` stamped with its next seq, at
    /// `at_ms` on the actor's clock (never below a stamp it made before),
    /// joining retries stamped within `window_ms`. The caller has checked
    /// the key at `at_ms` ([`Self::check_key`]).
    pub fn apply_keyed(
        &mut self,
        actor: &ActorId,
        name: &CounterName,
        op: Op,
        key: &IdempotencyKey,
        at_ms: u64,
        window_ms: u64,
    ) -> Result<KeyedWrite, CrdtError> {
        let seq = self.next_seq(actor)?;
        let entry = self.prepare(actor, name, op, seq)?;
        let value = self
            .value(name.as_str())
            .unwrap_or(0)
            .saturating_add(op.signed());
        let registration = Registration {
            key: key.clone(),
            origin: actor.clone(),
            op,
            at_ms,
            seq,
            value,
            cancelled_seq: 0,
            window_ms: window_ms.max(1),
        };
        let change = Change {
            name: name.clone(),
            actor: actor.clone(),
            entry,
            registrations: alloc::vec![registration.clone()],
            lifecycle: None,
        };
        self.merge_change(&change);
        Ok(KeyedWrite {
            delta: core::iter::once(change).collect(),
            registration,
        })
    }

    /// Removes what this replica holds of `name` (observed-remove): a
    /// delete or a reset by `actor` at wall clock `at_ms`, stamped with the
    /// actor's next seq. It also spends the counter's expiry. Returns the
    /// delta to persist and ship, or `None` when the counter does not read
    /// as present here.
    pub fn remove(
        &mut self,
        actor: &ActorId,
        name: &CounterName,
        kind: RemovalKind,
        at_ms: u64,
    ) -> Result<Option<CounterMap>, CrdtError> {
        let Some(counter) = self.counters.get(name).filter(|c| c.is_visible()) else {
            return Ok(None);
        };
        let seq = self.next_seq(actor)?;
        let change = Change::removing(counter, name, actor, kind, at_ms, seq);
        self.merge_change(&change);
        Ok(Some(core::iter::once(change).collect()))
    }

    /// Sets `name` to expire at `expires_at_ms` (the latest expiry set
    /// anywhere wins), as an operation of `actor`. `None` when the counter
    /// does not read as present here.
    pub fn set_expiry(
        &mut self,
        actor: &ActorId,
        name: &CounterName,
        expires_at_ms: u64,
    ) -> Result<Option<CounterMap>, CrdtError> {
        let Some(counter) = self.counters.get(name).filter(|c| c.is_visible()) else {
            return Ok(None);
        };
        let seq = self.next_seq(actor)?;
        let change = Change::expiring(counter, name, actor, expires_at_ms, seq);
        self.merge_change(&change);
        Ok(Some(core::iter::once(change).collect()))
    }

    /// Counters whose expiry in force is at or before `now_ms`, earliest
    /// first, at most `limit`.
    pub fn expired(&self, now_ms: u64, limit: usize) -> Vec<CounterName> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// True when `name` has an expiry in force at or before `now_ms`.
    pub fn is_expired(&self, name: &str, now_ms: u64) -> bool {
        (self.counters.get(name))
            .and_then(PnCounter::expiry)
            .is_some_and(|at| at <= now_ms)
    }

    /// The counters holding an entry of `actor` (from the per-actor index:
    /// O(its entries), not O(counters)).
    pub fn counters_of(&self, actor: &ActorId) -> Vec<CounterName> {
        (self.changes_by_actor.get(actor.as_str()))
            .map(|changes| changes.iter().map(|(_, name)| name.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether any counter holds an entry of `actor` (O(log actors), where
    /// [`Self::counters_of`] copies every name).
    pub fn holds_entries_of(&self, actor: &ActorId) -> bool {
        (self.changes_by_actor.get(actor.as_str())).is_some_and(|changes| !changes.is_empty())
    }

    /// Retires departed actor `from` into `into` (the caller's own actor):
    /// every counter holding `from`'s entry and no takeover of it yet is
    /// taken over ([`Change::taking_over`]), each change stamped with
    /// `into`'s next seq. Returns the delta to persist and ship, and how
    /// many counters it left for a later call (where `from` is itself the
    /// survivor of a takeover still recorded).
    pub fn take_over(
        &mut self,
        from: &ActorId,
        into: &ActorId,
    ) -> Result<(CounterMap, usize), CrdtError> {
        let mut delta = CounterMap::new();
        let mut left = 0;
        for name in self.counters_of(from) {
            let Some(counter) = self.counters.get(&name) else {
                continue;
            };
            match counter.takeover_ready(from) {
                None => continue,
                Some(false) => {
                    left += 1;
                    continue;
                }
                Some(true) => {}
            }
            let seq = self.next_seq(into)?;
            let change = Change::taking_over(counter, &name, from, into, seq)?;
            self.merge_change(&change);
            delta.merge_change(&change);
        }
        Ok((delta, left))
    }
}
