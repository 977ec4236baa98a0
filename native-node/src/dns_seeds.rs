//! Seeds from DNS (`--seed-dns NAME:PORT`): every A/AAAA record of a name
//! is a seed, re-resolved every refresh period. This is the Kubernetes
//! headless-Service pattern (one record per ready — or, with
//! `publishNotReadyAddresses`, per running — pod): pods that come back with
//! new IPs are found again at the next refresh.
//!
//! Like static seeds, DNS seeds are only a way in: gossip dials them while
//! it knows no live member, and membership does the rest.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_protocol::HostPort;
use tokio::task::JoinHandle;

use crate::gossip::Gossip;
use crate::transport::Network;

/// Longest wait for one name's answer; a slow resolver must not stall the loop.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The seeds from one round of lookups: every resolved address but our
/// own, as dialable text, sorted and without repeats.
pub fn seed_set(
    resolved: impl IntoIterator<Item = SocketAddr>,
    own: &BTreeSet<SocketAddr>,
) -> Vec<String> {
    let set: BTreeSet<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| !own.contains(addr))
        .collect();
    set.into_iter().map(|addr| addr.to_string()).collect()
}

/// Resolves `names` now and every `refresh`, handing the seeds to gossip.
/// `own` names this node's gossip addresses (advertised and bound), so a
/// name that lists this pod does not make it dial itself.
pub fn start<N: Network>(
    names: Vec<HostPort>,
    own: Vec<String>,
    refresh: Duration,
    gossip: Arc<Gossip<N>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(refresh);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Vec<String>> = None;
        loop {
            ticker.tick().await;
            let own_addrs = resolve_all(&own).await;
            let mut resolved = Vec::new();
            for name in &names {
                match lookup(name.as_str()).await {
                    Ok(addrs) => resolved.extend(addrs),
                    Err(error) => tracing::debug!(%name, %error, "--seed-dns lookup failed"),
                }
            }
            let seeds = seed_set(resolved, &own_addrs.into_iter().collect());
            if last.as_ref() != Some(&seeds) {
                tracing::info!(?seeds, "seeds from DNS");
                gossip.set_dns_seeds(seeds.clone());
                last = Some(seeds);
            }
        }
    })
}

async fn resolve_all(addresses: &[String]) -> Vec<SocketAddr> {
    let mut all = Vec::new();
    for address in addresses {
        all.extend(lookup(address).await.unwrap_or_default());
    }
    all
}

async fn lookup(address: &str) -> std::io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(address)).await {
        Ok(found) => Ok(found?.collect()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "DNS lookup timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn own_addresses_and_repeats_are_left_out() {
        let own = BTreeSet::from([addr("10.0.0.2:9000")]);
        let seeds = seed_set(
            [
                addr("10.0.0.3:9000"),
                addr("10.0.0.2:9000"),
                addr("10.0.0.1:9000"),
                addr("10.0.0.3:9000"),
                addr("[fd00::1]:9000"),
            ],
            &own,
        );
        assert_eq!(seeds, ["10.0.0.1:9000", "10.0.0.3:9000", "[fd00::1]:9000"]);
    }

    #[tokio::test]
    async fn localhost_resolves_to_a_loopback_seed() {
        let found = lookup("localhost:9000").await.unwrap();
        assert!(found
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9000));
        assert!(!found.is_empty());
        // Our own address is not a seed.
        let own: BTreeSet<SocketAddr> = found.iter().copied().collect();
        assert!(seed_set(found, &own).is_empty());
    }
}
