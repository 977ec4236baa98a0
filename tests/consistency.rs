//! Per-request consistency over real nodes: `?w=` waits for replicas to
//! hold a write, `?r=` merges replicas' states before a read.
mod common;

use std::time::Duration;

use common::{wait_until, Cluster, NodeProcess};

const SETTLE: Duration = Duration::from_secs(20);

/// Waits until `node` sees `peers` members alive.
async fn sees_alive(node: &NodeProcess, peers: u64) -> bool {
    wait_until(SETTLE, || async {
        node.get_json("/health").await["peers_alive"] == peers
    })
    .await
}

/// Waits until every node of `cluster` sees every other alive.
async fn everyone_sees_everyone(cluster: &Cluster) -> bool {
    let peers = cluster.nodes.len() as u64 - 1;
    for node in &cluster.nodes {
        if !sees_alive(node, peers).await {
            return false;
        }
    }
    true
}

/// Cuts gossip between `node` and `peers` (on `node`'s side).
async fn partition(node: &NodeProcess, peers: &[&str]) {
    let body = serde_json::json!({ "peers": peers }).to_string();
    let (status, _) = node.post("/admin/partition", &body).await;
    assert_eq!(status, 200, "partition refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn w_majority_with_two_of_three_nodes_unreachable_is_504_outcome_unknown() {
    let cluster = Cluster::start(3, &["--allow-fault-injection", "--write-timeout", "1s"]).await;
    let n1 = &cluster.nodes[0];
    assert!(everyone_sees_everyone(&cluster).await);
    partition(n1, &["n2", "n3"]).await;

    let (status, body) = n1.post("/counters/q/increment?w=majority", "").await;
    assert_eq!(status, 504, "{body}");
    let error = body["error"].as_str().expect("a JSON error");
    assert!(error.contains("outcome unknown"), "{error}");
    assert!(error.contains("Idempotency-Key"), "{error}");
    // Durable here all the same: a plain write still answers, with one replica.
    let (status, body) = n1.post("/counters/q/increment", "").await;
    assert_eq!((status, &body["replicas"]), (200, &serde_json::json!(1)));
    assert_eq!(body["value"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn w_majority_then_r_majority_from_another_node_reads_its_own_write() {
    // Slow rounds: anti-entropy could not bring the write to the reader in time.
    let cluster = Cluster::start(3, &["--allow-fault-injection", "--gossip-interval", "2s"]).await;
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    assert!(everyone_sees_everyone(&cluster).await);
    // The writer and the reader never hear each other: only the replica
    // they share (n2) can carry the write.
    partition(n1, &["n3"]).await;
    partition(n3, &["n1"]).await;
    for i in 1..=50 {
        let (status, written) = n1.post("/counters/ryw/increment?w=majority", "").await;
        assert_eq!(status, 200, "write {i}: {written}");
        assert!(
            written["replicas"].as_u64() >= Some(2),
            "write {i}: {written}"
        );
        let (status, read) = n3.get("/counters/ryw?r=majority").await;
        assert_eq!(status, 200, "read {i}: {read}");
        assert_eq!(read["value"], i, "read {i} missed its write: {read}");
        assert!(read["replicas"].as_u64() >= Some(2), "read {i}: {read}");
    }
    // And the other way round, through the default counter.
    for i in 1..=10 {
        assert_eq!(n3.post("/increment?w=majority", "").await.0, 200);
        let (status, read) = n1.get("/counter?r=majority").await;
        assert_eq!((status, read["value"].as_i64()), (200, Some(i)), "{read}");
    }
    assert_eq!(n2.named("ryw").await, Some(50));
}

#[tokio::test(flavor = "multi_thread")]
async fn w_all_reports_every_replica_and_bad_levels_are_refused() {
    let cluster = Cluster::start(3, &[]).await;
    let n1 = &cluster.nodes[0];
    assert!(everyone_sees_everyone(&cluster).await);

    let (status, body) = n1.post("/counters/all/increment?w=all", "").await;
    assert_eq!(
        (status, &body["replicas"]),
        (200, &serde_json::json!(3)),
        "{body}"
    );
    for node in &cluster.nodes[1..] {
        // `Stored` came only after their fsync: they hold it now, not eventually.
        let (status, read) = node.get("/counters/all").await;
        assert_eq!(
            (status, &read["value"]),
            (200, &serde_json::json!(1)),
            "{read}"
        );
    }
    let (status, body) = n1.post("/counters/all/decrement?w=2", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["replicas"].as_u64() >= Some(2), "{body}");
    let (status, body) = n1.post("/counters/all/increment", "").await;
    assert_eq!((status, &body["replicas"]), (200, &serde_json::json!(1)));
    let (status, body) = n1.get("/counters/all?r=all").await;
    assert_eq!(
        (status, &body["replicas"]),
        (200, &serde_json::json!(3)),
        "{body}"
    );
    let (status, body) = n1.get("/counter?r=1").await;
    assert_eq!(
        (status, &body["replicas"]),
        (200, &serde_json::json!(1)),
        "{body}"
    );

    for bad in ["w=0", "w=abc", "w=", "w=-1", "w=all&w=1"] {
        let (status, body) = n1.post(&format!("/counters/all/increment?{bad}"), "").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    for bad in ["r=0", "r=many"] {
        let (status, body) = n1.get(&format!("/counters/all?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // More replicas than the cluster has: refused at once, nothing applied.
    let (status, body) = n1.post("/counters/all/increment?w=4", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("w=4"), "{body}");
    let (_, body) = n1.get("/counters/all").await;
    assert_eq!(body["value"], 1, "a refused write was applied: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_combines_writes_by_w_and_forwards_r_to_a_node() {
    let cluster = Cluster::start(3, &[]).await;
    assert!(everyone_sees_everyone(&cluster).await);
    let gateway = common::GatewayProcess::start(&cluster.nodes, None).await;

    let mut writes = Vec::new();
    for i in 0..40 {
        let url = match i % 2 {
            0 => gateway.url("/counters/g/increment?w=all"),
            _ => gateway.url("/counters/g/increment"),
        };
        writes.push(tokio::spawn(async move {
            let (status, body) = common::post_to(&url, "").await;
            (i, status, body)
        }));
    }
    for write in writes {
        let (i, status, body) = write.await.unwrap();
        assert_eq!(status, 200, "write {i}: {body}");
        let expected = if i % 2 == 0 { 3 } else { 1 };
        assert_eq!(body["replicas"], expected, "write {i}: {body}");
    }
    let (status, body) = gateway.get("/counters/g?r=all").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["value"].as_i64(), body["replicas"].as_u64()),
        (Some(40), Some(3))
    );
    assert_ne!(
        body["node"], "gateway",
        "a read with r= must come from a node"
    );

    let (status, body) = gateway.post("/counters/g/increment?w=0", "").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_combined_batch_that_misses_its_w_is_504_for_every_client() {
    let cluster = Cluster::start(3, &["--allow-fault-injection", "--write-timeout", "1s"]).await;
    assert!(everyone_sees_everyone(&cluster).await);
    let n1 = &cluster.nodes[0];
    // The gateway knows n1 alone, and n1 hears nobody.
    let gateway = common::GatewayProcess::start(&cluster.nodes[..1], None).await;
    partition(n1, &["n2", "n3"]).await;
    let mut writes = Vec::new();
    for _ in 0..8 {
        let url = gateway.url("/counters/cut/increment?w=majority");
        writes.push(tokio::spawn(async move { common::post_to(&url, "").await }));
    }
    for write in writes {
        let (status, body) = write.await.unwrap();
        assert_eq!(status, 504, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("outcome unknown"),
            "{body}"
        );
    }
    // Durable on n1 all the same.
    assert_eq!(n1.named("cut").await, Some(8));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_that_stored_a_w_all_write_keeps_it_through_kill_9() {
    let mut cluster = Cluster::start(3, &[]).await;
    assert!(everyone_sees_everyone(&cluster).await);
    for i in 1..=20 {
        let (status, body) = cluster.nodes[0]
            .post("/counters/kept/increment?w=all", "")
            .await;
        assert_eq!(
            (status, &body["replicas"]),
            (200, &serde_json::json!(3)),
            "write {i}: {body}"
        );
    }
    // Everyone dies at once; each replica comes back alone, with only its own log.
    for node in &mut cluster.nodes {
        node.kill9();
    }
    for node in &mut cluster.nodes[1..] {
        node.restart();
        node.wait_ready().await;
        assert_eq!(
            node.named("kept").await,
            Some(20),
            "{} lost a stored write",
            node.id
        );
        node.kill9();
    }
}

/// Sends `signal` (`STOP`, `CONT`) to `node`'s process.
fn signal(node: &NodeProcess, signal: &str) {
    let pid = node.pid().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn w_majority_with_two_of_three_nodes_paused_is_504_then_answers_once_they_resume() {
    let cluster = Cluster::start(3, &["--write-timeout", "1s"]).await;
    assert!(everyone_sees_everyone(&cluster).await);
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    signal(n2, "STOP");
    signal(n3, "STOP");
    let (status, body) = n1.post("/counters/paused/increment?w=majority", "").await;
    signal(n2, "CONT");
    signal(n3, "CONT");
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("outcome unknown"),
        "{body}"
    );
    // Back: the same request succeeds, and the first write was kept.
    let answered = wait_until(SETTLE, || async {
        n1.post("/counters/paused/increment?w=majority", "").await.0 == 200
    })
    .await;
    assert!(
        answered,
        "w=majority never succeeded after the nodes resumed"
    );
    let (status, read) = n1.get("/counters/paused?r=all").await;
    assert_eq!(status, 200, "{read}");
    assert!(read["value"].as_i64() >= Some(2), "{read}");
}
