//! [`CounterMap`]: many named counters, merged entry by entry, with the
//! indexes that make anti-entropy, keys, expiry and garbage cheap.
//!
//! The map's lattice state is its counters (see [`crate::PnCounter`]); the
//! rest is derived and rebuilt by merging (decoding re-merges):
//! - `digest`: the wrapping sum of every counter's contribution;
//! - `changes_by_actor`: per actor, `(seq, counter)` of its entries, so
//!   [`CounterMap::changes_since`] is O(changed entries);
//! - `keys`, `keys_open`: which counters hold which key, and the keys not
//!   yet folded (by when their last group closes);
//! - `expiries`, `removed`: where expiry and garbage are;
//! - `dropped`: per actor the highest seq of what housekeeping dropped, so
//!   seqs never go back and stale copies are recognised ([`CounterMap::merge_news`]).
use alloc::collections::{BTreeMap, BTreeSet};
use core::ops::Bound;

use crate::keyed::{IdempotencyKey, Registration};
use crate::lifecycle::Lifecycle;
use crate::{digest, ActorId, CounterName, CrdtError, Entry, PnCounter, Watermarks};

mod change;
mod garbage;
mod local;
#[cfg(feature = "serde")]
pub(crate) mod serde_impl;

use change::bundle;
pub use change::{Change, KeyedWrite, LinkedChange};

/// For each actor, the highest operation number a replica has *seen* — not
/// necessarily everything below it (see [`Watermarks`]).
pub type Summary = BTreeMap<ActorId, u64>;

/// Many named PN-Counters, merged entry by entry.
///
/// The same type serves as a full state and as a delta: a delta is just a
/// map holding only the entries that changed, and merges like any state.
#[derive(Debug, Clone, Default)]
pub struct CounterMap {
    counters: BTreeMap<CounterName, PnCounter>,
    digest: u64,
    /// actor → (seq → counter it last changed). (A set of pairs, not a map
    /// by seq: a damaged or hostile peer may send two counters with one
    /// seq, and neither may vanish from the index.)
    changes_by_actor: BTreeMap<ActorId, BTreeSet<(u64, CounterName)>>,
    /// Which counters hold registrations of which key, with the latest
    /// close of their groups ([`Registration::closes_at`]).
    keys: BTreeMap<(IdempotencyKey, CounterName), u64>,
    /// The keys [`Self::fold_keys`] has still to look at, by that close.
    keys_open: BTreeSet<(u64, IdempotencyKey, CounterName)>,
    /// Counters by the expiry in force.
    expiries: BTreeSet<(u64, CounterName)>,
    /// Counters that were removed at least once: where garbage is.
    removed: BTreeSet<CounterName>,
    /// Per actor, the highest seq housekeeping dropped (whole counters,
    /// entries, folded keys), so seqs never go back.
    dropped: Watermarks,
    entry_count: usize,
}

impl PartialEq for CounterMap {
    fn eq(&self, other: &Self) -> bool {
        self.counters == other.counters
    }
}
impl Eq for CounterMap {}

