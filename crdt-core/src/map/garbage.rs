//! Housekeeping on the map: folding closed keys, collecting removed
//! counters. Each step is value-neutral on every replica whatever the
//! timing, given what its caller vouches for (written beside each).
use alloc::vec::Vec;
use core::ops::Bound;

use super::{contribution, CounterMap};
use crate::{ActorId, CounterName, IdempotencyKey, Watermarks};

impl CounterMap {
    /// Drops the registrations of keyed writes that can no longer move a
    /// value: groups closed by `closed_before_ms`, held by every replica
    /// (every application within `seen_by_all`) and inert (a single
    /// application, or all removed; see [`crate::keyed::is_inert`]).
    /// Groups with several live applications stay and keep counting once.
    ///
    /// The caller vouches that every registration stamped before
    /// `closed_before_ms` by any replica that may still merge with this one
    /// is held here, and that none will be stamped again (the node derives
    /// it from every member's report and clock; see ARCHITECTURE.md,
    /// "The gate"). Returns the registrations dropped.
    pub fn fold_keys(&mut self, seen_by_all: &Watermarks, closed_before_ms: u64) -> usize {
        let due: Vec<(u64, IdempotencyKey, CounterName)> = self
            .keys_open
            .range(
                ..(
                    closed_before_ms.saturating_add(1),
                    IdempotencyKey::lowest(),
                    CounterName::lowest(),
                ),
            )
            .cloned()
            .collect();
        let mut dropped = 0;
        for (latest, key, name) in due {
            self.keys_open.remove(&(latest, key.clone(), name.clone()));
            let Some(counter) = self.counters.get_mut(&name) else {
                self.keys.remove(&(key, name));
                continue;
            };
            let everywhere = |origin: &ActorId, seq: u64| seq <= seen_by_all.get(origin.as_str());
            let (count, emptied) = counter.fold_keys(Some(&key), closed_before_ms, everywhere);
            dropped += count;
            if !emptied.is_empty() {
                self.keys.remove(&(key, name.clone()));
            } else if counter.has_inert_group(&key) {
                // Not held everywhere yet: looked at again next time. (A
                // group with several live applications is not: it stays
                // until a removal covers it, and compaction folds it then.)
                self.keys_open.insert((latest, key, name.clone()));
            }
            self.drop_if_empty(&name);
        }
        dropped
    }

    /// True when some key not folded yet has all its groups closed by
    /// `closed_before_ms`: work for [`Self::fold_keys`].
    pub fn has_keys_closing_by(&self, closed_before_ms: u64) -> bool {
        self.keys_open
            .first()
            .is_some_and(|(latest, _, _)| *latest <= closed_before_ms)
    }

    /// Collects garbage: drops deleted counters (entries, registrations and
    /// lifecycle), and compacts counters written again (see
    /// `PnCounter::compact`), among the counters every live replica is
    /// known to hold as they are here: every seq in them is at most
    /// `seen_by_all`, and every key group in them closed by
    /// `closed_before_ms`. The caller also vouches that it holds everything
    /// those replicas held when they reported it (see ARCHITECTURE.md,
    /// "The gate"), so nothing written before a removal can still arrive
    /// above it. Looks at no more than `budget` removed counters (resuming
    /// after `after`); returns the counters it dropped and where to resume
    /// (`None` once it went through all of them). Never changes what a
    /// read returns.
    pub fn drop_removed(
        &mut self,
        seen_by_all: &Watermarks,
        closed_before_ms: u64,
        after: Option<&CounterName>,
        budget: usize,
    ) -> (Vec<CounterName>, Option<CounterName>) {
        let start = match after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        let looked: Vec<CounterName> = self
            .removed
            .range((start, Bound::Unbounded))
            .take(budget)
            .cloned()
            .collect();
        let resume = (looked.len() == budget)
            .then(|| looked.last().cloned())
            .flatten();
        let mut dropped = Vec::new();
        for name in looked {
            let Some(counter) = self.counters.get(&name) else {
                self.removed.remove(&name);
                continue;
            };
            let seen = |actor: &ActorId, seq: u64| seq <= seen_by_all.get(actor.as_str());
            let stable = counter
                .entries()
                .all(|(actor, entry)| seen(actor, entry.seq))
                && (counter.lifecycle())
                    .is_some_and(|l| l.stamps.iter().all(|(actor, seq)| seen(actor, *seq)))
                && counter
                    .registrations()
                    .all(|r| r.closes_at() <= closed_before_ms && seen(&r.origin, r.last_seq()));
            if !stable {
                continue;
            }
            // Dropped whole only once every entry is wholly removed: a writer
            // whose entry still holds a live amount (the re-application of a
            // removed key) continues its run, which a replica that dropped
            // the counter would count from zero. Compaction records such
            // entries as removed first (every replica holds them now).
            if !Self::droppable(counter, closed_before_ms) {
                self.compact_counter(&name, closed_before_ms);
            }
            let droppable = |counter: &crate::PnCounter| Self::droppable(counter, closed_before_ms);
            if self.counters.get(&name).is_some_and(droppable) {
                self.drop_counter(&name);
                dropped.push(name);
            }
        }
        (dropped, resume)
    }

