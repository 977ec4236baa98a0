use alloc::collections::{BTreeMap, BTreeSet};
use core::ops::Bound;

use crate::{digest, ActorId, CounterName, CrdtError, Entry, Op, PnCounter, Watermarks};

/// For each actor, the highest operation number a replica has *seen* — not
/// necessarily everything below it (see [`Watermarks`]).
///
/// Its size grows with the number of actors (node incarnations), never with
/// the number of counters.
pub type Summary = BTreeMap<ActorId, u64>;

/// One entry that changed: `(counter, actor, entry)`.
pub type Change = (CounterName, ActorId, Entry);

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

    /// One counter's value, `None` when it was never written.
    pub fn value(&self, name: &str) -> Option<i128> {
        self.counters.get(name).map(PnCounter::value)
    }

    /// Counters in name order.
    pub fn counters(&self) -> impl Iterator<Item = (&CounterName, &PnCounter)> {
        self.counters.iter()
    }

    /// A page of counters whose names start with `prefix` and sort after `after`.
    pub fn page<'a>(
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
        self.changes_by_actor
            .iter()
            .filter_map(|(actor, changes)| changes.last().map(|(seq, _)| (actor.clone(), *seq)))
            .collect()
    }

    /// The highest operation number seen from one actor (0 when none).
    pub fn last_seq(&self, actor: &str) -> u64 {
        self.changes_by_actor
            .get(actor)
            .and_then(|changes| changes.last().map(|(seq, _)| *seq))
            .unwrap_or(0)
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
                        let entry = *self.counters.get(name)?.entry(actor.as_str())?;
                        Some((name.clone(), actor.clone(), entry))
                    })
            })
    }

    /// Every entry: the full state as changes.
    pub fn all_changes(&self) -> impl Iterator<Item = Change> + '_ {
        self.counters.iter().flat_map(|(name, counter)| {
            counter
                .entries()
                .map(move |(actor, entry)| (name.clone(), actor.clone(), *entry))
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
        // A seq at u64::MAX can only come from a damaged or hostile peer.
        let seq = self
            .last_seq(actor.as_str())
            .checked_add(1)
            .ok_or(CrdtError::Overflow)?;
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
            if counter.actors() == 0 {
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
            for (actor, entry) in counter.entries() {
                changed |= self.merge_entry(name, actor, *entry).is_some();
            }
        }
        changed
    }

    /// Merges changes and returns the ones that were news here, as a delta.
    pub fn merge_changed(&mut self, changes: impl IntoIterator<Item = Change>) -> CounterMap {
        let mut news = CounterMap::new();
        for (name, actor, entry) in changes {
            if let Some(joined) = self.merge_entry(&name, &actor, entry) {
                news.merge_entry(&name, &actor, joined);
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

#[cfg(feature = "serde")]
mod serde_impl {
    //! A map travels as `[(name, [(actor, entry)])]`; decoding re-merges, so
    //! indexes, sums and digest are rebuilt and duplicates are harmless.
    use alloc::vec::Vec;

    use super::*;

    impl serde::Serialize for CounterMap {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(self.counters.len()))?;
            for (name, counter) in &self.counters {
                let entries: Vec<(&ActorId, &Entry)> = counter.entries().collect();
                seq.serialize_element(&(name, entries))?;
            }
            seq.end()
        }
    }

    impl<'de> serde::Deserialize<'de> for CounterMap {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let wire = <Vec<(CounterName, Vec<(ActorId, Entry)>)>>::deserialize(d)?;
            Ok(wire
                .into_iter()
                .flat_map(|(name, entries)| {
                    entries
                        .into_iter()
                        .map(move |(actor, entry)| (name.clone(), actor, entry))
                })
                .collect())
        }
    }
}

impl FromIterator<Change> for CounterMap {
    fn from_iter<I: IntoIterator<Item = Change>>(changes: I) -> Self {
        let mut map = CounterMap::new();
        for (name, actor, entry) in changes {
            map.merge_entry(&name, &actor, entry);
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
            .map(|(n, _, e)| (n, e.seq))
            .collect();
        assert_eq!(
            lacking,
            [(name("c8"), 9), (name("c9"), 10), (name("c0"), 11)]
        );
        assert_eq!(map.summary().get("a"), Some(&11));
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
