//! Real `tally discovery` and `tally node` processes on loopback: nodes find
//! each other through discovery alone, the cluster outlives discovery, and a
//! restarted discovery learns every node again. Observed times are printed
//! (run with `--nocapture`); they are never pass/fail criteria.
mod common;

use std::time::{Duration, Instant};

use common::{free_port, wait_until, Cluster, DiscoveryProcess, NodeProcess};
use serde_json::Value;

/// Discovery heartbeat the nodes use here.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Generous bound for anything to happen on a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// `--discovery` for each URL, plus the heartbeat.
fn discovery_args(urls: &[String]) -> Vec<String> {
    let mut args: Vec<String> = urls
        .iter()
        .flat_map(|url| ["--discovery".to_owned(), url.clone()])
        .collect();
    args.extend([
        "--heartbeat".to_owned(),
        format!("{}ms", HEARTBEAT.as_millis()),
    ]);
    args
}

/// Starts nodes with `ids`, each with `args` only (no seeds), and waits until they serve.
async fn start_nodes(ids: &[&str], args: &[String]) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<NodeProcess> = ids
        .iter()
        .map(|id| NodeProcess::start(id, &dir.path().join(id), args))
        .collect();
    for node in &nodes {
        node.wait_ready().await;
    }
    Cluster { nodes, dir }
}

/// Ids the node's `GET /peers` reports alive, sorted.
async fn alive_peers(node: &NodeProcess) -> Vec<String> {
    let response = match common::http().get(node.url("/peers")).send().await {
        Ok(response) => response,
        Err(_) => return Vec::new(),
    };
    let peers: Vec<Value> = response.json().await.unwrap_or_default();
    let mut alive: Vec<String> = peers
        .iter()
        .filter(|peer| peer["status"] == "alive")
        .filter_map(|peer| peer["id"].as_str().map(str::to_owned))
        .collect();
    alive.sort();
    alive
}

/// Waits until every node sees every other node alive.
async fn fully_connected(cluster: &Cluster) -> bool {
    wait_until(PATIENCE, || async {
        for node in &cluster.nodes {
            let mut others: Vec<String> = cluster
                .nodes
                .iter()
                .filter(|other| other.id != node.id)
                .map(|other| other.id.clone())
                .collect();
            others.sort();
            if alive_peers(node).await != others {
                return false;
            }
        }
        true
    })
    .await
}

/// Waits until discovery lists exactly `ids`; returns how long that took.
async fn listed_exactly(discovery: &DiscoveryProcess, ids: &[&str]) -> Option<Duration> {
    let started = Instant::now();
    let listed = wait_until(PATIENCE, || async {
        discovery
            .peer_ids()
            .await
            .is_some_and(|listed| listed == ids)
    })
    .await;
    listed.then(|| started.elapsed())
}

