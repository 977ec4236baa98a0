//! The two HTTP clients the gateway reaches nodes with.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::request_auth::{self, unix_now_ms, RequestParts};

/// Pooled keep-alive connections to the nodes, for proxied requests.
///
/// A bare hyper client rather than reqwest: the proxy already holds the
/// request line (method, path, bytes), so there is no URL to parse, no
/// redirect or retry layer to pass through, and the body is forwarded as
/// the same `Bytes` both ways, never re-encoded.
pub type NodeClient = Client<HttpConnector, Full<Bytes>>;

/// Idle pooled connections are closed after this long: sooner than a node
/// closes them (its `--header-timeout`, 10 s by default, also bounds how
/// long a keep-alive connection may wait for its next request), so the
/// gateway never sends a request on a connection the node is closing — a
/// write lost that way could not be retried safely.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy's client: keep-alive pool, `connect_timeout` per connection,
/// Nagle off (requests and answers are single small writes).
pub fn for_proxying(connect_timeout: Duration) -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// The client for health checks and the demo's admin calls, where
/// convenience (JSON, per-request timeouts) matters more than speed.
pub fn for_checks_and_admin(
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Nodes are reached directly; an ambient HTTP_PROXY must not reroute them.
        .no_proxy()
        .build()
}

/// Headers that sign a body-less request to a node with the cluster secret,
/// so a node with a tokens file lets the gateway's own reads through
/// (health checks, stream followers).
pub fn signed_read(keys: &ClusterKeys, path_and_query: &str) -> [(&'static str, String); 3] {
    let request = RequestParts {
        method: "GET",
        path_and_query,
        body: b"",
    };
    request_auth::sign(keys, request, unix_now_ms(), rand::random())
}
