//! Real nodes on loopback: convergence, partitions, and hostile gossip input.
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_until, Cluster};

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

#[tokio::test(flavor = "multi_thread")]
async fn hostile_gossip_input_leaves_the_node_serving() {
    let cluster = Cluster::start(2, &["--cluster-key", "secret"]).await;
    let target = &cluster.nodes[0];
    let send = |bytes: &[u8]| {
        let mut stream = TcpStream::connect(&target.gossip_addr).unwrap();
        let _ = stream.write_all(bytes);
    };
    send(b"GET / HTTP/1.1\r\n\r\n garbage \xff\xfe");
    send(&[0, 0, 0, 200, 1, 2, 3]); // half a frame, then hang up
    send(&[0xff, 0xff, 0xff, 0xff]); // a frame far over the limit
                                     // A node with the wrong key.
    let intruder_dir = tempfile::tempdir().unwrap();
    let intruder = common::NodeProcess::start(
        "intruder",
        intruder_dir.path(),
        &[
            "--cluster-key".into(),
            "wrong".into(),
            "--seed".into(),
            target.gossip_addr.clone(),
        ],
    );
    intruder.wait_ready().await;
    assert_eq!(intruder.post("/increment", r#"{"amount": 7}"#).await.0, 200);
    assert_eq!(target.post("/increment", "").await.0, 200);
    assert!(cluster.converge(None, 1, CONVERGE).await);
    // The intruder never got in: no member, no value, and the rejections are counted.
    assert!(
        wait_until(CONVERGE, || async {
            target.metric("tally_rejected_frames_total", "").await > 0
        })
        .await
    );
    let peers = target.get_json("/peers").await;
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != "intruder"),
        "{peers}"
    );
    assert_eq!(intruder.value().await, 7);
    assert_eq!(target.value().await, 1);
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
