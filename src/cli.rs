//! The command line: `tally [node|discovery|gateway|dev|bench] …`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Tally: a gossip-replicated counter cluster.
///
/// With no subcommand, starts the local demo cluster (same as `tally dev`):
/// a discovery server, three nodes and the gateway serving the live page.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log filter (e.g. `info`, `debug`, `tally=debug,info`); `RUST_LOG` also works.
    #[arg(long, global = true, default_value = "info", env = "TALLY_LOG")]
    pub log: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one cluster node: HTTP API, gossip, write-ahead log.
    Node(NodeArgs),
    /// Run the discovery server nodes register with.
    Discovery(DiscoveryArgs),
    /// Run the HTTP gateway: load balancing, failover, live stream and the web page.
    Gateway(GatewayArgs),
    /// Run the local demo cluster (discovery + N node processes + gateway).
    Dev(DevArgs),
    /// Load-test a node or the gateway and measure convergence.
    Bench(BenchArgs),
}

/// `tally node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node id (letters, digits, `.`, `_`, `-`). When absent, one is generated
    /// on first start and kept in the data directory.
    #[arg(long)]
    pub id: Option<String>,
    /// Address to accept gossip connections on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub gossip_addr: SocketAddr,
    /// Address to serve the HTTP API on.
    #[arg(long, default_value = "127.0.0.1:8010")]
    pub http_addr: SocketAddr,
    /// Discovery server base URL (repeatable; any reachable one will do).
    #[arg(long, value_name = "URL")]
    pub discovery: Vec<String>,
    /// Gossip address of a static peer to join through (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub seed: Vec<String>,
    /// Where the identity and the write-ahead log live [default: ./data/<id>, or ./data/node without --id].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Time between anti-entropy rounds.
    #[arg(long, default_value = "200ms", value_parser = humantime_duration)]
    pub gossip_interval: Duration,
    /// Peers contacted per round and per eager push.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub fanout: u16,
    /// Every this many rounds, one pull asks for the full state (a backstop; free when digests agree).
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u64).range(1..))]
    pub full_sync_every: u64,
    /// Discovery heartbeat period.
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub heartbeat: Duration,
    /// Cluster name; nodes refuse peers of another cluster.
    #[arg(long, default_value = "tally")]
    pub cluster: String,
    /// Shared secret authenticating every gossip connection and frame (HMAC-SHA256).
    #[arg(long, env = "TALLY_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// Enable `POST/DELETE /admin/partition` (tests and the demo only).
    #[arg(long)]
    pub allow_fault_injection: bool,
    /// Largest gossip frame in bytes; a larger one closes the connection.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..=(64 << 20)))]
    pub max_frame: u64,
    /// WAL segment size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Take a snapshot (and drop covered segments) after this many WAL bytes.
    #[arg(long, default_value_t = 128 << 20)]
    pub snapshot_bytes: u64,
}

/// `tally discovery`.
#[derive(Debug, Args)]
pub struct DiscoveryArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Members silent for longer than this are dropped.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub ttl: Duration,
}

/// `tally gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Discovery server base URL to find nodes through (repeatable).
    #[arg(long, value_name = "URL")]
    pub discovery: Vec<String>,
    /// A node's HTTP address, e.g. 127.0.0.1:8010 (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub node: Vec<String>,
    /// Directory holding the web bundle [default: the repository's web/dist].
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
}

/// `tally dev`.
#[derive(Debug, Args, Clone)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub nodes: u16,
    /// Gateway (and web page) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_addr: SocketAddr,
    /// Discovery server address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub discovery_addr: SocketAddr,
    /// First node HTTP port; node i uses this + i.
    #[arg(long, default_value_t = 8010)]
    pub http_port: u16,
    /// First node gossip port; node i uses this + i.
    #[arg(long, default_value_t = 9000)]
    pub gossip_port: u16,
    /// Where the nodes keep their data (one folder per node).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Directory holding the web bundle [default: the repository's web/dist].
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
}

/// `tally bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// HTTP addresses of the nodes (or the gateway) to load; writes go round robin.
    #[arg(long = "target", value_name = "ADDR", required = true)]
    pub targets: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Total increments to send.
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Counter to increment.
    #[arg(long, default_value = "bench")]
    pub counter: String,
    /// Also measure convergence: write on the first target, wait until every target shows it.
    #[arg(long)]
    pub convergence: bool,
}

/// Parses `200ms`, `1s`, `5m`, or a bare number of milliseconds.
pub fn humantime_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 200ms, 1s or 5m"))?;
    let duration = match unit {
        "" | "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value * 60),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if duration.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(humantime_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(humantime_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(humantime_duration("250"), Ok(Duration::from_millis(250)));
        assert!(humantime_duration("abc").is_err());
        assert!(humantime_duration("0s").is_err());
        assert!(humantime_duration("5h").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
