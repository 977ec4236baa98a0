//! The nine ways an outside read broke the lattice (issue #30), each as the
//! interleaving that broke it, replayed against the current design. Each
//! test failed on the design of before (cancellations driven by each key's
//! origin, keys dropped by every replica on its own clock, registrations
//! orphaned by compaction, decoding that let impossible states through).
//! Runs natively and under wasm-pack.
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crdt_core::{
    wire, ActorId, CounterMap, CounterName, Entry, IdempotencyKey, KeyCheck, Lifecycle, Op,
    RemovalKind, Watermarks,
};

const WINDOW: u64 = 1_000;

/// One replica as a node keeps it: its map, its actor, its watermarks.
#[derive(Clone)]
struct Node {
    actor: ActorId,
    map: CounterMap,
    watermarks: Watermarks,
}

impl Node {
    fn new(id: &str) -> Self {
        Node {
            actor: ActorId::new(id).unwrap(),
            map: CounterMap::new(),
            watermarks: Watermarks::new(),
        }
    }

    fn own_seq_held(&mut self) {
        let seq = self.map.last_seq(self.actor.as_str());
        self.watermarks.raise(&self.actor.clone(), seq);
    }

    fn write(&mut self, counter: &str, amount: i64) -> CounterMap {
        let delta = self
            .map
            .apply(&self.actor, &name(counter), op(amount))
            .unwrap();
        self.own_seq_held();
        delta
    }

    /// A keyed write as a node takes it: answered from the key when held
    /// and open, else applied.
    fn keyed(&mut self, counter: &str, amount: i64, key: &str, now_ms: u64) -> Option<CounterMap> {
        let key = IdempotencyKey::new(key).unwrap();
        match self.map.check_key(&key, &name(counter), op(amount), now_ms) {
            KeyCheck::New => {
                let write = (self.map)
                    .apply_keyed(
                        &self.actor,
                        &name(counter),
                        op(amount),
                        &key,
                        now_ms,
                        WINDOW,
                    )
                    .unwrap();
                self.own_seq_held();
                Some(write.delta)
            }
            KeyCheck::Replay(_) => None,
            KeyCheck::Mismatch { .. } => panic!("the key names another write"),
        }
    }

    fn delete(&mut self, counter: &str, at_ms: u64) -> CounterMap {
        let delta = (self.map)
            .remove(&self.actor, &name(counter), RemovalKind::Delete, at_ms)
            .unwrap()
            .expect("the counter reads as present here");
        self.own_seq_held();
        delta
    }

    /// An eager delta, as gossip delivers one: news merged, watermarks kept.
    fn hear(&mut self, delta: &CounterMap) {
        let decoded: CounterMap = wire::decode(&wire::encode(delta)).unwrap();
        let seen = self.watermarks.clone();
        self.map.merge_news(decoded.all_changes(), &seen);
    }

    /// A restart: the state through its encoding, the seq floor raised.
    fn reload(&mut self) {
        self.map = wire::decode(&wire::encode(&self.map)).unwrap();
        self.map.raise_seq_floor(&self.watermarks.clone());
    }

    fn read(&self, counter: &str) -> Option<i128> {
        self.map.value(counter)
    }
}

/// A completed pull: what `from` holds above `to`'s watermarks, then its watermarks.
fn pull(from: &Node, to: &mut Node) {
    let changes: CounterMap = from.map.changes_since(&to.watermarks).collect();
    to.hear(&changes);
    to.watermarks.raise_all(&from.watermarks);
}

/// Pulls both ways between every pair until nothing changes.
fn sync_all(nodes: &mut [&mut Node]) {
    for _ in 0..3 {
        for from in 0..nodes.len() {
            for to in 0..nodes.len() {
                if from != to {
                    let source = nodes[from].clone();
                    pull(&source, nodes[to]);
                }
            }
        }
    }
}

