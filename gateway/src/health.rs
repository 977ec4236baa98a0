//! Keeping the node table true: active health checks on every node, and
//! (when discovery URLs are given) the discovery servers' peer lists.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Deserialize;
use tally_discovery::DiscoveryClient;
use tally_protocol::health_proof;
use tally_protocol::probes::READY_PATH;
use tokio::time::{interval, MissedTickBehavior};

use crate::balancer::Balancer;
use crate::node_clients;
use crate::node_table;
use crate::state::Shared;

/// The part of a node's `/ready` answer the gateway uses.
#[derive(Deserialize)]
struct NodeHealthAnswer {
    node: String,
    /// Whether the node checks API tokens (absent: an older node; no).
    #[serde(default)]
    tokens: bool,
}

/// One node's health check, as the node table takes it.
#[derive(Debug, Clone, Copy)]
pub struct CheckResult<'a> {
    pub addr: &'a str,
    /// The id the node answered with; `None` when the check failed.
    pub node_id: Option<&'a str>,
}

/// Applies one round of health checks to the table; true when browsers
/// should hear of it.
///
/// A node is in the rotation exactly when its latest check passed: one
/// passing check brings it in, one failing check takes it out (no grace
/// period, no probation). A passing check also tells us the node's id.
/// Discovered nodes that have been down and unlisted for `forget_after`
/// are dropped.
pub fn apply_checks<'a>(
    balancer: &mut Balancer,
    results: impl IntoIterator<Item = CheckResult<'a>>,
    now: Instant,
    forget_after: Duration,
) -> bool {
    let mut changed = false;
    for CheckResult { addr, node_id } in results {
        if let Some(id) = node_id {
            changed |= balancer.learn_identity(addr, id, None);
        }
        changed |= balancer.set_healthy(addr, node_id.is_some(), now);
    }
    let forgotten = balancer.forget_stale(now, forget_after);
    changed || !forgotten.is_empty()
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
    let results = addrs
        .iter()
        .zip(&answers)
        .map(|(addr, answer)| CheckResult {
            addr,
            node_id: answer.as_ref().map(|answer| answer.node.as_str()),
        });
    let tokens = answers.iter().flatten().any(|answer| answer.tokens);
    shared
        .nodes_check_tokens
        .fetch_or(tokens, std::sync::atomic::Ordering::Relaxed);
    let (now, forget_after) = (Instant::now(), shared.config.forget_after);
    node_table::update(shared, |balancer| {
        apply_checks(balancer, results, now, forget_after)
    });
}

/// One check of the node's readiness: healthy means a 200 from `/ready`
/// with the node's id within `health_timeout` (so a node that is starting,
/// refusing writes or draining before it stops is out of the rotation)
/// and, in a closed cluster, a valid proof that the node holds the cluster
/// secret (a stranger that registered or was listed somehow never enters
/// the rotation).
async fn check(shared: &Shared, addr: &str) -> Option<NodeHealthAnswer> {
    let url = format!("http://{addr}{READY_PATH}");
    let challenge = health_proof::challenge(rand::random());
    let mut request = shared.http.get(url).timeout(shared.config.health_timeout);
    if let Some(keys) = &shared.config.cluster_keys {
        request = request.header(health_proof::CHALLENGE_HEADER, &challenge);
        for (name, value) in node_clients::signed_read(keys, READY_PATH) {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.ok()?.error_for_status().ok()?;
    let proof = response
        .headers()
        .get(health_proof::PROOF_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let answer: NodeHealthAnswer = read_small_json(response).await?;
    if let Some(keys) = &shared.config.cluster_keys {
        let proven =
            proof.is_some_and(|proof| health_proof::verify(keys, &challenge, &answer.node, &proof));
        if !proven {
            tracing::warn!(node = %addr, "node cannot prove it holds the cluster secret; not routing to it");
            return None;
        }
    }
    Some(answer)
}

/// Largest `/ready` answer read; a real one is under 100 bytes.
const MAX_HEALTH_ANSWER: usize = 4096;

async fn read_small_json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
) -> Option<T> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_HEALTH_ANSWER {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).ok()
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
        node_table::update(&shared, |balancer| {
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

#[cfg(test)]
mod tests {
    use super::*;

    const FORGET_AFTER: Duration = Duration::from_secs(30);

    fn passed<'a>(addr: &'a str, id: &'a str) -> CheckResult<'a> {
        CheckResult {
            addr,
            node_id: Some(id),
        }
    }

    fn failed(addr: &str) -> CheckResult<'_> {
        CheckResult {
            addr,
            node_id: None,
        }
    }

    fn two_nodes(now: Instant) -> Balancer {
        Balancer::new(&["a:1".into(), "b:1".into()], now)
    }

    #[test]
    fn a_node_enters_the_rotation_only_after_a_passing_check() {
        let now = Instant::now();
        let mut balancer = two_nodes(now);
        assert!(
            balancer.rotation().is_empty(),
            "nodes start out of the rotation"
        );

        let nothing_passed = [failed("a:1"), failed("b:1")];
        assert!(!apply_checks(
            &mut balancer,
            nothing_passed,
            now,
            FORGET_AFTER
        ));
        assert!(balancer.rotation().is_empty());

        let a_passed = [passed("a:1", "node-a"), failed("b:1")];
        assert!(apply_checks(&mut balancer, a_passed, now, FORGET_AFTER));
        assert_eq!(balancer.rotation(), ["a:1"]);
        assert_eq!(
            balancer.find("node-a").map(|n| n.http_addr.as_str()),
            Some("a:1")
        );
    }

    #[test]
    fn one_failed_check_takes_a_node_out_at_once() {
        let now = Instant::now();
        let mut balancer = two_nodes(now);
        let both_passed = [passed("a:1", "node-a"), passed("b:1", "node-b")];
        apply_checks(&mut balancer, both_passed, now, FORGET_AFTER);
        assert_eq!(balancer.healthy_count(), 2);

        let b_failed = [passed("a:1", "node-a"), failed("b:1")];
        assert!(apply_checks(&mut balancer, b_failed, now, FORGET_AFTER));
        assert_eq!(balancer.rotation(), ["a:1"]);
        assert_eq!(balancer.find("node-b").map(|n| n.healthy), Some(false));

        let b_passed_again = [passed("a:1", "node-a"), passed("b:1", "node-b")];
        assert!(apply_checks(
            &mut balancer,
            b_passed_again,
            now,
            FORGET_AFTER
        ));
        assert_eq!(balancer.healthy_count(), 2);
    }

    #[test]
    fn the_same_answers_again_change_nothing() {
        let now = Instant::now();
        let mut balancer = two_nodes(now);
        let answers = [passed("a:1", "node-a"), failed("b:1")];
        assert!(apply_checks(&mut balancer, answers, now, FORGET_AFTER));
        assert!(
            !apply_checks(&mut balancer, answers, now, FORGET_AFTER),
            "no change, no event"
        );
    }

    #[test]
    fn a_check_round_forgets_discovered_nodes_long_down() {
        let start = Instant::now();
        let mut balancer = Balancer::new(&["pinned:1".into()], start);
        balancer.listed("gone:1", "gone", "gone:2", start);
        let later = start + FORGET_AFTER * 2;
        let all_failed = [failed("pinned:1"), failed("gone:1")];
        assert!(apply_checks(&mut balancer, all_failed, later, FORGET_AFTER));
        let left: Vec<&str> = balancer
            .nodes()
            .iter()
            .map(|n| n.http_addr.as_str())
            .collect();
        assert_eq!(left, ["pinned:1"], "given with --node: never forgotten");
    }
}
