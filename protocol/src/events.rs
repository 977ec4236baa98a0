//! The live state stream: what a node sends to the gateway on its `/ws`,
//! and what the gateway sends to browsers on its own `/ws`.
//!
//! Every WebSocket message is one binary frame holding one event encoded
//! with [`crdt_core::wire`]. States travel once, on connect; after that only
//! deltas (the entries that changed) flow, so a large keyspace never
//! crosses the wire per change.
//!
//! A whole state travels in chunks ([`NodeEvent::Snapshot`],
//! [`ClusterEvent::Counters`]), each at most [`SNAPSHOT_CHUNK_BYTES`]
//! encoded (see [`SnapshotChunker`]), never as one frame: a node with a
//! million counters would otherwise send one frame of tens of MiB, over any
//! sane WebSocket frame limit. The first chunk replaces the receiver's copy
//! of that node's state; every later chunk merges into it (a CRDT merge, so
//! chunks and deltas interleave harmlessly); `last` marks the end.

use crdt_core::{ActorId, CounterMap, CounterName, Entry, Lifecycle, PnCounter, Registration};

/// Default size of one snapshot chunk: the encoded counter map of one
/// `Snapshot`/`Counters` event is at most this many bytes (the event adds
/// at most [`CHUNK_ENVELOPE_BYTES`]).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Smallest chunk size [`SnapshotChunker`] honours: one entry (a 128-byte
/// name, a 128-byte actor and three varints) always fits.
pub const MIN_SNAPSHOT_CHUNK_BYTES: usize = 1024;

/// What a `Snapshot`/`Counters` event adds around its chunk: variant tag,
/// node id (at most 64 bytes) and the two flags.
pub const CHUNK_ENVELOPE_BYTES: usize = 128;

/// A member as a node or the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The node's id (`--id`).
    pub id: String,
    /// Where it gossips.
    pub gossip_addr: String,
    /// Where it serves HTTP.
    pub http_addr: String,
    /// `alive`, `suspect` or `dead` (as the reporting node sees it).
    pub status: String,
}

/// Events on a node's `/ws`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum NodeEvent {
    /// One chunk of the node's whole replica: sent first on connect, and
    /// again to a subscriber that fell behind.
    Snapshot {
        /// The node's id.
        node: String,
        /// Part of its state (at most the node's chunk size, encoded).
        state: CounterMap,
        /// The first chunk: the receiver replaces its copy of this node's
        /// state with it; later chunks merge into the copy.
        first: bool,
        /// The last chunk: the whole state has arrived.
        last: bool,
    },
    /// Entries that changed at the node, by a local write or by gossip.
    Delta {
        /// The node's id.
        node: String,
        /// The changed entries.
        delta: CounterMap,
        /// True when the change came from a peer (gossip), false for a local write.
        via_gossip: bool,
    },
    /// The node's membership view, sent on connect and when it changes.
    Members {
        /// The node's id.
        node: String,
        /// Every member it knows, itself included.
        members: Vec<MemberInfo>,
    },
    /// Deleted counters the node's garbage collection dropped (at most
    /// [`MAX_COLLECTED_NAMES`] per event). They were stable: every member
    /// held all of each, removal included, so a follower may drop its copy
    /// too, and any later write starts them afresh.
    Collected {
        /// The node's id.
        node: String,
        /// The dropped counters.
        names: Vec<CounterName>,
    },
}

/// Most counter names one [`NodeEvent::Collected`] carries (~1 MiB at
/// the longest names).
pub const MAX_COLLECTED_NAMES: usize = 8192;

/// Health of a node as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeHealth {
    /// The node's id (or its HTTP address until the id is known).
    pub id: String,
    /// Its HTTP address.
    pub http_addr: String,
    /// Whether it is in the gateway's rotation.
    pub healthy: bool,
    /// Whether the demo partitioned it from its peers.
    pub partitioned: bool,
}

