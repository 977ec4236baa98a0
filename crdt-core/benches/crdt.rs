//! crdt-core against the `crdts` crate's `PNCounter`, doing the same work
//! in one run: increment, read the value, merge, digest, encode and decode,
//! at 10, 100 and 1,000 actors.
//!
//! `crdts` has no digest; its stand-in is hashing the counter with std's
//! `DefaultHasher` (it derives `Hash`), the cheapest way to fingerprint it.
//! Both sides encode with the same postcard encoder (`crdt_core::wire`).
// Criterion is a native-only dev-dependency: on wasm32 this bench is empty.
#![cfg_attr(target_arch = "wasm32", no_main)]
#![cfg(not(target_arch = "wasm32"))]

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    hint::black_box,
    time::Duration,
};

use crdt_core::{wire, ActorId, CounterMap, CounterName, Op, PnCounter};
use crdts::{CmRDT, CvRDT, PNCounter};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};

const ACTOR_COUNTS: [usize; 3] = [10, 100, 1_000];

/// Actor ids shaped like the node's (`<node id>~<incarnation>`).
fn actor_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("node-{i}~lq3x9")).collect()
}

/// The same actors, for both implementations.
struct Actors {
    ours: Vec<ActorId>,
    theirs: Vec<String>,
}

impl Actors {
    fn new(count: usize) -> Self {
        let theirs = actor_ids(count);
        let ours = theirs
            .iter()
            .map(|id| ActorId::new(id).expect("valid actor id"))
            .collect();
        Self { ours, theirs }
    }

    /// Our counter after each picked actor added `amount` and took away 1.
    fn our_counter(&self, picked: impl Iterator<Item = usize>, amount: u64) -> PnCounter {
        let mut counter = PnCounter::new();
        for i in picked {
            counter.increment(&self.ours[i], amount).expect("in range");
            counter.decrement(&self.ours[i], 1).expect("in range");
        }
        counter
    }

    /// The same in `crdts`.
    fn their_counter(&self, picked: impl Iterator<Item = usize>, amount: u64) -> PNCounter<String> {
        let mut counter = PNCounter::new();
        for i in picked {
            let op = counter.inc_many(self.theirs[i].clone(), amount);
            counter.apply(op);
            let op = counter.dec(self.theirs[i].clone());
            counter.apply(op);
        }
        counter
    }
}

fn bench_increment(c: &mut Criterion) {
    let mut group = c.benchmark_group("increment");
    let name = CounterName::new("default").expect("valid name");
    for count in ACTOR_COUNTS {
        let actors = Actors::new(count);
        let mut counter = actors.our_counter(0..count, 1);
        let mut map = CounterMap::new();
        for actor in &actors.ours {
            map.apply(actor, &name, Op::Increment(1)).expect("in range");
        }
        let mut theirs = actors.their_counter(0..count, 1);
        let mut next = 0;
        group.bench_function(BenchmarkId::new("crdt-core PnCounter", count), |bench| {
            bench.iter(|| {
                next = (next + 1) % count;
                black_box(counter.increment(&actors.ours[next], 1).expect("in range"))
            })
        });
        group.bench_function(BenchmarkId::new("crdt-core CounterMap", count), |bench| {
            bench.iter(|| {
                next = (next + 1) % count;
                let delta = map.apply(&actors.ours[next], &name, Op::Increment(1));
                black_box(delta.expect("in range"))
            })
        });
        group.bench_function(BenchmarkId::new("crdts PNCounter", count), |bench| {
            bench.iter(|| {
                next = (next + 1) % count;
                let op = theirs.inc(actors.theirs[next].clone());
                theirs.apply(black_box(op));
            })
        });
    }
    group.finish();
}

fn bench_value(c: &mut Criterion) {
    let mut group = c.benchmark_group("value");
    for count in ACTOR_COUNTS {
        let actors = Actors::new(count);
        let ours = actors.our_counter(0..count, 5);
        let theirs = actors.their_counter(0..count, 5);
        group.bench_function(BenchmarkId::new("crdt-core PnCounter", count), |bench| {
            bench.iter(|| black_box(&ours).value())
        });
        group.bench_function(BenchmarkId::new("crdts PNCounter", count), |bench| {
            bench.iter(|| black_box(&theirs).read())
        });
    }
    group.finish();
}

