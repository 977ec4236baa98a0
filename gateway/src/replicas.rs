//! The gateway's copy of the cluster's data: the merge of every node's
//! stream, and how far each node trails it (`trail`, without a copy of
//! any node's replica).
//!
//! Pure state (no I/O) so the merge rules can be tested directly: the
//! stream followers feed node events in, `/nodes` and browsers read views out.
//!
//! It also answers counter reads from the merged view (`read`), with
//! read-your-writes for the writes this gateway acknowledged: each batch
//! answer names the `(actor, seq)` that stamped a write (`acknowledged`),
//! and a read of that counter waits until the view holds that actor's
//! entry at that seq or later (entries only grow, so it then holds the write).
use std::collections::{HashMap, HashSet};

use crdt_core::{CounterMap, CounterName, PnCounter};
use tally_protocol::events::{NodeEvent, NodeSummary, SnapshotChunker};
use tally_protocol::request_auth::unix_now_ms;

use crate::trail::{Lag, Trail};

/// The merge of every node's stream, and each node's trail behind it.
#[derive(Debug, Default)]
pub struct Replicas {
    /// By HTTP address.
    nodes: HashMap<String, Trail>,
    merged: CounterMap,
    /// Counters whose merged value changed since [`Replicas::take_changed`].
    changed: Vec<String>,
    /// Entries the merged view learned since [`Replicas::take_news`]: what
    /// browsers are sent, once, however many nodes streamed the same write.
    news: CounterMap,
    /// Nodes whose stream is connected and has delivered a whole state:
    /// while one is, the merged view is at least as new as that node.
    live: HashSet<String>,
    /// Writes this gateway acknowledged that the view did not hold yet:
    /// counter → `(actor, seq)`, the highest per actor.
    acknowledged: HashMap<String, Vec<(String, u64)>>,
}

/// A node's delta as the picture of the cluster counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaSeen {
    /// The node's id.
    pub node: String,
    /// It learned the change by gossip (else: a write it took).
    pub via_gossip: bool,
    /// Counters it touched.
    pub counters: usize,
}

/// Most counters with acknowledged writes the view has not shown yet.
/// Beyond it, those the view shows are dropped, then (a view that stopped
/// following, say) all: a read then waits for nothing, like any read.
const MAX_ACKNOWLEDGED: usize = 100_000;

/// What the merged view can say about a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRead {
    /// Its value, with every write this gateway acknowledged on it.
    Value(i128),
    /// The view lacks a write this gateway acknowledged: wait, or ask a node.
    Behind,
    /// The view cannot answer (no live stream, or a counter it never saw
    /// and no write to wait for): ask a node.
    Unknown,
    /// The view holds the counter deleted, or past its expiry on this
    /// gateway's clock: 404.
    Absent,
}

impl Replicas {
    /// Applies a state event from the node at `http_addr`; for a delta,
    /// returns what the picture of the cluster counts of it.
    pub fn apply(&mut self, http_addr: &str, event: NodeEvent) -> Option<DeltaSeen> {
        match event {
            NodeEvent::Snapshot {
                node,
                state,
                first,
                last,
            } => {
                if first {
                    let trail = self.nodes.entry(http_addr.to_owned()).or_default();
                    trail.starts_snapshot(&node);
                }
                self.merge_into_view(http_addr, &state);
                let trail = self.nodes.entry(http_addr.to_owned()).or_default();
                trail.receives_chunk(&state, &self.merged, last);
                if last {
                    self.mark_live(http_addr);
                }
                None
            }
            NodeEvent::Delta {
                node,
                delta,
                via_gossip,
            } => {
                let trail = self.nodes.entry(http_addr.to_owned()).or_default();
                node.clone_into(&mut trail.id);
                self.merge_into_view(http_addr, &delta);
                Some(DeltaSeen {
                    node,
                    via_gossip,
                    counters: delta.len(),
                })
            }
            NodeEvent::Members { .. } => None,
            NodeEvent::Collected { names, .. } => {
                self.collected(&names);
                None
            }
        }
    }