impl CounterMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no counter has any entry.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Number of `(counter, actor)` entries: the size of a full transfer.
    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    /// One counter.
    pub fn get(&self, name: &str) -> Option<&PnCounter> {
        self.counters.get(name)
    }

    /// One counter's value, `None` when it was never written or was
    /// deleted (its expiry is the caller's to check: [`PnCounter::expiry`]).
    pub fn value(&self, name: &str) -> Option<i128> {
        (self.counters.get(name))
            .filter(|counter| counter.is_visible())
            .map(PnCounter::value)
    }

    /// Counters in name order.
    pub fn counters(&self) -> impl Iterator<Item = (&CounterName, &PnCounter)> {
        self.counters.iter()
    }

    /// A page of the counters that read as present ([`PnCounter::is_visible`])
    /// whose names start with `prefix` and sort after `after`.
    pub fn page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a CounterName, &'a PnCounter)> + 'a {
        self.all_from(prefix, after)
            .filter(|(_, counter)| counter.is_visible())
    }

    /// Like [`Self::page`], deleted counters included (what a snapshot holds).
    pub fn all_from<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a CounterName, &'a PnCounter)> + 'a {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.counters
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(move |(name, _)| name.as_str().starts_with(prefix))
    }

    /// The 64-bit digest of the whole map; equal states have equal digests on every platform.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The highest operation number seen per actor.
    pub fn summary(&self) -> Summary {
        let mut summary: Summary = self
            .changes_by_actor
            .iter()
            .filter_map(|(actor, changes)| changes.last().map(|(seq, _)| (actor.clone(), *seq)))
            .collect();
        for (actor, seq) in self.dropped.iter() {
            let mine = summary.entry(actor.clone()).or_default();
            *mine = (*mine).max(seq);
        }
        summary
    }

    /// The highest operation number seen from one actor (0 when none).
    pub fn last_seq(&self, actor: &str) -> u64 {
        self.changes_by_actor
            .get(actor)
            .and_then(|changes| changes.last().map(|(seq, _)| *seq))
            .unwrap_or(0)
            .max(self.dropped.get(actor))
    }

    /// Raises the floor of every actor's seqs to `seen` (after a restart,
    /// the durable watermarks: what was dropped is gone, and the seqs it
    /// held must not be handed out again).
    pub fn raise_seq_floor(&mut self, seen: &Watermarks) {
        self.dropped.raise_all(seen);
    }

    /// The seq `actor`'s next operation is stamped with. (A seq at
    /// `u64::MAX` can only come from a damaged or hostile peer.)
    pub(crate) fn next_seq(&self, actor: &ActorId) -> Result<u64, CrdtError> {
        self.last_seq(actor.as_str())
            .checked_add(1)
            .ok_or(CrdtError::Overflow)
    }

    /// Entries changed above `known`, actor by actor in seq order: what a
    /// peer holding everything up to `known` lacks. O(result), whatever the
    /// number of counters.
    pub fn changes_since<'a>(&'a self, known: &'a Watermarks) -> impl Iterator<Item = Change> + 'a {
        self.changes_by_actor
            .iter()
            .flat_map(move |(actor, changes)| {
                let after = known.get(actor.as_str());
                changes
                    // (after + 1, "") sorts before every entry with a higher seq.
                    .range((after.saturating_add(1), CounterName::lowest())..)
                    .filter(move |(seq, _)| *seq > after)
                    .filter_map(move |(_, name)| {
                        let counter = self.counters.get(name)?;
                        Some(bundle(name, counter, actor, after))
                    })
            })
    }

    /// Every entry: the full state as changes.
    pub fn all_changes(&self) -> impl Iterator<Item = Change> + '_ {
        self.counters.iter().flat_map(|(name, counter)| {
            counter
                .entries()
                .map(move |(actor, _)| bundle(name, counter, actor, 0))
        })
    }

    /// Number of keys held (each with one or more registrations).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The shared copy of `name` if the map holds it (one allocation per
    /// name however many decoded copies arrive).
    fn interned(&self, name: &CounterName) -> CounterName {
        match self.counters.get_key_value(name.as_str()) {
            Some((known, _)) => known.clone(),
            None => name.clone(),
        }
    }

    fn index_key(&mut self, registration: &Registration, name: CounterName) {
        let pair = (registration.key.clone(), name);
        let closes = registration.closes_at();
        let latest = self.keys.get(&pair).copied();
        if let Some(at) = latest {
            self.keys_open.remove(&(at, pair.0.clone(), pair.1.clone()));
        }
        let latest = latest.map_or(closes, |at| at.max(closes));
        (self.keys_open).insert((latest, pair.0.clone(), pair.1.clone()));
        self.keys.insert(pair, latest);
    }

    fn forget_key(&mut self, key: IdempotencyKey, name: CounterName) {
        if let Some(latest) = self.keys.remove(&(key.clone(), name.clone())) {
            self.keys_open.remove(&(latest, key, name));
        }
    }

    /// Merges one registration into counter `name`; true when anything changed.
    pub fn merge_registration(&mut self, name: &CounterName, registration: &Registration) -> bool {
        let name = self.interned(name);
        let changed = self
            .counters
            .entry(name.clone())
            .or_default()
            .merge_registration(registration);
        if changed {
            self.index_key(registration, name);
        }
        changed
    }

    /// Merges one change: its registrations first, then its lifecycle,
    /// then its entry, so a reader never sees the entry's amount without
    /// what explains it. True when anything changed.
    pub fn merge_change(&mut self, change: &Change) -> bool {
        let mut changed = false;
        for registration in &change.registrations {
            // Only the actor's own registrations travel in its bundle.
            if registration.origin == change.actor {
                changed |= self.merge_registration(&change.name, registration);
            }
        }
        if let Some(lifecycle) = &change.lifecycle {
            changed |= self.merge_lifecycle(&change.name, lifecycle);
        }
        changed |= self
            .merge_entry(&change.name, &change.actor, change.entry)
            .is_some();
        changed
    }

    /// Merges a counter's lifecycle; true when anything changed.
    pub fn merge_lifecycle(&mut self, name: &CounterName, lifecycle: &Lifecycle) -> bool {
        if lifecycle.is_empty() {
            return false;
        }
        let name = self.interned(name);
        let counter = self.counters.entry(name.clone()).or_default();
        let expiry_before = counter.expiry();
        if !counter.merge_lifecycle(lifecycle) {
            return false;
        }
        let expiry_after = counter.expiry();
        if expiry_before != expiry_after {
            if let Some(at) = expiry_before {
                self.expiries.remove(&(at, name.clone()));
            }
            if let Some(at) = expiry_after {
                self.expiries.insert((at, name.clone()));
            }
        }
        if lifecycle.mark.is_some() || !lifecycle.takeovers.is_empty() {
            // Garbage collection drops what removals and takeovers left dead.
            self.removed.insert(name);
        }
        true
    }

    /// A map holding one entry.
    pub fn single(name: &CounterName, actor: &ActorId, entry: Entry) -> CounterMap {
        let mut delta = CounterMap::new();
        delta.merge_entry(name, actor, entry);
        delta
    }

    /// Merges one entry; returns the joined entry when anything changed.
    pub fn merge_entry(
        &mut self,
        name: &CounterName,
        actor: &ActorId,
        entry: Entry,
    ) -> Option<Entry> {
        // Share one allocation per actor id and per name across the map and
        // its index, however many decoded copies arrive from the wire.
        let actor = match self.changes_by_actor.get_key_value(actor.as_str()) {
            Some((known, _)) => known.clone(),
            None => actor.clone(),
        };
        let name = self.interned(name);
        let counter = self.counters.entry(name.clone()).or_default();
        let old_seq = counter.entry(actor.as_str()).map(|e| e.seq);
        let old_contribution = contribution(&name, counter);
        let joined = counter.merge_entry(&actor, entry);
        let Some(joined) = joined else {
            if counter.actors() == 0
                && !counter.has_registrations()
                && counter.lifecycle().is_none()
            {
                self.counters.remove(&name);
            }
            return None;
        };
        let new_contribution = digest::named_hash(name.as_str(), counter.digest());
        self.digest = self
            .digest
            .wrapping_sub(old_contribution)
            .wrapping_add(new_contribution);
        if old_seq.is_none() {
            self.entry_count += 1;
        }
        if old_seq != Some(joined.seq) {
            let changes = self.changes_by_actor.entry(actor.clone()).or_default();
            if let Some(old_seq) = old_seq {
                changes.remove(&(old_seq, name.clone()));
            }
            changes.insert((joined.seq, name.clone()));
        }
        Some(joined)
    }

    /// Merges another replica or delta; true when anything changed.
    pub fn merge(&mut self, other: &CounterMap) -> bool {
        let mut changed = false;
        for (name, counter) in other.counters() {
            changed |= self.merge_counter(
                name,
                counter.entries().map(|(a, e)| (a.clone(), *e)),
                counter.registrations(),
                counter.lifecycle(),
            );
        }
        changed
    }

    /// Merges one counter's parts: registrations and lifecycle before the
    /// entries they explain. True when anything changed.
    pub fn merge_counter<'a>(
        &mut self,
        name: &CounterName,
        entries: impl IntoIterator<Item = (ActorId, Entry)>,
        registrations: impl IntoIterator<Item = &'a Registration>,
        lifecycle: Option<&Lifecycle>,
    ) -> bool {
        let mut changed = false;
        for registration in registrations {
            changed |= self.merge_registration(name, registration);
        }
        if let Some(lifecycle) = lifecycle {
            changed |= self.merge_lifecycle(name, lifecycle);
        }
        for (actor, entry) in entries {
            changed |= self.merge_entry(name, &actor, entry).is_some();
        }
        changed
    }

    /// The seq of `actor`'s entry in counter `name` (0 when none).
    pub fn entry_seq(&self, name: &str, actor: &str) -> u64 {
        (self.counters.get(name))
            .and_then(|counter| counter.entry(actor))
            .map_or(0, |entry| entry.seq)
    }

    /// Merges eager changes in order, each only on top of the entry it
    /// follows ([`LinkedChange`]); returns the news, and whether some were
    /// skipped because an earlier change of theirs is missing here (a pull
    /// brings it, with everything after it).
    pub fn merge_linked(
        &mut self,
        linked: impl IntoIterator<Item = LinkedChange>,
        seen: &Watermarks,
    ) -> (CounterMap, bool) {
        let mut news = CounterMap::new();
        let mut skipped = false;
        for LinkedChange { prev_seq, change } in linked {
            let held = self.entry_seq(change.name.as_str(), change.actor.as_str());
            if held < prev_seq {
                skipped = true;
                continue;
            }
            news.merge(&self.merge_news([change], seen));
        }
        (news, skipped)
    }

    /// Merges changes and returns the ones that were news here, as a delta.
    pub fn merge_changed(&mut self, changes: impl IntoIterator<Item = Change>) -> CounterMap {
        self.merge_news(changes, &Watermarks::new())
    }

    /// [`Self::merge_changed`] for a replica that holds everything up to
    /// `seen`: what it does not hold of an actor at a seq `seen` covers was
    /// dropped here by housekeeping, and is skipped — an entry (its counter
    /// was collected: merging it would bring removed amounts back) or a
    /// registration (its key was folded: it would count its amount again).
    pub fn merge_news(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        seen: &Watermarks,
    ) -> CounterMap {
        let mut news = CounterMap::new();
        for change in changes {
            let held = (self.counters.get(&change.name))
                .is_some_and(|counter| counter.entry(change.actor.as_str()).is_some());
            let covered = |seq: u64| seq <= seen.get(change.actor.as_str());
            if !held && covered(change.entry.seq) {
                continue;
            }
            for registration in &change.registrations {
                if registration.origin != change.actor {
                    continue;
                }
                let holds_it = (self.counters.get(&change.name)).is_some_and(|counter| {
                    (counter.registrations_of(registration.key.as_str()).iter())
                        .any(|r| r.origin == registration.origin && r.seq == registration.seq)
                });
                if !holds_it && covered(registration.seq) {
                    continue;
                }
                if self.merge_registration(&change.name, registration) {
                    news.merge_registration(&change.name, registration);
                }
            }
            if let Some(lifecycle) = &change.lifecycle {
                if self.merge_lifecycle(&change.name, lifecycle) {
                    news.merge_lifecycle(&change.name, lifecycle);
                }
            }
            if let Some(joined) = self.merge_entry(&change.name, &change.actor, change.entry) {
                news.merge_entry(&change.name, &change.actor, joined);
            }
        }
        news
    }
}

/// What a counter adds to its map's digest (0 for a counter with no entries).
fn contribution(name: &CounterName, counter: &PnCounter) -> u64 {
    if counter.actors() == 0 {
        0
    } else {
        digest::named_hash(name.as_str(), counter.digest())
    }
}

impl FromIterator<Change> for CounterMap {
    fn from_iter<I: IntoIterator<Item = Change>>(changes: I) -> Self {
        let mut map = CounterMap::new();
        for change in changes {
            map.merge_change(&change);
        }
        map
    }
}

#[cfg(test)]
mod tests;
