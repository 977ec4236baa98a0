//! Keyed writes under retries: the laws of the state with registrations,
//! and the guarantee they exist for — each logical write counted once,
//! however many replicas applied it.
use crdt_core::{wire, ActorId, CounterMap, CounterName, IdempotencyKey, KeyCheck, Op, Watermarks};

use super::xorshift::XorShift;

const REPLICAS: usize = 4;
const NAMES: [&str; 2] = ["default", "ünïcode ✓"];
/// Longer than any run: every retry joins its first attempt.
const KEY_WINDOW_MS: u64 = 100_000;

/// One replica: its state, its actor, and what it holds of every peer.
#[derive(Clone)]
struct Replica {
    actor: ActorId,
    map: CounterMap,
    /// What this replica holds everything of, per actor (as a node's
    /// watermarks): deltas are shipped with `changes_since` these.
    watermarks: Watermarks,
}

/// A logical write a client makes, and retries until answered.
#[derive(Clone, Debug)]
struct LogicalWrite {
    key: Option<IdempotencyKey>,
    name: CounterName,
    op: Op,
}

/// A run of replicas taking logical writes (some applied on several
/// replicas before they hear of each other, as a retry after a crash or a
/// partition does), exchanging changes, cancelling their duplicates and
/// dropping old keys, in a random order.
pub struct KeyedRun {
    replicas: Vec<Replica>,
    writes: Vec<LogicalWrite>,
    /// Every state any replica passed through, for the merge laws.
    pub states: Vec<CounterMap>,
}

fn actor(replica: usize) -> ActorId {
    ActorId::new(&format!("node-{replica}~i")).expect("valid actor")
}

fn amount(rng: &mut XorShift) -> u64 {
    1 + rng.below(20) as u64
}

/// Applies `write` at replica `at` as a node does: check the key, replay or
/// refuse what is known, else apply. The clock is the step number, so
/// replicas disagree on which attempt came first as real clocks do.
fn attempt(replica: &mut Replica, write: &LogicalWrite, now_ms: u64) {
    let result = match &write.key {
        None => replica
            .map
            .apply(&replica.actor, &write.name, write.op)
            .map(|_| ()),
        Some(key) => match replica.map.check_key(key, &write.name, write.op, now_ms) {
            KeyCheck::New => replica
                .map
                .apply_keyed(
                    &replica.actor,
                    &write.name,
                    write.op,
                    key,
                    now_ms,
                    KEY_WINDOW_MS,
                )
                .map(|_| ()),
            KeyCheck::Replay(registration) => {
                assert_eq!(registration.op, write.op, "a replay names the same write");
                Ok(())
            }
            KeyCheck::Mismatch { .. } => panic!("{write:?}: the key names another write"),
        },
    };
    result.expect("small amounts never overflow");
    let seq = replica.map.last_seq(replica.actor.as_str());
    let own = replica.actor.clone();
    replica.watermarks.raise(&own, seq);
}

/// Ships what `from` has above `to`'s watermarks, as anti-entropy does.
fn sync(replicas: &mut [Replica], from: usize, to: usize) {
    if from == to {
        return;
    }
    let changes: CounterMap = replicas[from]
        .map
        .changes_since(&replicas[to].watermarks)
        .collect();
    let marks = replicas[from].watermarks.clone();
    let receiver = &mut replicas[to];
    let encoded = wire::encode(&changes);
    let decoded: CounterMap = wire::decode(&encoded).expect("a delta round-trips");
    receiver.map.merge(&decoded);
    receiver.watermarks.raise_all(&marks);
}

/// What every replica holds, per actor.
fn seen_by_all(replicas: &[Replica]) -> Watermarks {
    let mut all = Watermarks::new();
    for replica in replicas {
        all.raise_all(&replica.watermarks);
    }
    (all.iter())
        .map(|(actor, _)| {
            let least = (replicas.iter())
                .map(|r| r.watermarks.get(actor.as_str()))
                .min()
                .unwrap_or(0);
            (actor.clone(), least)
        })
        .collect()
}

/// The latest close a key group may have to be folded at `at` now: every
/// registration stamped before it anywhere is held at `at`, and every
/// later one will be stamped at `now_ms` or after (the gate a node derives
/// from its members' reports and clocks).
fn fold_horizon(replicas: &[Replica], at: usize, now_ms: u64) -> u64 {
    let held = |r: &crdt_core::Registration| {
        replicas[at].map.counters().any(|(_, c)| {
            c.registrations_of(r.key.as_str())
                .iter()
                .any(|mine| mine.origin == r.origin && mine.seq == r.seq)
        })
    };
    let missing = replicas
        .iter()
        .flat_map(|replica| replica.map.counters())
        .flat_map(|(_, counter)| counter.registrations())
        .filter(|r| !held(r))
        .map(|r| r.at_ms)
        .min();
    missing.unwrap_or(u64::MAX).min(now_ms)
}