/// Events on the gateway's `/ws`, for browsers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ClusterEvent {
    /// The set of nodes and their health (on connect and on every change).
    Nodes {
        /// Every node the gateway knows.
        nodes: Vec<NodeHealth>,
        /// True when the gateway can crash/restart/partition nodes (demo mode).
        controls: bool,
    },
    /// One chunk of the gateway's merged view, only the counters whose names
    /// start with the browser's `prefix` (`/ws?prefix=P`): sent on connect
    /// and to a browser that fell behind. The browser's counters come from
    /// this, not from every node's replica, so a page costs one copy of what
    /// it asked for.
    Counters {
        /// The subscription this chunk answers (empty: every counter).
        prefix: String,
        /// Part of the merged view (at most the gateway's chunk size, encoded).
        state: CounterMap,
        /// The first chunk: replaces the browser's counters; later chunks merge.
        first: bool,
        /// The last chunk: the whole subscription has arrived.
        last: bool,
    },
    /// Entries that changed in the merged view, only for counters matching
    /// the browser's prefix. A write reaching the gateway from three nodes'
    /// streams is news once, so it is sent once.
    CountersDelta {
        /// The changed entries (joined values, merge them).
        delta: CounterMap,
    },
    /// Each node summed up by the gateway (on connect, then at most twice a
    /// second when something changed): what the picture of the cluster
    /// needs, without any node's replica crossing the wire.
    Summary {
        /// One per node the gateway follows.
        nodes: Vec<NodeSummary>,
    },
    /// The counters written most in the last seconds, over the whole
    /// keyspace, whatever the browser's prefix (on connect, then about
    /// once a second when it changed).
    Busiest {
        /// Busiest first, at most [`BUSIEST_COUNTERS`].
        top: Vec<BusyCounter>,
    },
}

/// How many counters a [`ClusterEvent::Busiest`] lists at most.
pub const BUSIEST_COUNTERS: usize = 20;

/// One node as the gateway sums it up for browsers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeSummary {
    /// The node's id.
    pub id: String,
    /// Its value of the default counter.
    pub value: i128,
    /// Increments plus decrements of the default counter it has not seen yet.
    pub behind: u64,
    /// Whether it holds exactly the gateway's merged view (digests equal).
    pub in_sync: bool,
    /// Counters it changed by local writes, counted since the gateway
    /// started following it (only grows; a browser diffs two summaries).
    pub local_changes: u64,
    /// Counters it learned from peers by gossip, counted the same way.
    pub gossip_changes: u64,
    /// Most of the other nodes' membership views call it suspect or dead:
    /// cut off from its peers (a partition, or a crash) as the cluster sees
    /// it, whether or not the gateway still reaches it.
    pub cut_off: bool,
}

/// One row of [`ClusterEvent::Busiest`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BusyCounter {
    /// The counter.
    pub name: String,
    /// Its recent changes per second (exponentially decayed, ~10 s memory).
    pub per_second: f32,
    /// Its merged value.
    pub value: i128,
}

/// Cuts a counter map into chunks whose encoding stays under a size, one
/// call at a time, so a sender can take each chunk under a short lock and
/// send it before taking the next; the map may change in between.
///
/// Chunks are cut between entries (a counter with many actors may span
/// chunks). Each is a sub-map of the map as it was when that chunk was
/// taken, so merging every chunk of a pass yields at least every entry the
/// map held when the pass began and never held entries it did not; a
/// counter created behind the cursor mid-pass is missed, which is why a
/// sender subscribes to changes *before* the first chunk.
#[derive(Debug, Clone, Default)]
pub struct SnapshotChunker {
    /// The last entry handed out: the next chunk starts after it.
    cursor: Option<(CounterName, ActorId)>,
    done: bool,
    /// Only counters whose names start with this (empty: all).
    prefix: String,
    /// Counters still to hand out before the pass ends early (None: all).
    left: Option<usize>,
    /// The pass ended at its limit with counters left over.
    cut: bool,
}

