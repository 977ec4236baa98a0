//! Counter lifecycle under concurrency: deletes, resets and expiries racing
//! writes (plain and keyed, with retries), cancellations, anti-entropy and
//! garbage collection, in a random order. Checks the merge laws on every
//! state passed through, that garbage collection never changes what a
//! replica reads, and, after convergence, observed-remove against a model:
//! a counter reads the sum of the logical writes no removal saw, and is
//! present exactly when one exists or the latest removal was a reset.
use std::collections::BTreeSet;

use crdt_core::{
    wire, ActorId, CounterMap, CounterName, IdempotencyKey, KeyCheck, Op, RemovalKind, Watermarks,
};

use super::xorshift::XorShift;

const REPLICAS: usize = 3;
const NAMES: [&str; 2] = ["a", "b"];
/// How long keys are kept (simulated ms): collecting a counter waits for
/// its keys' window, and retries come only within it.
const KEY_WINDOW_MS: u64 = 200;

#[derive(Clone)]
struct Replica {
    actor: ActorId,
    map: CounterMap,
    /// Everything held up to these seqs, per actor (a node's watermarks).
    watermarks: Watermarks,
    /// The logical writes this replica holds (the model).
    knows: BTreeSet<usize>,
}

#[derive(Clone, Debug)]
struct LogicalWrite {
    key: Option<IdempotencyKey>,
    name: CounterName,
    op: Op,
    at_ms: u64,
}

/// A removal as the model sees it: the counter, what its remover held, its mark.
#[derive(Clone, Debug)]
struct Removal {
    name: CounterName,
    saw: BTreeSet<usize>,
    mark: (u64, ActorId, RemovalKind),
}

pub struct LifecycleRun {
    replicas: Vec<Replica>,
    /// Actors whose node moved on to a new one, with their last seq.
    departed: Vec<(ActorId, u64)>,
    writes: Vec<LogicalWrite>,
    removals: Vec<Removal>,
    now_ms: u64,
    /// Every state any replica passed through, for the merge laws.
    pub states: Vec<CounterMap>,
}

fn actor(replica: usize) -> ActorId {
    ActorId::new(&format!("node-{replica}~i")).expect("valid actor")
}

impl Replica {
    fn own_seq_held(&mut self) {
        let seq = self.map.last_seq(self.actor.as_str());
        let own = self.actor.clone();
        self.watermarks.raise(&own, seq);
    }

    /// Removes `name` as a node does (client delete/reset or expiry sweep),
    /// telling the model what it saw.
    fn remove(&mut self, name: &CounterName, kind: RemovalKind, now_ms: u64) -> Option<Removal> {
        let delta = self
            .map
            .remove(&self.actor, name, kind, now_ms)
            .expect("a removal never overflows here")?;
        assert!(!delta.is_empty());
        self.own_seq_held();
        Some(Removal {
            name: name.clone(),
            saw: self.knows.clone(),
            mark: (now_ms, self.actor.clone(), kind),
        })
    }
}

impl LifecycleRun {
    /// Applies logical write `index` at replica `at`, as a node does: an
    /// expired counter is deleted first; a known key is answered, not applied.
    fn attempt(&mut self, at: usize, index: usize) {
        let now_ms = self.now_ms;
        let write = self.writes[index].clone();
        let replica = &mut self.replicas[at];
        if replica.map.is_expired(write.name.as_str(), now_ms) {
            if let Some(removal) = replica.remove(&write.name, RemovalKind::Delete, now_ms) {
                self.removals.push(removal);
            }
        }
        let replica = &mut self.replicas[at];
        match &write.key {
            None => {
                replica
                    .map
                    .apply(&replica.actor, &write.name, write.op)
                    .expect("small amounts never overflow");
            }
            Some(key) => match replica.map.check_key(key, &write.name, write.op, now_ms) {
                KeyCheck::New => {
                    replica
                        .map
                        .apply_keyed(
                            &replica.actor,
                            &write.name,
                            write.op,
                            key,
                            now_ms,
                            KEY_WINDOW_MS,
                        )
                        .expect("small amounts never overflow");
                }
                KeyCheck::Replay(registration) => {
                    assert_eq!(registration.op, write.op, "a replay names the same write");
                    assert!(replica.knows.contains(&index), "a replay of a write held");
                }
                KeyCheck::Mismatch { .. } => panic!("{write:?}: the key names another write"),
            },
        }
        replica.knows.insert(index);
        replica.own_seq_held();
    }
}