    /// Merges the news of the node at `from` into the merged view, noting
    /// the counters whose value it changed (for `/watch`); every other
    /// node falls behind on what moved, and `from` catches up on it.
    fn merge_into_view(&mut self, from: &str, news: &CounterMap) {
        for (name, counter) in news.counters() {
            // The view's copy before the news, cloned only for a node that
            // holds exactly it: news that changes nothing costs no copy.
            let needed =
                (self.nodes.values()).any(|trail| trail.covers(name) && !trail.differs_on(name));
            let current = self.merged.get(name.as_str());
            let value_before = current.map(PnCounter::value);
            let before = current.filter(|_| needed).cloned();
            if self.merge_counter(name, counter) {
                for (addr, trail) in &mut self.nodes {
                    if addr != from {
                        trail.falls_behind(name, before.as_ref());
                    }
                }
            }
            if let (Some(trail), Some(now)) =
                (self.nodes.get_mut(from), self.merged.get(name.as_str()))
            {
                trail.learns(name, counter, before.as_ref(), now);
            }
            if self.merged.value(name.as_str()) != value_before {
                self.changed.push(name.as_str().to_owned());
            }
        }
    }

    /// Merges one counter's news into the view and the browsers' news;
    /// whether the view changed.
    fn merge_counter(&mut self, name: &CounterName, counter: &PnCounter) -> bool {
        let mut changed = false;
        // Registrations first: an entry's duplicate keyed amount is
        // never counted without the registration that cancels it out.
        for registration in counter.registrations() {
            if self.merged.merge_registration(name, registration) {
                self.news.merge_registration(name, registration);
                changed = true;
            }
        }
        // Removals and expiry too, before the entries they explain: a
        // delete is news for browsers and the busiest list.
        if let Some(lifecycle) = counter.lifecycle() {
            if self.merged.merge_lifecycle(name, lifecycle) {
                self.news.merge_lifecycle(name, lifecycle);
                changed = true;
            }
        }
        for (actor, entry) in counter.entries() {
            if let Some(joined) = self.merged.merge_entry(name, actor, *entry) {
                self.news.merge_entry(name, actor, joined);
                changed = true;
            }
        }
        changed
    }

    /// A node dropped these deleted counters as garbage: so does the view
    /// (only those it also holds as deleted), and no trail keeps a copy.
    fn collected(&mut self, names: &[CounterName]) {
        for name in names {
            if self.merged.drop_collected(name.as_str()) {
                for trail in self.nodes.values_mut() {
                    trail.forget(name);
                }
            }
        }
    }

    /// Counters in the merged view (deleted ones not collected yet included).
    #[cfg(test)]
    fn view_size(&self) -> usize {
        self.merged.len()
    }

