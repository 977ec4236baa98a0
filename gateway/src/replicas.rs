//! The gateway's copy of the cluster's data: each node's replica, their
//! merge, and how far each node trails it.
//!
//! Pure state (no I/O) so the merge rules can be tested directly: the
//! stream followers feed node events in, `/nodes` and browsers read views out.
use std::collections::HashMap;

use crdt_core::{CounterMap, DEFAULT_COUNTER};
use serde::{Deserialize, Serialize};
use tally_protocol::events::{ClusterEvent, NodeEvent, NodeSummary, SnapshotChunker};

/// Every node's replica, as its stream told us, and the merge of them all.
#[derive(Debug, Default)]
pub struct Replicas {
    /// By HTTP address: `(node id, its replica)`.
    nodes: HashMap<String, (String, CounterMap)>,
    merged: CounterMap,
    /// Counters whose merged value changed since [`Replicas::take_changed`].
    changed: Vec<String>,
    /// Entries the merged view learned since [`Replicas::take_news`]: what
    /// browsers are sent, once, however many nodes streamed the same write.
    news: CounterMap,
}

impl Replicas {
    /// Applies a state event from the node at `http_addr`; returns what browsers should see.
    pub fn apply(&mut self, http_addr: &str, event: NodeEvent) -> Option<ClusterEvent> {
        match event {
            NodeEvent::Snapshot {
                node,
                state,
                first,
                last,
            } => {
                self.merge_into_view(&state);
                let (id, replica) = self.nodes.entry(http_addr.to_owned()).or_default();
                id.clone_from(&node);
                // The first chunk is "this is all I have" so far; the rest add to it.
                if first {
                    replica.clone_from(&state);
                } else {
                    replica.merge(&state);
                }
                Some(ClusterEvent::NodeState {
                    node,
                    state,
                    first,
                    last,
                })
            }
            NodeEvent::Delta {
                node,
                delta,
                via_gossip,
            } => {
                self.merge_into_view(&delta);
                let (id, replica) = self.nodes.entry(http_addr.to_owned()).or_default();
                id.clone_from(&node);
                replica.merge(&delta);
                Some(ClusterEvent::NodeDelta {
                    node,
                    delta,
                    via_gossip,
                })
            }
            NodeEvent::Members { .. } => None,
        }
    }

    /// Merges a node's news into the merged view, noting the counters
    /// whose value it changed (for `/watch`).
    fn merge_into_view(&mut self, news: &CounterMap) {
        for (name, counter) in news.counters() {
            let before = self.merged.value(name.as_str());
            for (actor, entry) in counter.entries() {
                if let Some(joined) = self.merged.merge_entry(name, actor, *entry) {
                    self.news.merge_entry(name, actor, joined);
                }
            }
            if self.merged.value(name.as_str()) != before {
                self.changed.push(name.as_str().to_owned());
            }
        }
    }

