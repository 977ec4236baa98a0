//! The gateway as a real process in front of real `tally node` processes:
//! failover while a node dies, the merged live stream, a browser that never
//! reads, and the node table / health answers.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, wait_until, Cluster, GatewayProcess, NodeProcess};
use crdt_core::{wire, CounterMap, DEFAULT_COUNTER};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tally_protocol::events::ClusterEvent;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until every node holds the same `default` counter state (same
/// increments per actor, not merely the same sum) and returns its value.
async fn converged_value(nodes: &[&NodeProcess]) -> Option<i64> {
    let agreed = std::cell::Cell::new(None);
    let settled = wait_until(PATIENCE, || async {
        let mut states = Vec::new();
        for node in nodes {
            states.push(node.get_json("/state").await);
        }
        let same = states
            .windows(2)
            .all(|pair| pair[0]["increments"] == pair[1]["increments"]);
        agreed.set(same.then(|| states[0]["value"].as_i64()).flatten());
        agreed.get().is_some()
    })
    .await;
    settled.then(|| agreed.get()).flatten()
}

/// The answers of the failover load, by kind.
#[derive(Debug, Default)]
struct Answers {
    ok: usize,
    /// 502/504: the write may or may not have landed.
    unknown: usize,
    /// 502/504 to requests that started after the kill (should not happen).
    unknown_after_kill: usize,
    /// Anything else (never acceptable).
    other: Vec<u16>,
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_keep_succeeding_while_a_node_is_killed() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 100;
    const KILL_AFTER: usize = CLIENTS * PER_CLIENT / 3;
    let mut cluster = Cluster::start(3, &[]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, None).await;

    let done = Arc::new(AtomicUsize::new(0));
    let killed_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, done, killed_at) = (gateway.url("/increment"), done.clone(), killed_at.clone());
        clients.push(tokio::spawn(async move {
            let client = http();
            let mut answers = Answers::default();
            for _ in 0..PER_CLIENT {
                let started = Instant::now();
                let status = match client.post(&url).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                match status {
                    200 => answers.ok += 1,
                    502 | 504 => {
                        answers.unknown += 1;
                        if killed_at.get().is_some_and(|kill| started > *kill) {
                            answers.unknown_after_kill += 1;
                        }
                    }
                    other => answers.other.push(other),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            answers
        }));
    }
    let reached = wait_until(PATIENCE, || async {
        done.load(Ordering::Relaxed) >= KILL_AFTER
    })
    .await;
    assert!(reached, "the load stalled before the kill");
    cluster.nodes[1].kill9();
    // Set once the process is gone (killed and reaped): requests sent later
    // can only meet a closed port or a dead pooled connection.
    let _ = killed_at.set(Instant::now());

    let mut total = Answers::default();
    for client in clients {
        let answers = client.await.expect("client task");
        total.ok += answers.ok;
        total.unknown += answers.unknown;
        total.unknown_after_kill += answers.unknown_after_kill;
        total.other.extend(answers.other);
    }
    assert!(total.other.is_empty(), "unexpected answers: {total:?}");
    assert!(
        total.unknown <= CLIENTS,
        "more failures than requests in flight at the kill: {total:?}"
    );
    assert_eq!(
        total.unknown_after_kill, 0,
        "a request sent after the kill failed: {total:?}"
    );

    // The survivors agree among themselves; the dead node may hold acknowledged
    // writes it had not gossiped yet, so the full count needs it back.
    let survivors = [&cluster.nodes[0], &cluster.nodes[2]];
    let partial = converged_value(&survivors)
        .await
        .expect("survivors converge");
    assert!(
        partial <= (total.ok + total.unknown) as i64,
        "{partial} > sent: {total:?}"
    );
    cluster.nodes[1].restart();
    cluster.nodes[1].wait_ready().await;
    let everyone: Vec<&NodeProcess> = cluster.nodes.iter().collect();
    let value = converged_value(&everyone)
        .await
        .expect("all nodes converge");
    let (least, most) = (total.ok as i64, (total.ok + total.unknown) as i64);
    assert!(
        (least..=most).contains(&value) && value >= partial,
        "converged value {value} outside [{least}, {most}] (survivors alone: {partial}): {total:?}"
    );
}

type WsStream<S> = tokio_tungstenite::WebSocketStream<S>;

/// Merges every state the browser stream delivers into `merged`, until
/// `done(merged)` holds or the stream goes quiet for too long.
async fn follow<S>(
    socket: &mut WsStream<S>,
    merged: &mut CounterMap,
    done: impl Fn(&CounterMap) -> bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    follow_for(socket, merged, done, PATIENCE).await;
}

/// [`follow`] for at most `patience`.
async fn follow_for<S>(
    socket: &mut WsStream<S>,
    merged: &mut CounterMap,
    done: impl Fn(&CounterMap) -> bool,
    patience: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !done(merged) {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        let Ok(Some(Ok(message))) = next else {
            panic!("stream ended or went quiet; merged so far: {merged:?}");
        };
        let Message::Binary(frame) = message else {
            continue;
        };
        match wire::decode::<ClusterEvent>(&frame).expect("a ClusterEvent") {
            ClusterEvent::Counters { state, .. } => merged.merge(&state),
            ClusterEvent::CountersDelta { delta } => merged.merge(&delta),
            _ => false,
        };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_stream_merges_to_the_cluster_value() {
    let cluster = Cluster::start(3, &[]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, None).await;
    let url = format!("ws://{}/ws", gateway.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect /ws");

    // Node i adds i + 1 twenty times, and takes 1 from "other".
    for (i, node) in cluster.nodes.iter().enumerate() {
        for _ in 0..20 {
            let amount = format!("{{\"amount\": {}}}", i + 1);
            assert_eq!(node.post("/increment", &amount).await.0, 200);
        }
        assert_eq!(node.post("/counters/other/decrement", "").await.0, 200);
    }
    let expected = 20 * (1 + 2 + 3);
    assert!(cluster.converge(None, expected, PATIENCE).await);
    assert!(cluster.converge(Some("other"), -3, PATIENCE).await);

    let mut merged = CounterMap::new();
    follow(&mut socket, &mut merged, |merged| {
        merged.value(DEFAULT_COUNTER) == Some(i128::from(expected))
            && merged.value("other") == Some(-3)
    })
    .await;
    // Per actor, not just the sum: the stream's merge is the nodes' state.
    let state = cluster.nodes[0].get_json("/state").await;
    let default = merged.get(DEFAULT_COUNTER).expect("default counter");
    let streamed: serde_json::Map<String, Value> = default
        .entries()
        .map(|(actor, entry)| {
            let inc = u64::try_from(entry.inc).expect("this test's totals fit in u64");
            (actor.as_str().to_owned(), Value::from(inc))
        })
        .collect();
    assert_eq!(Value::Object(streamed), state["increments"]);
}

/// A WebSocket to the gateway's `/ws` with a tiny receive buffer, so that a
/// client that never reads fills it almost at once.
async fn stalled_browser(addr: &str) -> WsStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let url = format!("ws://{addr}/ws");
    let (socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("ws handshake");
    socket
}

/// The longest counter names there are, so every event is large: the
/// stream outgrows the kernel's socket buffers (~4 MiB) and the gateway's
/// sends to a browser that never reads really block.
fn long_counter_name(i: usize) -> String {
    let name = format!("stalled-browser-load-{i:03}-");
    let padding = crdt_core::MAX_NAME_LEN - name.len();
    name + &"x".repeat(padding)
}

/// Sum of every counter in `map`.
fn total(map: &CounterMap) -> i128 {
    map.counters().map(|(_, counter)| counter.value()).sum()
}

/// What a browser that stalled saw once it read again.
#[derive(Debug, PartialEq)]
enum Recovery {
    /// The gateway resent the whole state after the browser fell behind.
    Resynced,
    /// The gateway gave up on it and closed the stream.
    Dropped,
}

/// Reads a stalled browser's stream from the start: after its first catch-up
/// (`Nodes`, `Summary`, `Busiest` and the counters), a state in the middle of the
/// deltas shows a resync; the stream ending shows a drop. `None`: it went
/// quiet with neither, so every change fit in the socket buffers and the
/// load was too small to stall anything.
async fn recovery(socket: &mut WsStream<tokio::net::TcpStream>) -> Option<Recovery> {
    let mut deltas_seen = false;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        let message = match next {
            Err(_quiet) => return None,
            Ok(Some(Ok(message))) => message,
            Ok(None | Some(Err(_))) => return Some(Recovery::Dropped),
        };
        let Message::Binary(frame) = message else {
            continue;
        };
        match wire::decode::<ClusterEvent>(&frame).expect("a ClusterEvent") {
            ClusterEvent::CountersDelta { .. } => deltas_seen = true,
            ClusterEvent::Counters { .. } if deltas_seen => return Some(Recovery::Resynced),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_that_never_read_do_not_grow_the_gateway() {
    const STALLED: usize = 4;
    const NAMES: usize = 200;
    const WRITERS: usize = 16;
    // Each write reaches a browser once (the merged view's news), not once
    // per node: enough of them to outgrow the socket buffers.
    const WRITES_PER_WRITER: usize = 1_800;
    let cluster = Cluster::start(3, &[]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, None).await;
    let baseline = gateway.rss_bytes();
    // Held, never polled while the load runs.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_browser(&gateway.addr).await);
    }
    let (mut reader, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr))
        .await
        .expect("connect reader");
    let reading = tokio::spawn(async move {
        let mut merged = CounterMap::new();
        let writes = (WRITERS * WRITES_PER_WRITER) as i128;
        // It follows the whole load, which takes longer than one wait.
        let whole_load = PATIENCE * 4;
        follow_for(
            &mut reader,
            &mut merged,
            |merged| total(merged) == writes,
            whole_load,
        )
        .await;
    });

    // A fixed set of counters: the state stays small while the stream of
    // changes to it grows with every write.
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let base = cluster.nodes[writer % cluster.nodes.len()].url("");
        writers.push(tokio::spawn(async move {
            let client = http();
            for i in 0..WRITES_PER_WRITER {
                let name = long_counter_name((writer * WRITES_PER_WRITER + i) % NAMES);
                let url = format!("{base}/counters/{name}/increment");
                let response = client.post(&url).send().await.expect("write");
                assert_eq!(response.status().as_u16(), 200);
            }
        }));
    }
    let mut peak = baseline;
    while writers.iter().any(|writer| !writer.is_finished()) {
        peak = peak.max(gateway.rss_bytes());
        assert_eq!(
            gateway.health().await.0,
            200,
            "gateway stopped serving under load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    // A browser that reads gets everything, stalled neighbours notwithstanding.
    reading.await.expect("the reading browser converges");
    peak = peak.max(gateway.rss_bytes());
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 50 << 20,
        "gateway RSS grew by {} MiB (baseline {} MiB)",
        grown >> 20,
        baseline >> 20
    );
    assert_eq!(gateway.health().await.0, 200);
    // Proof the load really stalled them: each one fell behind and was
    // either resynced or dropped — not fed from a queue of its own.
    for socket in &mut stalled {
        let recovered = recovery(socket).await;
        assert!(
            recovered.is_some(),
            "neither resynced nor dropped: the load never stalled it"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_and_health_report_the_cluster() {
    let mut cluster = Cluster::start(3, &[]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, None).await;
    let (status, body) = gateway.health().await;
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("ok")),
        "{body}"
    );

    for _ in 0..9 {
        assert_eq!(gateway.post("/increment", "").await.0, 200);
    }
    assert!(cluster.converge(None, 9, PATIENCE).await);
    let shown = wait_until(PATIENCE, || async {
        let views = gateway.nodes().await;
        views.len() == 3
            && views.iter().all(|view| {
                view.healthy
                    && view.value == Some(9)
                    && view.lag.is_some_and(|lag| lag.default == 0)
            })
    })
    .await;
    assert!(
        shown,
        "/nodes never showed 3 healthy nodes at 9: {:?}",
        gateway.nodes().await
    );
    let mut ids: Vec<String> = gateway
        .nodes()
        .await
        .into_iter()
        .map(|view| view.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2", "n3"]);

    // Writes the killed node never sees show up as its lag.
    cluster.nodes[2].kill9();
    let answer = gateway.post("/increment", r#"{"amount": 5}"#).await;
    assert_eq!(answer.0, 200);
    let lagging = wait_until(PATIENCE, || async {
        let views = gateway.nodes().await;
        let dead = views.iter().find(|view| view.id == "n3");
        dead.is_some_and(|view| !view.healthy && view.lag.is_some_and(|lag| lag.default == 5))
            && gateway.health().await.1["healthy_nodes"] == 2
    })
    .await;
    assert!(lagging, "/nodes: {:?}", gateway.nodes().await);

    for node in &mut cluster.nodes {
        node.kill9();
    }
    // Not ready with no node to send to; still alive (an orchestrator
    // must not restart a gateway because its nodes are down).
    let down = wait_until(PATIENCE, || async { gateway.get("/ready").await.0 == 503 }).await;
    assert!(
        down,
        "/ready still {:?} with every node dead",
        gateway.get("/ready").await
    );
    let (status, body) = gateway.health().await;
    assert_eq!((status, &body["healthy_nodes"]), (200, &json!(0)), "{body}");
}