impl SnapshotChunker {
    /// A pass starting at the first counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pass over only the counters whose names start with `prefix`.
    pub fn with_prefix(prefix: &str) -> Self {
        SnapshotChunker {
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }

    /// Ends the pass after `counters` counters (in name order): a page
    /// that asks for a million counters' prefix gets the first few
    /// thousand, and the changes of all of them as they happen.
    pub fn limit(mut self, counters: usize) -> Self {
        self.left = Some(counters);
        self
    }

    /// True once the last chunk was handed out.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The last counter handed out when the pass stopped at its limit with
    /// more matching counters left: the subscriber's window ends there, so
    /// the changes it is sent stop there too. `None`: nothing was left out.
    pub fn window_end(&self) -> Option<&CounterName> {
        let (name, _) = self.cursor.as_ref().filter(|_| self.cut)?;
        Some(name)
    }

    /// The next chunk of `map`, at most `max_bytes` encoded (at least
    /// [`MIN_SNAPSHOT_CHUNK_BYTES`]), and whether it is the last. An empty
    /// map gives one empty, last chunk.
    pub fn next_chunk(&mut self, map: &CounterMap, max_bytes: usize) -> (CounterMap, bool) {
        let budget = max_bytes.max(MIN_SNAPSHOT_CHUNK_BYTES);
        let start = self.cursor.clone();
        let mut chunk = CounterMap::new();
        // The empty map encodes as one varint: its length.
        let mut size = varint_len(0);
        let mut counters = 0u128;
        // The rest of the counter the previous chunk stopped in, then every later counter.
        let current = start
            .as_ref()
            .and_then(|(name, actor)| Some((name, map.get(name.as_str())?, Some(actor))));
        // A copy: the loop below moves the cursor while the page borrows.
        let prefix = self.prefix.clone();
        // Deleted counters too: a follower holding an older copy learns of
        // the removal only from its lifecycle.
        let later = map
            .all_from(&prefix, start.as_ref().map(|(name, _)| name.as_str()))
            .map(|(name, counter)| (name, counter, None));
        for (name, counter, after) in current.into_iter().chain(later) {
            // A counter begun in an earlier chunk was already counted.
            if after.is_none() && self.left == Some(0) {
                self.cut = true;
                break;
            }
            let entries = (counter.entries())
                .filter(|(actor, _)| after.is_none_or(|after| actor.as_str() > after.as_str()));
            // `taken`: entries of this counter already in the chunk.
            // A counter's registrations and lifecycle go with its first
            // piece; a piece continuing it in a later chunk carries none.
            let (registrations, lifecycle): (Vec<&Registration>, Option<&Lifecycle>) =
                if after.is_none() {
                    (counter.registrations().collect(), counter.lifecycle())
                } else {
                    (Vec::new(), None)
                };
            for (taken, (actor, entry)) in (0u128..).zip(entries) {
                let entry_bytes = entry_len(actor, entry);
                let grows = if taken == 0 {
                    // A new element of the map: name, entry list, one
                    // entry, registration list.
                    str_len(name.as_str())
                        + varint_len(1)
                        + entry_bytes
                        + registrations_len(registrations.iter().copied())
                        + lifecycle_len(lifecycle)
                        + varint_len(counters + 1)
                        - varint_len(counters)
                } else {
                    entry_bytes + varint_len(taken + 1) - varint_len(taken)
                };
                if size + grows > budget && !chunk.is_empty() {
                    return (chunk, false);
                }
                if taken == 0 {
                    for registration in &registrations {
                        chunk.merge_registration(name, registration);
                    }
                    if let Some(lifecycle) = lifecycle {
                        chunk.merge_lifecycle(name, lifecycle);
                    }
                }
                chunk.merge_entry(name, actor, *entry);
                size += grows;
                if taken == 0 {
                    counters += 1;
                    if after.is_none() {
                        self.left = self.left.map(|left| left.saturating_sub(1));
                    }
                }
                self.cursor = Some((name.clone(), actor.clone()));
            }
        }
        self.done = true;
        (chunk, true)
    }
}

/// Every chunk of `map` at once: [`SnapshotChunker`] run to the end.
pub fn snapshot_chunks(map: &CounterMap, max_bytes: usize) -> Vec<CounterMap> {
    let mut chunker = SnapshotChunker::new();
    let mut chunks = Vec::new();
    while !chunker.is_done() {
        chunks.push(chunker.next_chunk(map, max_bytes).0);
    }
    chunks
}

/// Bytes of a LEB128 varint (postcard's encoding of every integer here).
fn varint_len(value: u128) -> usize {
    let bits = 128 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Bytes of an encoded string: its length, then its bytes.
fn str_len(text: &str) -> usize {
    varint_len(text.len() as u128) + text.len()
}

/// Bytes of one encoded `(actor, entry)` pair.
fn entry_len(actor: &ActorId, entry: &Entry) -> usize {
    str_len(actor.as_str())
        + varint_len(entry.inc)
        + varint_len(entry.dec)
        + varint_len(u128::from(entry.seq))
        + varint_len(u128::from(entry.since))
}

/// Bytes of an encoded optional lifecycle.
fn lifecycle_len(lifecycle: Option<&Lifecycle>) -> usize {
    1 + lifecycle.map_or(0, |l| crdt_core::wire::encode(l).len())
}

/// Bytes of an encoded list of registrations.
fn registrations_len<'a>(registrations: impl Iterator<Item = &'a Registration>) -> usize {
    let (count, bytes) = registrations.fold((0u128, 0usize), |(count, bytes), registration| {
        (count + 1, bytes + registration_len(registration))
    });
    varint_len(count) + bytes
}

/// Bytes of one encoded registration, field by field (no encoding needed).
fn registration_len(registration: &Registration) -> usize {
    let amount = match registration.op {
        crdt_core::Op::Increment(amount) | crdt_core::Op::Decrement(amount) => amount,
    };
    // postcard: an enum is its variant index then its field; an i128 is a zigzag varint.
    let value = registration.value;
    let zigzag = ((value << 1) ^ (value >> 127)) as u128;
    str_len(registration.key.as_str())
        + str_len(registration.origin.as_str())
        + varint_len(0)
        + varint_len(u128::from(amount))
        + varint_len(u128::from(registration.at_ms))
        + varint_len(u128::from(registration.seq))
        + varint_len(zigzag)
        + varint_len(u128::from(registration.cancelled_seq))
        + varint_len(u128::from(registration.window_ms))
}

/// Bytes of one counter as a map encodes it (name, its entries, its
/// registrations, its lifecycle).
pub fn encoded_counter_len(name: &CounterName, counter: &PnCounter) -> usize {
    str_len(name.as_str())
        + varint_len(counter.actors() as u128)
        + (counter.entries())
            .map(|(actor, entry)| entry_len(actor, entry))
            .sum::<usize>()
        + registrations_len(counter.registrations())
        + lifecycle_len(counter.lifecycle())
}

#[cfg(test)]
mod tests {
    use crdt_core::{wire, ActorId, CounterName, Op, RemovalKind};
    use proptest::prelude::*;

