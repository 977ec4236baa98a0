//! Real nodes on loopback: convergence, partitions, and hostile gossip input.
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_until, Cluster, NodeProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_on_different_nodes_converge() {
    let cluster = Cluster::start(4, &[]).await;
    let mut writers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let url = node.url("/increment");
        let dec = node.url("/counters/other/decrement");
        writers.push(tokio::spawn(async move {
            let http = common::http();
            for _ in 0..50 {
                let ok = http
                    .post(&url)
                    .body(format!("{{\"amount\": {}}}", i + 1))
                    .send()
                    .await
                    .unwrap();
                assert!(ok.status().is_success());
                assert!(http.post(&dec).send().await.unwrap().status().is_success());
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Σ over nodes of 50 × (i + 1) for i in 0..4.
    assert!(cluster.converge(None, 50 * (1 + 2 + 3 + 4), CONVERGE).await);
    assert!(cluster.converge(Some("other"), -200, CONVERGE).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_node_catches_up_after_heal() {
    let cluster = Cluster::start(3, &["--allow-fault-injection"]).await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    assert!(
        wait_until(CONVERGE, || async {
            a.get_json("/health").await["peers_alive"] == 2
        })
        .await
    );
    let (status, _) = c
        .post("/admin/partition", r#"{"peers": ["n1", "n2"]}"#)
        .await;
    assert_eq!(status, 200);
    for _ in 0..10 {
        assert_eq!(a.post("/increment", "").await.0, 200);
    }
    assert_eq!(c.post("/increment", r#"{"amount": 100}"#).await.0, 200);
    assert!(wait_until(CONVERGE, || async { b.value().await == 10 }).await);
    assert_eq!(
        c.value().await,
        100,
        "the partitioned node must not hear the others"
    );
    let healed = common::http()
        .delete(c.url("/admin/partition"))
        .send()
        .await
        .unwrap();
    assert!(healed.status().is_success());
    assert!(cluster.converge(None, 110, CONVERGE).await);
}

/// `tally_rejected_frames_total` of `node` (its only sample, labelled with its id).
async fn rejected_frames(node: &NodeProcess) -> u64 {
    let label = format!("node=\"{}\"", node.id);
    node.metric("tally_rejected_frames_total", &label).await
}

/// Waits until `node` has counted more than `before` rejected frames; the count.
async fn rejected_after(node: &NodeProcess, before: u64) -> u64 {
    wait_until(CONVERGE, || async { rejected_frames(node).await > before }).await;
    rejected_frames(node).await
}

/// The ids `node` lists in `GET /peers`.
async fn peer_ids(node: &NodeProcess) -> Vec<String> {
    let peers = node.get_json("/peers").await;
    peers
        .as_array()
        .expect("/peers is a list")
        .iter()
        .map(|peer| peer["id"].as_str().expect("peer id").to_owned())
        .collect()
}

/// Each kind of hostile input on the gossip port is rejected and counted on
/// its own, one rejection per connection, and the node serves throughout; a
/// node with the wrong key is refused, counted, and never becomes a member.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_gossip_input_leaves_the_node_serving() {
    let cluster = Cluster::start(2, &[]).await;
    let [target, other] = [&cluster.nodes[0], &cluster.nodes[1]];
    let attacks: [(&str, &[u8]); 4] = [
        // "GET " read as a length prefix is ~1.2 GB: over the limit.
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: tally\r\n\r\n"),
        // A well-framed body that is no Hello.
        ("a frame of garbage", b"\0\0\0\x0c\xff\xfe garbage!"),
        ("half a frame, then a hang-up", &[0, 0, 0, 200, 1, 2, 3]),
        ("a 4 GiB length prefix", &[0xff, 0xff, 0xff, 0xff]),
    ];
    let mut increments = 0;
    for (attack, bytes) in attacks {
        let before = rejected_frames(target).await;
        {
            let mut stream = TcpStream::connect(&target.gossip_addr).expect("connect");
            stream.write_all(bytes).expect("send the attack");
        } // Hang up.
        let after = rejected_after(target, before).await;
        assert_eq!(
            after,
            before + 1,
            "{attack}: one connection, one rejection counted"
        );
        assert_eq!(
            target.post("/increment", "").await.0,
            200,
            "{attack}: the node stopped serving"
        );
        increments += 1;
    }
    assert!(cluster.converge(None, increments, CONVERGE).await);

    // A node with the wrong key, seeded with the target.
    let intruder_dir = tempfile::tempdir().unwrap();
    let intruder = NodeProcess::start_with_key(
        "intruder",
        intruder_dir.path(),
        &["--seed".into(), target.gossip_addr.clone()],
        "not-the-cluster-key",
    );
    intruder.wait_ready().await;
    assert_eq!(intruder.post("/increment", r#"{"amount": 7}"#).await.0, 200);
    // Its attempts, each refused in the handshake; two of them, so it had
    // time to be let in after it held news.
    let before = rejected_frames(target).await;
    let once = rejected_after(target, before).await;
    let twice = rejected_after(target, once).await;
    assert!(
        twice >= before + 2,
        "the wrong key was not counted: {before} → {twice}"
    );
    for node in [target, other] {
        let peers = peer_ids(node).await;
        assert!(
            !peers.iter().any(|id| id == "intruder"),
            "{} lists the intruder: {peers:?}",
            node.id
        );
    }
    let theirs = peer_ids(&intruder).await;
    assert!(theirs.is_empty(), "the intruder got to know {theirs:?}");
    assert_eq!(rejected_frames(other).await, 0, "n2 never met the intruder");
    assert_eq!(intruder.value().await, 7);
    assert_eq!(target.value().await, increments);
    assert_eq!(other.value().await, increments);
    assert!(
        target.post("/increment", "").await.0 == 200
            && cluster.converge(None, increments + 1, CONVERGE).await,
        "the cluster stopped working"
    );
}

/// A length prefix over `--max-frame` closes the connection at once (no body
/// is waited for) and counts in `tally_rejected_frames_total`; one at the
/// limit is read on.
#[tokio::test(flavor = "multi_thread")]
async fn a_frame_over_max_frame_closes_the_connection_and_is_counted() {
    const MAX_FRAME: u32 = 4096;
    let cluster = Cluster::start(1, &["--max-frame", &MAX_FRAME.to_string()]).await;
    let node = &cluster.nodes[0];
    let before = rejected_frames(node).await;

    // At the limit: the node waits for the body (its handshake allows 5 s).
    let mut at_limit = tokio::net::TcpStream::connect(&node.gossip_addr)
        .await
        .expect("connect");
    at_limit
        .write_all(&MAX_FRAME.to_be_bytes())
        .await
        .expect("send a length prefix");
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_secs(1), at_limit.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "a frame at the limit was refused: {waited:?}"
    );
    assert_eq!(rejected_frames(node).await, before);

    // One byte over: closed on the prefix alone, well within the handshake's 5 s.
    let mut over = tokio::net::TcpStream::connect(&node.gossip_addr)
        .await
        .expect("connect");
    over.write_all(&(MAX_FRAME + 1).to_be_bytes())
        .await
        .expect("send a length prefix");
    let closed = tokio::time::timeout(Duration::from_secs(3), over.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the node kept the connection open: {closed:?}"
    );
    let after = rejected_after(node, before).await;
    assert_eq!(
        after,
        before + 1,
        "the oversized frame was not counted once"
    );
    assert_eq!(node.post("/increment", "").await.0, 200);
    drop(at_limit);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_http_input_gets_json_errors() {
    let cluster = Cluster::start(1, &[]).await;
    let node = &cluster.nodes[0];
    for body in [
        "abc",
        r#"{"amount": "abc"}"#,
        r#"{"amount": 0}"#,
        r#"{"amount": -3}"#,
        r#"{"amount": 1e3}"#,
    ] {
        let (status, answer) = node.post("/increment", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].is_string());
    }
    let (status, _) = node
        .post("/increment", &format!("{{\"amount\": {}}}", i64::MAX))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = node.post("/increment", "").await;
    assert_eq!(status, 400, "overflow must be refused: {answer}");
    let (status, _) = node.post("/increment", &"x".repeat(70 * 1024)).await;
    assert_eq!(status, 413);
    let (status, _) = node.post("/nowhere", "").await;
    assert_eq!(status, 404);
    let (status, _) = node.post("/counter", "").await;
    assert_eq!(status, 405);
    let (status, _) = node.post("/admin/partition", r#"{"peers": []}"#).await;
    assert_eq!(status, 404, "fault injection is off by default");
    assert_eq!(node.value().await, i64::MAX);
}

/// A TCP relay placed in front of a node's gossip port: it copies bytes both
/// ways, recording everything, and lets the test alter the first frame the
/// dialer sends or slip a frame of its own into the stream.
struct Relay {
    addr: String,
    captured: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    inject: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

/// What the relay does to the dialer's first frame (the handshake's first message).
#[derive(Clone, Copy)]
enum FirstFrame {
    Forward,
    FlipALastByte,
}

impl Relay {
    async fn start(upstream: String, first_frame: FirstFrame) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (inject, mut injected) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let record = std::sync::Arc::clone(&captured);
        tokio::spawn(async move {
            // One connection is all the tests need: the dialer's seed link.
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let (mut from_dialer, mut to_dialer) = inbound.into_split();
            let (mut from_node, mut to_node) = outbound.into_split();
            let record_up = std::sync::Arc::clone(&record);
            let upward = async move {
                let mut first = true;
                let mut buffer = vec![0; 1 << 16];
                loop {
                    tokio::select! {
                        read = from_dialer.read(&mut buffer) => {
                            let Ok(n) = read else { return };
                            if n == 0 { return; }
                            let mut bytes = buffer[..n].to_vec();
                            if first {
                                first = false;
                                if let FirstFrame::FlipALastByte = first_frame {
                                    let last = bytes.len() - 1;
                                    bytes[last] ^= 0x01;
                                }
                            }
                            record_up.lock().unwrap().extend_from_slice(&bytes);
                            if to_node.write_all(&bytes).await.is_err() { return; }
                        }
                        Some(frame) = injected.recv() => {
                            if to_node.write_all(&frame).await.is_err() { return; }
                        }
                    }
                }
            };
            let downward = async move {
                let mut buffer = vec![0; 1 << 16];
                while let Ok(n) = from_node.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    record.lock().unwrap().extend_from_slice(&buffer[..n]);
                    if to_dialer.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(upward, downward);
        });
        Self {
            addr,
            captured,
            inject,
        }
    }

    fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A counter's name and value cross the gossip link only encrypted: a relay
/// that sees every byte of a joining node's catch-up finds neither.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_on_a_gossip_link_show_no_counter_name_or_value() {
    const NAME: &str = "payroll-secret-counter";
    const AMOUNT: u64 = 987_654_321;
    let dir = tempfile::tempdir().unwrap();
    let n1 = NodeProcess::start("n1", &dir.path().join("n1"), &[]);
    n1.wait_ready().await;
    let body = format!(r#"{{"amount": {AMOUNT}}}"#);
    let path = format!("/counters/{NAME}/increment");
    assert_eq!(n1.post(&path, &body).await.0, 200);

    let relay = Relay::start(n1.gossip_addr.clone(), FirstFrame::Forward).await;
    // n2 knows n1 only through the relay, so its first pull (the catch-up
    // carrying the counter) crosses it.
    let n2 = NodeProcess::start(
        "n2",
        &dir.path().join("n2"),
        &["--seed".into(), relay.addr.clone()],
    );
    n2.wait_ready().await;
    assert!(
        wait_until(CONVERGE, || async {
            n2.named(NAME).await == Some(AMOUNT as i64)
        })
        .await,
        "n2 never caught up through the relay"
    );
    let wire = relay.captured();
    assert!(
        wire.len() > 200,
        "the catch-up did not cross the relay ({} bytes)",
        wire.len()
    );
    assert!(
        !contains(&wire, NAME.as_bytes()),
        "counter name in clear text"
    );
    assert!(!contains(&wire, b"node-"), "ids in clear text");
    let mut varint = Vec::new();
    let mut rest = AMOUNT;
    while rest >= 0x80 {
        varint.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    varint.push(rest as u8);
    assert!(
        !contains(&wire, &varint),
        "the value's encoding in clear text"
    );
    assert!(
        !contains(&wire, AMOUNT.to_string().as_bytes()),
        "the value as text"
    );
}

/// A relay without the key can neither alter a handshake (the node refuses
/// it and counts it; nobody learns a member through it) nor slip a frame of
/// its own into a session (refused, counted, no member appears).
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_cannot_complete_a_handshake_or_inject_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = NodeProcess::start("n1", &dir.path().join("n1"), &[]);
    n1.wait_ready().await;

    // 1. A relay that flips one bit of the dialer's handshake message.
    let tampering = Relay::start(n1.gossip_addr.clone(), FirstFrame::FlipALastByte).await;
    let before = rejected_frames(&n1).await;
    let n2 = NodeProcess::start(
        "n2",
        &dir.path().join("n2"),
        &["--seed".into(), tampering.addr.clone()],
    );
    n2.wait_ready().await;
    let after = rejected_after(&n1, before).await;
    assert!(after > before, "the altered handshake was not refused");
    assert!(
        peer_ids(&n1).await.is_empty(),
        "n1 met n2 through a tampered handshake"
    );
    assert!(
        peer_ids(&n2).await.is_empty(),
        "n2 met n1 through a tampered handshake"
    );

    // 2. A relay that forwards the handshake, then injects a frame of its own.
    let forwarding = Relay::start(n1.gossip_addr.clone(), FirstFrame::Forward).await;
    let n3 = NodeProcess::start(
        "n3",
        &dir.path().join("n3"),
        &["--seed".into(), forwarding.addr.clone()],
    );
    n3.wait_ready().await;
    assert!(
        wait_until(CONVERGE, || async {
            peer_ids(&n1).await.contains(&"n3".to_owned())
        })
        .await,
        "n3 never joined through the forwarding relay"
    );
    let before = rejected_frames(&n1).await;
    // A well-framed body, shaped like a sealed message, claiming nothing
    // anyone can decrypt.
    let mut forged = vec![0, 0, 0, 64];
    forged.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    forwarding.inject.send(forged).unwrap();
    let after = rejected_after(&n1, before).await;
    assert!(after > before, "the injected frame was not refused");
    let members = peer_ids(&n1).await;
    assert_eq!(members, ["n3"], "n1's members after the injection");
}
