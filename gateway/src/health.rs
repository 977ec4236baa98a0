//! Keeping the node table true: active health checks on every node, and
//! (when discovery URLs are given) the discovery servers' peer lists.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Deserialize;
use tally_discovery::DiscoveryClient;
use tokio::time::{interval, MissedTickBehavior};

use crate::state::Shared;

/// The part of a node's `/health` answer the gateway uses.
#[derive(Deserialize)]
struct NodeHealthAnswer {
    node: String,
}

/// Checks every node each `health_interval`, forever.
pub async fn check_nodes(shared: Arc<Shared>) {
    let mut ticks = ticker(shared.config.health_interval);
    loop {
        ticks.tick().await;
        check_all(&shared).await;
    }
}

async fn check_all(shared: &Arc<Shared>) {
    let addrs: Vec<String> = (shared.balancer().nodes().iter())
        .map(|node| node.http_addr.clone())
        .collect();
    let answers = join_all(addrs.iter().map(|addr| check(shared, addr))).await;
    let now = Instant::now();
    let forget_after = shared.config.forget_after;
    shared.update_nodes(|balancer| {
        let mut changed = false;
        for (addr, answer) in addrs.iter().zip(answers) {
            if let Some(answer) = &answer {
                changed |= balancer.learn_identity(addr, &answer.node, None);
            }
            changed |= balancer.set_healthy(addr, answer.is_some(), now);
        }
        let forgotten = balancer.forget_stale(now, forget_after);
        changed || !forgotten.is_empty()
    });
}

/// One check: healthy means a 200 with the node's id, within `health_timeout`.
async fn check(shared: &Shared, addr: &str) -> Option<NodeHealthAnswer> {
    let url = format!("http://{addr}/health");
    let request = shared.http.get(url).timeout(shared.config.health_timeout);
    let response = request.send().await.ok()?.error_for_status().ok()?;
    response.json().await.ok()
}

/// Adds every peer the discovery servers list, each `discovery_interval`, forever.
pub async fn follow_discovery(shared: Arc<Shared>, client: DiscoveryClient) {
    let mut ticks = ticker(shared.config.discovery_interval);
    loop {
        ticks.tick().await;
        let peers = match client.peers().await {
            Ok(peers) => peers,
            Err(error) => {
                tracing::warn!(%error, "discovery unavailable; keeping the known nodes");
                continue;
            }
        };
        let now = Instant::now();
        shared.update_nodes(|balancer| {
            peers.iter().fold(false, |changed, peer| {
                let (http, gossip) = (peer.http_addr.to_string(), peer.gossip_addr.to_string());
                balancer.listed(&http, &peer.id, &gossip, now) || changed
            })
        });
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    // A zero period would make `interval` panic; treat it as "as often as sensible".
    let mut ticks = interval(period.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}
