//! Housekeeping on one counter: dropping what can no longer move a value.
//! Every step here reads the same before and after, on this replica and on
//! every replica it later merges with; the argument is beside each step.
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use super::PnCounter;
use crate::keyed::{groups, is_inert, Registration};
use crate::lifecycle::{Lifecycle, Takeover};
use crate::{digest, ActorId, Entry, IdempotencyKey};

impl PnCounter {
    /// Drops the key groups that are closed (headed before
    /// `closed_before_ms` by at least their window), held by every replica
    /// (`everywhere(origin, seq)` for each application) and inert
    /// ([`is_inert`]). The caller vouches that every registration stamped
    /// before `closed_before_ms` anywhere is held here, and that none will
    /// be stamped again: so no group can grow, no replica holds a part of
    /// one it could group otherwise, and dropping an inert one moves no
    /// value, now or after any later merge. Returns how many registrations
    /// went and the keys left with none.
    pub(crate) fn fold_keys(
        &mut self,
        only: Option<&IdempotencyKey>,
        closed_before_ms: u64,
        everywhere: impl Fn(&ActorId, u64) -> bool,
    ) -> (usize, Vec<IdempotencyKey>) {
        let coverage = self.coverage();
        let removes = |r: &Registration, seq| coverage.removes_application(r, seq);
        let mut folded: Vec<(IdempotencyKey, Vec<(ActorId, u64)>)> = Vec::new();
        let looked: Vec<(&IdempotencyKey, &Vec<Registration>)> = match only {
            Some(key) => self.registrations.get_key_value(key).into_iter().collect(),
            None => self.registrations.iter().collect(),
        };
        for (key, same_key) in looked {
            let going: Vec<(ActorId, u64)> = groups(same_key)
                .filter(|group| group[0].closes_at() <= closed_before_ms)
                .filter(|group| group.iter().all(|r| everywhere(&r.origin, r.last_seq())))
                .filter(|group| is_inert(group, removes))
                .flatten()
                .map(|r| (r.origin.clone(), r.seq))
                .collect();
            if !going.is_empty() {
                folded.push((key.clone(), going));
            }
        }
        let mut count = 0;
        let mut emptied = Vec::new();
        for (key, going) in folded {
            if let Some(same_key) = self.registrations.get_mut(&key) {
                let before = same_key.len();
                same_key.retain(|r| !going.iter().any(|(o, s)| *o == r.origin && *s == r.seq));
                count += before - same_key.len();
                if same_key.is_empty() {
                    self.registrations.remove(&key);
                    emptied.push(key);
                }
            }
        }
        if count > 0 {
            self.recount();
        }
        (count, emptied)
    }

    /// Drops what removals made dead weight, for a counter every live
    /// replica holds as it is here and whose keys are closed by
    /// `closed_before_ms` (the caller's check, see
    /// [`crate::CounterMap::drop_removed`]):
    /// 1. an entry whose live part holds no write is recorded as removed
    ///    (its live amounts are re-applications of removed keys, which the
    ///    excess takes back out: the value and presence stay);
    /// 2. inert key groups go ([`Self::fold_keys`]);
    /// 3. entries wholly removed go, unless their actor still has a
    ///    registration here (registrations travel only in their origin's
    ///    bundle: a replica that joins later must still receive them) or
    ///    the entry carries the latest reset to replicas that join later;
    /// 4. takeovers that explain nothing any more, what removals saw of
    ///    actors no longer named, and the lifecycle once it says nothing a
    ///    counter without one would not (a mark or an expiry, even spent,
    ///    keeps it: later joins are judged against them).
    ///
    /// Returns the dropped entries (with the actor) and the keys left with
    /// no registration, for the map's indexes.
    pub(crate) fn compact(
        &mut self,
        closed_before_ms: u64,
    ) -> (Vec<(ActorId, Entry)>, Vec<IdempotencyKey>) {
        // The caller checked that every replica holds all of it.
        let everywhere = |_: &ActorId, _: u64| true;
        if self.lifecycle.is_none() {
            let (_, keys) = self.fold_keys(None, closed_before_ms, everywhere);
            return (Vec::new(), keys);
        }
        self.record_inert_entries_as_removed();
        let (_, dead_keys) = self.fold_keys(None, closed_before_ms, everywhere);
        let Some(lifecycle) = self.lifecycle.as_deref() else {
            return (Vec::new(), dead_keys);
        };
        let named_by_keys = self.named_by_keys();
        // The latest remover's entry carries a reset to replicas that join later.
        let carrier = (lifecycle.mark.as_ref())
            .filter(|m| m.kind == crate::RemovalKind::Reset)
            .map(|m| m.actor.clone());
        let coverage = self.coverage();
        let dead_entries: Vec<(ActorId, Entry)> = (self.entries.iter())
            .filter(|(actor, entry)| {
                coverage.entry_covered_through(actor.as_str()) >= entry.seq
                    && Some(actor) != carrier.as_ref()
                    && !named_by_keys.contains(actor)
            })
            .cloned()
            .collect();
        for (actor, entry) in &dead_entries {
            if let Ok(index) = self.position(actor.as_str()) {
                self.entries.remove(index);
                self.digest = self
                    .digest
                    .wrapping_sub(digest::entry_hash(actor.as_str(), entry));
            }
        }
        let mut lifecycle = self.lifecycle.take().unwrap_or_default();
        lifecycle.takeovers = still_needed(&lifecycle, &self.entries);
        let still_named: BTreeSet<ActorId> = (self.named_by_keys().into_iter())
            .chain(self.entries.iter().map(|(actor, _)| actor.clone()))
            .chain(
                lifecycle
                    .takeovers
                    .iter()
                    .map(|((from, _), _)| from.clone()),
            )
            .collect();
        (lifecycle.removed).retain(|(actor, _)| still_named.contains(actor));
        self.recount();
        // A mark or an expiry (spent or not) stamped at or after
        // `closed_before_ms` stays: a removal or a ttl stamped later may
        // still compare below it on some clock, and a replica that dropped
        // it would then read otherwise than one that did not. One stamped
        // before it compares below everything stamped from now on.
        let recent = |at_ms: u64| at_ms >= closed_before_ms;
        let mark_matters = (lifecycle.mark.as_ref()).is_some_and(|m| recent(m.at_ms));
        let expiry_matters = recent(lifecycle.expires_at_ms) || recent(lifecycle.spent_expiry_ms);
        let says_something = !lifecycle.removed.is_empty()
            || !lifecycle.takeovers.is_empty()
            || lifecycle.is_reset()
            || lifecycle.expiry().is_some()
            || mark_matters
            || expiry_matters
            || (!self.written && !self.entries.is_empty());
        if says_something {
            // Every live replica holds it: the stamps that route it to
            // peers lagging behind have nobody left to route it to.
            lifecycle.stamps.clear();
            if lifecycle.expiry().is_none() && !expiry_matters {
                // A spent expiry says nothing either, once old enough.
                (lifecycle.expires_at_ms, lifecycle.spent_expiry_ms) = (0, 0);
            }
            self.lifecycle = Some(lifecycle);
        }
        self.recount();
        (dead_entries, dead_keys)
    }

