//! [`Change`]: the unit of replication, one actor's bundle in one counter,
//! and the constructors of every local operation's change.
use alloc::vec::Vec;

use crate::keyed::Registration;
use crate::lifecycle::{Lifecycle, Mark, RemovalKind, Takeover};
use crate::{ActorId, CounterMap, CounterName, CrdtError, Entry, PnCounter};

/// What changed of one actor in one counter: its entry, the registrations
/// of its keyed writes that changed with it, and the counter's lifecycle
/// when this actor changed it (a delete, a reset, an expiry, a takeover).
/// The unit of replication: a replica that holds the entry must hold these too.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Change {
    /// The counter.
    pub name: CounterName,
    /// The actor.
    pub actor: ActorId,
    /// Its entry.
    pub entry: Entry,
    /// Its registrations (origin = `actor`), often none.
    pub registrations: Vec<Registration>,
    /// The counter's lifecycle, when `actor` changed it; usually none.
    pub lifecycle: Option<Lifecycle>,
}

impl Change {
    /// An upper bound of its encoded size, for cutting changes into chunks
    /// of bounded size: the name, the actor, two u128 and a u64 varint, the
    /// length prefixes, and per registration its key and origin plus its
    /// numbers (a u64 and an i128 varint are at most 10 and 19 bytes).
    pub fn size_hint(&self) -> usize {
        const ENTRY: usize = 74;
        const REGISTRATION: usize = 106;
        let lifecycle = self.lifecycle.as_ref().map_or(0, |l| {
            let actors = l.removed.iter().map(|(a, _)| a.as_str().len() + ENTRY);
            let stamps = l.stamps.iter().map(|(a, _)| a.as_str().len() + 10);
            let takeovers = (l.takeovers.iter())
                .map(|((from, into), _)| from.as_str().len() + into.as_str().len() + ENTRY + 10);
            actors.chain(stamps).chain(takeovers).sum::<usize>() + 2 * ENTRY
        });
        lifecycle
            + self.name.as_str().len()
            + self.actor.as_str().len()
            + ENTRY
            + self
                .registrations
                .iter()
                .map(|r| r.key.as_str().len() + r.origin.as_str().len() + REGISTRATION)
                .sum::<usize>()
    }

    /// The removal (observed-remove) of what `counter` holds, a delete or
    /// a reset by `actor` at wall clock `at_ms`, stamped `seq`: one change
    /// of the actor's entry carrying the lifecycle. It also spends the
    /// counter's expiry. The caller checks the counter reads as present.
    pub fn removing(
        counter: &PnCounter,
        name: &CounterName,
        actor: &ActorId,
        kind: RemovalKind,
        at_ms: u64,
        seq: u64,
    ) -> Change {
        let entry = stamped(counter, actor, seq);
        let mut removed: Vec<(ActorId, Entry)> = counter
            .entries()
            .filter(|(known, _)| *known != actor)
            .map(|(known, seen)| (known.clone(), *seen))
            .collect();
        let at = removed.partition_point(|(known, _)| known < actor);
        removed.insert(at, (actor.clone(), entry));
        let lifecycle = Lifecycle {
            removed,
            stamps: alloc::vec![(actor.clone(), seq)],
            mark: Some(Mark {
                at_ms,
                actor: actor.clone(),
                kind,
            }),
            expires_at_ms: 0,
            spent_expiry_ms: counter.lifecycle().map_or(0, |l| l.expires_at_ms),
            takeovers: Vec::new(),
        };
        Change {
            name: name.clone(),
            actor: actor.clone(),
            entry,
            registrations: Vec::new(),
            lifecycle: Some(lifecycle),
        }
    }

    /// Setting `counter` to expire at `expires_at_ms`, as an operation of
    /// `actor` stamped `seq`. The caller checks the counter reads as present.
    pub fn expiring(
        counter: &PnCounter,
        name: &CounterName,
        actor: &ActorId,
        expires_at_ms: u64,
        seq: u64,
    ) -> Change {
        let lifecycle = Lifecycle {
            stamps: alloc::vec![(actor.clone(), seq)],
            expires_at_ms,
            ..Lifecycle::default()
        };
        Change {
            name: name.clone(),
            actor: actor.clone(),
            entry: stamped(counter, actor, seq),
            registrations: Vec::new(),
            lifecycle: Some(lifecycle),
        }
    }

