//! What the CLI tells the gateway.
use std::path::PathBuf;
use std::time::Duration;

/// Largest request body the gateway forwards (larger → 413).
pub use tally_protocol::http_error::MAX_BODY_BYTES;

/// Gateway settings; `Default` gives the documented defaults and no nodes.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Node HTTP addresses given with `--node`, e.g. `127.0.0.1:8010`.
    pub nodes: Vec<String>,
    /// Discovery server URLs; their peers join `nodes`, refreshed every `discovery_interval`.
    pub discovery: Vec<String>,
    /// Where the web bundle lives; `None` uses [`default_web_dir`].
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
    /// Events buffered per browser before it counts as lagging and is resynced.
    pub event_buffer: usize,
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
            event_buffer: 1_024,
        }
    }
}

impl GatewayConfig {
    /// The web bundle directory to serve, if there is one.
    pub fn resolved_web_dir(&self) -> Option<PathBuf> {
        let dir = self.web_dir.clone().unwrap_or_else(default_web_dir);
        dir.is_dir().then_some(dir)
    }
}

/// `web/dist` next to this crate: where `cargo xtask web` puts the bundle.
pub fn default_web_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/dist"))
}