/// Ships what `from` holds above `to`'s watermarks, through the wire, and
/// merges it as a node does (skipping stale copies of collected counters).
fn sync(replicas: &mut [Replica], from: usize, to: usize) {
    if from == to {
        return;
    }
    let changes: CounterMap = replicas[from]
        .map
        .changes_since(&replicas[to].watermarks)
        .collect();
    let decoded: CounterMap = wire::decode(&wire::encode(&changes)).expect("a delta round-trips");
    let marks = replicas[from].watermarks.clone();
    let knows = replicas[from].knows.clone();
    let receiver = &mut replicas[to];
    let seen = receiver.watermarks.clone();
    receiver.map.merge_news(decoded.all_changes(), &seen);
    receiver.watermarks.raise_all(&marks);
    receiver.knows.extend(knows);
}

/// What every replica reads, deleted counters as `None`.
fn reads(map: &CounterMap) -> Vec<Option<i128>> {
    NAMES.iter().map(|name| map.value(name)).collect()
}

/// Collects garbage at `at` when the model knows it is safe: every replica
/// holds what `at` holds of the dropped counters (`seen_by_all`), and `at`
/// holds everything any replica holds. Never changes what it reads.
fn collect(replicas: &mut [Replica], at: usize, now_ms: u64) {
    let mut held_anywhere = Watermarks::new();
    for replica in replicas.iter() {
        held_anywhere.raise_all(&replica.watermarks);
    }
    let seen_by_all: Watermarks = held_anywhere
        .iter()
        .map(|(actor, _)| {
            let least = replicas
                .iter()
                .map(|r| r.watermarks.get(actor.as_str()))
                .min();
            (actor.clone(), least.unwrap_or(0))
        })
        .collect();
    let holds_all = held_anywhere
        .iter()
        .all(|(actor, seq)| replicas[at].watermarks.get(actor.as_str()) >= seq);
    if !holds_all {
        return;
    }
    let before = reads(&replicas[at].map);
    let keys_before = now_ms;
    replicas[at]
        .map
        .drop_removed(&seen_by_all, keys_before, None, usize::MAX);
    replicas[at].map.fold_keys(&seen_by_all, keys_before);
    assert_eq!(
        reads(&replicas[at].map),
        before,
        "collecting garbage moved a value"
    );
}