    /// Whether `key` has an inert group left (one that folds once every
    /// replica holds it).
    pub(crate) fn has_inert_group(&self, key: &IdempotencyKey) -> bool {
        let coverage = self.coverage();
        let removes = |r: &Registration, seq| coverage.removes_application(r, seq);
        groups(self.registrations_of(key.as_str())).any(|group| is_inert(group, removes))
    }

    /// Actors a registration needs: its origin, and the survivors whose
    /// entries hold its amount now ([`super::tally::Coverage::holder`]).
    /// Their entries, and what removals saw of them, stay while it does.
    fn named_by_keys(&self) -> BTreeSet<ActorId> {
        let coverage = self.coverage();
        let mut named = BTreeSet::new();
        for registration in self.registrations() {
            named.insert(registration.origin.clone());
            named.insert(
                coverage
                    .holder(&registration.origin, registration.seq)
                    .clone(),
            );
        }
        named
    }

    /// Step 1 of [`Self::compact`]: an entry whose live part holds no write
    /// adds nothing and never will; recorded as removed, it stops differing
    /// from replicas that dropped the counter whole. A departed actor's
    /// entry a takeover moved is dead by the takeover, not by a removal:
    /// recording it as removed would take its amount back out of the survivor.
    fn record_inert_entries_as_removed(&mut self) {
        let tally = self.tally();
        let lifecycle = self.lifecycle.as_deref();
        let taken_over =
            |actor: &ActorId| lifecycle.is_some_and(|l| l.takeover_of(actor.as_str()).is_some());
        let inert: Vec<(ActorId, Entry)> = (self.entries.iter().enumerate())
            .filter(|(index, (actor, _))| tally.written[*index] == 0 && !taken_over(actor))
            .map(|(_, (actor, entry))| (actor.clone(), *entry))
            .collect();
        if inert.is_empty() {
            return;
        }
        let seen = Lifecycle {
            removed: inert,
            ..Lifecycle::default()
        };
        if let Some(lifecycle) = self.lifecycle.as_mut() {
            lifecycle.join(&seen);
        }
        self.recount();
    }
}

/// The takeovers a counter with these (compacted) entries still needs:
/// a survivor's translation of what removals saw of the departed actor, a
/// losing takeover's give-back, and the winner of an actor while a loser
/// or the departed actor's entry remains. The rest say nothing any more
/// (the departed actor's entry is gone, and its stale copies are kept
/// out by the map's seq floor).
fn still_needed(
    lifecycle: &Lifecycle,
    entries: &[(ActorId, Entry)],
) -> Vec<((ActorId, ActorId), Takeover)> {
    let entry = |actor: &ActorId| {
        (entries.binary_search_by(|(known, _)| known.cmp(actor)).ok())
            .map(|index| &entries[index].1)
    };
    let active = |from: &ActorId, into: &ActorId, takeover: &Takeover, wins: bool| {
        let Some(survivor) = entry(into) else {
            return false;
        };
        let holds_fold = takeover.at >= survivor.since && survivor.seq >= takeover.at;
        let removal_saw_fold = (lifecycle.removed_of(into.as_str()))
            .is_some_and(|r| r.since == survivor.since && r.seq >= takeover.at);
        let gives_something = !wins
            || (lifecycle.removed_of(from.as_str()))
                .is_some_and(|r| r.since >= takeover.base.since);
        holds_fold && !removal_saw_fold && gives_something
    };
    let wins = |from: &ActorId, into: &ActorId| {
        lifecycle
            .takeover_of(from.as_str())
            .is_some_and(|(winner, _)| winner == into)
    };
    let losers: Vec<_> = (lifecycle.takeovers.iter())
        .filter(|((from, into), _)| !wins(from, into))
        .filter(|((from, into), takeover)| active(from, into, takeover, false))
        .cloned()
        .collect();
    let winners = (lifecycle.takeovers.iter())
        .filter(|((from, into), _)| wins(from, into))
        .filter(|((from, into), takeover)| {
            active(from, into, takeover, true)
                || entry(from).is_some()
                || losers.iter().any(|((lost, _), _)| lost == from)
        })
        .cloned();
    let mut kept: Vec<_> = losers.iter().cloned().chain(winners).collect();
    kept.sort();
    kept
}