    use super::*;

    fn a_map(writes: &[(u8, u8, u32)]) -> CounterMap {
        let mut map = CounterMap::new();
        for &(actor, name, amount) in writes {
            let actor = ActorId::new(&format!("node-{actor}~x")).unwrap();
            let name = CounterName::new(&format!("c{name}")).unwrap();
            let _ = map.apply(&actor, &name, Op::Increment(u64::from(amount)));
        }
        map
    }

    fn every_event(map: &CounterMap) -> (Vec<NodeEvent>, Vec<ClusterEvent>) {
        let node = "node-1".to_owned();
        let node_events = vec![
            NodeEvent::Snapshot {
                node: node.clone(),
                state: map.clone(),
                first: true,
                last: false,
            },
            NodeEvent::Delta {
                node: node.clone(),
                delta: map.clone(),
                via_gossip: true,
            },
            NodeEvent::Members {
                node: node.clone(),
                members: vec![MemberInfo {
                    id: node.clone(),
                    gossip_addr: "127.0.0.1:7000".into(),
                    http_addr: "127.0.0.1:8000".into(),
                    status: "alive".into(),
                }],
            },
            NodeEvent::Collected {
                node: node.clone(),
                names: vec![CounterName::new("gone").unwrap()],
            },
        ];
        let cluster_events = vec![
            ClusterEvent::Nodes {
                nodes: vec![NodeHealth {
                    id: node.clone(),
                    http_addr: "127.0.0.1:8000".into(),
                    healthy: true,
                    partitioned: false,
                }],
                controls: true,
            },
            ClusterEvent::Counters {
                prefix: "c1".into(),
                state: map.clone(),
                first: true,
                last: false,
            },
            ClusterEvent::CountersDelta { delta: map.clone() },
            ClusterEvent::Summary {
                nodes: vec![NodeSummary {
                    id: node.clone(),
                    value: -3,
                    behind: 2,
                    in_sync: false,
                    local_changes: 7,
                    gossip_changes: 9,
                    cut_off: true,
                }],
            },
            ClusterEvent::Busiest {
                top: vec![BusyCounter {
                    name: "c1".into(),
                    per_second: 2.5,
                    value: i128::MIN,
                }],
            },
        ];
        (node_events, cluster_events)
    }