    /// Reads as absent, every entry is wholly removed, and its mark and
    /// expiry were stamped before `closed_before_ms` (anything stamped
    /// from now on compares above them, held or not).
    fn droppable(counter: &crate::PnCounter, closed_before_ms: u64) -> bool {
        let old = |at_ms: u64| at_ms < closed_before_ms;
        let stamps_old = counter.lifecycle().is_none_or(|l| {
            l.mark.as_ref().is_none_or(|m| old(m.at_ms))
                && old(l.expires_at_ms)
                && old(l.spent_expiry_ms)
        });
        !counter.is_visible()
            && stamps_old
            && (counter.entries())
                .all(|(actor, entry)| counter.removed_through(actor.as_str()) >= entry.seq)
    }

    fn compact_counter(&mut self, name: &CounterName, closed_before_ms: u64) {
        let Some(counter) = self.counters.get_mut(name) else {
            return;
        };
        let old_contribution = contribution(name, counter);
        let (entries, keys) = counter.compact(closed_before_ms);
        let new_contribution = contribution(name, counter);
        // Compacted while stable: nothing more can go until a new removal
        // (which puts it back), so garbage rounds stop looking at it (and
        // stop asking every member for its watermarks) — unless what is
        // left waits for time: a mark or an expiry stamped too recently to
        // go, or a deleted counter to drop once they are old.
        // (An expiry in force is not waited for: when it passes, the
        // sweep's delete puts the counter back.)
        let waits = counter.lifecycle().is_some_and(|l| {
            l.mark.as_ref().is_some_and(|m| m.at_ms >= closed_before_ms)
                || l.spent_expiry_ms >= closed_before_ms
        });
        if !waits {
            self.removed.remove(name);
        }
        self.digest = self
            .digest
            .wrapping_sub(old_contribution)
            .wrapping_add(new_contribution);
        for (actor, entry) in entries {
            self.dropped.raise(&actor, entry.seq);
            if let Some(changes) = self.changes_by_actor.get_mut(actor.as_str()) {
                changes.remove(&(entry.seq, name.clone()));
            }
            self.entry_count -= 1;
        }
        for key in keys {
            self.forget_key(key, name.clone());
        }
    }

    /// Number of removed counters garbage collection may still act on:
    /// deleted ones not dropped yet, and ones written again not compacted yet.
    pub fn removed_count(&self) -> usize {
        self.removed.len()
    }

    /// Drops `name` if it reads as absent (deleted, nothing written above
    /// the removal): a follower's copy of a counter that a replica reported
    /// collecting ([`Self::drop_removed`] drops only stable ones, so every
    /// later write to it starts a new run that owes nothing to this copy).
    /// True when it was dropped.
    pub fn drop_collected(&mut self, name: &str) -> bool {
        match self.counters.get_key_value(name) {
            Some((known, counter)) if !counter.is_visible() => {
                let known = known.clone();
                self.drop_counter(&known);
                true
            }
            _ => false,
        }
    }

    /// Drops a counter that housekeeping emptied (no entry, registration or lifecycle).
    fn drop_if_empty(&mut self, name: &CounterName) {
        let empty = (self.counters.get(name)).is_some_and(|counter| {
            counter.actors() == 0 && !counter.has_registrations() && counter.lifecycle().is_none()
        });
        if empty {
            self.counters.remove(name);
        }
    }

    fn drop_counter(&mut self, name: &CounterName) {
        self.removed.remove(name);
        let Some(counter) = self.counters.remove(name) else {
            return;
        };
        self.digest = self.digest.wrapping_sub(contribution(name, &counter));
        for (actor, entry) in counter.entries() {
            self.dropped.raise(actor, entry.seq);
            if let Some(changes) = self.changes_by_actor.get_mut(actor.as_str()) {
                changes.remove(&(entry.seq, name.clone()));
            }
            self.entry_count -= 1;
        }
        if let Some(lifecycle) = counter.lifecycle() {
            for (actor, seq) in &lifecycle.stamps {
                self.dropped.raise(actor, *seq);
            }
            if let Some(at) = counter.expiry() {
                self.expiries.remove(&(at, name.clone()));
            }
        }
        for registration in counter.registrations() {
            self.dropped
                .raise(&registration.origin, registration.last_seq());
            self.forget_key(registration.key.clone(), name.clone());
        }
    }
}