pub fn run(seed: u64) -> KeyedRun {
    let mut rng = XorShift::new(seed.wrapping_mul(0x9e37_79b9) ^ 0x5eed);
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|r| Replica {
            actor: actor(r),
            map: CounterMap::new(),
            watermarks: Watermarks::new(),
        })
        .collect();
    let mut writes: Vec<LogicalWrite> = Vec::new();
    let mut states = Vec::new();
    let steps = 10 + rng.below(50);
    for step in 0..steps {
        let now_ms = 1_000 + step as u64 * 10 + rng.below(30) as u64;
        match rng.below(10) {
            // A new logical write, keyed most of the time.
            0..=3 => {
                let op = if rng.chance(3, 4) {
                    Op::Increment(amount(&mut rng))
                } else {
                    Op::Decrement(amount(&mut rng))
                };
                let key = rng
                    .chance(4, 5)
                    .then(|| IdempotencyKey::new(&format!("key-{}", writes.len())).unwrap());
                let write = LogicalWrite {
                    key,
                    name: CounterName::new(NAMES[rng.below(NAMES.len())]).unwrap(),
                    op,
                };
                let at = rng.below(REPLICAS);
                attempt(&mut replicas[at], &write, now_ms);
                writes.push(write);
            }
            // A retry of an earlier keyed write, on any replica.
            4..=5 if !writes.is_empty() => {
                let write = writes[rng.below(writes.len())].clone();
                if write.key.is_some() {
                    let at = rng.below(REPLICAS);
                    attempt(&mut replicas[at], &write, now_ms);
                }
            }
            6..=7 => {
                let (from, to) = (rng.below(REPLICAS), rng.below(REPLICAS));
                sync(&mut replicas, from, to);
            }
            _ => {
                // Folding closed keys behind the gate never moves a value.
                let at = rng.below(REPLICAS);
                let mut housekept = replicas[at].map.clone();
                housekept.fold_keys(&seen_by_all(&replicas), fold_horizon(&replicas, at, now_ms));
                assert_eq!(
                    values(&housekept),
                    values(&replicas[at].map),
                    "dropping keys moved a value"
                );
            }
        }
        states.push(replicas[rng.below(REPLICAS)].map.clone());
    }
    KeyedRun {
        replicas,
        writes,
        states,
    }
}

fn values(map: &CounterMap) -> Vec<(String, i128)> {
    map.counters()
        .map(|(name, counter)| (name.to_string(), counter.value()))
        .collect()
}

/// Merge of the states is commutative, associative and idempotent, and the
/// wire keeps every registration.
pub fn merge_laws_hold(run: &KeyedRun) {
    super::laws::merge_laws_hold_over(&run.states);
}

/// Once every replica has heard everything, each counter reads the sum of
/// its logical writes, each counted once — however many replicas applied
/// it. Then closed keys are folded and the value stays.
pub fn each_write_counts_once(run: KeyedRun) {
    let KeyedRun {
        mut replicas,
        writes,
        ..
    } = run;
    let everyone = |replicas: &mut Vec<Replica>| {
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                sync(replicas, from, to);
            }
        }
    };
    for name in NAMES {
        // Every logical write was applied where it was first made.
        let expected: i128 = writes
            .iter()
            .filter(|w| w.name.as_str() == name)
            .map(|w| w.op.signed())
            .sum();
        everyone(&mut replicas);
        for replica in &replicas {
            assert_eq!(
                replica.map.value(name).unwrap_or(0),
                expected,
                "{name}: converged"
            );
        }
        for replica in replicas.iter_mut() {
            let everyone_holds = replica.watermarks.clone();
            replica.map.fold_keys(&everyone_holds, u64::MAX);
            assert_eq!(
                replica.map.value(name).unwrap_or(0),
                expected,
                "{name}: after the keys' window"
            );
        }
    }
    for replica in &replicas {
        for (_, counter) in replica.map.counters() {
            for (key, same_key) in counter.keys() {
                assert!(
                    same_key.len() > 1,
                    "{key}: only keys applied more than once stay after folding"
                );
            }
        }
    }
}
