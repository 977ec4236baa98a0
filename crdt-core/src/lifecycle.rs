//! Counter lifecycle: delete, reset and expiry, as lattice state.
//!
//! A counter's entries are per-actor *running totals*, so removing a
//! counter cannot lower them (merge is a per-actor maximum: a lowered total
//! would be raised again by the next merge). A removal is recorded instead:
//!
//! - **Observed-remove.** A delete or reset keeps, per actor, the entry the
//!   remover *saw* ([`Lifecycle::removed`], joined per actor). The value
//!   counts only what lies above it, so what the remover had seen is gone
//!   on every replica, and an increment it had not seen (concurrent, or on
//!   the other side of a partition) survives.
//! - **Runs.** An actor whose entry is wholly removed starts its next write
//!   from zero: a new *run* ([`crate::Entry::since`] = that write's seq).
//!   The join prefers the later run, so a removed run can never come back
//!   through a stale copy, and once every replica holds the removal, the
//!   counter (entries, keys and removal together) can be dropped: a later
//!   write starts a new run that owes nothing to the dropped one.
//! - **Delete or reset.** The latest removal by `(at_ms, actor)` says
//!   which ([`Mark`]): after a delete the counter reads as absent until
//!   something is written above the baseline; after a reset it reads 0.
//! - **Expiry.** `expires_at_ms` merges by maximum (the latest expiry wins,
//!   as in Redis Active-Active). A node that finds a counter past its expiry
//!   deletes it like a client would; the removal records the expiry it spent
//!   ([`Lifecycle::spent_expiry_ms`]), so a write after it starts a counter
//!   without one.
//! - **Stamps.** Every lifecycle change is an operation of its actor (seq
//!   bumped in its entry), and [`Lifecycle::stamps`] remembers the latest per
//!   actor, so anti-entropy ships the lifecycle with that actor's bundle.
//!
//! - **Takeovers.** A survivor `S` folds a departed actor `R` into its own
//!   entry ([`Takeover`]): `S`'s entry gains `R`'s totals (`base`) in a
//!   change that carries the takeover, so no replica sees the grown entry
//!   without it. `R`'s entry counts only above `base` from then on; a
//!   removal that saw `R` but not the fold (what it saw of `S` is older than
//!   the fold) takes what it saw of `R` out of `S`; of two survivors of one
//!   `R`, the least wins and the other gives `base` back.
//!
//! Everything here is a join of per-part joins (per-actor maximum, maximum,
//! maximum by a total order), so merge stays commutative, associative and
//! idempotent.
use alloc::vec::Vec;

use crate::{ActorId, Entry};

/// What a removal leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RemovalKind {
    /// The counter reads as absent (404) until written again.
    Delete,
    /// The counter reads 0.
    Reset,
}

/// The latest removal: which kind, by whom, when.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Mark {
    /// The remover's wall clock (ms since the Unix epoch).
    pub at_ms: u64,
    /// The remover.
    pub actor: ActorId,
    /// Delete or reset.
    pub kind: RemovalKind,
}

/// Survivor `into` took over departed actor `from`'s entry `base` at its
/// own seq `at`: its entry from `at` on (in the run `at` belongs to)
/// includes `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Takeover {
    /// The survivor's seq of the fold.
    pub at: u64,
    /// The departed actor's entry it folded in.
    pub base: Entry,
}

/// A counter's removals and expiry. Absent from counters that never had one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Lifecycle {
    /// Per actor (sorted), the entry removals saw: only what lies above it counts.
    pub removed: Vec<(ActorId, Entry)>,
    /// Per actor (sorted), its latest seq that changed this lifecycle.
    pub stamps: Vec<(ActorId, u64)>,
    /// The latest removal, by `(at_ms, actor, kind)`.
    pub mark: Option<Mark>,
    /// When the counter expires (ms since the Unix epoch), 0 for never.
    pub expires_at_ms: u64,
    /// The latest expiry a removal acted on: expiries up to it are spent.
    pub spent_expiry_ms: u64,
    /// Per `(from, into)` (sorted), the takeover of `from` by `into`.
    pub takeovers: Vec<((ActorId, ActorId), Takeover)>,
}

