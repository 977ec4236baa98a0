//! Finding peers through discovery servers: register, heartbeat, and feed
//! the peers they list into gossip membership. Discovery is only a way in:
//! once members know each other, gossip keeps them together even with
//! every discovery server down.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_discovery::{DiscoveryClient, HeartbeatOutcome, Member};

use crate::gossip::Gossip;
use crate::protocol::MemberRecord;
use crate::transport::Network;

/// Registers and heartbeats every `interval` until the task is dropped.
pub async fn run<N: Network>(
    client: DiscoveryClient,
    me: Member,
    interval: Duration,
    gossip: Arc<Gossip<N>>,
) {
    let mut registered = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !registered {
            match client.register(&me).await {
                Ok(()) => {
                    tracing::info!("registered with discovery");
                    registered = true;
                }
                Err(error) => {
                    tracing::debug!(%error, "discovery unreachable, will retry");
                    continue;
                }
            }
        } else {
            match client.heartbeat(&me.id).await {
                Ok(HeartbeatOutcome::Known) => {}
                // Discovery restarted empty, or expired us: register again now.
                Ok(HeartbeatOutcome::Unknown) => {
                    registered = client.register(&me).await.is_ok();
                }
                Err(error) => tracing::debug!(%error, "discovery heartbeat failed"),
            }
        }
        match client.peers().await {
            Ok(peers) => {
                let records: Vec<MemberRecord> = peers
                    .into_iter()
                    .filter(|peer| peer.id != me.id)
                    .map(|peer| MemberRecord {
                        id: peer.id,
                        gossip_addr: peer.gossip_addr.to_string(),
                        http_addr: peer.http_addr.to_string(),
                        // Heartbeat 0: discovery only introduces; gossip says who is alive.
                        heartbeat: 0,
                    })
                    .collect();
                gossip.add_members(&records);
            }
            Err(error) => tracing::debug!(%error, "discovery peer list unavailable"),
        }
    }
}

/// Deregisters on graceful shutdown; failures only get logged.
pub async fn leave(client: &DiscoveryClient, id: &str) {
    if let Err(error) = client.deregister(id).await {
        tracing::debug!(%error, "could not deregister");
    }
}

/// Our record for discovery.
pub fn member(id: &str, gossip_addr: SocketAddr, http_addr: SocketAddr) -> Member {
    Member {
        id: id.to_owned(),
        gossip_addr,
        http_addr,
    }
}