/// Housekeeping as the node's gate allows it at `node`: it holds what
/// every node holds (`others`' watermarks are covered), keys fold once
/// closed before the least clock, and counters every node holds go.
fn housekeep(node: &mut Node, others: &[&Node], least_clock_ms: u64) {
    for other in others {
        for (actor, seq) in other.watermarks.iter() {
            assert!(
                node.watermarks.get(actor.as_str()) >= seq,
                "the gate is open"
            );
        }
    }
    let seen_by_all: Watermarks = (node.watermarks.iter())
        .map(|(actor, seq)| {
            let least =
                (others.iter()).fold(seq, |least, o| least.min(o.watermarks.get(actor.as_str())));
            (actor.clone(), least)
        })
        .collect();
    node.map.fold_keys(&seen_by_all, least_clock_ms);
    node.map
        .drop_removed(&seen_by_all, least_clock_ms, None, usize::MAX);
}

fn name(text: &str) -> CounterName {
    CounterName::new(text).unwrap()
}

fn op(amount: i64) -> Op {
    if amount >= 0 {
        Op::Increment(amount.unsigned_abs())
    } else {
        Op::Decrement(amount.unsigned_abs())
    }
}

/// Finding 1: A applies k (+5), B retries k elsewhere (+5), A deletes
/// without having seen B's application; the key window ends on A and A
/// restarts. Before, a cached flag missed the key's drop and A read the
/// counter as present (0) after the reload, for good. Now the key's group
/// holds two live applications and stays; every read is derived again on
/// decode, and the counter stays deleted everywhere.
#[test]
fn finding_1_a_deleted_counter_stays_deleted_after_keys_fold_and_a_reload() {
    let (mut a, mut b) = (Node::new("a~1"), Node::new("b~1"));
    a.keyed("c", 5, "k", 100);
    b.keyed("c", 5, "k", 110);
    a.delete("c", 120);
    sync_all(&mut [&mut a, &mut b]);
    assert_eq!((a.read("c"), b.read("c")), (None, None));
    housekeep(&mut a, &[&b], 100 + WINDOW + 1);
    a.reload();
    housekeep(&mut b, &[&a], 100 + WINDOW + 1);
    sync_all(&mut [&mut a, &mut b]);
    assert_eq!((a.read("c"), b.read("c")), (None, None), "still deleted");
    // A later write starts the counter again, alike everywhere.
    a.write("c", 2);
    sync_all(&mut [&mut a, &mut b]);
    assert_eq!((a.read("c"), b.read("c")), (Some(2), Some(2)));
    assert_eq!(a.map, b.map);
}

/// Finding 2: F folded key k at its window's end while S had not; a late
/// retry lands on F and is applied as new. Before, S counted it as a
/// duplicate of the first attempt and F counted it again: equal digests,
/// different values, for good. Now a retry stamped after the window heads
/// a group of its own on every replica: both count it, alike.
#[test]
fn finding_2_a_late_retry_counts_alike_on_a_replica_that_folded_and_one_that_did_not() {
    let (mut f, mut s) = (Node::new("f~1"), Node::new("s~1"));
    f.keyed("c", 3, "k", 100);
    sync_all(&mut [&mut f, &mut s]);
    let closed = 100 + WINDOW;
    housekeep(&mut f, &[&s], closed);
    assert_eq!(f.map.key_count(), 0, "F folded the key");
    assert_eq!(s.map.key_count(), 1, "S has not");
    // The retry after the window: new on F (its window closed)...
    assert!(f.keyed("c", 3, "k", closed + 5).is_some());
    // ...and on S too, had it landed there.
    assert!(matches!(
        s.map.check_key(
            &IdempotencyKey::new("k").unwrap(),
            &name("c"),
            op(3),
            closed + 5
        ),
        KeyCheck::New
    ));
    sync_all(&mut [&mut f, &mut s]);
    assert_eq!((f.read("c"), s.read("c")), (Some(6), Some(6)));
    // A replica whose clock is behind by the window stamps a retry inside
    // the first attempt's window: it joins it wherever it lands.
    let mut slow = Node::new("slow~1");
    sync_all(&mut [&mut f, &mut s, &mut slow]);
    let mut late = Node::new("late~1");
    late.keyed("c", 3, "k", 150);
    sync_all(&mut [&mut f, &mut s, &mut slow, &mut late]);
    let reads: Vec<_> = [&f, &s, &slow, &late].iter().map(|n| n.read("c")).collect();
    assert!(reads.windows(2).all(|w| w[0] == w[1]), "{reads:?}");
}

