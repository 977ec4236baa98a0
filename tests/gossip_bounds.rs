//! Gossip resources stay bounded: inbound connections are capped, and
//! members that left for good leave the member table.
mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{wait_until, Cluster};

const PATIENCE: Duration = Duration::from_secs(30);

async fn peer_ids(node: &common::NodeProcess) -> Vec<String> {
    let peers = node.get_json("/peers").await;
    (peers.as_array().expect("/peers is a list").iter())
        .map(|peer| peer["id"].as_str().expect("peer id").to_owned())
        .collect()
}

/// Connections over `--max-peer-connections` are closed at once and counted;
/// the node keeps serving and its cluster keeps gossiping.
#[tokio::test(flavor = "multi_thread")]
async fn inbound_gossip_connections_over_the_cap_are_closed_and_counted() {
    let cluster = Cluster::start(2, &["--max-peer-connections", "4"]).await;
    let [target, other] = [&cluster.nodes[0], &cluster.nodes[1]];
    let refused = || async {
        let label = format!("node=\"{}\"", target.id);
        target
            .metric("tally_gossip_connections_refused_total", &label)
            .await
    };
    let before = refused().await;
    // Silent connections: each holds a slot until its handshake times out.
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(&target.gossip_addr).expect("connect"))
        .collect();
    assert!(
        wait_until(PATIENCE, || async { refused().await >= before + 8 }).await,
        "connections over the cap were not refused: {} → {}",
        before,
        refused().await
    );
    assert_eq!(target.post("/increment", "").await.0, 200);
    drop(idle);
    assert_eq!(other.post("/increment", "").await.0, 200);
    assert!(
        cluster.converge(None, 2, PATIENCE).await,
        "gossip stopped working after the flood"
    );
}

/// A member dead for `--forget-dead-after` leaves every member table, and
/// comes back when it restarts.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_gone_for_good_is_forgotten_and_welcomed_back() {
    // (The harness gossips every 100 ms.)
    let mut cluster = Cluster::start(3, &["--forget-dead-after", "1s"]).await;
    assert!(
        wait_until(PATIENCE, || async {
            peer_ids(&cluster.nodes[0]).await.len() == 2
                && peer_ids(&cluster.nodes[1]).await.len() == 2
        })
        .await
    );
    cluster.nodes[2].kill9();
    let gone = wait_until(PATIENCE, || async {
        !peer_ids(&cluster.nodes[0]).await.contains(&"n3".to_owned())
            && !peer_ids(&cluster.nodes[1]).await.contains(&"n3".to_owned())
    })
    .await;
    assert!(gone, "n3 is still listed after dying");
    // Neither keeps the other's stale record alive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!peer_ids(&cluster.nodes[0]).await.contains(&"n3".to_owned()));
    cluster.nodes[2].restart();
    cluster.nodes[2].wait_ready().await;
    assert!(
        wait_until(PATIENCE, || async {
            peer_ids(&cluster.nodes[0]).await.contains(&"n3".to_owned())
        })
        .await,
        "the restarted member was not welcomed back"
    );
}