    /// Many actors on few counters, so counters span chunks.
    fn a_wide_map(actors: u32, counters: u32) -> CounterMap {
        let mut map = CounterMap::new();
        for a in 0..actors {
            let actor = ActorId::new(&format!("a-rather-long-actor-name-{a}~1")).unwrap();
            for c in 0..counters {
                let name = CounterName::new(&format!("counter-{c}")).unwrap();
                let _ = map.apply(&actor, &name, Op::Increment(u64::from(a + c + 1)));
            }
        }
        map
    }

    #[test]
    fn chunk_sizes_are_computed_exactly() {
        let mut map = a_wide_map(7, 50);
        // Some counters deleted, reset, or given an expiry: lifecycles travel too.
        let remover = ActorId::new("remover~1").unwrap();
        for c in (0..50).step_by(3) {
            let name = CounterName::new(&format!("counter-{c}")).unwrap();
            let kind = [RemovalKind::Delete, RemovalKind::Reset][c % 2];
            map.remove(&remover, &name, kind, 1_000 + c as u64).unwrap();
            let _ = map.set_expiry(&remover, &name, 9_000);
        }
        for (name, counter) in map.counters() {
            let mut single = CounterMap::new();
            for (actor, entry) in counter.entries() {
                single.merge_entry(name, actor, *entry);
            }
            for registration in counter.registrations() {
                single.merge_registration(name, registration);
            }
            if let Some(lifecycle) = counter.lifecycle() {
                single.merge_lifecycle(name, lifecycle);
            }
            // The map's own length varint (1 byte for one counter) plus the counter.
            let expected = wire::encode(&single).len() - 1;
            assert_eq!(encoded_counter_len(name, counter), expected);
        }
        for max in [1024, 1500, 4096] {
            let chunks = snapshot_chunks(&map, max);
            assert!(chunks.len() > 1, "{max}: one chunk");
            let mut merged = CounterMap::new();
            for chunk in &chunks {
                assert!(wire::encode(chunk).len() <= max);
                merged.merge(chunk);
            }
            assert_eq!(merged, map, "{max}: deleted counters and lifecycles arrive");
        }
    }