/// Finding 4: a removal that held one application of a key (here the
/// loser's, delivered by a chunk of a pull before the winner's) counted
/// the key, and removes it; a removal that held none leaves it counted
/// once. Before, a removal that held only a *cancelled* duplicate erased
/// the key's real application. Checked with actor-ordered chunks delivered
/// in both orders.
#[test]
fn finding_4_a_removal_takes_away_exactly_the_keys_its_view_counted() {
    for winner_first in [true, false] {
        let (mut n0, mut n1, mut n2) = (Node::new("n0~1"), Node::new("n1~1"), Node::new("n2~1"));
        n2.keyed("c", -9, "k", 100); // the first attempt
        n0.keyed("c", -9, "k", 110); // its retry, applied again
        n0.write("c", 1);
        // n1 hears n0's bundle only (a chunk of a pull, the rest lost):
        // its view counts k once, through n0's application.
        let chunk: CounterMap = (n0.map.changes_since(&Watermarks::new()))
            .filter(|change| change.actor == n0.actor)
            .collect();
        if winner_first {
            let winner: CounterMap = (n2.map.changes_since(&Watermarks::new())).collect();
            n1.hear(&winner);
        }
        n1.hear(&chunk);
        assert_eq!(n1.read("c"), Some(-8), "k once, and n0's +1");
        n1.delete("c", 120);
        sync_all(&mut [&mut n0, &mut n1, &mut n2]);
        for node in [&n0, &n1, &n2] {
            assert_eq!(node.read("c"), None, "k and +1 were counted by the delete");
        }
    }
    // A delete whose view never held k leaves k counted once.
    let (mut n0, mut n1, mut n2) = (Node::new("n0~1"), Node::new("n1~1"), Node::new("n2~1"));
    n1.write("c", 4);
    n1.delete("c", 90);
    n2.keyed("c", -9, "k", 100);
    n0.keyed("c", -9, "k", 110);
    sync_all(&mut [&mut n0, &mut n1, &mut n2]);
    for node in [&n0, &n1, &n2] {
        assert_eq!(node.read("c"), Some(-9));
    }
}

/// Finding 5: n2 applies k (+6), n1 applies its retry; they sync; n1's
/// window ends. Before, n1 dropped its (cancelled) copy while a replica
/// still held it uncancelled, a full pull handed it back, n1 cancelled a
/// second time, and every replica converged on 0. Now nothing is
/// cancelled, a group of two live applications is never folded, and a
/// folded registration handed back is harmless.
#[test]
fn finding_5_a_key_applied_twice_counts_once_through_windows_and_full_pulls() {
    let (mut n1, mut n2, mut n3) = (Node::new("n1~1"), Node::new("n2~1"), Node::new("n3~1"));
    n2.keyed("c", 6, "k", 100);
    n1.keyed("c", 6, "k", 105);
    n1.keyed("d", 1, "solo", 106);
    sync_all(&mut [&mut n1, &mut n2, &mut n3]);
    let closed = 106 + WINDOW + 1;
    housekeep(&mut n1, &[&n2, &n3], closed);
    assert_eq!(
        n1.map.key_count(),
        1,
        "the single application of `solo` folded, not k"
    );
    // A full pull (from nothing) hands n1 everything n3 holds again.
    let everything: CounterMap = n3.map.changes_since(&Watermarks::new()).collect();
    n1.hear(&everything);
    n1.map.merge(&everything);
    sync_all(&mut [&mut n1, &mut n2, &mut n3]);
    for node in [&n1, &n2, &n3] {
        assert_eq!((node.read("c"), node.read("d")), (Some(6), Some(1)));
    }
}

