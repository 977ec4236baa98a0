//! Finding peers through discovery servers: register, heartbeat, and feed
//! the peers they list into gossip membership. Discovery is only a way in:
//! once members know each other, gossip keeps them together even with
//! every discovery server down.
//!
//! Each heartbeat period the loop makes sure discovery knows us (a heartbeat,
//! or a registration when the server does not know us or we lost contact),
//! then refreshes the peer list. A discovery server that restarted empty
//! therefore hears from every node within one period.
use std::sync::Arc;
use std::time::Duration;

use tally_discovery::{ClientError, DiscoveryClient, HeartbeatOutcome, HostPort, Member};
use tokio::task::JoinHandle;

use crate::gossip::Gossip;
use crate::membership::Source;
use crate::protocol::MemberRecord;
use crate::transport::Network;

/// The running registration loop; [`Registration::leave`] ends it and deregisters.
pub struct Registration {
    client: DiscoveryClient,
    id: String,
    task: JoinHandle<()>,
}

impl Registration {
    /// Registers now, then heartbeats and refreshes peers every `interval`.
    pub fn start<N: Network>(
        client: DiscoveryClient,
        me: Member,
        interval: Duration,
        gossip: Arc<Gossip<N>>,
    ) -> Self {
        let id = me.id.clone();
        let task = tokio::spawn(run(client.clone(), me, interval, gossip));
        Self { client, id, task }
    }

    /// Stops the loop, then deregisters. The loop must be gone first: a
    /// heartbeat landing after the deregistration would be answered "unknown"
    /// and re-register us, leaving a ghost listed until the TTL.
    pub async fn leave(self) {
        self.task.abort();
        // Only the cancellation can come back: the loop never returns or panics on its own.
        let _ = self.task.await;
        match self.client.deregister(&self.id).await {
            Ok(()) => tracing::info!("deregistered from discovery"),
            Err(error) => tracing::warn!(%error, "could not deregister from discovery"),
        }
    }
}

/// Our record for discovery.
pub fn member(id: &str, gossip_addr: HostPort, http_addr: HostPort) -> Member {
    Member {
        id: id.to_owned(),
        gossip_addr,
        http_addr,
    }
}

async fn run<N: Network>(
    client: DiscoveryClient,
    me: Member,
    interval: Duration,
    gossip: Arc<Gossip<N>>,
) {
    let mut contact = Contact::Never;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let next = match announce(&client, &me, contact).await {
            Ok(()) => Contact::Registered,
            Err(error) => {
                report_failure(contact, &error);
                Contact::Lost
            }
        };
        if next == Contact::Registered && contact != Contact::Registered {
            tracing::info!("registered with discovery");
        }
        contact = next;
        if contact == Contact::Registered {
            refresh_peers(&client, &me, &gossip).await;
        }
    }
}

/// How things stood after the last attempt to reach discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    /// Not reached yet since start.
    Never,
    Registered,
    /// A request failed: the server may restart empty meanwhile, so the next
    /// attempt registers outright (an idempotent upsert) instead of heartbeating.
    Lost,
}

/// Warns once per outage, not once per heartbeat.
fn report_failure(contact: Contact, error: &ClientError) {
    match contact {
        Contact::Never => tracing::warn!(%error, "discovery unreachable; will keep trying"),
        Contact::Registered => {
            tracing::warn!(%error, "lost contact with discovery; gossip carries on, will re-register")
        }
        Contact::Lost => tracing::debug!(%error, "discovery still unreachable"),
    }
}

/// Makes sure discovery knows us: a heartbeat while registered, otherwise (or
/// when the heartbeat finds us unknown) a registration.
async fn announce(
    client: &DiscoveryClient,
    me: &Member,
    contact: Contact,
) -> Result<(), ClientError> {
    if contact == Contact::Registered {
        match client.heartbeat(&me.id).await? {
            HeartbeatOutcome::Known => return Ok(()),
            HeartbeatOutcome::Unknown => {
                tracing::info!(
                    "discovery does not know us (restarted or expired us); registering again"
                );
            }
        }
    }
    client.register(me).await
}

/// Introduces every listed peer to gossip, which alone decides who is alive.
async fn refresh_peers<N: Network>(client: &DiscoveryClient, me: &Member, gossip: &Gossip<N>) {
    match client.peers().await {
        Ok(peers) => {
            let records: Vec<MemberRecord> = peers
                .into_iter()
                .filter(|peer| peer.id != me.id)
                .map(|peer| MemberRecord {
                    id: peer.id,
                    gossip_addr: peer.gossip_addr.to_string(),
                    http_addr: peer.http_addr.to_string(),
                    // Heartbeat 0 loses to any gossiped record: discovery only introduces.
                    heartbeat: 0,
                })
                .collect();
            gossip.add_members(&records, Source::Outside);
        }
        Err(error) => tracing::debug!(%error, "discovery peer list unavailable"),
    }
}