impl Lifecycle {
    /// Merges `other` in; true when anything changed.
    pub fn join(&mut self, other: &Lifecycle) -> bool {
        let mut changed = false;
        for (actor, entry) in &other.removed {
            changed |= join_sorted(&mut self.removed, actor, *entry, Entry::join);
        }
        for (actor, seq) in &other.stamps {
            changed |= join_sorted(&mut self.stamps, actor, *seq, u64::max);
        }
        if other.mark > self.mark {
            self.mark = other.mark.clone();
            changed = true;
        }
        changed |= raise(&mut self.expires_at_ms, other.expires_at_ms);
        changed |= raise(&mut self.spent_expiry_ms, other.spent_expiry_ms);
        for (pair, takeover) in &other.takeovers {
            changed |= join_takeover(&mut self.takeovers, pair, *takeover);
        }
        changed
    }

    /// The takeover of `from` that counts: the one by the least survivor.
    pub fn takeover_of(&self, from: &str) -> Option<(&ActorId, &Takeover)> {
        (self.takeovers.iter())
            .find(|((known, _), _)| known.as_str() == from)
            .map(|((_, into), takeover)| (into, takeover))
    }

    /// The takeovers by `into`, each with its departed actor and whether it
    /// is the one that counts for that actor.
    pub fn takeovers_by<'a>(
        &'a self,
        into: &'a str,
    ) -> impl Iterator<Item = (&'a ActorId, &'a Takeover, bool)> + 'a {
        (self.takeovers.iter())
            .filter(move |((_, survivor), _)| survivor.as_str() == into)
            .map(|((from, survivor), takeover)| {
                let wins = self
                    .takeover_of(from.as_str())
                    .is_some_and(|(winner, _)| winner == survivor);
                (from, takeover, wins)
            })
    }

    /// What removals saw of `actor`'s run `since`, joined with what a
    /// takeover moved out of it (counted by the survivor now).
    pub fn baseline_of(&self, actor: &str, since: u64) -> Option<Entry> {
        let removed = self.removed_of(actor).copied();
        let moved = (self.takeover_of(actor))
            .map(|(_, takeover)| takeover.base)
            .filter(|base| base.since == since);
        match (removed, moved) {
            (Some(removed), Some(moved)) => Some(removed.join(moved)),
            (removed, moved) => removed.or(moved),
        }
    }

    /// The entry removals saw of `actor`.
    pub fn removed_of(&self, actor: &str) -> Option<&Entry> {
        find(&self.removed, actor)
    }

    /// `actor`'s latest seq that changed this lifecycle (0 for none).
    pub fn stamp_of(&self, actor: &str) -> u64 {
        find(&self.stamps, actor).copied().unwrap_or(0)
    }

    /// Whether the lifecycle goes with `actor`'s bundle for a peer holding
    /// its changes up to `after`: when the actor changed it since, when the
    /// peer holds nothing of the actor yet (a replica that joins later), or
    /// when it speaks of the actor's entry (what removals saw of it, or the
    /// latest removal was its), so no replica ever gets an entry without
    /// the removal that covers it, whatever was collected meanwhile.
    pub fn travels_with(&self, actor: &str, after: u64) -> bool {
        after == 0
            || self.stamp_of(actor) > after
            || self.removed_of(actor).is_some()
            || (self.takeovers.iter())
                .any(|((from, into), _)| from.as_str() == actor || into.as_str() == actor)
            || self
                .mark
                .as_ref()
                .is_some_and(|m| m.actor.as_str() == actor)
    }

    /// The expiry still in force (not spent by a removal), if any.
    pub fn expiry(&self) -> Option<u64> {
        (self.expires_at_ms > self.spent_expiry_ms).then_some(self.expires_at_ms)
    }

    /// True when the latest removal was a reset (the counter reads 0, not absent).
    pub fn is_reset(&self) -> bool {
        self.mark
            .as_ref()
            .is_some_and(|m| m.kind == RemovalKind::Reset)
    }

    /// True when it says nothing a reader or a later merge could see: no
    /// removal, no expiry (in force or spent), no takeover. Such a
    /// lifecycle is never joined into a counter (its stamps route nothing).
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.mark.is_none()
            && self.expires_at_ms == 0
            && self.spent_expiry_ms == 0
            && self.takeovers.is_empty()
    }

    /// Forgets what removals saw of a run `actor` has left behind: an entry
    /// of a later run supersedes it everywhere. Local housekeeping; never
    /// changes a value.
    pub(crate) fn forget_older_runs(&mut self, actor: &str, since: u64) {
        self.removed
            .retain(|(known, removed)| known.as_str() != actor || removed.since >= since);
    }
}

