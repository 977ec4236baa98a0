//! How far one node trails the gateway's merged view, without a copy of
//! its replica.
//!
//! Every state a node streams is merged into the view, so a node's replica
//! is never ahead of the view, only behind it, and only on the counters
//! whose news has not reached it yet. A [`Trail`] holds the node's copy of
//! just those counters (`differs`); every other counter the node holds
//! exactly as the view does. That costs memory in proportion to what is in
//! flight (nothing, once converged), where a replica per node cost the
//! whole keyspace again for every node.
//!
//! A node's snapshot arrives in chunks in name order, so while it loads the
//! trail knows the node's copy only up to the last name it received
//! (`Coverage::Through`); later names are compared when their chunk comes.
use std::collections::HashMap;

use crdt_core::{CounterMap, CounterName, Entry, PnCounter, DEFAULT_COUNTER};
use serde::{Deserialize, Serialize};

/// Most counters a trail keeps the node's copy of: past it, the trail
/// gives up (lag unknown) until the node's next snapshot.
pub const MAX_DIFFERING: usize = 100_000;

/// What the gateway knows of one node's replica.
#[derive(Debug, Default)]
pub struct Trail {
    /// The node's id, as its stream names it.
    pub id: String,
    /// The node's copy of each counter where it differs from the view (an
    /// empty counter: it lacks it). The node holds every other covered
    /// counter exactly as the view does.
    differs: HashMap<CounterName, PnCounter>,
    coverage: Coverage,
}

/// Which of the node's counters the trail can speak for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Coverage {
    /// None: nothing streamed yet, or the stream broke.
    #[default]
    Unknown,
    /// A snapshot is arriving: every counter up to this name (none yet:
    /// `None`) has arrived.
    Through(Option<CounterName>),
    /// The whole replica has arrived; news keeps it current.
    Whole,
}

impl Trail {
    /// Whether the trail speaks for the node's copy of `name`.
    pub fn covers(&self, name: &CounterName) -> bool {
        match &self.coverage {
            Coverage::Unknown | Coverage::Through(None) => false,
            Coverage::Through(Some(through)) => name <= through,
            Coverage::Whole => true,
        }
    }

    /// Whether the node's whole replica arrived and its stream still flows.
    pub fn is_whole(&self) -> bool {
        self.coverage == Coverage::Whole
    }

    /// The node's copy of `name` differs from the view's (or it lacks it).
    pub fn differs_on(&self, name: &CounterName) -> bool {
        self.differs.contains_key(name)
    }

    /// Counters where the node differs from the view.
    pub fn differing(&self) -> usize {
        self.differs.len()
    }

    /// The view's copy of `name` is about to move past the node's: the node
    /// keeps what the view held before (`before`, `None`: nothing).
    pub fn falls_behind(&mut self, name: &CounterName, before: Option<&PnCounter>) {
        if self.covers(name) && !self.differs_on(name) {
            if self.differs.len() >= MAX_DIFFERING {
                // A node down while the cluster writes everywhere: its lag
                // is no longer worth a copy of the keyspace.
                self.lost();
                return;
            }
            let copy = before.cloned().unwrap_or_default();
            self.differs.insert(name.clone(), copy);
        }
    }

    /// The node streamed `news` for `name`; `before` is the view's copy
    /// before that news was merged, `now` after. A counter past the
    /// coverage of a loading snapshot waits for its chunk.
    pub fn learns(
        &mut self,
        name: &CounterName,
        news: &PnCounter,
        before: Option<&PnCounter>,
        now: &PnCounter,
    ) {
        if !self.covers(name) {
            return;
        }
        let copy = match self.differs.remove(name) {
            Some(copy) => copy,
            None => before.cloned().unwrap_or_default(),
        };
        self.compare(name, copy, news, now);
    }

    /// The node's copy of `name` was `copy` and learned `news`: it differs
    /// from the view's `now`, or it does not.
    fn compare(
        &mut self,
        name: &CounterName,
        mut copy: PnCounter,
        news: &PnCounter,
        now: &PnCounter,
    ) {
        copy.merge(news);
        if copy != *now {
            self.differs.insert(name.clone(), copy);
        }
    }

