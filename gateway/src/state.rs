//! What every handler and background task shares: plain data. The rules
//! that change it live with their idea (`node_table`, `followers`,
//! `health`, `proxy`).
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tally_protocol::http_server::PerIpLimit;
use tally_protocol::watch::{CounterSource, WatchHub};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::balancer::Balancer;
use crate::config::GatewayConfig;
use crate::demo_controls::DemoControls;
use crate::live::{Activity, News};
use crate::node_clients::{self, NodeClient};
use crate::replicas::Replicas;
use crate::writes::Combiner;
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
    /// The merged view's news, which each browser filters by its prefix.
    pub deltas: broadcast::Sender<Arc<News>>,
    /// One permit per connected browser.
    pub browser_slots: Arc<Semaphore>,
    /// Browsers per client address.
    pub browsers_per_ip: Arc<PerIpLimit>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Client writes waiting to be combined into batches.
    pub combiner: Combiner,
    /// Bumped whenever the merged view changes: reads waiting for a write
    /// to show there wake up.
    pub view_changed: watch::Sender<u64>,
    /// Set once any node said it checks API tokens: without a tokens file
    /// of its own, the gateway then sends every read to a node (which
    /// checks the client's token) instead of answering from its view.
    pub nodes_check_tokens: AtomicBool,
    /// `/watch`'s events, from the merged view.
    pub watch: Arc<WatchHub>,
    balancer: Mutex<Balancer>,
    replicas: Mutex<Replicas>,
    /// Per-node change counts and the busiest counters, for browsers.
    activity: Mutex<Activity>,
    /// The stream follower task of each node, by HTTP address.
    followers: Mutex<HashMap<String, AbortHandle>>,
}

/// A poisoned lock only means another task panicked mid-update; the tables
/// stay usable (every update is a single assignment), so keep serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The `--node` addresses, all unhealthy until checked; no followers yet.
    pub fn new(
        config: GatewayConfig,
        controls: Option<Arc<dyn DemoControls>>,
    ) -> Result<Arc<Self>, GatewayError> {
        let http =
            node_clients::for_checks_and_admin(config.health_timeout, config.request_timeout)?;
        let proxy = node_clients::for_proxying(config.health_timeout);
        let (events, _) = broadcast::channel(config.event_buffer.max(1));
        let (deltas, _) = broadcast::channel(config.event_buffer.max(1));
        Ok(Arc::new(Self {
            balancer: Mutex::new(Balancer::new(&config.nodes, Instant::now())),
            browser_slots: Arc::new(Semaphore::new(config.max_browsers)),
            browsers_per_ip: PerIpLimit::new(config.max_browsers_per_ip),
            config,
            http,
            proxy,
            controls,
            events,
            deltas,
            shutdown: CancellationToken::new(),
            combiner: Combiner::default(),
            view_changed: watch::channel(0).0,
            nodes_check_tokens: AtomicBool::new(false),
            watch: WatchHub::new(),
            replicas: Mutex::default(),
            activity: Mutex::default(),
            followers: Mutex::default(),
        }))
    }

    /// The node table. Change it through `node_table::update` so followers
    /// and browsers hear about it.
    pub fn balancer(&self) -> MutexGuard<'_, Balancer> {
        lock(&self.balancer)
    }

    pub fn replicas(&self) -> MutexGuard<'_, Replicas> {
        lock(&self.replicas)
    }

    pub fn activity(&self) -> MutexGuard<'_, Activity> {
        lock(&self.activity)
    }

    pub fn followers(&self) -> MutexGuard<'_, HashMap<String, AbortHandle>> {
        lock(&self.followers)
    }
}

/// `/watch` reads the merged view of every node's stream.
impl CounterSource for Shared {
    fn values(&self, names: &[String]) -> Vec<(String, i128)> {
        self.replicas().merged_values(names)
    }

    fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, i128)> {
        self.replicas().merged_page(prefix, after, limit)
    }
}