/// Finding 6: n1 applies k (−7), n4 its retry; n1 writes +2; n4 deletes
/// having seen only its own application. Before, compaction dropped n4's
/// wholly removed entry and with it the only way its registration
/// travelled: a replica joining later read −5 instead of 2, with equal
/// digests. Now an entry stays while its actor has a registration there.
#[test]
fn finding_6_a_replica_joining_after_compaction_reads_the_same() {
    let (mut n1, mut n4) = (Node::new("n1~1"), Node::new("n4~1"));
    n1.keyed("c", -7, "k", 100);
    n4.keyed("c", -7, "k", 101);
    n1.write("c", 2);
    n4.delete("c", 102);
    sync_all(&mut [&mut n1, &mut n4]);
    assert_eq!((n1.read("c"), n4.read("c")), (Some(2), Some(2)));
    let closed = 101 + WINDOW + 1;
    housekeep(&mut n1, &[&n4], closed);
    housekeep(&mut n4, &[&n1], closed);
    let mut joiner = Node::new("n5~1");
    sync_all(&mut [&mut n1, &mut n4, &mut joiner]);
    assert_eq!(joiner.read("c"), Some(2));
    assert_eq!(joiner.map.digest(), n1.map.digest());
}

/// Finding 8: a departed actor's duplicate application held its counters
/// back from retirement forever (only it could cancel). Now its entry is
/// taken over like any other; its application's amount is counted by the
/// survivor and still discounted, and removing the survivor's fold
/// removes it.
#[test]
fn finding_8_a_departed_actors_duplicate_does_not_block_its_retirement() {
    let (mut gone, mut n1) = (Node::new("n2~old"), Node::new("n1~1"));
    n1.keyed("c", 5, "k", 100);
    gone.keyed("c", 5, "k", 101);
    sync_all(&mut [&mut gone, &mut n1]);
    assert_eq!(n1.read("c"), Some(5));
    let (delta, left) = n1.map.take_over(&gone.actor, &n1.actor.clone()).unwrap();
    n1.own_seq_held();
    assert_eq!(left, 0, "nothing left for later");
    assert!(!delta.is_empty());
    assert_eq!(n1.read("c"), Some(5), "the fold moves no value");
    let mut other = Node::new("n3~1");
    sync_all(&mut [&mut n1, &mut other]);
    assert_eq!(other.read("c"), Some(5));
    other.delete("c", 200);
    n1.write("c", 1);
    sync_all(&mut [&mut n1, &mut other]);
    assert_eq!((n1.read("c"), other.read("c")), (Some(1), Some(1)));
}

/// Finding 9: decoding let through states the join relies on never
/// seeing. An entry whose run begins after its seq won every join and
/// lowered the seq its actor stamps next; a registration at seq 0 was
/// removed by every removal; an empty lifecycle made `a∪b` and `b∪a` read
/// differently.
#[test]
fn finding_9_decoding_refuses_states_no_actor_could_make() {
    let counter = |entry: Entry| {
        wire::encode(&vec![(
            "c",
            vec![("a~1", entry)],
            Vec::<crdt_core::Registration>::new(),
            Option::<Lifecycle>::None,
        )])
    };
    let later_run = Entry {
        inc: 1,
        dec: 0,
        seq: 3,
        since: 9,
    };
    assert!(wire::decode::<CounterMap>(&counter(later_run)).is_err());
    let fine = Entry {
        since: 3,
        ..later_run
    };
    assert!(wire::decode::<CounterMap>(&counter(fine)).is_ok());

    let mut keyed = Node::new("a~1");
    keyed.keyed("c", 1, "k", 10);
    let mut registration = keyed
        .map
        .get("c")
        .unwrap()
        .registrations()
        .next()
        .unwrap()
        .clone();
    registration.seq = 0;
    assert!(wire::decode::<crdt_core::Registration>(&wire::encode(&registration)).is_err());

    // An empty lifecycle is never joined: both orders read the same.
    let mut plain = Node::new("b~1");
    plain.write("c", 4);
    let empty = wire::encode(&vec![(
        "c",
        Vec::<(&str, Entry)>::new(),
        Vec::<crdt_core::Registration>::new(),
        Some(Lifecycle::default()),
    )]);
    let empty: CounterMap = wire::decode(&empty).unwrap();
    let (mut ab, mut ba) = (plain.map.clone(), empty.clone());
    ab.merge(&empty);
    ba.merge(&plain.map);
    assert_eq!(ab, ba);
    assert_eq!((ab.value("c"), ba.value("c")), (Some(4), Some(4)));
}