/// One increment of `amount` on every node; returns the total written.
async fn write_everywhere(cluster: &Cluster, amount: i64) -> i64 {
    for node in &cluster.nodes {
        let (status, _) = node
            .post("/increment", &format!(r#"{{"amount": {amount}}}"#))
            .await;
        assert_eq!(status, 200, "increment on {}", node.id);
    }
    amount * cluster.nodes.len() as i64
}

/// Discovery plus three nodes that only know its URL, fully connected.
async fn cluster_through_discovery(ttl: &str) -> (DiscoveryProcess, Cluster) {
    let discovery = DiscoveryProcess::start(ttl).await;
    let cluster = start_nodes(&["n1", "n2", "n3"], &discovery_args(&[discovery.url()])).await;
    assert!(
        fully_connected(&cluster).await,
        "nodes did not find each other through discovery"
    );
    (discovery, cluster)
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_find_each_other_through_discovery_alone() {
    let started = Instant::now();
    let (discovery, cluster) = cluster_through_discovery("1s").await;
    println!(
        "3 nodes fully connected through discovery after {:?}",
        started.elapsed()
    );
    assert!(listed_exactly(&discovery, &["n1", "n2", "n3"])
        .await
        .is_some());

    let total = write_everywhere(&cluster, 5).await;
    assert!(
        cluster.converge(None, total, PATIENCE).await,
        "writes did not converge"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_outlives_discovery_and_admits_seeded_nodes() {
    let (mut discovery, mut cluster) = cluster_through_discovery("1s").await;
    let before = write_everywhere(&cluster, 1).await;
    discovery.kill9();

    let after = write_everywhere(&cluster, 10).await;
    assert!(
        cluster.converge(None, before + after, PATIENCE).await,
        "writes did not converge with discovery down"
    );

    // A newcomer that knows only n2's gossip address, not discovery.
    let seed = cluster.nodes[1].gossip_addr.clone();
    let joined = Instant::now();
    let newcomer = NodeProcess::start(
        "n4",
        &cluster.dir.path().join("n4"),
        &["--seed".to_owned(), seed],
    );
    newcomer.wait_ready().await;
    cluster.nodes.push(newcomer);
    assert!(
        fully_connected(&cluster).await,
        "n4 did not join through its seed"
    );
    println!(
        "n4 joined through a seed (discovery down) in {:?}",
        joined.elapsed()
    );

    let (status, _) = cluster.nodes[3]
        .post("/increment", r#"{"amount": 100}"#)
        .await;
    assert_eq!(status, 200);
    assert!(
        cluster.converge(None, before + after + 100, PATIENCE).await,
        "the seeded node's write did not converge"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_discovery_hears_from_every_node_again() {
    let (mut discovery, _cluster) = cluster_through_discovery("1s").await;
    discovery.kill9();
    // Setup, not an assertion: let every node fail a few heartbeats while it is down.
    tokio::time::sleep(HEARTBEAT * 3).await;

    discovery.restart().await;
    let took = listed_exactly(&discovery, &["n1", "n2", "n3"]).await;
    let took = took.expect("the restarted discovery did not list every node again");
    println!(
        "restarted discovery listed all 3 nodes after {took:?} ({:.1} heartbeats of {HEARTBEAT:?})",
        took.as_secs_f64() / HEARTBEAT.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_expires_after_the_ttl() {
    let discovery = DiscoveryProcess::start("1s").await;
    let mut cluster = start_nodes(&["n1", "n2"], &discovery_args(&[discovery.url()])).await;
    assert!(listed_exactly(&discovery, &["n1", "n2"]).await.is_some());

    cluster.nodes[1].kill9();
    let took = listed_exactly(&discovery, &["n1"]).await;
    let took = took.expect("the SIGKILLed node was never dropped (or the survivor was)");
    println!("SIGKILLed node left discovery after {took:?} (ttl 1s)");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_nodes_deregister_at_once() {
    // A TTL far beyond the test: only a deregistration can remove a node.
    let discovery = DiscoveryProcess::start("10m").await;
    let mut cluster = start_nodes(&["n1", "n2", "n3"], &discovery_args(&[discovery.url()])).await;
    assert!(listed_exactly(&discovery, &["n1", "n2", "n3"])
        .await
        .is_some());

    // Each node deregisters before it exits, so the very next look must not list it.
    cluster.nodes[1].terminate();
    assert_eq!(
        discovery.peer_ids().await,
        Some(vec!["n1".into(), "n3".into()]),
        "after SIGTERM"
    );
    cluster.nodes[2].interrupt();
    assert_eq!(
        discovery.peer_ids().await,
        Some(vec!["n1".into()]),
        "after SIGINT"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_first_discovery_url_falls_through_to_the_next() {
    let discovery = DiscoveryProcess::start("1s").await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cluster = start_nodes(&["n1", "n2"], &discovery_args(&[dead, discovery.url()])).await;

    let took = listed_exactly(&discovery, &["n1", "n2"]).await;
    let took = took.expect("nodes did not register through the second URL");
    println!("registered through the second discovery URL after {took:?}");
    assert!(
        fully_connected(&cluster).await,
        "nodes did not find each other through the second URL"
    );
}
