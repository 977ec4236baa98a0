//! The observer replica, driven as the gateway's stream drives it: encoded
//! `ClusterEvent` frames, in and out of order, duplicated and broken.
//!
//! Runs natively (`cargo test -p tally-web`) and in headless Chromium
//! (`wasm-pack test --headless --chrome --chromedriver /usr/bin/chromedriver web`).
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op};
use tally_protocol::events::{snapshot_chunks, ClusterEvent, NodeHealth};
use tally_web::observer::{Convergence, Health, LogKind, Observer, Tone, Update};
use tally_web::socket::{retry_delay_ms, Link, LinkState, MAX_RETRY_MS};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// One node's replica, writing as its own actor.
struct Node {
    id: String,
    actor: ActorId,
    state: CounterMap,
}

impl Node {
    fn new(id: &str) -> Self {
        Node {
            id: id.to_owned(),
            actor: ActorId::new(&format!("{id}~1")).expect("valid actor"),
            state: CounterMap::new(),
        }
    }

    /// A client writes here: the delta the node would stream.
    fn write(&mut self, counter: &str, op: Op) -> ClusterEvent {
        let name = CounterName::new(counter).expect("valid name");
        let delta = self.state.apply(&self.actor, &name, op).expect("applies");
        self.delta(delta, false)
    }

    /// The node learns `delta` from a peer.
    fn gossip(&mut self, delta: &CounterMap) -> ClusterEvent {
        let news = self.state.merge_changed(delta.all_changes());
        self.delta(news, true)
    }

    fn delta(&self, delta: CounterMap, via_gossip: bool) -> ClusterEvent {
        ClusterEvent::NodeDelta {
            node: self.id.clone(),
            delta,
            via_gossip,
        }
    }

    fn snapshot(&self) -> ClusterEvent {
        ClusterEvent::NodeState {
            node: self.id.clone(),
            state: self.state.clone(),
            first: true,
            last: true,
        }
    }

    /// Its state as the gateway sends a large one: chunks of at most `max_bytes`.
    fn snapshot_in_chunks(&self, max_bytes: usize) -> Vec<ClusterEvent> {
        let chunks = snapshot_chunks(&self.state, max_bytes);
        let count = chunks.len();
        (chunks.into_iter().enumerate())
            .map(|(i, state)| ClusterEvent::NodeState {
                node: self.id.clone(),
                state,
                first: i == 0,
                last: i + 1 == count,
            })
            .collect()
    }
}

fn delta_of(event: &ClusterEvent) -> &CounterMap {
    match event {
        ClusterEvent::NodeDelta { delta, .. } => delta,
        other => panic!("expected a delta, got {other:?}"),
    }
}

fn nodes(list: &[(&str, bool, bool)]) -> ClusterEvent {
    ClusterEvent::Nodes {
        nodes: list
            .iter()
            .map(|&(id, healthy, partitioned)| NodeHealth {
                id: id.to_owned(),
                http_addr: format!("127.0.0.1:80{}", id.len()),
                healthy,
                partitioned,
            })
            .collect(),
        controls: false,
    }
}

fn feed(observer: &mut Observer, events: &[ClusterEvent]) {
    for (i, event) in events.iter().enumerate() {
        let bytes = wire::encode(event);
        observer
            .receive(&bytes, i as f64)
            .expect("a well-formed frame decodes");
    }
}

/// A fixed permutation (xorshift): reproducible without a `rand` dependency.
fn shuffled<T: Clone>(items: &[T], mut seed: u64) -> Vec<T> {
    let mut items = items.to_vec();
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    items
}

