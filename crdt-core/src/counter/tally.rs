//! The derived part of a counter, as pure functions of its state: what
//! removals and takeovers cover, the live sums, the excess of keyed
//! writes and which live amounts are writes. [`super::PnCounter`] caches
//! the results; [`tally`] is the one place they are computed from scratch.
use alloc::vec::Vec;

use crate::entry::WideSum;
use crate::keyed::{count_key, Registration};
use crate::lifecycle::{live_part, removed_through, Lifecycle};
use crate::{ActorId, Entry, IdempotencyKey};

/// Takeovers are followed this deep when an amount moved from survivor to
/// survivor (a hostile record could make a loop).
const MAX_FOLDS_FOLLOWED: usize = 8;

/// What a counter's removals and takeovers cover.
#[derive(Clone, Copy)]
pub(crate) struct Coverage<'a> {
    pub(crate) entries: &'a [(ActorId, Entry)],
    pub(crate) lifecycle: Option<&'a Lifecycle>,
}

impl<'a> Coverage<'a> {
    fn entry(&self, actor: &str) -> Option<&'a Entry> {
        (self
            .entries
            .binary_search_by(|(known, _)| known.as_str().cmp(actor))
            .ok())
        .map(|index| &self.entries[index].1)
    }

    /// Through which seq `actor`'s entry is covered: what removals saw of
    /// it, its earlier runs, and what a takeover moved out of it. Governs
    /// the live part of its entry.
    pub(crate) fn entry_covered_through(&self, actor: &str) -> u64 {
        let entry = self.entry(actor);
        let since = entry.map_or(0, |e| e.since);
        let baseline = self.lifecycle.and_then(|l| l.baseline_of(actor, since));
        removed_through(baseline.as_ref(), entry)
    }

    /// Whether `origin`'s operation at `seq` is removed: a removal saw it,
    /// or its run is over, or it was folded into a survivor whose fold a
    /// removal saw. (Unlike [`Self::entry_covered_through`], a fold alone
    /// removes nothing: the amount still counts, in the survivor's entry.)
    pub(crate) fn removes(&self, origin: &str, seq: u64) -> bool {
        self.removes_within(origin, seq, MAX_FOLDS_FOLLOWED)
    }

    fn removes_within(&self, origin: &str, seq: u64, depth: usize) -> bool {
        let since = self.entry(origin).map_or(0, |e| e.since);
        let lifecycle = self.lifecycle;
        let by_removal = (lifecycle.and_then(|l| l.removed_of(origin))).map_or(0, |r| r.seq);
        if seq <= by_removal.max(since.saturating_sub(1)) {
            return true;
        }
        match lifecycle.and_then(|l| l.takeover_of(origin)) {
            Some((into, fold)) if depth > 0 && folded(fold, seq) => {
                self.removes_within(into.as_str(), fold.at, depth - 1)
            }
            _ => false,
        }
    }

    /// Whose entry holds `origin`'s operation at `seq` now: the survivor
    /// that folded it, else the origin.
    pub(crate) fn holder(&self, origin: &'a ActorId, seq: u64) -> &'a ActorId {
        let mut holder = origin;
        let mut seq = seq;
        for _ in 0..MAX_FOLDS_FOLLOWED {
            match self.lifecycle.and_then(|l| l.takeover_of(holder.as_str())) {
                Some((into, fold)) if folded(fold, seq) => {
                    holder = into;
                    seq = fold.at;
                }
                _ => break,
            }
        }
        holder
    }

    /// [`Self::removes`] for a registration.
    pub(crate) fn removes_application(&self, registration: &Registration, seq: u64) -> bool {
        self.removes(registration.origin.as_str(), seq)
    }
}

/// True when `seq` of the departed actor lies in the part a takeover folded.
fn folded(fold: &crate::Takeover, seq: u64) -> bool {
    seq >= fold.base.since && seq <= fold.base.seq
}