    /// The counters whose merged value changed since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed)
    }

    /// The merged view's values of these counters (for `/watch`).
    pub fn merged_values(&self, names: &[String]) -> Vec<(String, i128)> {
        let now = unix_now_ms();
        (names.iter())
            .filter(|name| !self.merged.is_expired(name, now))
            .filter_map(|name| Some((name.clone(), self.merged.value(name)?)))
            .collect()
    }

    /// A page of the merged view (for `/watch` snapshots).
    pub fn merged_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, i128)> {
        let now = unix_now_ms();
        (self.merged.page(prefix, after))
            .filter(|(_, counter)| counter.expiry().is_none_or(|at| at > now))
            .take(limit)
            .map(|(name, counter)| (name.as_str().to_owned(), counter.value()))
            .collect()
    }

    /// The entries the merged view learned since the last call.
    pub fn take_news(&mut self) -> CounterMap {
        std::mem::take(&mut self.news)
    }

    /// The merged view's value of one counter.
    pub fn merged_value(&self, name: &str) -> Option<i128> {
        self.merged.value(name)
    }

    /// The merged view's value of a counter that reads as present at
    /// `now_ms` (ms since the epoch): neither deleted nor past its expiry.
    pub fn merged_present_value(&self, name: &str, now_ms: u64) -> Option<i128> {
        if self.merged.is_expired(name, now_ms) {
            return None;
        }
        self.merged_value(name)
    }

    /// The next chunk of the merged view, restricted to the chunker's
    /// prefix (at most `max_bytes` encoded), and whether it is the last.
    pub fn merged_chunk(
        &self,
        chunker: &mut SnapshotChunker,
        max_bytes: usize,
    ) -> (CounterMap, bool) {
        chunker.next_chunk(&self.merged, max_bytes)
    }

    /// The node at `http_addr` summed up for browsers (its change counts
    /// and `cut_off` left for the caller to fill): O(counters it differs
    /// on), never a walk over every counter.
    pub fn node_summary(&self, http_addr: &str) -> Option<NodeSummary> {
        let trail = self.nodes.get(http_addr)?;
        Some(NodeSummary {
            id: trail.id.clone(),
            value: trail.default_value(&self.merged).unwrap_or(0),
            behind: trail.lag(&self.merged).map_or(0, |lag| lag.default),
            in_sync: trail.is_whole() && trail.differing() == 0,
            local_changes: 0,
            gossip_changes: 0,
            cut_off: false,
        })
    }

    /// Forgets a node's trail (what it contributed to the merge stays: merges only grow).
    pub fn remove(&mut self, http_addr: &str) {
        self.nodes.remove(http_addr);
        self.live.remove(http_addr);
    }

    /// The node's stream is connected and its whole state arrived.
    fn mark_live(&mut self, http_addr: &str) {
        if !self.live.contains(http_addr) {
            self.live.insert(http_addr.to_owned());
        }
    }

    /// The node's stream broke: the view no longer follows it.
    pub fn mark_offline(&mut self, http_addr: &str) {
        // Its trail stays: a crashed node changes no more, so what the
        // view learns meanwhile is what it lacks (until the trail grows
        // too long and gives up, or the node's next snapshot).
        self.live.remove(http_addr);
    }

    /// Records a write this gateway acknowledged: `actor` stamped it `seq`
    /// on `counter`. Nothing to remember when the view already holds it.
    pub fn acknowledged(&mut self, counter: &str, actor: &str, seq: u64) {
        if self.holds(counter, actor, seq) {
            return;
        }
        if !self.acknowledged.contains_key(counter) && self.acknowledged.len() >= MAX_ACKNOWLEDGED {
            let merged = &self.merged;
            self.acknowledged.retain(|counter, marks| {
                marks.retain(|(actor, seq)| !holds(merged, counter, actor, *seq));
                !marks.is_empty()
            });
            if self.acknowledged.len() >= MAX_ACKNOWLEDGED {
                self.acknowledged.clear();
            }
        }
        let marks = self.acknowledged.entry(counter.to_owned()).or_default();
        match marks.iter_mut().find(|(known, _)| known == actor) {
            Some((_, highest)) => *highest = (*highest).max(seq),
            None => marks.push((actor.to_owned(), seq)),
        }
    }

    /// Reads `counter` from the merged view (see [`LocalRead`]); forgets
    /// the acknowledged writes the view now holds.
    pub fn read(&mut self, counter: &str) -> LocalRead {
        if self.live.is_empty() {
            return LocalRead::Unknown;
        }
        if let Some(marks) = self.acknowledged.get_mut(counter) {
            let merged = &self.merged;
            marks.retain(|(actor, seq)| !holds(merged, counter, actor, *seq));
            if !marks.is_empty() {
                return LocalRead::Behind;
            }
            self.acknowledged.remove(counter);
        }
        let held = self.merged.get(counter).is_some();
        if held && self.merged.is_expired(counter, unix_now_ms()) {
            return LocalRead::Absent;
        }
        match self.merged.value(counter) {
            Some(value) => LocalRead::Value(value),
            None if held => LocalRead::Absent,
            None => LocalRead::Unknown,
        }
    }

    fn holds(&self, counter: &str, actor: &str, seq: u64) -> bool {
        holds(&self.merged, counter, actor, seq)
    }

    /// The node's value of the default counter (0 when never written),
    /// `None` while its stream has not delivered it.
    pub fn default_value(&self, http_addr: &str) -> Option<i128> {
        self.nodes.get(http_addr)?.default_value(&self.merged)
    }

    /// How far the node trails the merged view, `None` before its whole
    /// state arrived (or after its stream broke).
    pub fn lag(&self, http_addr: &str) -> Option<Lag> {
        self.nodes.get(http_addr)?.lag(&self.merged)
    }
}