/// Three nodes writing to two counters, with partial gossip between them.
fn history() -> (Vec<ClusterEvent>, CounterMap) {
    let (mut a, mut b, mut c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let mut events = vec![a.snapshot(), b.snapshot(), c.snapshot()];
    for round in 0..6u64 {
        let wa = a.write("default", Op::Increment(round + 1));
        let wb = b.write("clicks", Op::Decrement(2));
        let wc = c.write("default", Op::Increment(10));
        let ga = a.gossip(delta_of(&wb));
        let gb = b.gossip(delta_of(&wc));
        let gc = c.gossip(delta_of(&wa));
        events.extend([wa, wb, wc, ga, gb, gc]);
    }
    events.extend([a.snapshot(), b.snapshot(), c.snapshot()]);
    let mut truth = a.state.clone();
    truth.merge(&b.state);
    truth.merge(&c.state);
    (events, truth)
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn out_of_order_and_duplicate_events_converge_to_one_view() {
    let (events, truth) = history();
    let mut in_order = Observer::new();
    feed(&mut in_order, &events);
    assert_eq!(in_order.merged(), &truth);
    assert_eq!(in_order.value("default"), (1..=6).sum::<i128>() + 60);
    assert_eq!(in_order.value("clicks"), -12);

    for seed in [1, 7, 42, 2024] {
        let mut twice = events.clone();
        twice.extend(shuffled(&events, seed ^ 0x9e37));
        let mut observer = Observer::new();
        feed(&mut observer, &shuffled(&twice, seed));
        assert_eq!(observer.merged(), &truth, "seed {seed}");
        assert_eq!(observer.merged().digest(), truth.digest(), "seed {seed}");
    }
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_state_in_chunks_replaces_the_view_at_its_first_chunk_only() {
    let mut a = Node::new("a");
    a.write("gone", Op::Increment(5));
    let mut observer = Observer::new();
    feed(&mut observer, &[a.snapshot()]);

    // The node comes back as a new incarnation that lost its data, with a
    // state too large for one chunk.
    let mut reborn = Node {
        id: "a".into(),
        actor: ActorId::new("a~2").expect("valid"),
        state: CounterMap::new(),
    };
    for i in 0..300 {
        reborn.write(&format!("counter-{i}"), Op::Increment(i + 1));
    }
    reborn.write("default", Op::Increment(9));
    let chunks = reborn.snapshot_in_chunks(1024);
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    let snapshots_logged = |observer: &Observer| {
        (observer.log())
            .filter(|e| matches!(e.kind, LogKind::Snapshot { .. }))
            .count()
    };
    let logged_before = snapshots_logged(&observer);
    feed(&mut observer, &chunks[..1]);
    let view = observer.node("a").expect("known node");
    assert_eq!(
        view.value("gone"),
        0,
        "the first chunk did not replace the view"
    );
    assert_eq!(observer.value("gone"), 5, "the observer forgot what it saw");
    feed(&mut observer, &chunks[1..]);
    let view = observer.node("a").expect("known node");
    assert_eq!(view.state(), &reborn.state);
    assert_eq!(view.value("default"), 9);
    assert_eq!(view.last_update(), Some(Update::Snapshot));
    // One log line for the whole state, not one per chunk.
    assert_eq!(snapshots_logged(&observer), logged_before + 1);
    assert_eq!(observer.value("gone"), 5);
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn a_node_reconnecting_with_a_fresh_state_loses_nothing() {
    let mut a = Node::new("a");
    let mut observer = Observer::new();
    let before = a.snapshot();
    let first = a.write("default", Op::Increment(3));
    let second = a.write("default", Op::Increment(4));
    feed(&mut observer, &[before, first, second]);
    assert_eq!(observer.value("default"), 7);

    // The node restarts from an older copy, then as a new incarnation
    // that lost its data directory: its own view goes back, the observer's never does.
    let mut older = Node::new("a");
    older.write("default", Op::Increment(3));
    feed(&mut observer, &[older.snapshot()]);
    let view = observer.node("a").expect("known node");
    assert_eq!(view.value("default"), 3);
    assert_eq!(view.last_update(), Some(Update::Snapshot));
    assert_eq!(observer.value("default"), 7);

    let reborn = Node {
        id: "a".into(),
        actor: ActorId::new("a~2").expect("valid"),
        state: CounterMap::new(),
    };
    feed(&mut observer, &[reborn.snapshot()]);
    assert_eq!(observer.node("a").map(|n| n.value("default")), Some(0));
    assert_eq!(observer.value("default"), 7);
    let lag = observer.lag(observer.node("a").expect("known"), "default");
    assert_eq!(
        (lag.value_behind, lag.ops_behind, lag.in_sync),
        (7, 2, false)
    );
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn lag_and_convergence_follow_gossip() {
    let (mut a, mut b, mut c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let mut observer = Observer::new();
    feed(
        &mut observer,
        &[
            nodes(&[("a", true, false), ("b", true, false), ("c", true, false)]),
            a.snapshot(),
            b.snapshot(),
            c.snapshot(),
        ],
    );
    assert_eq!(observer.convergence(), Convergence::Converged);

    let write = a.write("default", Op::Increment(5));
    let second = a.write("other", Op::Increment(1));
    feed(&mut observer, &[write.clone(), second.clone()]);
    assert_eq!(
        observer.convergence(),
        Convergence::Diverged {
            behind: 2,
            healthy: 3
        }
    );
    let b_view = observer.node("b").expect("known");
    let lag = observer.lag(b_view, "default");
    assert_eq!(
        (lag.value_behind, lag.ops_behind, lag.in_sync),
        (5, 2, false)
    );
    let a_lag = observer.lag(observer.node("a").expect("known"), "default");
    assert!(a_lag.in_sync);

    let to_b = b.gossip(delta_of(&write));
    feed(&mut observer, &[to_b]);
    let lag = observer.lag(observer.node("b").expect("known"), "default");
    assert_eq!((lag.value_behind, lag.ops_behind), (0, 1));
    assert_eq!(
        observer.node("b").and_then(|n| n.last_update()),
        Some(Update::Gossip)
    );

    // c is partitioned: it no longer counts towards convergence.
    feed(
        &mut observer,
        &[
            nodes(&[("a", true, false), ("b", true, false), ("c", true, true)]),
            b.gossip(delta_of(&second)),
        ],
    );
    assert_eq!(
        observer.node("c").map(|n| n.health()),
        Some(Health::Partitioned)
    );
    assert_eq!(observer.convergence(), Convergence::Converged);
    assert!(observer
        .log()
        .any(|e| matches!(e.kind, LogKind::Converged { .. })));

    // Healed, it counts again until gossip brings it up to date.
    feed(
        &mut observer,
        &[nodes(&[
            ("a", true, false),
            ("b", true, false),
            ("c", true, false),
        ])],
    );
    assert_eq!(
        observer.convergence(),
        Convergence::Diverged {
            behind: 1,
            healthy: 3
        }
    );
    let catch_up = c.gossip(&a.state);
    feed(&mut observer, &[catch_up]);
    assert_eq!(observer.convergence(), Convergence::Converged);
    assert!(
        observer
            .lag(observer.node("c").expect("known"), "x")
            .in_sync
    );
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn busiest_counters_follow_recent_writes() {
    let mut a = Node::new("a");
    let mut observer = Observer::new();
    let mut events = vec![a.write("huge", Op::Increment(1_000_000))];
    for _ in 0..5 {
        events.push(a.write("hot", Op::Increment(1)));
    }
    events.push(a.write("warm", Op::Increment(1)));
    feed(&mut observer, &events);
    let rows = observer.busiest("", 20);
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["hot", "huge", "warm"]);
    assert_eq!(rows[0].recent_changes, 5);
    let filtered = observer.busiest("AR", 20);
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].name.as_str(), "warm");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn backoff_doubles_from_half_a_second_to_five() {
    let schedule: Vec<u32> = (0..7).map(retry_delay_ms).collect();
    assert_eq!(schedule, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
    assert_eq!(retry_delay_ms(u32::MAX), MAX_RETRY_MS);

    let mut link = Link::new();
    let waits: Vec<u32> = (0..5)
        .map(|_| {
            link.connecting();
            link.closed()
        })
        .collect();
    assert_eq!(waits, [500, 1000, 2000, 4000, 5000]);
    assert_eq!(link.state(), LinkState::Offline { retry_in_ms: 5000 });
    link.connecting();
    link.opened();
    link.received();
    assert_eq!(link.closed(), 500, "a working stream resets the backoff");
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn garbage_frames_are_logged_not_fatal() {
    let mut a = Node::new("a");
    let good = wire::encode(&a.write("default", Op::Increment(2)));
    let mut trailing = good.clone();
    trailing.push(0);
    let garbage: [&[u8]; 5] = [
        &[],
        &[0xff; 16],
        &[7, 1, 2, 3],
        &good[..good.len() - 1],
        &trailing,
    ];
    let mut observer = Observer::new();
    for (i, bytes) in garbage.iter().enumerate() {
        assert!(observer.receive(bytes, i as f64).is_err(), "frame {i}");
        let newest = observer.log().next().expect("logged");
        assert!(
            matches!(newest.kind, LogKind::BadMessage(_)),
            "{:?}",
            newest.kind
        );
        assert_eq!(newest.kind.tone(), Tone::Error);
        assert!(newest.kind.to_string().starts_with("bad message ignored: "));
    }
    assert!(observer.merged().is_empty());
    assert_eq!(observer.nodes().len(), 0);

    observer
        .receive(&good, 10.0)
        .expect("a good frame still works");
    assert_eq!(observer.value("default"), 2);
}
