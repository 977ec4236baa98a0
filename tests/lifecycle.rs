//! Counter lifecycle over real processes: delete (observed-remove across a
//! partition), reset, expiry, delete-then-recreate across restarts and
//! snapshots, and garbage collection of deleted counters.
mod common;

use std::time::Duration;

use common::{http, status_and_json, wait_until, Cluster, NodeProcess};
use serde_json::Value;

/// Generous for loopback gossip at 100 ms rounds.
const CONVERGE: Duration = Duration::from_secs(15);

/// Generous for collection, which waits twice `--max-clock-skew` (2 s in
/// tests) after a delete.
const COLLECT: Duration = Duration::from_secs(40);

async fn delete(node: &NodeProcess, name: &str) -> (u16, Value) {
    let response = http()
        .delete(node.url(&format!("/counters/{name}")))
        .send()
        .await
        .expect("DELETE");
    status_and_json(response).await
}

async fn increment(node: &NodeProcess, name: &str, amount: u64) -> (u16, Value) {
    let body = format!(r#"{{"amount": {amount}}}"#);
    node.post(&format!("/counters/{name}/increment"), &body)
        .await
}

async fn peers_alive(cluster: &Cluster, alive: i64) {
    for node in &cluster.nodes {
        let all_seen = wait_until(CONVERGE, || async {
            node.get_json("/health").await["peers_alive"] == alive
        })
        .await;
        assert!(all_seen, "{} never saw {alive} peers alive", node.id);
    }
}

/// Waits until no node has counter `name` (404 everywhere).
async fn gone_everywhere(cluster: &Cluster, name: &str) -> bool {
    wait_until(CONVERGE, || async {
        for node in &cluster.nodes {
            if node.get(&format!("/counters/{name}")).await.0 != 404 {
                return false;
            }
        }
        true
    })
    .await
}

async fn partition(node: &NodeProcess, peers: &str) {
    let body = format!(r#"{{"peers": {peers}}}"#);
    assert_eq!(node.post("/admin/partition", &body).await.0, 200);
}

async fn heal(node: &NodeProcess) {
    let healed = http()
        .delete(node.url("/admin/partition"))
        .send()
        .await
        .expect("heal");
    assert!(healed.status().is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_removes_what_it_saw_and_keeps_the_partitioned_nodes_unseen_increments() {
    let cluster = Cluster::start(3, &["--allow-fault-injection"]).await;
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    peers_alive(&cluster, 2).await;
    assert_eq!(increment(n1, "x", 5).await.0, 200);
    assert!(cluster.converge(Some("x"), 5, CONVERGE).await);

    partition(n3, r#"["n1", "n2"]"#).await;
    for _ in 0..7 {
        assert_eq!(increment(n3, "x", 1).await.0, 200);
    }
    let (status, answer) = delete(n1, "x").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted"], true);
    assert_eq!(answer["name"], "x");
    let gone_on_n2 = wait_until(CONVERGE, || async { n2.get("/counters/x").await.0 == 404 }).await;
    assert!(gone_on_n2, "n2 still reads the deleted counter");
    assert_eq!(n3.named("x").await, Some(12), "n3 heard nothing");

    heal(n3).await;
    assert!(
        cluster.converge(Some("x"), 7, CONVERGE).await,
        "every node must read exactly n3's 7 unseen increments"
    );
    let (status, _) = delete(n2, "never-written").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_counter_is_gone_everywhere_and_a_later_write_starts_from_zero() {
    let cluster = Cluster::start(3, &[]).await;
    let [n1, n2, _] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    peers_alive(&cluster, 2).await;

    let (status, answer) = n1.post("/counters/t/increment?ttl=5x", "").await;
    assert_eq!(status, 400);
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("500ms, 2s, 5m, 1h, 7d"), "{error}");
    assert_eq!(n1.post("/counters/t/increment?ttl=0s", "").await.0, 400);
    assert_eq!(n1.post("/counters/t/increment?ttl=400d", "").await.0, 400);

    let (status, answer) = n1.post("/counters/t/increment?ttl=2s&w=all", "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replicas"], 3, "{answer}");
    assert!(answer["expires_at_ms"].as_u64().is_some(), "{answer}");
    assert_eq!(increment(n1, "kept", 1).await.0, 200);
    assert!(cluster.converge(Some("t"), 1, CONVERGE).await);
    assert!(
        gone_everywhere(&cluster, "t").await,
        "t never expired everywhere"
    );
    for node in &cluster.nodes {
        let listing = node.get_json("/counters").await;
        let names: Vec<&str> = (listing["counters"].as_array().expect("counters").iter())
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["kept"], "{} lists {names:?}", node.id);
    }
    let counted = wait_until(CONVERGE, || async {
        let mut expired = 0;
        for node in &cluster.nodes {
            expired += node.metric("tally_expired_total", "").await;
        }
        expired >= 1
    })
    .await;
    assert!(counted, "no node's sweep deleted the expired counter");

    let (status, answer) = increment(n2, "t", 3).await;
    assert_eq!(status, 200);
    assert_eq!(answer["value"], 3, "a write after expiry starts from zero");
    assert!(answer.get("expires_at_ms").is_none(), "{answer}");
    assert!(cluster.converge(Some("t"), 3, CONVERGE).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_reads_zero_everywhere_and_counts_on_from_there() {
    let cluster = Cluster::start(3, &[]).await;
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    peers_alive(&cluster, 2).await;
    assert_eq!(increment(n1, "r", 9).await.0, 200);
    assert_eq!(increment(n3, "r", 1).await.0, 200);
    assert!(cluster.converge(Some("r"), 10, CONVERGE).await);
    let (status, answer) = n2.post("/counters/r/reset?w=all", "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["name"].clone(), answer["value"].clone()),
        ("r".into(), 0.into())
    );
    assert_eq!(answer["replicas"], 3, "?w=all waits for every replica");
    assert!(cluster.converge(Some("r"), 0, CONVERGE).await);
    assert_eq!(increment(n3, "r", 2).await.0, 200);
    assert!(cluster.converge(Some("r"), 2, CONVERGE).await);
    assert_eq!(n1.post("/counters/absent/reset", "").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_set_later_expires_the_counter() {
    let cluster = Cluster::start(1, &[]).await;
    let n1 = &cluster.nodes[0];
    assert_eq!(increment(n1, "p", 4).await.0, 200);
    let put = |body: &'static str| http().put(n1.url("/counters/p/ttl")).body(body).send();
    let (status, _) = status_and_json(put(r#"{"ttl":"soon"}"#).await.unwrap()).await;
    assert_eq!(status, 400);
    let (status, answer) = status_and_json(put(r#"{"ttl":"500ms"}"#).await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["expires_at_ms"].as_u64().is_some(), "{answer}");
    assert!(gone_everywhere(&cluster, "p").await);
    let (status, _) = status_and_json(put(r#"{"ttl":"5m"}"#).await.unwrap()).await;
    assert_eq!(status, 404, "an expired counter has no ttl to set");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_then_recreated_counter_survives_restarts_and_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ["--snapshot-bytes", "8192", "--segment-bytes", "4096"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut node = NodeProcess::start("n1", &dir.path().join("n1"), &args);
    node.wait_ready().await;
    assert_eq!(increment(&node, "x", 5).await.0, 200);
    assert_eq!(delete(&node, "x").await.0, 200);
    node.restart();
    node.wait_ready().await;
    assert_eq!(
        node.get("/counters/x").await.0,
        404,
        "deleted before a restart"
    );

    assert_eq!(increment(&node, "x", 2).await.0, 200);
    // Other writes until snapshots cover the delete and the recreation.
    let mut filler = 0;
    while node.metric("tally_snapshots_total", "").await < 2 {
        assert!(filler < 20_000, "{filler} writes and still no 2 snapshots");
        let url = node.url(&format!("/counters/filler-{filler}/increment"));
        let writes = (0..16).map(|_| common::post_to(&url, ""));
        for (status, answer) in futures_util::future::join_all(writes).await {
            assert_eq!(status, 200, "a filler write: {answer}");
        }
        filler += 16;
    }
    node.restart();
    node.wait_ready().await;
    assert_eq!(
        node.named("x").await,
        Some(2),
        "recreated, after a snapshot"
    );
    assert_eq!(delete(&node, "x").await.0, 200);
    node.restart();
    node.wait_ready().await;
    assert_eq!(node.get("/counters/x").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_counters_are_collected_on_every_node_and_the_gateway_and_never_come_back() {
    let mut cluster = Cluster::start(3, &["--gc-interval", "200ms"]).await;
    peers_alive(&cluster, 2).await;
    let gateway = common::GatewayProcess::start(&cluster.nodes, None).await;
    const COUNTERS: usize = 100;
    for i in 0..COUNTERS {
        let node = &cluster.nodes[i % 3];
        assert_eq!(increment(node, &format!("g-{i}"), 1).await.0, 200);
    }
    assert!(
        cluster
            .converge(Some(&format!("g-{}", COUNTERS - 1)), 1, CONVERGE)
            .await
    );
    for i in 0..COUNTERS {
        let (status, answer) = delete(&cluster.nodes[0], &format!("g-{i}")).await;
        assert_eq!(status, 200, "{answer}");
    }
    for node in &cluster.nodes {
        // Collection waits twice --max-clock-skew (2 s here) after the deletes.
        let collected = wait_until(COLLECT, || async {
            node.metric("tally_garbage_collected_total", "").await >= COUNTERS as u64
                && node.metric("tally_removed_counters", "").await == 0
        })
        .await;
        assert!(
            collected,
            "{} did not collect the deleted counters",
            node.id
        );
    }
    // The gateway's merged view drops them too, told by the nodes' streams.
    let held = wait_until(CONVERGE, || async {
        gateway.view_counters("g-").await == 0
    })
    .await;
    assert!(
        held,
        "the gateway's view still holds {} deleted counters",
        gateway.view_counters("g-").await
    );
    drop(gateway);
    for node in &mut cluster.nodes {
        node.restart();
    }
    for node in &cluster.nodes {
        node.wait_ready().await;
    }
    peers_alive(&cluster, 2).await;
    // A few gossip rounds for anything stale to come back, if it could.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in &cluster.nodes {
        let listing = node.get_json("/counters?prefix=g-").await;
        assert_eq!(listing["counters"], Value::Array(vec![]), "{}", node.id);
        assert_eq!(node.get("/counters/g-0").await.0, 404);
        // The log replays the deletes; they are collected again.
        let empty = wait_until(CONVERGE, || async {
            node.metric("tally_counters", "").await == 0
        })
        .await;
        assert!(empty, "{} holds deleted counters again", node.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_proxies_lifecycle_routes_and_reads_deleted_or_expired_counters_as_absent() {
    let cluster = Cluster::start(2, &[]).await;
    peers_alive(&cluster, 1).await;
    let gateway = common::GatewayProcess::start(&cluster.nodes, None).await;
    let counter_status = |name: &'static str| {
        let gateway = &gateway;
        async move { gateway.get(&format!("/counters/{name}")).await.0 }
    };
    assert_eq!(gateway.post("/counters/d/increment", "").await.0, 200);
    assert_eq!(gateway.post("/counters/r/increment", "").await.0, 200);
    let response = http()
        .delete(gateway.url("/counters/d"))
        .send()
        .await
        .expect("DELETE");
    let (status, answer) = status_and_json(response).await;
    assert_eq!((status, answer["deleted"].clone()), (200, true.into()));
    let (status, answer) = gateway.post("/counters/r/reset", "").await;
    assert_eq!((status, answer["value"].clone()), (200, 0.into()));
    let (status, answer) = gateway.post("/counters/t/increment?ttl=1s", "").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["expires_at_ms"].as_u64().is_some(), "{answer}");
    let response = http()
        .put(gateway.url("/counters/r/ttl"))
        .body(r#"{"ttl":"1h"}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(status_and_json(response).await.0, 200);

    let absent = wait_until(CONVERGE, || async {
        counter_status("d").await == 404 && counter_status("t").await == 404
    })
    .await;
    assert!(
        absent,
        "the gateway still reads a deleted or expired counter"
    );
    assert_eq!(gateway.get("/counters/r").await.1["value"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_sees_a_deleted_counter_as_a_deleted_event() {
    let cluster = Cluster::start(1, &[]).await;
    let n1 = &cluster.nodes[0];
    assert_eq!(increment(n1, "w", 1).await.0, 200);
    let mut stream = http()
        .get(n1.url("/watch?prefix=w"))
        .send()
        .await
        .expect("GET /watch");
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let mut deleted = false;
    while !text.contains("event: deleted\n") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("no deleted event in time")
            .expect("stream broke")
            .expect("stream ended");
        text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        // Delete once the snapshot is out, so the event comes live.
        if !deleted && text.contains("event: live") {
            assert_eq!(delete(n1, "w").await.0, 200);
            deleted = true;
        }
    }
    let event = &text[text.find("event: deleted\n").unwrap_or(0)..];
    assert!(event.contains(r#"data: {"name":"w"}"#), "{event}");
}

/// Every actor of node `id` in a node's `/state` (the default counter).
async fn actors_of(node: &NodeProcess, id: &str) -> Vec<String> {
    let state = node.get_json("/state").await;
    let actors = common::incarnations(&state, id);
    actors.into_iter().map(|(actor, _)| actor).collect()
}

/// `tally admin retire NODE --via URL`; its exit status and output.
fn retire(node_id: &str, via: &NodeProcess) -> (bool, String) {
    let log = common::ChildLog::new("admin");
    let output = common::tally_command(&log)
        .env("TALLY_CLUSTER_KEY", common::CLUSTER_KEY)
        .args(["admin", "retire", node_id, "--via", &via.url("")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run tally admin retire");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn retiring_a_replaced_node_keeps_every_value_drops_its_old_entries_and_refuses_its_old_copy()
{
    common::within(Duration::from_secs(120), async {
        let mut cluster = Cluster::start(3, &["--gc-interval", "200ms"]).await;
        peers_alive(&cluster, 2).await;
        let n3 = &mut cluster.nodes[2];
        assert_eq!(n3.post("/increment", r#"{"amount": 5}"#).await.0, 200);
        assert_eq!(increment(n3, "r", 2).await.0, 200);
        assert!(cluster.converge(None, 5, CONVERGE).await);
        assert!(cluster.converge(Some("r"), 2, CONVERGE).await);

        // n3's pod is replaced: a clean stop, its disk kept aside, a fresh one.
        let n3 = &mut cluster.nodes[2];
        let old_actor = actors_of(n3, "n3").await;
        assert_eq!(old_actor.len(), 1, "{old_actor:?}");
        assert!(n3.stop_gracefully().is_some_and(|status| status.success()));
        let old_copy = cluster.dir.path().join("n3-old");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&n3.data_dir)
            .arg(&old_copy)
            .status()
            .expect("cp");
        assert!(copied.success());
        std::fs::remove_dir_all(&n3.data_dir).expect("wipe n3");
        n3.restart();
        n3.wait_ready().await;
        assert_eq!(n3.post("/increment", r#"{"amount": 1}"#).await.0, 200);
        assert_eq!(increment(n3, "r", 1).await.0, 200);
        assert!(cluster.converge(None, 6, CONVERGE).await);
        assert!(cluster.converge(Some("r"), 3, CONVERGE).await);
        for node in &cluster.nodes {
            assert_eq!(actors_of(node, "n3").await.len(), 2, "{}", node.id);
        }

        // Retire n3's departed actor into n1 (409 until every member reported).
        let mut last = String::new();
        let retired = wait_until(CONVERGE, || {
            let (ok, text) = retire("n3", &cluster.nodes[0]);
            last = text;
            async move { ok }
        })
        .await;
        assert!(retired, "tally admin retire failed: {last}");
        let answer: Value = serde_json::from_str(last.trim()).expect("a JSON answer");
        assert_eq!(answer["retired"], serde_json::json!(old_actor), "{answer}");
        assert!(answer["taken_over"].as_u64() >= Some(2), "{answer}");
        assert_eq!(
            answer["replicas"], 3,
            "answered before the fold spread: {answer}"
        );

        // Every value stays; every node drops the old actor's entries.
        assert!(cluster.converge(None, 6, CONVERGE).await);
        assert!(cluster.converge(Some("r"), 3, CONVERGE).await);
        for node in &cluster.nodes {
            let folded =
                wait_until(COLLECT, || async { actors_of(node, "n3").await.len() == 1 }).await;
            assert!(
                folded,
                "{} still holds {:?}; removed {} collected {} state {}",
                node.id,
                actors_of(node, "n3").await,
                node.metric("tally_removed_counters", "").await,
                node.metric("tally_garbage_collected_total", "").await,
                node.get_json("/state").await
            );
            assert_eq!(node.value().await, 6, "{}", node.id);
        }

        // The old disk comes back: refused, it says why and stops.
        let n3 = &mut cluster.nodes[2];
        assert!(n3.stop_gracefully().is_some());
        let seed = cluster.nodes[0].gossip_addr.clone();
        let mut stale = NodeProcess::start("n3", &old_copy, &["--seed".into(), seed]);
        let stopped = wait_until(CONVERGE, || {
            let exited = stale.has_exited();
            async move { exited }
        })
        .await;
        assert!(stopped, "the retired copy kept running");
        let said = stale.log_contents();
        assert!(
            said.contains("was retired") && said.contains("wipe"),
            "no reason given: {said}"
        );
        for node in &cluster.nodes[..2] {
            assert_eq!(node.value().await, 6, "{}", node.id);
            assert_eq!(node.named("r").await, Some(3), "{}", node.id);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_away_while_a_retired_actor_was_folded_and_collected_is_refused_until_wiped() {
    common::within(Duration::from_secs(120), async {
        let args = ["--gc-interval", "200ms", "--forget-dead-after", "3s"];
        let mut cluster = Cluster::start(3, &args).await;
        peers_alive(&cluster, 2).await;
        assert_eq!(
            cluster.nodes[2]
                .post("/increment", r#"{"amount": 5}"#)
                .await
                .0,
            200
        );
        assert!(cluster.converge(None, 5, CONVERGE).await);

        // n2 goes away holding n3's first actor; n3 is replaced meanwhile.
        assert!(cluster.nodes[1].stop_gracefully().is_some());
        let n3 = &mut cluster.nodes[2];
        assert!(n3.stop_gracefully().is_some());
        std::fs::remove_dir_all(&n3.data_dir).expect("wipe n3");
        n3.restart();
        n3.wait_ready().await;
        assert_eq!(n3.post("/increment", r#"{"amount": 1}"#).await.0, 200);
        let staying = [&cluster.nodes[0], &cluster.nodes[2]];
        for node in staying {
            let seen = wait_until(CONVERGE, || async { node.value().await == 6 }).await;
            assert!(seen, "{} never read 6", node.id);
        }

        // Retired and, once n2 is forgotten, collected on the nodes that stayed.
        let retired = wait_until(CONVERGE, || {
            let (ok, _) = retire("n3", &cluster.nodes[0]);
            async move { ok }
        })
        .await;
        assert!(retired, "tally admin retire never succeeded");
        for node in staying {
            let folded =
                wait_until(COLLECT, || async { actors_of(node, "n3").await.len() == 1 }).await;
            assert!(folded, "{} never collected n3's old actor", node.id);
        }

        // n2 comes back with the old entries: it stops and says why.
        let n2 = &mut cluster.nodes[1];
        n2.restart();
        let stopped = wait_until(CONVERGE, || {
            let exited = n2.has_exited();
            async move { exited }
        })
        .await;
        assert!(stopped, "the stale replica kept running");
        let said = n2.log_contents();
        // Forgotten while away, it is refused for that (before its data
        // could show it also missed the fold).
        assert!(
            (said.contains("older than the cluster's") || said.contains("forgot"))
                && said.contains("wipe"),
            "no reason given: {said}"
        );
        for node in [&cluster.nodes[0], &cluster.nodes[2]] {
            assert_eq!(node.value().await, 6, "{}", node.id);
        }
    })
    .await;
}

/// Waits until each of `nodes` collected at least `count` counters.
async fn collected(nodes: &[NodeProcess], count: u64) {
    for node in nodes {
        let done = wait_until(COLLECT, || async {
            node.metric("tally_garbage_collected_total", "").await >= count
        })
        .await;
        assert!(done, "{} never collected {count} counters", node.id);
    }
}

/// Issue #30, finding 3: three nodes write 5 each to `gone`; n3 stops
/// cleanly; `gone` is deleted and, once n3 is forgotten, collected. Before,
/// n3 came back with its old entry, never received the removal, and its
/// next write continued its old run: n1 and n2 read 6, n3 read 16, for
/// good. Now the cluster refuses n3 until its data directory is wiped.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_forgotten_while_its_counter_was_deleted_and_collected_is_refused_until_wiped() {
    common::within(Duration::from_secs(120), async {
        let args = ["--gc-interval", "200ms", "--forget-dead-after", "3s"];
        let mut cluster = Cluster::start(3, &args).await;
        peers_alive(&cluster, 2).await;
        for node in &cluster.nodes {
            assert_eq!(increment(node, "gone", 5).await.0, 200);
        }
        assert!(cluster.converge(Some("gone"), 15, CONVERGE).await);
        // A counter deleted and collected while all three are up: every
        // node then pulled from every other, so each holds n3's writes
        // gap-free (what collection needs once n3 is gone).
        assert_eq!(increment(&cluster.nodes[0], "warm-up", 1).await.0, 200);
        assert!(cluster.converge(Some("warm-up"), 1, CONVERGE).await);
        assert_eq!(delete(&cluster.nodes[0], "warm-up").await.0, 200);
        collected(&cluster.nodes[..2], 1).await;
        assert!(cluster.nodes[2].stop_gracefully().is_some());
        let (status, answer) = delete(&cluster.nodes[0], "gone").await;
        assert_eq!(status, 200, "{answer}");
        collected(&cluster.nodes[..2], 2).await;

        // n3 comes back with its old data: refused, it says why and stops.
        let n3 = &mut cluster.nodes[2];
        n3.restart();
        let stopped = wait_until(CONVERGE, || {
            let exited = n3.has_exited();
            async move { exited }
        })
        .await;
        assert!(stopped, "the forgotten member kept running");
        let said = n3.log_contents();
        assert!(
            said.contains("forgot") && said.contains("wipe"),
            "no reason given: {said}"
        );
        for node in &cluster.nodes[..2] {
            assert_eq!(node.get("/counters/gone").await.0, 404, "{}", node.id);
        }

        // Wiped, it joins as a new member and the counter stays deleted.
        let n3 = &mut cluster.nodes[2];
        std::fs::remove_dir_all(&n3.data_dir).expect("wipe n3");
        n3.restart();
        n3.wait_ready().await;
        peers_alive(&cluster, 2).await;
        assert_eq!(cluster.nodes[2].get("/counters/gone").await.0, 404);
        assert_eq!(increment(&cluster.nodes[2], "gone", 1).await.0, 200);
        assert!(cluster.converge(Some("gone"), 1, CONVERGE).await);
    })
    .await;
}