/// Through which of `actor`'s seqs everything it did to a counter is
/// removed: what removals saw of it, and every run before the one its
/// `entry` belongs to (an actor starts a run only once its previous one
/// was wholly removed).
pub fn removed_through(removed: Option<&Entry>, entry: Option<&Entry>) -> u64 {
    let by_removal = removed.map_or(0, |r| r.seq);
    let by_run = entry.map_or(0, |e| e.since.saturating_sub(1));
    by_removal.max(by_run)
}

/// The part of `entry` above what removals saw of it: `(inc, dec)`.
pub fn live_part(entry: &Entry, removed: Option<&Entry>) -> (u128, u128) {
    match removed {
        Some(r) if r.since == entry.since => (
            entry.inc.saturating_sub(r.inc),
            entry.dec.saturating_sub(r.dec),
        ),
        // A removal saw a later run: this one was wholly removed before it began.
        Some(r) if r.since > entry.since => (0, 0),
        _ => (entry.inc, entry.dec),
    }
}

fn raise(mine: &mut u64, other: u64) -> bool {
    if other > *mine {
        *mine = other;
        true
    } else {
        false
    }
}

fn find<'a, T>(pairs: &'a [(ActorId, T)], actor: &str) -> Option<&'a T> {
    pairs
        .binary_search_by(|(known, _)| known.as_str().cmp(actor))
        .ok()
        .map(|index| &pairs[index].1)
}

/// Joins a takeover into the sorted list: one per `(from, into)`, the
/// greater on a clash (a survivor folds a departed actor once; a clash is
/// only a hostile peer's, and any fixed choice keeps the join a join).
fn join_takeover(
    takeovers: &mut Vec<((ActorId, ActorId), Takeover)>,
    pair: &(ActorId, ActorId),
    takeover: Takeover,
) -> bool {
    match takeovers.binary_search_by(|(known, _)| known.cmp(pair)) {
        Ok(index) if takeovers[index].1 >= takeover => false,
        Ok(index) => {
            takeovers[index].1 = takeover;
            true
        }
        Err(index) => {
            takeovers.insert(index, (pair.clone(), takeover));
            true
        }
    }
}