/// Merging a replica into one that agrees on half the actors and is
/// behind on the other half (the odd actors moved on).
fn bench_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    for count in ACTOR_COUNTS {
        let actors = Actors::new(count);
        let behind = actors.our_counter(0..count, 5);
        let mut ahead = behind.clone();
        ahead.merge(&actors.our_counter((1..count).step_by(2), 9));
        let their_behind = actors.their_counter(0..count, 5);
        let mut their_ahead = their_behind.clone();
        their_ahead.merge(actors.their_counter((1..count).step_by(2), 9));
        group.bench_function(BenchmarkId::new("crdt-core PnCounter", count), |bench| {
            bench.iter_batched(
                || behind.clone(),
                |mut target| {
                    target.merge(black_box(&ahead));
                    target
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("crdts PNCounter", count), |bench| {
            bench.iter_batched(
                || (their_behind.clone(), their_ahead.clone()),
                |(mut target, source)| {
                    target.merge(black_box(source));
                    target
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_digest(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest");
    for count in ACTOR_COUNTS {
        let actors = Actors::new(count);
        let ours = actors.our_counter(0..count, 5);
        let theirs = actors.their_counter(0..count, 5);
        group.bench_function(BenchmarkId::new("crdt-core PnCounter", count), |bench| {
            bench.iter(|| black_box(&ours).digest())
        });
        group.bench_function(
            BenchmarkId::new("crdts PNCounter (std hash)", count),
            |bench| {
                bench.iter(|| {
                    let mut hasher = DefaultHasher::new();
                    black_box(&theirs).hash(&mut hasher);
                    hasher.finish()
                })
            },
        );
    }
    group.finish();
}

/// One counter with `count` actors on both sides, plus a map of 1,000
/// counters × 3 actors (ours only: `crdts` has no equivalent of the map).
fn bench_wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    let default = CounterName::new("default").expect("valid name");
    for count in ACTOR_COUNTS {
        let actors = Actors::new(count);
        let mut map = CounterMap::new();
        for actor in &actors.ours {
            map.apply(actor, &default, Op::Increment(5))
                .expect("in range");
        }
        let theirs = actors.their_counter(0..count, 5);
        let (our_bytes, their_bytes) = (wire::encode(&map), wire::encode(&theirs));
        group.bench_function(BenchmarkId::new("encode crdt-core", count), |bench| {
            bench.iter(|| wire::encode(black_box(&map)))
        });
        group.bench_function(BenchmarkId::new("encode crdts", count), |bench| {
            bench.iter(|| wire::encode(black_box(&theirs)))
        });
        group.bench_function(BenchmarkId::new("decode crdt-core", count), |bench| {
            bench.iter(|| wire::decode::<CounterMap>(black_box(&our_bytes)).expect("decodes"))
        });
        group.bench_function(BenchmarkId::new("decode crdts", count), |bench| {
            bench.iter(|| {
                wire::decode::<PNCounter<String>>(black_box(&their_bytes)).expect("decodes")
            })
        });
    }

    let actors = Actors::new(3);
    let mut map = CounterMap::new();
    for i in 0..1_000 {
        let name = CounterName::new(&format!("page/{i}")).expect("valid name");
        for actor in &actors.ours {
            map.apply(actor, &name, Op::Increment(1)).expect("in range");
        }
    }
    let bytes = wire::encode(&map);
    group.bench_function("encode crdt-core map 1000x3", |bench| {
        bench.iter(|| wire::encode(black_box(&map)))
    });
    group.bench_function("decode crdt-core map 1000x3", |bench| {
        bench.iter(|| wire::decode::<CounterMap>(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

/// Short runs: these figures compare orders of magnitude, not percent.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_increment, bench_value, bench_merge, bench_digest, bench_wire
}
criterion_main!(benches);
