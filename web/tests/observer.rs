//! The observer replica, driven as the gateway's stream drives it: encoded
//! `ClusterEvent` frames, in and out of order, duplicated and broken.
//!
//! Runs natively (`cargo test -p tally-web`) and in headless Chromium
//! (`wasm-pack test --headless --chrome --chromedriver /usr/bin/chromedriver web`).
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op};
use tally_protocol::events::ClusterEvent;
use tally_web::observer::{LogKind, Observer, Tone};
use tally_web::socket::{retry_delay_ms, Link, LinkState, MAX_RETRY_MS};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// One node's replica, writing as its own actor.
struct Node {
    actor: ActorId,
    state: CounterMap,
}

impl Node {
    fn new(id: &str) -> Self {
        Node {
            actor: ActorId::new(&format!("{id}~1")).expect("valid actor"),
            state: CounterMap::new(),
        }
    }

    /// A client writes here: the delta the node would stream.
    fn write(&mut self, counter: &str, op: Op) -> ClusterEvent {
        let name = CounterName::new(counter).expect("valid name");
        let delta = self.state.apply(&self.actor, &name, op).expect("applies");
        ClusterEvent::CountersDelta { delta }
    }

    /// The node learns `delta` from a peer.
    fn gossip(&mut self, delta: &CounterMap) -> ClusterEvent {
        let news = self.state.merge_changed(delta.all_changes());
        ClusterEvent::CountersDelta { delta: news }
    }
}

fn delta_of(event: &ClusterEvent) -> &CounterMap {
    match event {
        ClusterEvent::CountersDelta { delta } => delta,
        other => panic!("expected a delta, got {other:?}"),
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
    let mut events = Vec::new();
    for round in 0..6u64 {
        let wa = a.write("default", Op::Increment(round + 1));
        let wb = b.write("clicks", Op::Decrement(2));
        let wc = c.write("default", Op::Increment(10));
        let ga = a.gossip(delta_of(&wb));
        let gb = b.gossip(delta_of(&wc));
        let gc = c.gossip(delta_of(&wa));
        events.extend([wa, wb, wc, ga, gb, gc]);
    }
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