pub fn run(seed: u64) -> LifecycleRun {
    let mut rng = XorShift::new(seed.wrapping_mul(0x2545_f491) ^ 0x11fe);
    let mut run = LifecycleRun {
        replicas: (0..REPLICAS)
            .map(|r| Replica {
                actor: actor(r),
                map: CounterMap::new(),
                watermarks: Watermarks::new(),
                knows: BTreeSet::new(),
            })
            .collect(),
        departed: Vec::new(),
        writes: Vec::new(),
        removals: Vec::new(),
        now_ms: 1_000,
        states: Vec::new(),
    };
    let steps = 20 + rng.below(60);
    for _ in 0..steps {
        run.now_ms += 1 + rng.below(20) as u64;
        let now_ms = run.now_ms;
        let at = rng.below(REPLICAS);
        let name = CounterName::new(NAMES[rng.below(NAMES.len())]).expect("valid name");
        match rng.below(19) {
            0..=4 => {
                let amount = 1 + rng.below(9) as u64;
                let op = if rng.chance(3, 4) {
                    Op::Increment(amount)
                } else {
                    Op::Decrement(amount)
                };
                let key = rng
                    .chance(1, 2)
                    .then(|| IdempotencyKey::new(&format!("key-{}", run.writes.len())).unwrap());
                run.writes.push(LogicalWrite {
                    key,
                    name,
                    op,
                    at_ms: now_ms,
                });
                run.attempt(at, run.writes.len() - 1);
            }
            // A retry of a recent keyed write, on any replica.
            5 => {
                let recent: Vec<usize> = (0..run.writes.len())
                    .filter(|&w| run.writes[w].key.is_some())
                    .filter(|&w| run.writes[w].at_ms + KEY_WINDOW_MS / 2 > now_ms)
                    .collect();
                if !recent.is_empty() {
                    let index = recent[rng.below(recent.len())];
                    run.attempt(at, index);
                }
            }
            6 | 7 => {
                let kind = if rng.chance(2, 3) {
                    RemovalKind::Delete
                } else {
                    RemovalKind::Reset
                };
                if let Some(removal) = run.replicas[at].remove(&name, kind, now_ms) {
                    run.removals.push(removal);
                }
            }
            8 => {
                let replica = &mut run.replicas[at];
                let expires = now_ms + rng.below(60) as u64;
                let set = replica
                    .map
                    .set_expiry(&replica.actor, &name, expires)
                    .expect("never overflows here");
                if set.is_some() {
                    replica.own_seq_held();
                }
            }
            // The expiry sweep.
            9 => {
                for expired in run.replicas[at].map.expired(now_ms, usize::MAX) {
                    let removal = run.replicas[at].remove(&expired, RemovalKind::Delete, now_ms);
                    run.removals.extend(removal);
                }
            }
            10..=12 => {
                let from = rng.below(REPLICAS);
                sync(&mut run.replicas, from, at);
            }
            // A node replaced: it writes as a new actor from now on, and
            // its old one departs.
            15 => {
                let replica = &mut run.replicas[at];
                let old = replica.actor.clone();
                let last = replica.map.last_seq(old.as_str());
                let generation = run.departed.len() + 1;
                replica.actor = ActorId::new(&format!("node-{at}~g{generation}")).expect("valid");
                run.departed.push((old, last));
            }
            // A retirement: a replica folds a departed actor into its own,
            // once it holds all the departed actor did.
            16 => {
                let replica = &mut run.replicas[at];
                let held = (run.departed.iter())
                    .filter(|(gone, last)| replica.watermarks.get(gone.as_str()) >= *last)
                    .map(|(gone, _)| gone.clone())
                    .collect::<Vec<_>>();
                if !held.is_empty() {
                    let gone = &held[rng.below(held.len())];
                    let survivor = replica.actor.clone();
                    replica
                        .map
                        .take_over(gone, &survivor)
                        .expect("never overflows here");
                    replica.own_seq_held();
                }
            }
            // A quiet moment: everyone hears everyone, so garbage can go.
            14 => {
                for from in 0..REPLICAS {
                    for to in 0..REPLICAS {
                        sync(&mut run.replicas, from, to);
                    }
                }
            }
            _ => collect(&mut run.replicas, at, now_ms),
        }
        run.states
            .push(run.replicas[rng.below(REPLICAS)].map.clone());
    }
    run
}

/// Merge is commutative, associative and idempotent over every state a run
/// passes through, and the wire keeps lifecycles.
pub fn merge_laws_hold(run: &LifecycleRun) {
    super::laws::merge_laws_hold_over(&run.states);
}