    #[test]
    fn registration_sizes_are_computed_exactly() {
        let actor = ActorId::new("node-1~x").unwrap();
        let mut map = CounterMap::new();
        for (i, op) in [
            Op::Increment(1),
            Op::Decrement(i64::MAX as u64),
            Op::Increment(300),
        ]
        .into_iter()
        .enumerate()
        {
            let key = crdt_core::IdempotencyKey::new(&format!("key-{i}")).unwrap();
            let name = CounterName::new("keyed").unwrap();
            map.apply_keyed(&actor, &name, op, &key, u64::MAX - i as u64, u64::MAX)
                .unwrap();
        }
        for registration in map.get("keyed").unwrap().registrations() {
            assert_eq!(
                registration_len(registration),
                wire::encode(registration).len()
            );
        }
    }

    #[test]
    fn chunks_carry_deleted_reset_and_expiring_counters_with_their_lifecycle() {
        let mut map = a_wide_map(6, 30);
        let remover = ActorId::new("a-rather-long-actor-name-0~1").unwrap();
        let name = |text: &str| CounterName::new(text).unwrap();
        map.remove(&remover, &name("counter-3"), RemovalKind::Delete, 5)
            .unwrap();
        map.remove(&remover, &name("counter-4"), RemovalKind::Reset, 6)
            .unwrap();
        map.set_expiry(&remover, &name("counter-5"), 1_000).unwrap();
        for (name, counter) in map.counters() {
            let mut single = CounterMap::new();
            let registrations: Vec<Registration> = counter.registrations().cloned().collect();
            let entries = counter
                .entries()
                .map(|(actor, entry)| (actor.clone(), *entry));
            single.merge_counter(name, entries, &registrations, counter.lifecycle());
            let expected = wire::encode(&single).len() - 1;
            assert_eq!(encoded_counter_len(name, counter), expected, "{name}");
        }
        let chunks = snapshot_chunks(&map, 1024);
        let mut merged = CounterMap::new();
        for chunk in &chunks {
            assert!(wire::encode(chunk).len() <= 1024);
            merged.merge(chunk);
        }
        assert_eq!(merged, map);
        assert_eq!(merged.value("counter-3"), None, "still deleted");
        assert_eq!(merged.value("counter-4"), Some(0), "still reset");
        assert!(merged.is_expired("counter-5", 1_000));
    }

    #[test]
    fn a_counter_with_many_actors_spans_chunks() {
        let map = a_wide_map(200, 1);
        let chunks = snapshot_chunks(&map, 1024);
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        let mut merged = CounterMap::new();
        for chunk in &chunks {
            assert_eq!(chunk.len(), 1);
            merged.merge(chunk);
        }
        assert_eq!(merged, map);
    }