/// A counter's derived sums, computed from scratch.
pub(crate) struct Tally {
    pub(crate) total_inc: WideSum,
    pub(crate) total_dec: WideSum,
    pub(crate) excess: i128,
    /// Per entry, how much of its live amount is writes.
    pub(crate) written: Vec<u128>,
    /// No key has a live amount that is not a write.
    pub(crate) keys_plain: bool,
}

impl Tally {
    /// True when something was written above the removals.
    pub(crate) fn any_written(&self) -> bool {
        self.written.iter().any(|&amount| amount > 0)
    }
}

/// The live sums, the excess of keyed writes and, per entry, its live
/// amount that is writes.
pub(crate) fn tally<'a>(
    entries: &[(ActorId, Entry)],
    registrations: impl Iterator<Item = (&'a IdempotencyKey, &'a Vec<Registration>)>,
    lifecycle: Option<&Lifecycle>,
) -> Tally {
    let (mut total_inc, mut total_dec) = (WideSum::default(), WideSum::default());
    let mut written: Vec<u128> = Vec::with_capacity(entries.len());
    for (actor, entry) in entries {
        let (inc, dec) = match lifecycle {
            Some(lifecycle) => live_with_takeovers(actor.as_str(), entry, lifecycle),
            None => (entry.inc, entry.dec),
        };
        total_inc.add(inc);
        total_dec.add(dec);
        written.push(inc.saturating_add(dec));
    }
    let coverage = Coverage { entries, lifecycle };
    let mut excess: i128 = 0;
    let mut keys_plain = true;
    for (_, same_key) in registrations {
        let count = count_key(same_key, |r, seq| coverage.removes_application(r, seq));
        excess = excess.saturating_add(count.excess);
        keys_plain &= count.not_writes.is_empty();
        for (registration, amount) in count.not_writes {
            let holder = coverage.holder(&registration.origin, registration.seq);
            if let Ok(index) = entries.binary_search_by(|(a, _)| a.cmp(holder)) {
                written[index] = written[index].saturating_sub(amount);
            }
        }
    }
    Tally {
        total_inc,
        total_dec,
        excess,
        written,
        keys_plain,
    }
}

/// The live part of `actor`'s `entry` under `lifecycle`: above what
/// removals saw of it and what a takeover moved out of it; for a survivor,
/// less what removals that missed its fold saw of the departed actor, and
/// less what a losing takeover folded in twice.
pub(crate) fn live_with_takeovers(
    actor: &str,
    entry: &Entry,
    lifecycle: &Lifecycle,
) -> (u128, u128) {
    let baseline = lifecycle.baseline_of(actor, entry.since);
    let (mut inc, mut dec) = live_part(entry, baseline.as_ref());
    let removed = lifecycle.removed_of(actor);
    for (from, takeover, wins) in lifecycle.takeovers_by(actor) {
        // The fold belongs to this run and this entry holds it.
        let holds_fold = takeover.at >= entry.since && entry.seq >= takeover.at;
        // A removal that saw this entry at or past the fold removed the
        // departed actor's part with it.
        let removal_saw_fold =
            removed.is_some_and(|r| r.since == entry.since && r.seq >= takeover.at);
        if !holds_fold || removal_saw_fold {
            continue;
        }
        let (less_inc, less_dec) = if wins {
            // What removals saw of the departed actor's folded run: all of
            // it when a removal saw a later run (the folded one was wholly
            // removed before that one began).
            match lifecycle.removed_of(from.as_str()) {
                Some(saw) if saw.since == takeover.base.since => (
                    saw.inc.min(takeover.base.inc),
                    saw.dec.min(takeover.base.dec),
                ),
                Some(saw) if saw.since > takeover.base.since => {
                    (takeover.base.inc, takeover.base.dec)
                }
                _ => (0, 0),
            }
        } else {
            (takeover.base.inc, takeover.base.dec)
        };
        inc = inc.saturating_sub(less_inc);
        dec = dec.saturating_sub(less_dec);
    }
    (inc, dec)
}
