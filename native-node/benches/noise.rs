//! The cost of the gossip channel's cryptography: a Noise handshake over an
//! in-memory stream, and sealing/opening frames of typical sizes.
//!
//! `cargo bench -p tally-node --bench noise`
use std::time::Duration;

use crdt_core::{ActorId, CounterMap, CounterName, LinkedChange, Op};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_node::forgotten::Forgotten;
use tally_node::protocol::{MemberRecord, Message};
use tally_node::retirement::Retirement;
use tally_node::transport::{accept, dial, GossipKeys, PeerIdentity};
use tally_protocol::cluster_key::ClusterKeys;

fn identity(id: &str) -> PeerIdentity {
    let keys = ClusterKeys::parse("benchmark-cluster-secret").expect("valid secret");
    PeerIdentity {
        cluster: "bench".into(),
        keys: GossipKeys::from_cluster(&keys),
        member: MemberRecord {
            id: id.into(),
            gossip_addr: "127.0.0.1:9000".into(),
            http_addr: "127.0.0.1:8010".into(),
            heartbeat: 1,
        },
        max_frame: 1 << 20,
        idle_timeout: Duration::from_secs(5),
        retirement: Retirement::for_actor(&format!("{id}~1")),
        forgotten: std::sync::Arc::new(Forgotten::in_memory(id, 1)),
        max_clock_skew_ms: tally_protocol::clock::MAX_CLOCK_SKEW_MS,
    }
}

fn handshake(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (a, b) = (identity("a"), identity("b"));
    c.bench_function("noise handshake (both sides, in memory)", |bench| {
        bench.iter(|| {
            runtime.block_on(async {
                let (left, right) = tokio::io::duplex(1 << 16);
                let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
                (dialed.expect("dial"), accepted.expect("accept"))
            })
        })
    });
}

fn frames(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (a, b) = (identity("a"), identity("b"));
    let (mut dialed, mut accepted) = runtime.block_on(async {
        let (left, right) = tokio::io::duplex(8 << 20);
        let (dialed, accepted) = tokio::join!(dial(left, &a), accept(right, &b));
        (dialed.expect("dial").0, accepted.expect("accept").0)
    });
    let mut group = c.benchmark_group("delta sealed, sent, opened and decoded");
    for counters in [16, 4096] {
        let delta = delta_of(counters);
        let size = crdt_core::wire::encode(&delta).len();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(
            format!("{counters} counters ({} KiB)", size >> 10),
            |bench| {
                bench.iter(|| {
                    runtime.block_on(async {
                        dialed.writer.send(&delta).await.expect("send");
                        accepted.reader.recv().await.expect("recv")
                    })
                })
            },
        );
    }
    group.finish();
}

fn delta_of(counters: usize) -> Message {
    let actor = ActorId::new("node-1~bench").expect("valid actor");
    let mut changes = CounterMap::new();
    for index in 0..counters {
        let name = CounterName::new(&format!("counter-{index:06}")).expect("valid name");
        let _ = changes.apply(&actor, &name, Op::Increment(index as u64 + 1));
    }
    let changes = (changes.all_changes())
        .map(|change| LinkedChange {
            prev_seq: change.entry.seq - 1,
            change,
        })
        .collect();
    Message::Delta { changes }
}

criterion_group!(benches, handshake, frames);
criterion_main!(benches);
