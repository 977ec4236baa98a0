//! A PN-Counter with removals and keyed writes: its state, its join, and
//! the sums cached beside it.
//!
//! State (the lattice): per actor an [`Entry`] (joined by later run, then
//! per-field maximum), per key its [`Registration`]s (a set of
//! applications, joined per `(origin, seq)`), and once it was removed,
//! expired or taken over, its [`Lifecycle`] (joined part by part).
//!
//! Cached (derived, never merged):
//! - `digest`: the wrapping sum of the entries' hashes, moved on every
//!   entry change (entries are its only input).
//! - `total_inc`, `total_dec`, `excess`, `written`: [`tally::tally`] of the
//!   state. Two changes keep them up to date without a recount, each
//!   argued where it is made: an entry growing within its run while the
//!   counter has no lifecycle ([`PnCounter::merge_entry`]), and a
//!   registration of a key that no removal counted, without a lifecycle
//!   ([`PnCounter::merge_registration`]). Every other change (a new run, a
//!   lifecycle, compaction, a folded key, decoding, which merges) recounts.
//!   [`PnCounter::cache_is_fresh`] checks the cache against a recount; the
//!   property tests call it after every step.
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::entry::WideSum;
use crate::keyed::{count_key, join_into, IdempotencyKey, Registration};
use crate::lifecycle::Lifecycle;
use crate::{digest, ActorId, Entry};

mod compact;
mod local;
pub(crate) mod tally;

use tally::{tally, Coverage, Tally};

/// A PN-Counter: per-actor increment and decrement totals, the
/// registrations of keyed writes (see [`crate::keyed`]) and, once it was
/// removed or given an expiry, its [`Lifecycle`].
///
/// `value()` is O(1): the sums, the excess of duplicate keyed writes and the
/// digest are kept beside the state.
#[derive(Debug, Clone)]
pub struct PnCounter {
    /// Sorted by actor. A counter has few actors (nodes × incarnations), and
    /// a sorted vector costs ~40 bytes per entry where a B-tree node costs
    /// ~450: it matters with a million counters.
    entries: Vec<(ActorId, Entry)>,
    /// Per key, its registrations in `(at_ms, origin, seq)` order; empty
    /// unless keyed writes were made. A B-tree: a hot counter can hold a
    /// day of keys.
    registrations: BTreeMap<IdempotencyKey, Vec<Registration>>,
    /// Removals, expiry and takeovers; boxed, as most counters never have one.
    lifecycle: Option<Box<Lifecycle>>,
    /// Σinc and Σdec of the live parts (above what removals saw), exact.
    total_inc: WideSum,
    total_dec: WideSum,
    /// Σ over the keys of what their applications add beyond counting each
    /// logical write once (or not at all once removed).
    excess: i128,
    /// Whether some live amount is a write (not the re-application of a
    /// removed key): with a reset, what makes the counter read as present.
    written: bool,
    /// Whether every live amount of a keyed application is a write (no
    /// removal counted any key held, no legacy cancellation).
    keys_plain: bool,
    /// Over the entries only (see [`PnCounter::digest`]).
    digest: u64,
}

impl Default for PnCounter {
    fn default() -> Self {
        PnCounter {
            entries: Vec::new(),
            registrations: BTreeMap::new(),
            lifecycle: None,
            total_inc: WideSum::default(),
            total_dec: WideSum::default(),
            excess: 0,
            written: false,
            keys_plain: true,
            digest: 0,
        }
    }
}

impl PartialEq for PnCounter {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
            && self.registrations == other.registrations
            && self.lifecycle == other.lifecycle
    }
}
impl Eq for PnCounter {}

impl PnCounter {
    /// An empty counter (value 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// `Σinc − Σdec` over the live parts, less the excess of keyed writes;
    /// exact whenever it fits in `i128`, else clamped to its range. Only
    /// merged entries from a damaged or hostile peer can take it beyond
    /// `i128`; saturating keeps the sign right and the read a pure
    /// function of the state.
    pub fn value(&self) -> i128 {
        self.total_inc
            .minus(self.total_dec)
            .saturating_sub(self.excess)
    }