/// Joins `value` into `actor`'s place in the sorted `pairs`; true when anything changed.
fn join_sorted<T: Copy + PartialEq>(
    pairs: &mut Vec<(ActorId, T)>,
    actor: &ActorId,
    value: T,
    join: impl Fn(T, T) -> T,
) -> bool {
    match pairs.binary_search_by(|(known, _)| known.cmp(actor)) {
        Ok(index) => {
            let joined = join(pairs[index].1, value);
            let changed = joined != pairs[index].1;
            pairs[index].1 = joined;
            changed
        }
        Err(index) => {
            pairs.insert(index, (actor.clone(), value));
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: &str) -> ActorId {
        ActorId::new(id).unwrap()
    }

    fn entry(since: u64, inc: u128, seq: u64) -> Entry {
        Entry {
            inc,
            dec: 0,
            seq,
            since,
        }
    }

    #[test]
    fn only_what_lies_above_the_removal_counts() {
        let removed = entry(1, 8, 4);
        assert_eq!(live_part(&entry(1, 10, 6), Some(&removed)), (2, 0));
        assert_eq!(live_part(&entry(1, 8, 4), Some(&removed)), (0, 0));
        assert_eq!(
            live_part(&entry(7, 3, 7), Some(&removed)),
            (3, 0),
            "a later run owes nothing to the removal"
        );
        assert_eq!(
            live_part(&entry(1, 8, 4), Some(&entry(7, 3, 9))),
            (0, 0),
            "a removal of a later run removed every earlier one"
        );
        assert_eq!(live_part(&entry(1, 8, 4), None), (8, 0));
    }

    #[test]
    fn removed_through_covers_removals_and_earlier_runs() {
        assert_eq!(removed_through(None, None), 0);
        assert_eq!(removed_through(Some(&entry(1, 8, 4)), None), 4);
        assert_eq!(removed_through(None, Some(&entry(7, 3, 9))), 6);
        assert_eq!(
            removed_through(Some(&entry(1, 8, 4)), Some(&entry(7, 3, 9))),
            6
        );
    }

    #[test]
    fn the_least_survivor_wins_and_a_takeover_moves_its_base_out_of_the_departed_run() {
        let base = entry(1, 8, 4);
        let takeover = |into: &str, at: u64| ((actor("gone"), actor(into)), Takeover { at, base });
        let mut lifecycle = Lifecycle {
            takeovers: alloc::vec![takeover("n2", 9)],
            ..Lifecycle::default()
        };
        let other = Lifecycle {
            takeovers: alloc::vec![takeover("n1", 7)],
            ..Lifecycle::default()
        };
        assert!(lifecycle.join(&other));
        assert!(!lifecycle.join(&other), "idempotent");
        let (winner, _) = lifecycle.takeover_of("gone").unwrap();
        assert_eq!(winner.as_str(), "n1");
        let wins: Vec<bool> = lifecycle
            .takeovers_by("n2")
            .map(|(_, _, wins)| wins)
            .collect();
        assert_eq!(wins, [false]);
        assert_eq!(lifecycle.baseline_of("gone", 1), Some(base));
        assert_eq!(
            lifecycle.baseline_of("gone", 5),
            None,
            "another run owes it nothing"
        );
        assert!(lifecycle.travels_with("n2", 100) && lifecycle.travels_with("gone", 100));
    }

    #[test]
    fn join_is_commutative_associative_and_idempotent() {
        let a = Lifecycle {
            removed: alloc::vec![(actor("n1"), entry(1, 5, 5))],
            stamps: alloc::vec![(actor("n1"), 6)],
            mark: Some(Mark {
                at_ms: 10,
                actor: actor("n1"),
                kind: RemovalKind::Delete,
            }),
            expires_at_ms: 0,
            spent_expiry_ms: 0,
            takeovers: Vec::new(),
        };
        let b = Lifecycle {
            removed: alloc::vec![(actor("n1"), entry(1, 7, 7)), (actor("n2"), entry(2, 1, 2))],
            stamps: alloc::vec![(actor("n2"), 3)],
            mark: Some(Mark {
                at_ms: 10,
                actor: actor("n2"),
                kind: RemovalKind::Reset,
            }),
            expires_at_ms: 99,
            spent_expiry_ms: 0,
            takeovers: Vec::new(),
        };
        let c = Lifecycle {
            expires_at_ms: 50,
            spent_expiry_ms: 99,
            ..Lifecycle::default()
        };
        let joined = |x: &Lifecycle, y: &Lifecycle| {
            let mut out = x.clone();
            out.join(y);
            out
        };
        assert_eq!(joined(&a, &b), joined(&b, &a));
        assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        let ab = joined(&a, &b);
        assert_eq!(joined(&ab, &ab), ab);
        assert!(
            ab.is_reset(),
            "the later mark (by actor at equal times) wins"
        );
        assert_eq!(ab.expiry(), Some(99));
        assert_eq!(joined(&ab, &c).expiry(), None, "spent by a removal");
        assert_eq!(ab.removed_of("n1"), Some(&entry(1, 7, 7)));
    }
}