    /// The counters whose merged value changed since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed)
    }

    /// The merged view's values of these counters (for `/watch`).
    pub fn merged_values(&self, names: &[String]) -> Vec<(String, i128)> {
        (names.iter())
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
        (self.merged.page(prefix, after))
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
    /// and `cut_off` left for the caller to fill): O(1) in the keyspace — the default
    /// counter's lag and a digest comparison, never a walk over every counter.
    pub fn node_summary(&self, http_addr: &str) -> Option<NodeSummary> {
        let (id, replica) = self.nodes.get(http_addr)?;
        Some(NodeSummary {
            id: id.clone(),
            value: replica.value(DEFAULT_COUNTER).unwrap_or(0),
            behind: default_behind(&self.merged, replica),
            in_sync: replica.digest() == self.merged.digest(),
            local_changes: 0,
            gossip_changes: 0,
            cut_off: false,
        })
    }

    /// Forgets a node's replica (what it contributed to the merge stays: merges only grow).
    pub fn remove(&mut self, http_addr: &str) {
        self.nodes.remove(http_addr);
    }

    /// The node's value of the default counter (0 when never written),
    /// `None` before its stream delivered anything.
    pub fn default_value(&self, http_addr: &str) -> Option<i128> {
        let (_, replica) = self.nodes.get(http_addr)?;
        Some(replica.value(DEFAULT_COUNTER).unwrap_or(0))
    }

    /// How far the node trails the merged view, `None` before its stream delivered anything.
    pub fn lag(&self, http_addr: &str) -> Option<Lag> {
        let (_, replica) = self.nodes.get(http_addr)?;
        Some(lag(&self.merged, replica))
    }
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

/// Increments plus decrements of the default counter the node has not seen.
fn default_behind(merged: &CounterMap, node: &CounterMap) -> u64 {
    let Some(ours) = merged.get(DEFAULT_COUNTER) else {
        return 0;
    };
    let theirs = node.get(DEFAULT_COUNTER);
    (ours.entries())
        .map(|(actor, ours)| {
            let seen = (theirs.and_then(|theirs| theirs.entry(actor.as_str())))
                .copied()
                .unwrap_or_default();
            let missing = (ours.inc.saturating_sub(seen.inc))
                .saturating_add(ours.dec.saturating_sub(seen.dec));
            u64::try_from(missing).unwrap_or(u64::MAX)
        })
        .fold(0, u64::saturating_add)
}

/// Compares a node's replica with the merged view, entry by entry.
///
/// Counters whose digests match are skipped, so an up-to-date node costs
/// one comparison per counter.
pub fn lag(merged: &CounterMap, node: &CounterMap) -> Lag {
    let mut lag = Lag::default();
    for (name, counter) in merged.counters() {
        let theirs = node.get(name.as_str());
        if theirs.is_some_and(|theirs| theirs.digest() == counter.digest()) {
            continue;
        }
        for (actor, ours) in counter.entries() {
            let seen = theirs
                .and_then(|theirs| theirs.entry(actor.as_str()))
                .copied()
                .unwrap_or_default();
            let missing = ours
                .inc
                .saturating_sub(seen.inc)
                .saturating_add(ours.dec.saturating_sub(seen.dec));
            // Totals are u128; the lag saturates like the sums below.
            let missing = u64::try_from(missing).unwrap_or(u64::MAX);
            if missing > 0 || ours.seq > seen.seq {
                lag.entries_behind += 1;
            }
            lag.total = lag.total.saturating_add(missing);
            if name.as_str() == DEFAULT_COUNTER {
                lag.default = lag.default.saturating_add(missing);
            }
        }
    }
    lag
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::{ActorId, CounterName, Op};

    fn write(map: &mut CounterMap, actor: &str, counter: &str, op: Op) -> CounterMap {
        let actor = ActorId::new(actor).unwrap();
        map.apply(&actor, &CounterName::new(counter).unwrap(), op)
            .unwrap()
    }

    #[test]
    fn an_up_to_date_node_has_no_lag() {
        let mut merged = CounterMap::new();
        write(&mut merged, "a", "default", Op::Increment(3));
        assert_eq!(lag(&merged, &merged.clone()), Lag::default());
    }

    #[test]
    fn lag_counts_unseen_increments_and_decrements_per_counter() {
        let mut node = CounterMap::new();
        write(&mut node, "a", "default", Op::Increment(2));
        let mut merged = node.clone();
        write(&mut merged, "a", "default", Op::Increment(5));
        write(&mut merged, "b", "default", Op::Decrement(1));
        write(&mut merged, "b", "other", Op::Increment(4));
        let lag = lag(&merged, &node);
        assert_eq!(
            lag,
            Lag {
                default: 5 + 1,
                total: 5 + 1 + 4,
                entries_behind: 3
            }
        );
    }

    #[test]
    fn replicas_replace_on_snapshot_and_merge_deltas() {
        let mut state = CounterMap::new();
        write(&mut state, "a", "default", Op::Increment(2));
        let mut replicas = Replicas::default();
        let snapshot = NodeEvent::Snapshot {
            node: "n1".into(),
            state: state.clone(),
            first: true,
            last: true,
        };
        let shown = replicas.apply("h:1", snapshot);
        assert!(matches!(shown, Some(ClusterEvent::NodeState { .. })));
        let delta = write(&mut state, "b", "default", Op::Increment(1));
        let event = NodeEvent::Delta {
            node: "n2".into(),
            delta,
            via_gossip: false,
        };
        replicas.apply("h:2", event);
        assert_eq!(replicas.default_value("h:1"), Some(2));
        assert_eq!(replicas.default_value("h:2"), Some(1));
        assert_eq!(replicas.lag("h:1").map(|l| l.default), Some(1));
        assert_eq!(replicas.lag("h:2").map(|l| l.default), Some(2));
        replicas.apply(
            "h:1",
            NodeEvent::Snapshot {
                node: "n1".into(),
                state,
                first: true,
                last: true,
            },
        );
        assert_eq!(replicas.lag("h:1"), Some(Lag::default()));
        assert_eq!(replicas.nodes.len(), 2);
    }

    #[test]
    fn news_and_summaries_come_from_the_merged_view() {
        let mut n1 = CounterMap::new();
        let first = write(&mut n1, "a", "default", Op::Increment(2));
        let mut replicas = Replicas::default();
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
    fn a_chunked_snapshot_replaces_at_its_first_chunk_and_merges_the_rest() {
        let mut replicas = Replicas::default();
        // What the node held before it restarted from an older copy.
        let before = many_counters("old~1", 50);
        for event in chunked("n1", &before) {
            replicas.apply("h:1", event);
        }
        assert_eq!(replicas.default_value("h:1"), Some(7));
        let now = many_counters("new~2", 300);
        let events = chunked("n1", &now);
        assert!(events.len() > 3, "{} chunks", events.len());
        let mut events = events.into_iter();
        replicas.apply("h:1", events.next().unwrap());
        // The first chunk replaced the old state: none of "old~1" is left.
        let partial = &replicas.nodes["h:1"].1;
        assert!(partial.counters().all(|(_, c)| c.entry("old~1").is_none()));
        for event in events {
            let shown = replicas.apply("h:1", event);
            assert!(matches!(
                shown,
                Some(ClusterEvent::NodeState { first: false, .. })
            ));
        }
        assert_eq!(replicas.nodes["h:1"].1, now);
        // The merged view keeps both.
        assert_eq!(replicas.merged.value("default"), Some(14));
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
}