/// After everyone heard everything (expiries swept, duplicates cancelled),
/// each counter reads what the model says: the sum of the logical writes
/// no removal saw, present when there is one or the latest removal was a
/// reset. Collecting garbage everywhere then changes nothing read, and
/// every replica ends in the same state.
pub fn removals_are_observed_remove(run: LifecycleRun) {
    let LifecycleRun {
        mut replicas,
        departed,
        writes,
        mut removals,
        now_ms,
        ..
    } = run;
    let everyone = |replicas: &mut Vec<Replica>| {
        for _ in 0..2 {
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    sync(replicas, from, to);
                }
            }
        }
    };
    everyone(&mut replicas);
    let later = now_ms + 1_000;
    for replica in replicas.iter_mut() {
        for expired in replica.map.expired(later, usize::MAX) {
            removals.extend(replica.remove(&expired, RemovalKind::Delete, later));
        }
    }
    everyone(&mut replicas);
    let expected: Vec<Option<i128>> = NAMES
        .iter()
        .map(|name| {
            let removed_here: Vec<&Removal> = removals
                .iter()
                .filter(|r| r.name.as_str() == *name)
                .collect();
            let unseen: Vec<&LogicalWrite> = (0..writes.len())
                .filter(|w| writes[*w].name.as_str() == *name)
                .filter(|w| !removed_here.iter().any(|r| r.saw.contains(w)))
                .map(|w| &writes[w])
                .collect();
            let latest = removed_here.iter().map(|r| &r.mark).max();
            let reset = latest.is_some_and(|(_, _, kind)| *kind == RemovalKind::Reset);
            (!unseen.is_empty() || reset).then(|| unseen.iter().map(|w| w.op.signed()).sum())
        })
        .collect();
    for replica in &replicas {
        assert_eq!(reads(&replica.map), expected, "converged: observed-remove");
    }
    for at in 0..REPLICAS {
        collect(&mut replicas, at, later + KEY_WINDOW_MS);
    }
    everyone(&mut replicas);
    for replica in &replicas {
        assert_eq!(reads(&replica.map), expected, "after collecting garbage");
        assert_eq!(
            replica.map, replicas[0].map,
            "every replica in the same state"
        );
        assert_eq!(replica.map.digest(), replicas[0].map.digest());
    }
    // Replica 0 (holding everything) retires every departed actor; once
    // that is heard and collected everywhere, no counter holds an entry of
    // one any more (unless it owes a key's cancellation there), and every
    // read is unchanged.
    let survivor = replicas[0].actor.clone();
    // Twice: an actor that took over another is folded once collection
    // dropped the record of that takeover.
    for _ in 0..2 {
        for (gone, _) in &departed {
            replicas[0]
                .map
                .take_over(gone, &survivor)
                .expect("never overflows here");
        }
        replicas[0].own_seq_held();
        everyone(&mut replicas);
        for at in 0..REPLICAS {
            collect(&mut replicas, at, later + KEY_WINDOW_MS);
        }
        everyone(&mut replicas);
        for replica in &replicas {
            assert_eq!(
                reads(&replica.map),
                expected,
                "after retiring every departed actor"
            );
            assert_eq!(
                replica.map, replicas[0].map,
                "every replica in the same state"
            );
        }
    }
    for (gone, _) in &departed {
        for (name, counter) in replicas[0].map.counters() {
            // An entry that carries the latest reset stays (with its takeover).
            let carries_reset = (counter.lifecycle())
                .is_some_and(|l| l.is_reset() && l.mark.as_ref().is_some_and(|m| &m.actor == gone));
            // So does one that took over another and must keep giving back
            // what that losing takeover folded in twice.
            let still_survivor = (counter.lifecycle())
                .is_some_and(|l| l.takeovers.iter().any(|((_, into), _)| into == gone));
            let keyed = counter.registrations().any(|r| &r.origin == gone);
            if !keyed && !carries_reset && !still_survivor {
                assert!(
                    counter.entry(gone.as_str()).is_none(),
                    "{name}: {gone}'s entry outlived its retirement: {counter:?}"
                );
            }
        }
    }
    for (name, expected) in NAMES.iter().zip(&expected) {
        if expected.is_none() {
            assert!(
                replicas.iter().all(|r| r.map.get(name).is_none()),
                "{name}: a deleted counter is collected everywhere"
            );
        }
    }
}