/// Whether `map` holds `actor`'s write `seq` on `counter`: the actor's
/// entry there is at that seq or later (an entry's totals include every
/// earlier write of its actor on that counter).
fn holds(map: &CounterMap, counter: &str, actor: &str, seq: u64) -> bool {
    map.get(counter)
        .and_then(|counter| counter.entry(actor))
        .is_some_and(|entry| entry.seq >= seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::{ActorId, CounterName, Op, RemovalKind};

    fn write(map: &mut CounterMap, actor: &str, counter: &str, op: Op) -> CounterMap {
        let actor = ActorId::new(actor).unwrap();
        map.apply(&actor, &CounterName::new(counter).unwrap(), op)
            .unwrap()
    }

    /// The part of `map` that is counter `name` (entries only).
    fn only(map: &CounterMap, name: &str) -> CounterMap {
        let mut part = CounterMap::new();
        let counter = CounterName::new(name).unwrap();
        for (actor, entry) in map.get(name).unwrap().entries() {
            part.merge_entry(&counter, actor, *entry);
        }
        part
    }

    fn delta(node: &str, delta: CounterMap) -> NodeEvent {
        NodeEvent::Delta {
            node: node.into(),
            delta,
            via_gossip: false,
        }
    }

    #[test]
    fn an_up_to_date_node_has_no_lag() {
        let mut state = CounterMap::new();
        write(&mut state, "a", "default", Op::Increment(3));
        let mut replicas = Replicas::default();
        replicas.apply("h:1", snapshot("n1", state, true));
        assert_eq!(replicas.lag("h:1"), Some(Lag::default()));
        assert_eq!(replicas.nodes["h:1"].differing(), 0);
    }

    #[test]
    fn lag_counts_unseen_increments_and_decrements_per_counter() {
        let mut node = CounterMap::new();
        write(&mut node, "a", "default", Op::Increment(2));
        let mut replicas = Replicas::default();
        replicas.apply("h:1", snapshot("n1", node.clone(), true));
        let mut other = node.clone();
        let news = [
            write(&mut other, "a", "default", Op::Increment(5)),
            write(&mut other, "b", "default", Op::Decrement(1)),
            write(&mut other, "b", "other", Op::Increment(4)),
        ];
        for news in news {
            replicas.apply("h:2", delta("n2", news));
        }
        let expected = Lag {
            default: 5 + 1,
            total: 5 + 1 + 4,
            entries_behind: 3,
        };
        assert_eq!(replicas.lag("h:1"), Some(expected));
        // n2 streamed only its news, never a whole state: it has no lag to tell.
        assert_eq!(replicas.lag("h:2"), None);
        // n1 catches up on one counter: only the other is left.
        replicas.apply("h:1", delta("n1", only(&other, "default")));
        let left = Lag {
            default: 0,
            total: 4,
            entries_behind: 1,
        };
        assert_eq!(replicas.lag("h:1"), Some(left));
        assert_eq!(replicas.default_value("h:1"), Some(6));
    }

    #[test]
    fn a_trail_holds_only_what_is_in_flight() {
        let mut replicas = Replicas::default();
        let mut state = many_counters("a", 200);
        for addr in ["h:1", "h:2", "h:3"] {
            for event in chunked(addr, &state) {
                replicas.apply(addr, event);
            }
        }
        let news = write(&mut state, "a", "counter-7", Op::Increment(1));
        replicas.apply("h:1", delta("n1", news.clone()));
        let differing = |replicas: &Replicas| -> Vec<usize> {
            let addrs = ["h:1", "h:2", "h:3"];
            addrs
                .iter()
                .map(|a| replicas.nodes[*a].differing())
                .collect()
        };
        assert_eq!(differing(&replicas), [0, 1, 1]);
        replicas.apply("h:2", delta("n2", news.clone()));
        replicas.apply("h:3", delta("n3", news));
        assert_eq!(differing(&replicas), [0, 0, 0]);
        let summaries: Vec<bool> = ["h:1", "h:2", "h:3"]
            .iter()
            .map(|addr| replicas.node_summary(addr).unwrap().in_sync)
            .collect();
        assert_eq!(summaries, [true, true, true]);
    }

    #[test]
    fn a_snapshot_missing_counters_the_view_holds_trails_by_them() {
        let mut replicas = Replicas::default();
        let full = many_counters("a", 300);
        for event in chunked("n1", &full) {
            replicas.apply("h:1", event);
        }
        // n2 restarted from a copy holding every other counter.
        let mut half = CounterMap::new();
        for (name, _) in full.counters().step_by(2) {
            half.merge(&only(&full, name.as_str()));
        }
        let events = chunked("n2", &half);
        assert!(events.len() > 3, "{} chunks", events.len());
        for event in events {
            replicas.apply("h:2", event);
        }
        let lag = replicas.lag("h:2").unwrap();
        assert_eq!(lag.entries_behind, (full.len() - half.len()) as u64);
        assert_eq!(lag.total, lag.entries_behind);
        assert_eq!(replicas.lag("h:1"), Some(Lag::default()));
        // Its stream breaks: what the view learns meanwhile, it lacks.
        replicas.mark_offline("h:2");
        let mut more = full.clone();
        replicas.apply(
            "h:1",
            delta("n1", write(&mut more, "b", "default", Op::Increment(2))),
        );
        let after = replicas.lag("h:2").unwrap();
        assert_eq!(after.default, lag.default + 2);
        assert_eq!(after.entries_behind, lag.entries_behind + 1);
    }

    #[test]
    fn news_and_summaries_come_from_the_merged_view() {
        let mut n1 = CounterMap::new();
        let first = write(&mut n1, "a", "default", Op::Increment(2));
        let mut replicas = Replicas::default();
        for (addr, node) in [("h:1", "n1"), ("h:2", "n2")] {
            replicas.apply(addr, snapshot(node, CounterMap::new(), true));
        }
        for (addr, node) in [("h:1", "n1"), ("h:2", "n2")] {
            let event = NodeEvent::Delta {
                node: node.into(),
                delta: first.clone(),
                via_gossip: addr == "h:2",
            };
            replicas.apply(addr, event);
        }
        // The same write from two nodes is news once.
        assert_eq!(replicas.take_news(), first);
        assert!(replicas.take_news().is_empty());
        let second = write(&mut n1, "a", "page/x", Op::Increment(1));
        let third = write(&mut n1, "a", "default", Op::Decrement(1));
        for delta in [second, third] {
            let event = NodeEvent::Delta {
                node: "n1".into(),
                delta,
                via_gossip: false,
            };
            replicas.apply("h:1", event);
        }
        let news = replicas.take_news();
        assert_eq!(news.len(), 2);
        let n1 = replicas.node_summary("h:1").unwrap();
        let n2 = replicas.node_summary("h:2").unwrap();
        assert_eq!(
            (n1.id.as_str(), n1.value, n1.behind, n1.in_sync),
            ("n1", 1, 0, true)
        );
        assert_eq!(
            (n2.id.as_str(), n2.value, n2.behind, n2.in_sync),
            ("n2", 2, 1, false)
        );
        assert!(replicas.node_summary("h:3").is_none());
        let mut chunker = SnapshotChunker::with_prefix("page/");
        let (chunk, last) = replicas.merged_chunk(&mut chunker, 1024);
        assert!(last);
        assert_eq!(chunk.len(), 1);
        assert_eq!(chunk.value("page/x"), Some(1));
        assert_eq!(replicas.merged_value("default"), Some(1));
    }

    #[test]
    fn a_delete_or_an_expiry_leaves_the_merged_view_and_is_news() {
        let mut n1 = CounterMap::new();
        let actor = ActorId::new("a").unwrap();
        let mut replicas = Replicas::default();
        let stream = |replicas: &mut Replicas, delta: CounterMap| {
            let event = NodeEvent::Delta {
                node: "n1".into(),
                delta,
                via_gossip: false,
            };
            replicas.apply("h:1", event);
            replicas.take_news()
        };
        for name in ["gone", "brief"] {
            let delta = write(&mut n1, "a", name, Op::Increment(3));
            stream(&mut replicas, delta);
        }
        let gone = CounterName::new("gone").unwrap();
        let removal = n1.remove(&actor, &gone, RemovalKind::Delete, 1).unwrap();
        let news = stream(&mut replicas, removal.unwrap());
        assert!(news.get("gone").is_some_and(|c| c.lifecycle().is_some()));
        assert_eq!(replicas.merged_present_value("gone", 0), None);
        let brief = CounterName::new("brief").unwrap();
        let expiry = n1.set_expiry(&actor, &brief, 5_000).unwrap();
        stream(&mut replicas, expiry.unwrap());
        assert_eq!(replicas.merged_present_value("brief", 4_999), Some(3));
        assert_eq!(replicas.merged_present_value("brief", 5_000), None);
    }

    #[test]
    fn a_counter_a_node_collected_leaves_the_view_only_if_deleted_there() {
        let mut n1 = CounterMap::new();
        let actor = ActorId::new("a").unwrap();
        let mut replicas = Replicas::default();
        replicas.apply("h:1", snapshot("n1", CounterMap::new(), true));
        for name in ["gone", "kept"] {
            replicas.apply(
                "h:1",
                delta("n1", write(&mut n1, "a", name, Op::Increment(3))),
            );
        }
        let gone = CounterName::new("gone").unwrap();
        let removal = n1.remove(&actor, &gone, RemovalKind::Delete, 1).unwrap();
        replicas.apply("h:1", delta("n1", removal.unwrap()));
        assert_eq!(replicas.view_size(), 2);
        let collected = NodeEvent::Collected {
            node: "n1".into(),
            names: vec![gone, CounterName::new("kept").unwrap()],
        };
        assert_eq!(replicas.apply("h:1", collected), None);
        // "kept" reads as present in the view: a node cannot have collected it.
        assert_eq!(replicas.view_size(), 1);
        assert_eq!(replicas.merged_value("kept"), Some(3));
        assert_eq!(replicas.lag("h:1"), Some(Lag::default()));
    }

    fn many_counters(actor: &str, count: usize) -> CounterMap {
        let mut map = CounterMap::new();
        for i in 0..count {
            write(&mut map, actor, &format!("counter-{i}"), Op::Increment(1));
        }
        write(&mut map, actor, "default", Op::Increment(7));
        map
    }

    fn chunked(node: &str, state: &CounterMap) -> Vec<NodeEvent> {
        let chunks = tally_protocol::events::snapshot_chunks(state, 1024);
        let count = chunks.len();
        (chunks.into_iter().enumerate())
            .map(|(i, chunk)| NodeEvent::Snapshot {
                node: node.into(),
                state: chunk,
                first: i == 0,
                last: i + 1 == count,
            })
            .collect()
    }

    #[test]
    fn a_chunked_snapshot_starts_over_at_its_first_chunk() {
        let mut replicas = Replicas::default();
        // What the node held before it restarted from an older copy.
        let before = many_counters("old~1", 50);
        for event in chunked("n1", &before) {
            replicas.apply("h:1", event);
        }
        assert_eq!(replicas.default_value("h:1"), Some(7));
        let now = many_counters("new~2", 300);
        for event in chunked("n1", &now) {
            replicas.apply("h:1", event);
        }
        // The merged view keeps both; the node lacks what "old~1" wrote.
        assert_eq!(replicas.merged.value("default"), Some(14));
        assert_eq!(replicas.default_value("h:1"), Some(7));
        let lag = replicas.lag("h:1").unwrap();
        assert_eq!((lag.default, lag.entries_behind), (7, 51));
        // A browser catching up gets the merged view back in chunks.
        let mut chunker = SnapshotChunker::new();
        let mut caught_up = CounterMap::new();
        let mut chunks = 0;
        while !chunker.is_done() {
            let (chunk, _) = replicas.merged_chunk(&mut chunker, 1024);
            assert!(crdt_core::wire::encode(&chunk).len() <= 1024);
            caught_up.merge(&chunk);
            chunks += 1;
        }
        assert!(chunks > 3);
        assert_eq!(caught_up, replicas.merged);
    }

    fn snapshot(node: &str, state: CounterMap, last: bool) -> NodeEvent {
        NodeEvent::Snapshot {
            node: node.into(),
            state,
            first: true,
            last,
        }
    }

    #[test]
    fn reads_are_answered_locally_only_while_a_stream_is_live() {
        let mut state = CounterMap::new();
        write(&mut state, "n1~1", "c", Op::Increment(4));
        let mut replicas = Replicas::default();
        assert_eq!(
            replicas.read("c"),
            LocalRead::Unknown,
            "nothing followed yet"
        );
        replicas.apply("h:1", snapshot("n1", state.clone(), false));
        assert_eq!(
            replicas.read("c"),
            LocalRead::Unknown,
            "state not whole yet"
        );
        replicas.apply("h:1", snapshot("n1", state, true));
        assert_eq!(replicas.read("c"), LocalRead::Value(4));
        assert_eq!(replicas.read("never-written"), LocalRead::Unknown);
        replicas.mark_offline("h:1");
        assert_eq!(replicas.read("c"), LocalRead::Unknown, "stream broke");
    }

    #[test]
    fn a_read_waits_for_the_acknowledged_seq_of_every_actor() {
        let mut node = CounterMap::new();
        write(&mut node, "n1~1", "c", Op::Increment(1));
        let mut replicas = Replicas::default();
        replicas.apply("h:1", snapshot("n1", node.clone(), true));
        // Acknowledged, not streamed yet: seq 3 of n1~1 and seq 1 of n2~1.
        replicas.acknowledged("c", "n1~1", 3);
        replicas.acknowledged("c", "n1~1", 2);
        replicas.acknowledged("c", "n2~1", 1);
        // A write the view already holds is not remembered.
        replicas.acknowledged("c", "n1~1", 1);
        assert_eq!(replicas.read("c"), LocalRead::Behind);
        assert_eq!(replicas.read("unrelated"), LocalRead::Unknown);
        let delta = write(&mut node, "n1~1", "other", Op::Increment(1));
        let delta2 = write(&mut node, "n1~1", "c", Op::Increment(2));
        for delta in [delta, delta2] {
            replicas.apply(
                "h:1",
                NodeEvent::Delta {
                    node: "n1".into(),
                    delta,
                    via_gossip: false,
                },
            );
        }
        assert_eq!(replicas.read("c"), LocalRead::Behind, "n2~1 still missing");
        let mut other = CounterMap::new();
        let delta = write(&mut other, "n2~1", "c", Op::Decrement(1));
        replicas.apply(
            "h:2",
            NodeEvent::Delta {
                node: "n2".into(),
                delta,
                via_gossip: false,
            },
        );
        assert_eq!(replicas.read("c"), LocalRead::Value(2));
        assert!(
            replicas.acknowledged.is_empty(),
            "satisfied marks are forgotten"
        );
    }
}
