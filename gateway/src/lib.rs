//! The Tally gateway: one address in front of a cluster of nodes.
//!
//! * combines concurrent writes into batches sent round-robin over healthy
//!   nodes (`combine`, `writes`), answers reads from its merged view with
//!   read-your-writes (`counters`, `replicas`) and proxies the rest
//!   (`proxy`), failing over only when that cannot count a write twice
//!   (`failover`);
//! * keeps the node table true with active and passive health checks and
//!   discovery (`balancer`, `health`, `node_table`);
//! * follows every node's live stream (`followers`) and merges them
//!   (`replicas`), and fans the cluster's state out to browsers on `/ws`
//!   (`browser`): each gets the merged view under its prefix, node
//!   summaries and the busiest counters (`live`);
//! * runs the demo's crash/restart/partition/heal buttons (`demo`);
//! * serves the web page, compiled into the binary (`page`, from `build.rs`).
mod api;
mod balancer;
mod browser;
mod combine;
mod config;
mod counters;
mod demo;
mod demo_controls;
mod error;
mod failover;
mod followers;
mod health;
mod live;
mod node_clients;
mod node_table;
mod page;
mod proxy;
mod replicas;
mod state;
mod trail;
mod writes;

use std::future::Future;
use std::sync::Arc;

use tally_discovery::DiscoveryClient;
use tally_protocol::http_server::{self, ConnectionStats};
use tally_protocol::watch::CounterSource;
use tokio::net::TcpListener;

pub use api::NodeView;
pub use config::{GatewayConfig, MAX_BODY_BYTES};
pub use demo_controls::DemoControls;
pub use error::GatewayError;
pub use trail::Lag;

use state::Shared;

/// Serves the gateway on `listener` until `shutdown` completes.
///
/// Background work (health checks, discovery, node streams, browser
/// sessions) stops with it.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    controls: Option<Arc<dyn DemoControls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let discovery = match config.discovery.is_empty() {
        true => None,
        false => {
            let client = DiscoveryClient::new(config.discovery.clone())?;
            Some(match &config.cluster_keys {
                Some(keys) => client.signed_with(keys.clone()),
                None => client,
            })
        }
    };
    let limits = config.http.clone();
    let shared = Shared::new(config, controls)?;
    let stop = shared.shutdown.clone();
    followers::reconcile(&shared);
    let watch = Arc::clone(&shared.watch).run(Arc::clone(&shared) as Arc<dyn CounterSource>);
    tokio::spawn(stop.clone().run_until_cancelled_owned(watch));
    let live = live::run(Arc::clone(&shared));
    tokio::spawn(stop.clone().run_until_cancelled_owned(live));
    tokio::spawn(
        stop.clone()
            .run_until_cancelled_owned(health::check_nodes(Arc::clone(&shared))),
    );
    if let Some(client) = discovery {
        let following = health::follow_discovery(Arc::clone(&shared), client);
        tokio::spawn(stop.clone().run_until_cancelled_owned(following));
    }
    let app = api::router(Arc::clone(&shared));
    let stopping = stop.clone();
    let stats = Arc::new(ConnectionStats::default());
    let served = http_server::serve(listener, app, limits, stats, async move {
        shutdown.await;
        stopping.cancel();
    })
    .await;
    stop.cancel();
    Ok(served?)
}