    /// `into` takes over departed actor `from`'s entry in `counter`,
    /// stamped with `into`'s seq `seq`: its entry gains `from`'s totals
    /// (in its current run, or a new one if that run is over), and the
    /// change carries the [`Takeover`] that explains it. The caller checks
    /// `from` has an entry here and no takeover yet.
    pub fn taking_over(
        counter: &PnCounter,
        name: &CounterName,
        from: &ActorId,
        into: &ActorId,
        seq: u64,
    ) -> Result<Change, CrdtError> {
        let base = counter.entry(from.as_str()).copied().unwrap_or_default();
        let entry = match counter.entry(into.as_str()) {
            Some(current) if !counter.run_is_over(into.as_str(), current) => Entry {
                inc: current
                    .inc
                    .checked_add(base.inc)
                    .ok_or(CrdtError::Overflow)?,
                dec: current
                    .dec
                    .checked_add(base.dec)
                    .ok_or(CrdtError::Overflow)?,
                seq,
                since: current.since,
            },
            _ => Entry {
                inc: base.inc,
                dec: base.dec,
                seq,
                since: seq,
            },
        };
        let lifecycle = Lifecycle {
            stamps: alloc::vec![(into.clone(), seq)],
            takeovers: alloc::vec![((from.clone(), into.clone()), Takeover { at: seq, base })],
            ..Lifecycle::default()
        };
        Ok(Change {
            name: name.clone(),
            actor: into.clone(),
            entry,
            registrations: Vec::new(),
            lifecycle: Some(lifecycle),
        })
    }

    /// A change of an entry alone.
    pub fn entry(name: CounterName, actor: ActorId, entry: Entry) -> Self {
        Change {
            name,
            actor,
            entry,
            registrations: Vec::new(),
            lifecycle: None,
        }
    }
}

/// A local change as eager delivery carries it: with `prev_seq`, the seq
/// of its actor's entry in the counter before it (0 for none). A replica
/// merges it only on top of that entry ([`CounterMap::merge_linked`]), so a
/// replica that holds an actor's entry at seq `s` holds every registration
/// of that actor in the counter up to `s` (they travel only in that actor's
/// changes): equal entries, equal registrations, and the digest over
/// entries shows every difference a reader could see.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LinkedChange {
    /// The seq of the actor's entry in the counter before this change.
    pub prev_seq: u64,
    /// The change.
    pub change: Change,
}

/// A keyed write that was applied: the delta to persist and ship, and the
/// counter's value in its answer.
#[derive(Debug, Clone)]
pub struct KeyedWrite {
    /// The entry and the registration, as a map.
    pub delta: CounterMap,
    /// The registration.
    pub registration: Registration,
}

/// `actor`'s entry in `counter` with its seq moved to `seq` (a lifecycle
/// change is an operation of its actor), or a new run's empty entry.
pub(crate) fn stamped(counter: &PnCounter, actor: &ActorId, seq: u64) -> Entry {
    match counter.entry(actor.as_str()) {
        Some(entry) => Entry { seq, ..*entry },
        None => Entry::start(seq),
    }
}

/// `actor`'s bundle in `counter`: its entry and its registrations changed
/// above seq `after` (all of them for 0), and the lifecycle when it goes
/// with this actor ([`Lifecycle::travels_with`]).
pub(crate) fn bundle(
    name: &CounterName,
    counter: &PnCounter,
    actor: &ActorId,
    after: u64,
) -> Change {
    Change {
        name: name.clone(),
        actor: actor.clone(),
        entry: counter.entry(actor.as_str()).copied().unwrap_or_default(),
        registrations: counter
            .registrations()
            .filter(|r| &r.origin == actor && r.last_seq() > after)
            .cloned()
            .collect(),
        lifecycle: counter
            .lifecycle()
            .filter(|l| l.travels_with(actor.as_str(), after))
            .cloned(),
    }
}
