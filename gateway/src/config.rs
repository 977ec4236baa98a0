//! What the CLI tells the gateway.
use std::path::PathBuf;
use std::time::Duration;

use tally_protocol::access::ApiTokens;
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::events::SNAPSHOT_CHUNK_BYTES;
use tally_protocol::http_server::ServerLimits;

/// Largest request body the gateway forwards (larger → 413).
pub use tally_protocol::http_error::MAX_BODY_BYTES;

/// Largest node answer the gateway relays by default: a page of
/// `GET /counters` at its 1,000-name limit is well under this.
pub const MAX_NODE_ANSWER_BYTES: usize = 4 << 20;

/// Gateway settings; `Default` gives the documented defaults and no nodes.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Node HTTP addresses given with `--node`, e.g. `127.0.0.1:8010`.
    pub nodes: Vec<String>,
    /// Discovery server URLs; their peers join `nodes`, refreshed every `discovery_interval`.
    pub discovery: Vec<String>,
    /// A directory to serve the web page from (`--web-dir`, for
    /// development); `None` serves the bundle compiled into the binary.
    pub web_dir: Option<PathBuf>,
    /// How often every node's `/health` is checked.
    pub health_interval: Duration,
    /// How long a health check may take before the node counts as down.
    pub health_timeout: Duration,
    /// How long a proxied request may take (after that: 504, never a retry of a write).
    pub request_timeout: Duration,
    /// How often the discovery servers are asked for peers.
    pub discovery_interval: Duration,
    /// A node learnt from discovery that is unhealthy and no longer listed is
    /// forgotten after this long (nodes given with `--node` stay forever).
    pub forget_after: Duration,
    /// Most browsers on `/ws` at once (more → 503).
    pub max_browsers: usize,
    /// Most browsers on `/ws` from one client address at once (more → 429).
    pub max_browsers_per_ip: usize,
    /// Largest encoded chunk of a node's state sent to a browser.
    pub stream_chunk_bytes: usize,
    /// The HTTP server's bounds: connection cap, header/body/idle timeouts.
    pub http: ServerLimits,
    /// Events buffered per browser before it counts as lagging and is resynced.
    pub event_buffer: usize,
    /// The cluster secret(s): sign calls to discovery and check that nodes
    /// hold it before routing to them. `None` only with `--insecure`.
    pub cluster_keys: Option<ClusterKeys>,
    /// Largest answer body read from a node (larger → 502).
    pub max_node_answer: usize,
    /// API tokens (`--api-tokens-file`); `None` leaves the gateway open.
    pub api_tokens: Option<ApiTokens>,
    /// Origins allowed to write and open streams; empty = same origin.
    pub allowed_origins: Vec<String>,
    /// Most combined write batches in flight at once, per healthy node
    /// (`writes`): beyond the first, a lane starts only once a full batch
    /// waits.
    pub lanes_per_node: usize,
    /// How long a read answered from the merged view waits for a write this
    /// gateway acknowledged to show there before a node is asked instead.
    pub read_wait: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            discovery: Vec::new(),
            web_dir: None,
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(1),
            forget_after: Duration::from_secs(30),
            max_browsers: 1_000,
            max_browsers_per_ip: 8,
            stream_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            http: ServerLimits::default(),
            event_buffer: 1_024,
            cluster_keys: None,
            max_node_answer: MAX_NODE_ANSWER_BYTES,
            api_tokens: None,
            allowed_origins: Vec::new(),
            // Measured: 1 beats 2 and 4 on a loaded 2-core machine (fewer,
            // larger batches: fewer commits, gossip messages and deltas).
            lanes_per_node: 1,
            read_wait: Duration::from_millis(100),
        }
    }
}

impl GatewayConfig {
    /// Whether the gateway will serve the web page: from `web_dir` when it
    /// is set (and exists), else from the bundle compiled into the binary
    /// (absent when `cargo xtask web` had not run before the build).
    pub fn has_page(&self) -> bool {
        match &self.web_dir {
            Some(dir) => dir.is_dir(),
            None => crate::page::is_embedded(),
        }
    }
}