    /// True when the counter reads as present: something was written above
    /// its removals, or its latest removal was a reset. (Expiry is the
    /// caller's to check against its clock: [`Self::expiry`].)
    pub fn is_visible(&self) -> bool {
        self.written || self.lifecycle.as_ref().is_some_and(|l| l.is_reset())
    }

    /// The expiry in force (ms since the Unix epoch), if any.
    pub fn expiry(&self) -> Option<u64> {
        self.lifecycle.as_ref().and_then(|l| l.expiry())
    }

    /// Removals and expiry, if it ever had any.
    pub fn lifecycle(&self) -> Option<&Lifecycle> {
        self.lifecycle.as_deref()
    }

    /// The 64-bit digest of this counter's entries. Entries are the only
    /// input: registrations and lifecycle changes travel in their actor's
    /// bundle with the entry change that stamps them, so replicas with
    /// equal entries hold equal registrations and lifecycles, up to
    /// housekeeping that moves no value.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    fn position(&self, actor: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(known, _)| known.as_str().cmp(actor))
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

    /// Number of actors with an entry.
    pub fn actors(&self) -> usize {
        self.entries.len()
    }

    /// Every registration of a keyed write, by key, then `(at_ms, origin, seq)`.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values().flatten()
    }

    /// Keys with their registrations.
    pub fn keys(&self) -> impl Iterator<Item = (&IdempotencyKey, &[Registration])> {
        (self.registrations.iter()).map(|(key, same)| (key, same.as_slice()))
    }

    /// True when the counter holds a registration.
    pub fn has_registrations(&self) -> bool {
        !self.registrations.is_empty()
    }

    /// The registrations of one key (by every origin that applied it).
    pub fn registrations_of(&self, key: &str) -> &[Registration] {
        self.registrations.get(key).map_or(&[], Vec::as_slice)
    }

    /// What removals and takeovers cover here.
    fn coverage(&self) -> Coverage<'_> {
        Coverage {
            entries: &self.entries,
            lifecycle: self.lifecycle.as_deref(),
        }
    }

    /// Through which seq of `actor` its entry is covered (removed, an
    /// earlier run, or folded into a survivor).
    pub fn removed_through(&self, actor: &str) -> u64 {
        self.coverage().entry_covered_through(actor)
    }

    /// What the registrations of `key` add to the live totals beyond
    /// counting each logical write once (0 when they count exactly so).
    pub fn key_excess(&self, key: &str) -> i128 {
        let coverage = self.coverage();
        count_key(self.registrations_of(key), |r, seq| {
            coverage.removes_application(r, seq)
        })
        .excess
    }

    /// A recount of the cached sums.
    fn tally(&self) -> Tally {
        tally(
            &self.entries,
            self.registrations.iter(),
            self.lifecycle.as_deref(),
        )
    }

    /// Replaces the cached sums with a recount.
    fn recount(&mut self) {
        let tally = self.tally();
        self.total_inc = tally.total_inc;
        self.total_dec = tally.total_dec;
        self.excess = tally.excess;
        self.written = tally.any_written();
        self.keys_plain = tally.keys_plain;
    }

    /// True when every cached field equals a recount from the state: the
    /// invariant the property tests check after every step.
    #[doc(hidden)]
    pub fn cache_is_fresh(&self) -> bool {
        let tally = self.tally();
        let digest = (self.entries.iter()).fold(0u64, |sum, (actor, entry)| {
            sum.wrapping_add(digest::entry_hash(actor.as_str(), entry))
        });
        self.total_inc == tally.total_inc
            && self.total_dec == tally.total_dec
            && self.excess == tally.excess
            && self.written == tally.any_written()
            && self.keys_plain == tally.keys_plain
            && self.digest == digest
    }

    /// Merges a lifecycle change; true when anything changed. A lifecycle
    /// that says nothing ([`Lifecycle::is_empty`]) is never joined, so a
    /// counter holds one only once something was removed, expired or taken over.
    pub fn merge_lifecycle(&mut self, incoming: &Lifecycle) -> bool {
        if incoming.is_empty() {
            return false;
        }
        let lifecycle = self.lifecycle.get_or_insert_with(Default::default);
        if !lifecycle.join(incoming) {
            return false;
        }
        for (actor, entry) in &self.entries {
            lifecycle.forget_older_runs(actor.as_str(), entry.since);
        }
        self.recount();
        true
    }

    /// Merges one registration; true when anything changed.
    pub fn merge_registration(&mut self, incoming: &Registration) -> bool {
        let coverage = Coverage {
            entries: &self.entries,
            lifecycle: self.lifecycle.as_deref(),
        };
        let same_key = self.registrations.entry(incoming.key.clone()).or_default();
        let removes = |r: &Registration, seq| coverage.removes_application(r, seq);
        let before = count_key(same_key, removes);
        let before_excess = before.excess;
        let before_plain = before.not_writes.is_empty();
        if !join_into(same_key, incoming) {
            return false;
        }
        let after = count_key(same_key, removes);
        // Without a lifecycle, a registration changes no coverage; while no
        // removal counted this key, every live amount stays a write, so only
        // this key's excess moves.
        if self.lifecycle.is_none() && before_plain && after.not_writes.is_empty() {
            self.excess = (self.excess)
                .saturating_sub(before_excess)
                .saturating_add(after.excess);
        } else {
            self.recount();
        }
        true
    }

    /// Merges one actor's entry; returns the joined entry when anything changed.
    pub fn merge_entry(&mut self, actor: &ActorId, incoming: Entry) -> Option<Entry> {
        let position = self.position(actor.as_str());
        let old = position
            .ok()
            .map(|index| self.entries[index].1)
            .unwrap_or_default();
        let joined = old.join(incoming);
        if joined == old && position.is_ok() {
            return None;
        }
        if joined == Entry::default() {
            return None;
        }
        match position {
            Ok(index) => self.entries[index].1 = joined,
            Err(index) => self.entries.insert(index, (actor.clone(), joined)),
        }
        if position.is_ok() {
            self.digest = self
                .digest
                .wrapping_sub(digest::entry_hash(actor.as_str(), &old));
        }
        self.digest = self
            .digest
            .wrapping_add(digest::entry_hash(actor.as_str(), &joined));
        // Without a lifecycle, an entry that grows within its run (or a new
        // one beside no registration) changes no coverage: its live part is
        // the entry. While no key's application is a re-application of a
        // removed one, whatever it grew by is a write.
        let same_run = position.is_ok() && old.since == joined.since;
        let lone_new = position.is_err() && !self.has_registrations();
        if self.lifecycle.is_none() && self.keys_plain && (same_run || lone_new) {
            self.total_inc.add(joined.inc - old.inc);
            self.total_dec.add(joined.dec - old.dec);
            self.written |= joined.volume() > old.volume();
        } else {
            if let Some(lifecycle) = self.lifecycle.as_mut() {
                lifecycle.forget_older_runs(actor.as_str(), joined.since);
            }
            self.recount();
        }
        Some(joined)
    }

    /// Merges another replica (or a delta) into this one; true when anything changed.
    pub fn merge(&mut self, other: &PnCounter) -> bool {
        let mut changed = false;
        if let Some(lifecycle) = other.lifecycle() {
            changed |= self.merge_lifecycle(lifecycle);
        }
        for registration in other.registrations() {
            changed |= self.merge_registration(registration);
        }
        for (actor, entry) in other.entries() {
            changed |= self.merge_entry(actor, *entry).is_some();
        }
        changed
    }
}

#[cfg(test)]
mod tests;