    #[test]
    fn a_prefix_pass_carries_exactly_the_matching_counters() {
        let mut map = a_wide_map(5, 40);
        let writer = ActorId::new("w~1").unwrap();
        for name in ["counter", "counter-1x", "count", "d", "a"] {
            let _ = map.apply(&writer, &CounterName::new(name).unwrap(), Op::Increment(1));
        }
        let mut chunker = SnapshotChunker::with_prefix("counter-1");
        let mut merged = CounterMap::new();
        let mut chunks = 0;
        while !chunker.is_done() {
            let (chunk, _) = chunker.next_chunk(&map, 1024);
            assert!(wire::encode(&chunk).len() <= 1024);
            merged.merge(&chunk);
            chunks += 1;
        }
        assert!(chunks > 1, "{chunks} chunks");
        let expected: Vec<&str> = (map.page("counter-1", None))
            .map(|(name, _)| name.as_str())
            .collect();
        let got: Vec<&str> = merged.counters().map(|(name, _)| name.as_str()).collect();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 12, "counter-1, counter-10..19, counter-1x");
        for (name, counter) in merged.counters() {
            assert_eq!(map.get(name.as_str()), Some(counter));
        }
        // A limit ends the pass early, after whole counters.
        let mut limited = SnapshotChunker::with_prefix("counter-1").limit(3);
        let mut merged = CounterMap::new();
        while !limited.is_done() {
            merged.merge(&limited.next_chunk(&map, 1024).0);
        }
        let names: Vec<&str> = merged.counters().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["counter-1", "counter-10", "counter-11"]);
        for (name, counter) in merged.counters() {
            assert_eq!(map.get(name.as_str()), Some(counter), "{name} cut short");
        }
        assert_eq!(limited.window_end().map(|n| n.as_str()), Some("counter-11"));
        // A limit that leaves nothing out leaves the window open.
        let mut roomy = SnapshotChunker::with_prefix("counter-1").limit(12);
        while !roomy.is_done() {
            roomy.next_chunk(&map, 1024);
        }
        assert_eq!(roomy.window_end(), None);
        // Nothing matches: one empty, last chunk.
        let (chunk, last) = SnapshotChunker::with_prefix("zzz").next_chunk(&map, 1024);
        assert!(chunk.is_empty() && last);
    }

    #[test]
    fn an_empty_map_is_one_empty_last_chunk() {
        let mut chunker = SnapshotChunker::new();
        let (chunk, last) = chunker.next_chunk(&CounterMap::new(), 0);
        assert!(chunk.is_empty() && last && chunker.is_done());
    }

    #[test]
    fn a_map_changing_between_chunks_loses_nothing_it_held_at_the_start() {
        let mut map = a_wide_map(3, 100);
        let at_start = map.clone();
        let mut chunker = SnapshotChunker::new();
        let mut merged = CounterMap::new();
        let writer = ActorId::new("late~1").unwrap();
        let mut round = 0;
        while !chunker.is_done() {
            merged.merge(&chunker.next_chunk(&map, 1024).0);
            // Writes land before and after the cursor while the pass runs.
            for name in ["counter-0", "counter-50", "counter-99", "zzz", "aaa"] {
                let name = CounterName::new(&format!("{name}-{round}")).unwrap();
                let _ = map.apply(&writer, &name, Op::Increment(1));
            }
            round += 1;
        }
        let mut check = merged.clone();
        assert!(
            !check.merge(&at_start),
            "a chunk lost an entry held at the start"
        );
        for (name, counter) in merged.counters() {
            for (actor, entry) in counter.entries() {
                assert_eq!(
                    map.get(name.as_str()).and_then(|c| c.entry(actor.as_str())),
                    Some(entry)
                );
            }
        }
    }

    proptest! {
        #[test]
        fn every_event_survives_the_wire(writes in prop::collection::vec(any::<(u8, u8, u32)>(), 0..20)) {
            let (node_events, cluster_events) = every_event(&a_map(&writes));
            for event in &node_events {
                let decoded: NodeEvent = wire::decode(&wire::encode(event)).unwrap();
                prop_assert_eq!(&decoded, event);
            }
            for event in &cluster_events {
                let decoded: ClusterEvent = wire::decode(&wire::encode(event)).unwrap();
                prop_assert_eq!(&decoded, event);
            }
        }

        #[test]
        fn a_map_cut_into_chunks_merges_back_into_the_same_map(
            writes in prop::collection::vec(any::<(u8, u8, u32)>(), 0..300),
            max_bytes in 0usize..4096,
        ) {
            let map = a_map(&writes);
            let chunks = snapshot_chunks(&map, max_bytes);
            let budget = max_bytes.max(MIN_SNAPSHOT_CHUNK_BYTES);
            let mut merged = CounterMap::new();
            for chunk in &chunks {
                let encoded = wire::encode(chunk);
                prop_assert!(encoded.len() <= budget, "{} > {budget}", encoded.len());
                prop_assert!(!chunk.is_empty() || chunks.len() == 1);
                let decoded: CounterMap = wire::decode(&encoded).unwrap();
                merged.merge(&decoded);
            }
            prop_assert_eq!(&merged, &map);
            prop_assert_eq!(merged.digest(), map.digest());
            // No entry travels twice.
            let sent: usize = chunks.iter().map(CounterMap::entry_count).sum();
            prop_assert_eq!(sent, map.entry_count());
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = wire::decode::<NodeEvent>(&bytes);
            let _ = wire::decode::<ClusterEvent>(&bytes);
        }
    }
}
