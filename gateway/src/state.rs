//! What every handler and background task shares.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use crdt_core::wire;
use tally_protocol::events::{ClusterEvent, NodeEvent, NodeHealth};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::balancer::Balancer;
use crate::config::GatewayConfig;
use crate::demo::DemoControls;
use crate::proxy::{self, NodeClient};
use crate::stream::{self, Replicas};
use crate::GatewayError;

pub struct Shared {
    pub config: GatewayConfig,
    /// For health checks and the demo's admin calls.
    pub http: reqwest::Client,
    /// For proxied requests: the hot path.
    pub proxy: NodeClient,
    pub controls: Option<Arc<dyn DemoControls>>,
    /// Encoded `ClusterEvent`s for browsers, encoded once for all of them.
    pub events: broadcast::Sender<Bytes>,
    /// One permit per connected browser.
    pub browser_slots: Arc<Semaphore>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    balancer: Mutex<Balancer>,
    replicas: Mutex<Replicas>,
    /// The stream follower task of each node, by HTTP address.
    followers: Mutex<HashMap<String, AbortHandle>>,
}

/// A poisoned lock only means another task panicked mid-update; the tables
/// stay usable (every update is a single assignment), so keep serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(
        config: GatewayConfig,
        controls: Option<Arc<dyn DemoControls>>,
    ) -> Result<Arc<Self>, GatewayError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.health_timeout)
            .timeout(config.request_timeout)
            // Nodes are reached directly; an ambient HTTP_PROXY must not reroute them.
            .no_proxy()
            .build()?;
        let proxy = proxy::node_client(config.health_timeout);
        let (events, _) = broadcast::channel(config.event_buffer.max(1));
        Ok(Arc::new(Self {
            balancer: Mutex::new(Balancer::new(&config.nodes, Instant::now())),
            browser_slots: Arc::new(Semaphore::new(config.max_browsers)),
            config,
            http,
            proxy,
            controls,
            events,
            shutdown: CancellationToken::new(),
            replicas: Mutex::default(),
            followers: Mutex::default(),
        }))
    }

    pub fn balancer(&self) -> MutexGuard<'_, Balancer> {
        lock(&self.balancer)
    }

    pub fn replicas(&self) -> MutexGuard<'_, Replicas> {
        lock(&self.replicas)
    }

    /// Changes the node table; when `change` reports a visible change,
    /// browsers get a fresh `Nodes` event and new nodes get a stream follower.
    pub fn update_nodes(self: &Arc<Self>, change: impl FnOnce(&mut Balancer) -> bool) {
        let changed = change(&mut self.balancer());
        if changed {
            self.follow_new_nodes();
            self.publish(&self.nodes_event());
        }
    }

    /// Takes a node out of the rotation at once (a proxied request to it failed).
    pub fn mark_unhealthy(self: &Arc<Self>, key: &str) {
        self.update_nodes(|b| b.set_healthy(key, false, Instant::now()));
    }

    pub fn nodes_event(&self) -> ClusterEvent {
        let nodes = self
            .balancer()
            .nodes()
            .iter()
            .map(|node| NodeHealth {
                id: node.name().to_owned(),
                http_addr: node.http_addr.clone(),
                healthy: node.healthy,
                partitioned: node.partitioned,
            })
            .collect();
        ClusterEvent::Nodes {
            nodes,
            controls: self.controls.is_some(),
        }
    }

    pub fn publish(&self, event: &ClusterEvent) {
        // No browser listening is not an error.
        let _ = self.events.send(Bytes::from(wire::encode(event)));
    }

    pub fn on_node_event(self: &Arc<Self>, http_addr: &str, event: NodeEvent) {
        let (id, gossip_addr) = match &event {
            NodeEvent::Snapshot { node, .. } | NodeEvent::Delta { node, .. } => (node, None),
            NodeEvent::Members { node, members } => {
                let own = members.iter().find(|m| &m.id == node);
                (node, own.map(|m| m.gossip_addr.as_str()))
            }
        };
        self.update_nodes(|b| b.learn_identity(http_addr, id, gossip_addr));
        let shown = self.replicas().apply(http_addr, event);
        if let Some(shown) = shown {
            self.publish(&shown);
        }
    }

    /// Starts a stream follower for every node that has none, and stops
    /// those of nodes no longer in the table.
    pub fn follow_new_nodes(self: &Arc<Self>) {
        let addrs: Vec<String> = (self.balancer().nodes().iter())
            .map(|node| node.http_addr.clone())
            .collect();
        let mut followers = lock(&self.followers);
        followers.retain(|addr, task| {
            let keep = addrs.contains(addr);
            if !keep {
                task.abort();
                self.replicas().remove(addr);
            }
            keep
        });
        for addr in addrs {
            followers.entry(addr.clone()).or_insert_with(|| {
                let task = stream::follow_node(Arc::clone(self), addr);
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move { shutdown.run_until_cancelled(task).await }).abort_handle()
            });
        }
    }
}
