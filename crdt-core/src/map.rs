use alloc::collections::{BTreeMap, BTreeSet};
use core::ops::Bound;

use alloc::vec::Vec;

use crate::keyed::{is_duplicate, IdempotencyKey, KeyCheck, Registration};
use crate::lifecycle::{Lifecycle, Mark, RemovalKind, Takeover};
use crate::{digest, ActorId, CounterName, CrdtError, Entry, Op, PnCounter, Watermarks};

/// For each actor, the highest operation number a replica has *seen* — not
/// necessarily everything below it (see [`Watermarks`]).
///
/// Its size grows with the number of actors (node incarnations), never with
/// the number of counters.
pub type Summary = BTreeMap<ActorId, u64>;

/// What changed of one actor in one counter: its entry, the registrations
/// of its keyed writes that changed with it, and the counter's lifecycle
/// when this actor changed it (a delete, a reset, an expiry). The unit of
/// replication: a replica that holds the entry must hold these too.
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
        const REGISTRATION: usize = 96;
        let lifecycle = self.lifecycle.as_ref().map_or(0, |l| {
            let actors = l.removed.iter().map(|(a, _)| a.as_str().len() + ENTRY);
            let stamps = l.stamps.iter().map(|(a, _)| a.as_str().len() + 10);
            actors.chain(stamps).sum::<usize>() + 2 * ENTRY
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

    /// The change that cancels `mine`, a duplicate registration of its
    /// origin in counter `name` (held as `counter`), stamped `seq`: the
    /// amount taken back out of the origin's entry and the registration
    /// marked, in one bundle ([`crate::keyed`]). Fails only on a total
    /// beyond `u128`, which only a hostile peer can cause.
    pub fn cancelling(
        counter: &PnCounter,
        mine: &Registration,
        name: &CounterName,
        seq: u64,
    ) -> Result<Change, CrdtError> {
        let entry = counter.prepare_cancel(mine.origin.as_str(), mine.op, seq)?;
        Ok(Change {
            name: name.clone(),
            actor: mine.origin.clone(),
            entry,
            registrations: alloc::vec![Registration {
                cancelled_seq: seq,
                ..mine.clone()
            }],
            lifecycle: None,
        })
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

/// A keyed write that was applied: the delta to persist and ship, and the
/// counter's value in its answer.
#[derive(Debug, Clone)]
pub struct KeyedWrite {
    /// The entry and the registration, as a map.
    pub delta: CounterMap,
    /// The registration.
    pub registration: Registration,
}

/// Many named PN-Counters, merged entry by entry.
///
/// The same type serves as a full state and as a delta: a delta is just a
/// map holding only the entries that changed, and merges like any state.
#[derive(Debug, Clone, Default)]
pub struct CounterMap {
    counters: BTreeMap<CounterName, PnCounter>,
    digest: u64,
    /// actor → (seq → counter it last changed). Lets a replica list what
    /// happened above a peer's [`Watermarks`] without scanning every counter.
    /// (A set of pairs, not a map by seq: a damaged or hostile peer may send
    /// two counters with one seq, and neither may vanish from the index.)
    changes_by_actor: BTreeMap<ActorId, BTreeSet<(u64, CounterName)>>,
    /// Which counters hold registrations of which key, with the latest
    /// `at_ms` among them.
    keys: BTreeMap<(IdempotencyKey, CounterName), u64>,
    /// The same, by that latest `at_ms`: where the keys past their window are.
    keys_by_age: BTreeSet<(u64, IdempotencyKey, CounterName)>,
    /// Counters by the expiry in force.
    expiries: BTreeSet<(u64, CounterName)>,
    /// Counters that were removed at least once: where garbage is.
    removed: BTreeSet<CounterName>,
    /// Per actor, the highest seq of counters dropped as garbage, so seqs
    /// never go back ([`Self::drop_removed`]).
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
    /// the durable watermarks: counters dropped as garbage are gone, and
    /// the seqs they held must not be handed out again).
    pub fn raise_seq_floor(&mut self, seen: &Watermarks) {
        self.dropped.raise_all(seen);
    }

    /// The seq `actor`'s next operation is stamped with. (A seq at
    /// `u64::MAX` can only come from a damaged or hostile peer.)
    fn next_seq(&self, actor: &ActorId) -> Result<u64, CrdtError> {
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

    /// What the replica holds of `key`: nothing, the same write (answer
    /// with it), or another write under the same key.
    pub fn check_key(&self, key: &IdempotencyKey, name: &CounterName, op: Op) -> KeyCheck {
        let mut found = self
            .keys
            .range((key.clone(), CounterName::lowest())..)
            .map(|(pair, _)| pair)
            .take_while(|(known, _)| known == key);
        let Some((_, counter_name)) = found.next() else {
            return KeyCheck::New;
        };
        let Some(counter) = self.counters.get(counter_name) else {
            return KeyCheck::New;
        };
        let registrations = counter.registrations_of(key.as_str());
        // The one that counts (the least uncancelled), else any: they all
        // name the same write unless a client reused the key.
        let kept = registrations
            .iter()
            .filter(|r| !r.is_cancelled())
            .min_by(|a, b| a.precedence(b))
            .or(registrations.first());
        match kept {
            None => KeyCheck::New,
            Some(kept) if counter_name == name && kept.op == op => KeyCheck::Replay(kept.clone()),
            Some(kept) => KeyCheck::Mismatch {
                counter: alloc::string::String::from(counter_name.as_str()),
                op: kept.op,
            },
        }
    }

    /// Applies a keyed write by `actor` stamped with its next seq, at wall
    /// clock `at_ms`. The caller has checked the key ([`Self::check_key`]).
    pub fn apply_keyed(
        &mut self,
        actor: &ActorId,
        name: &CounterName,
        op: Op,
        key: &IdempotencyKey,
        at_ms: u64,
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

    /// Which of `keys` (counter, key) `actor` registered and lost to
    /// another registration of the key: they must be cancelled ([`Self::cancel`]).
    pub fn duplicates_of<'a>(
        &'a self,
        actor: &'a ActorId,
        keys: impl IntoIterator<Item = (&'a CounterName, &'a IdempotencyKey)> + 'a,
    ) -> impl Iterator<Item = (CounterName, IdempotencyKey)> + 'a {
        keys.into_iter().filter_map(move |(name, key)| {
            let counter = self.counters.get(name)?;
            let same_key = counter.registrations_of(key.as_str());
            let mine = same_key.iter().find(|r| &r.origin == actor)?;
            // A removed key counts for nothing however many applied it.
            let due = is_duplicate(mine, same_key) && !counter.key_is_removed(key.as_str());
            due.then(|| (name.clone(), key.clone()))
        })
    }

    /// For each registration in `change`, every other registration of its
    /// key held here, each as a change of its origin with the origin's
    /// entry (which holds its amount): what a cancellation lost to, to
    /// ship along with it.
    pub fn precedents(&self, change: &Change) -> Vec<Change> {
        let Some(counter) = self.counters.get(&change.name) else {
            return Vec::new();
        };
        change
            .registrations
            .iter()
            .flat_map(|mine| counter.registrations_of(mine.key.as_str()))
            .filter(|other| other.origin != change.actor)
            .filter_map(|other| {
                let entry = *counter.entry(other.origin.as_str())?;
                Some(Change {
                    name: change.name.clone(),
                    actor: other.origin.clone(),
                    entry,
                    registrations: alloc::vec![other.clone()],
                    lifecycle: None,
                })
            })
            .collect()
    }

    /// Every key of `actor` that lost and must be cancelled: a full scan,
    /// for a node's start (the incremental checks cover the rest).
    pub fn all_duplicates_of(&self, actor: &ActorId) -> Vec<(CounterName, IdempotencyKey)> {
        let keys: Vec<(&CounterName, &IdempotencyKey)> =
            self.keys.keys().map(|(key, name)| (name, key)).collect();
        self.duplicates_of(actor, keys).collect()
    }

    /// Cancels `actor`'s duplicate registration of `key` in `name`: takes
    /// its amount back out of the actor's entry, stamped with the actor's
    /// next seq, in one change. Returns the delta to persist and ship, or
    /// `None` when there is nothing (left) to cancel.
    pub fn cancel(
        &mut self,
        actor: &ActorId,
        name: &CounterName,
        key: &IdempotencyKey,
    ) -> Result<Option<CounterMap>, CrdtError> {
        let Some(counter) = self.counters.get(name) else {
            return Ok(None);
        };
        let Some(mine) = counter
            .registrations_of(key.as_str())
            .iter()
            .find(|r| &r.origin == actor && !r.is_cancelled())
        else {
            return Ok(None);
        };
        let seq = self.next_seq(actor)?;
        let change = Change::cancelling(counter, mine, name, seq)?;
        self.merge_change(&change);
        Ok(Some(core::iter::once(change).collect()))
    }

    /// Drops the keys whose every registration is older than `before_ms`
    /// and adds nothing to its counter's value (every duplicate cancelled).
    /// Their window is over: no retry is matched against them any more.
    /// Local housekeeping, not a replicated change: it never changes a
    /// value or the digest. Returns the number of registrations dropped.
    pub fn drop_keys_before(&mut self, before_ms: u64) -> usize {
        // Only keys whose latest registration is past the window are looked
        // at, not every key held.
        let expired: Vec<(IdempotencyKey, CounterName)> = self
            .keys_by_age
            .range(..(before_ms, IdempotencyKey::lowest(), CounterName::lowest()))
            .filter(|(_, key, name)| {
                (self.counters.get(name)).is_some_and(|c| c.key_excess(key.as_str()) == 0)
            })
            .map(|(_, key, name)| (key.clone(), name.clone()))
            .collect();
        let mut dropped = 0;
        for (key, name) in expired {
            if let Some(counter) = self.counters.get_mut(&name) {
                dropped += counter.drop_key(&key);
            }
            self.forget_key(key, name);
        }
        dropped
    }

    fn forget_key(&mut self, key: IdempotencyKey, name: CounterName) {
        if let Some(latest) = self.keys.remove(&(key.clone(), name.clone())) {
            self.keys_by_age.remove(&(latest, key, name));
        }
    }

    fn index_key(&mut self, registration: &Registration, name: CounterName) {
        let pair = (registration.key.clone(), name);
        let latest = self.keys.get(&pair).copied();
        if latest.is_some_and(|at| at >= registration.at_ms) {
            return;
        }
        if let Some(at) = latest {
            (self.keys_by_age).remove(&(at, pair.0.clone(), pair.1.clone()));
        }
        (self.keys_by_age).insert((registration.at_ms, pair.0.clone(), pair.1.clone()));
        self.keys.insert(pair, registration.at_ms);
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
    /// many counters it left for a later call (see below).
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

    /// Collects garbage: drops deleted counters (entries, registrations and
    /// lifecycle), and what removals left dead in counters written again
    /// (entries wholly removed, dead keys, the lifecycle), in counters that
    /// every live replica is known to hold as they are here: every seq in
    /// them is at most `seen_by_all`. The caller also vouches that it holds everything
    /// those replicas held when they reported it (see ARCHITECTURE.md,
    /// "Counter lifecycle on the node"), so nothing written before a removal can still
    /// arrive above it. Keys stay for their window: a counter holding a key
    /// registered at or after `keys_before_ms` is left as it is. Looks at
    /// no more than `budget` removed counters (resuming after `after`);
    /// returns the counters it dropped and where to resume (`None` once it
    /// went through all of them). Never changes what a read returns.
    pub fn drop_removed(
        &mut self,
        seen_by_all: &Watermarks,
        keys_before_ms: u64,
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
                    .all(|r| r.at_ms < keys_before_ms && seen(&r.origin, r.last_seq()));
            if !stable {
                continue;
            }
            if !counter.is_visible() {
                self.drop_counter(&name);
                dropped.push(name);
            } else {
                self.compact_counter(&name);
            }
        }
        (dropped, resume)
    }

    fn compact_counter(&mut self, name: &CounterName) {
        let Some(counter) = self.counters.get_mut(name) else {
            return;
        };
        let old_contribution = contribution(name, counter);
        let (entries, keys) = counter.compact();
        let new_contribution = contribution(name, counter);
        // Compacted while stable: nothing more can go until a new removal
        // (which puts it back), so garbage rounds stop looking at it (and
        // stop asking every member for its watermarks).
        self.removed.remove(name);
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
            self.forget_key(registration.key.clone(), name.clone());
        }
    }

    /// Number of keys held (each with one or more registrations).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Merges one registration into counter `name`; true when anything changed.
    pub fn merge_registration(&mut self, name: &CounterName, registration: &Registration) -> bool {
        let name = match self.counters.get_key_value(name.as_str()) {
            Some((known, _)) => known.clone(),
            None => name.clone(),
        };
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

    /// Merges one change: its registrations first, then its entry, so a
    /// reader never sees the entry's duplicate amount without the
    /// registration that cancels it out. True when anything changed.
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
        let name = match self.counters.get_key_value(name.as_str()) {
            Some((known, _)) => known.clone(),
            None => name.clone(),
        };
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
        let name = match self.counters.get_key_value(name.as_str()) {
            Some((known, _)) => known.clone(),
            None => name.clone(),
        };
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
            for registration in counter.registrations() {
                changed |= self.merge_registration(name, registration);
            }
            if let Some(lifecycle) = counter.lifecycle() {
                changed |= self.merge_lifecycle(name, lifecycle);
            }
            for (actor, entry) in counter.entries() {
                changed |= self.merge_entry(name, actor, *entry).is_some();
            }
        }
        changed
    }

    /// Merges changes and returns the ones that were news here, as a delta.
    pub fn merge_changed(&mut self, changes: impl IntoIterator<Item = Change>) -> CounterMap {
        self.merge_news(changes, &Watermarks::new())
    }

    /// [`Self::merge_changed`] for a replica that holds everything up to
    /// `seen`: a change of an entry it does not hold, at a seq it has
    /// seen, belongs to a counter it dropped as garbage, and is skipped
    /// (merging it would bring removed amounts back).
    pub fn merge_news(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        seen: &Watermarks,
    ) -> CounterMap {
        let mut news = CounterMap::new();
        for change in changes {
            let held = (self.counters.get(&change.name))
                .is_some_and(|counter| counter.entry(change.actor.as_str()).is_some());
            if !held && change.entry.seq <= seen.get(change.actor.as_str()) {
                continue;
            }
            for registration in &change.registrations {
                if registration.origin == change.actor
                    && self.merge_registration(&change.name, registration)
                {
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

/// `actor`'s bundle in `counter`: its entry and its registrations changed
/// above seq `after` (all of them for 0).
fn bundle(name: &CounterName, counter: &PnCounter, actor: &ActorId, after: u64) -> Change {
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

/// `actor`'s entry in `counter` with its seq moved to `seq` (a lifecycle
/// change is an operation of its actor), or a new run's empty entry.
fn stamped(counter: &PnCounter, actor: &ActorId, seq: u64) -> Entry {
    match counter.entry(actor.as_str()) {
        Some(entry) => Entry { seq, ..*entry },
        None => Entry::start(seq),
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

#[cfg(feature = "serde")]
mod serde_impl {
    //! A map travels as `[(name, [(actor, entry)], [registration], lifecycle?)]`;
    //! decoding re-merges, so indexes, sums and digest are rebuilt and
    //! duplicates are harmless.
    //!
    //! WAL records and snapshots written by earlier versions hold entries
    //! without a run (`since`), and are still read: [`KeyedOnly`] reads the
    //! format of keyed writes, `[(name, [(actor, entry)], [registration])]`,
    //! [`EntriesOnly`] the one of before, `[(name, [(actor, entry)])]`, and
    //! [`LegacyChange`] a change of keyed writes. Those of before takeovers
    //! hold lifecycles without them: [`WithoutTakeovers`] reads such a map,
    //! [`ChangeWithoutTakeovers`] such a change.
    use super::*;

    impl serde::Serialize for CounterMap {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(self.counters.len()))?;
            for (name, counter) in &self.counters {
                let entries: Vec<(&ActorId, &Entry)> = counter.entries().collect();
                let registrations: Vec<&Registration> = counter.registrations().collect();
                seq.serialize_element(&(name, entries, registrations, counter.lifecycle()))?;
            }
            seq.end()
        }
    }

    impl<'de> serde::Deserialize<'de> for CounterMap {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            type Wire = Vec<(
                CounterName,
                Vec<(ActorId, Entry)>,
                Vec<Registration>,
                Option<Lifecycle>,
            )>;
            let mut map = CounterMap::new();
            for (name, entries, registrations, lifecycle) in Wire::deserialize(d)? {
                map.merge_counter(&name, entries, &registrations, lifecycle.as_ref());
            }
            Ok(map)
        }
    }

    impl CounterMap {
        /// Merges one counter's parts: registrations and lifecycle before
        /// the entries they explain.
        pub fn merge_counter(
            &mut self,
            name: &CounterName,
            entries: impl IntoIterator<Item = (ActorId, Entry)>,
            registrations: &[Registration],
            lifecycle: Option<&Lifecycle>,
        ) {
            for registration in registrations {
                self.merge_registration(name, registration);
            }
            if let Some(lifecycle) = lifecycle {
                self.merge_lifecycle(name, lifecycle);
            }
            for (actor, entry) in entries {
                self.merge_entry(name, &actor, entry);
            }
        }
    }

    /// An entry as encoded before runs: no `since` (it reads as 0).
    #[derive(Debug, Clone, Copy, serde::Deserialize)]
    #[serde(try_from = "UncheckedEntryWithoutRun")]
    pub struct EntryWithoutRun(Entry);

    #[derive(serde::Deserialize)]
    struct UncheckedEntryWithoutRun {
        inc: u128,
        dec: u128,
        seq: u64,
    }

    impl TryFrom<UncheckedEntryWithoutRun> for EntryWithoutRun {
        type Error = CrdtError;

        fn try_from(old: UncheckedEntryWithoutRun) -> Result<Self, CrdtError> {
            let entry = Entry {
                inc: old.inc,
                dec: old.dec,
                seq: old.seq,
                since: 0,
            };
            entry.checked().map(EntryWithoutRun)
        }
    }

    impl From<EntryWithoutRun> for Entry {
        fn from(EntryWithoutRun(entry): EntryWithoutRun) -> Entry {
            entry
        }
    }

    fn with_runs(
        entries: Vec<(ActorId, EntryWithoutRun)>,
    ) -> impl Iterator<Item = (ActorId, Entry)> {
        entries
            .into_iter()
            .map(|(actor, entry)| (actor, entry.into()))
    }

    /// A map in the format of keyed writes, before lifecycle.
    #[derive(Debug, Clone, Default)]
    pub struct KeyedOnly(pub CounterMap);

    impl<'de> serde::Deserialize<'de> for KeyedOnly {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            type Wire = Vec<(
                CounterName,
                Vec<(ActorId, EntryWithoutRun)>,
                Vec<Registration>,
            )>;
            let mut map = CounterMap::new();
            for (name, entries, registrations) in Wire::deserialize(d)? {
                map.merge_counter(&name, with_runs(entries), &registrations, None);
            }
            Ok(KeyedOnly(map))
        }
    }

    /// A map in the format of before keyed writes (entries only).
    #[derive(Debug, Clone, Default)]
    pub struct EntriesOnly(pub CounterMap);

    impl<'de> serde::Deserialize<'de> for EntriesOnly {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let wire = <Vec<(CounterName, Vec<(ActorId, EntryWithoutRun)>)>>::deserialize(d)?;
            let mut map = CounterMap::new();
            for (name, entries) in wire {
                map.merge_counter(&name, with_runs(entries), &[], None);
            }
            Ok(EntriesOnly(map))
        }
    }

    /// A lifecycle as encoded before takeovers.
    #[derive(Debug, Clone, serde::Deserialize)]
    pub struct LifecycleWithoutTakeovers {
        removed: Vec<(ActorId, Entry)>,
        stamps: Vec<(ActorId, u64)>,
        mark: Option<Mark>,
        expires_at_ms: u64,
        spent_expiry_ms: u64,
    }

    impl From<LifecycleWithoutTakeovers> for Lifecycle {
        fn from(old: LifecycleWithoutTakeovers) -> Lifecycle {
            Lifecycle {
                removed: old.removed,
                stamps: old.stamps,
                mark: old.mark,
                expires_at_ms: old.expires_at_ms,
                spent_expiry_ms: old.spent_expiry_ms,
                takeovers: Vec::new(),
            }
        }
    }

    /// A map in the format of lifecycles, before takeovers.
    #[derive(Debug, Clone, Default)]
    pub struct WithoutTakeovers(pub CounterMap);

    impl<'de> serde::Deserialize<'de> for WithoutTakeovers {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            type Wire = Vec<(
                CounterName,
                Vec<(ActorId, Entry)>,
                Vec<Registration>,
                Option<LifecycleWithoutTakeovers>,
            )>;
            let mut map = CounterMap::new();
            for (name, entries, registrations, lifecycle) in Wire::deserialize(d)? {
                let lifecycle = lifecycle.map(Lifecycle::from);
                map.merge_counter(&name, entries, &registrations, lifecycle.as_ref());
            }
            Ok(WithoutTakeovers(map))
        }
    }

    /// A [`Change`] in the format of lifecycles, before takeovers.
    #[derive(Debug, Clone)]
    pub struct ChangeWithoutTakeovers(pub Change);

    impl<'de> serde::Deserialize<'de> for ChangeWithoutTakeovers {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            #[derive(serde::Deserialize)]
            struct Wire {
                name: CounterName,
                actor: ActorId,
                entry: Entry,
                registrations: Vec<Registration>,
                lifecycle: Option<LifecycleWithoutTakeovers>,
            }
            let wire = Wire::deserialize(d)?;
            Ok(ChangeWithoutTakeovers(Change {
                name: wire.name,
                actor: wire.actor,
                entry: wire.entry,
                registrations: wire.registrations,
                lifecycle: wire.lifecycle.map(Lifecycle::from),
            }))
        }
    }

    /// A [`Change`] in the format of keyed writes, before lifecycle.
    #[derive(Debug, Clone)]
    pub struct LegacyChange(pub Change);

    impl<'de> serde::Deserialize<'de> for LegacyChange {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            #[derive(serde::Deserialize)]
            struct Wire {
                name: CounterName,
                actor: ActorId,
                entry: EntryWithoutRun,
                registrations: Vec<Registration>,
            }
            let wire = Wire::deserialize(d)?;
            Ok(LegacyChange(Change {
                name: wire.name,
                actor: wire.actor,
                entry: wire.entry.into(),
                registrations: wire.registrations,
                lifecycle: None,
            }))
        }
    }
}
#[cfg(feature = "serde")]
pub use serde_impl::{
    ChangeWithoutTakeovers, EntriesOnly, EntryWithoutRun, KeyedOnly, LegacyChange,
    LifecycleWithoutTakeovers, WithoutTakeovers,
};

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
mod tests {
    use super::*;

    fn name(text: &str) -> CounterName {
        CounterName::new(text).unwrap()
    }
    fn actor(text: &str) -> ActorId {
        ActorId::new(text).unwrap()
    }

    /// Found by `decoding_damaged_encodings_never_panics`: a damaged byte
    /// turned a seq into 0, and the decoded map held an entry its change
    /// index could never hand out.
    #[cfg(feature = "serde")]
    #[test]
    fn a_decoded_entry_without_a_seq_is_refused() {
        use crate::wire;
        let at = |seq| Entry {
            inc: 5,
            dec: 0,
            seq,
            since: 0,
        };
        let map_with = |entry: Entry| {
            wire::encode(&alloc::vec![(
                "c1",
                alloc::vec![("n1~a", entry)],
                alloc::vec::Vec::<Registration>::new(),
                Option::<Lifecycle>::None,
            )])
        };
        assert!(wire::decode::<CounterMap>(&map_with(at(1))).is_ok());
        assert_eq!(
            wire::decode::<CounterMap>(&map_with(at(0))),
            Err(CrdtError::Decode("invalid value"))
        );
        // The empty entry is what a change of only registrations carries.
        assert_eq!(
            wire::decode::<Entry>(&wire::encode(&Entry::default())),
            Ok(Entry::default())
        );
        let legacy = wire::encode(&(5u128, 0u128, 0u64));
        assert!(wire::decode::<EntryWithoutRun>(&legacy).is_err());
    }

    #[test]
    fn changes_since_lists_only_what_a_peer_lacks() {
        let mut map = CounterMap::new();
        let a = actor("a");
        for i in 0..10 {
            map.apply(&a, &name(&alloc::format!("c{i}")), Op::Increment(1))
                .unwrap();
        }
        map.apply(&a, &name("c0"), Op::Increment(1)).unwrap();
        let mut known = Watermarks::new();
        known.raise(&a, 8);
        let lacking: Vec<_> = map
            .changes_since(&known)
            .map(|c| (c.name, c.entry.seq))
            .collect();
        assert_eq!(
            lacking,
            [(name("c8"), 9), (name("c9"), 10), (name("c0"), 11)]
        );
        assert_eq!(map.summary().get("a"), Some(&11));
    }

    #[test]
    fn a_taken_over_entry_is_collected_once_stable_and_the_value_stays() {
        let (gone, new, survivor) = (actor("n3~old"), actor("n3~new"), actor("n1~x"));
        let mut map = CounterMap::new();
        map.apply(&gone, &name("default"), Op::Increment(5))
            .unwrap();
        map.apply(&new, &name("default"), Op::Increment(1)).unwrap();
        let (_, left) = map.take_over(&gone, &survivor).unwrap();
        assert_eq!(left, 0);
        let counter = map.get("default").unwrap();
        assert_eq!(counter.value(), 6);
        assert!(map.removed_count() > 0);
        let all: Watermarks = map.summary().into_iter().collect();
        map.drop_removed(&all, u64::MAX, None, 100);
        let counter = map.get("default").unwrap();
        assert_eq!(counter.value(), 6);
        assert_eq!(counter.entry("n3~old"), None);
    }

    #[test]
    fn digest_follows_state_not_history() {
        let (a, b) = (actor("a"), actor("b"));
        let mut left = CounterMap::new();
        left.apply(&a, &name("x"), Op::Increment(2)).unwrap();
        left.apply(&b, &name("y"), Op::Decrement(1)).unwrap();
        let mut right = CounterMap::new();
        right.apply(&b, &name("y"), Op::Decrement(1)).unwrap();
        assert_ne!(left.digest(), right.digest());
        right.apply(&a, &name("x"), Op::Increment(2)).unwrap();
        assert_eq!(left.digest(), right.digest());
        assert_eq!(left, right);
    }

    #[test]
    fn page_respects_prefix_and_cursor() {
        let mut map = CounterMap::new();
        let a = actor("a");
        for text in ["a/1", "a/2", "a/3", "b/1"] {
            map.apply(&a, &name(text), Op::Increment(1)).unwrap();
        }
        let names = |it: &mut dyn Iterator<Item = (&CounterName, &PnCounter)>| {
            it.map(|(n, _)| n.as_str().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(names(&mut map.page("a/", None)), ["a/1", "a/2", "a/3"]);
        assert_eq!(names(&mut map.page("a/", Some("a/1"))), ["a/2", "a/3"]);
        assert_eq!(names(&mut map.page("", Some("a/3"))), ["b/1"]);
    }
}