    /// The first chunk of a snapshot: the node starts over ("this is all I
    /// have"); nothing is covered until its counters arrive.
    pub fn starts_snapshot(&mut self, id: &str) {
        id.clone_into(&mut self.id);
        self.differs.clear();
        self.coverage = Coverage::Through(None);
    }

    /// A snapshot chunk arrived (already merged into `view`): its counters
    /// become covered, and so does every counter of the view between the
    /// previous chunk and the end of this one that the chunk lacks (the
    /// node lacks it). With the last chunk, every later counter too.
    pub fn receives_chunk(&mut self, chunk: &CounterMap, view: &CounterMap, last: bool) {
        let Coverage::Through(through) = self.coverage.clone() else {
            return;
        };
        let end = chunk.counters().last().map(|(name, _)| name.clone());
        // A counter begun in the previous chunk may continue in this one.
        if let Some(continued) = &through {
            if let (Some(part), Some(now)) =
                (chunk.get(continued.as_str()), view.get(continued.as_str()))
            {
                let copy = self
                    .differs
                    .remove(continued)
                    .unwrap_or_else(|| now.clone());
                self.compare(continued, copy, part, now);
            }
        }
        let in_range = |name: &CounterName| last || end.as_ref().is_some_and(|end| name <= end);
        let after = through.as_ref().map(CounterName::as_str);
        for (name, now) in view
            .all_from("", after)
            .take_while(|(name, _)| in_range(name))
        {
            match chunk.get(name.as_str()) {
                Some(part) => self.compare(name, PnCounter::new(), part, now),
                // A node that collected a deleted counter reads it as the
                // view does: absent.
                None if !now.is_visible() => {}
                None => {
                    self.differs.insert(name.clone(), PnCounter::new());
                }
            }
        }
        self.coverage = match (last, end) {
            (true, _) => Coverage::Whole,
            (false, Some(end)) => Coverage::Through(Some(end)),
            (false, None) => Coverage::Through(through),
        };
    }

    /// The view dropped `name` (collected as garbage): no copy to keep.
    pub fn forget(&mut self, name: &CounterName) {
        self.differs.remove(name);
    }

    /// The trail can no longer say what the node holds.
    pub fn lost(&mut self) {
        self.differs.clear();
        self.coverage = Coverage::Unknown;
    }

    /// The node's value of the default counter (0 when never written),
    /// `None` while the trail cannot say.
    pub fn default_value(&self, view: &CounterMap) -> Option<i128> {
        let name = CounterName::new(DEFAULT_COUNTER).ok()?;
        if !self.covers(&name) {
            return None;
        }
        let value = match self.differs.get(&name) {
            Some(copy) => copy.value(),
            None => view.value(DEFAULT_COUNTER).unwrap_or(0),
        };
        Some(value)
    }

    /// How far the node trails the view: O(counters it differs on).
    pub fn lag(&self, view: &CounterMap) -> Option<Lag> {
        if !self.is_whole() {
            return None;
        }
        let mut lag = Lag::default();
        for (name, theirs) in &self.differs {
            let Some(ours) = view.get(name.as_str()) else {
                continue;
            };
            for (actor, entry) in ours.entries() {
                let seen = theirs.entry(actor.as_str()).copied().unwrap_or_default();
                let missing = missing(entry, &seen);
                if missing > 0 || entry.seq > seen.seq {
                    lag.entries_behind += 1;
                }
                lag.total = lag.total.saturating_add(missing);
                if name.as_str() == DEFAULT_COUNTER {
                    lag.default = lag.default.saturating_add(missing);
                }
            }
        }
        Some(lag)
    }
}

/// Increments plus decrements in `ours` that `seen` lacks.
fn missing(ours: &Entry, seen: &Entry) -> u64 {
    let missing =
        (ours.inc.saturating_sub(seen.inc)).saturating_add(ours.dec.saturating_sub(seen.dec));
    // Totals are u128; the lag saturates.
    u64::try_from(missing).unwrap_or(u64::MAX)
}

/// How far a node trails the gateway's merged view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// Increments plus decrements of the default counter the node has not seen yet.
    pub default: u64,
    /// The same over every counter.
    pub total: u64,
    /// `(counter, actor)` entries where the node is behind.
    pub entries_behind: u64,
}
