//! The command line: `tally [node|discovery|gateway|dev|bench] …`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tally_protocol::access::ApiTokens;
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::http_server::ServerLimits;
use tally_protocol::HostPort;

/// Tally: a gossip-replicated counter cluster.
///
/// With no subcommand, starts the local demo cluster (same as `tally dev`):
/// a discovery server, three nodes and the gateway serving the live page.
#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about,
    long_about,
    after_help = "Every flag can also be set as a TALLY_<FLAG> environment variable \
(--gossip-addr: TALLY_GOSSIP_ADDR; lists comma-separated; flags true/false/1/0) \
or in the TOML file given by --config (gossip-addr = \"0.0.0.0:9000\", \
seed = [\"a:9000\", \"b:9000\"]). The command line wins over the environment, \
which wins over the file. `tally <command> --print-config` shows the result."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log filter (e.g. `info`, `debug`, `tally=debug,info`); `RUST_LOG` also works.
    #[arg(long, global = true, default_value = "info", env = "TALLY_LOG")]
    pub log: String,
    /// A TOML file of settings for the command, by flag name (`fanout = 3`,
    /// `seed = ["a:9000", "b:9000"]`); flags and `TALLY_*` variables win over it.
    #[arg(long, global = true, value_name = "PATH", env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the command's effective settings as TOML (secrets redacted),
    /// each with where it comes from, and exit without starting anything.
    #[arg(long, global = true)]
    pub print_config: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one cluster node: HTTP API, gossip, write-ahead log.
    Node(Box<NodeArgs>),
    /// Run the discovery server nodes register with.
    Discovery(DiscoveryArgs),
    /// Run the HTTP gateway: load balancing, failover, live stream and the web page.
    Gateway(GatewayArgs),
    /// Run the local demo cluster (discovery + N node processes + gateway).
    Dev(DevArgs),
    /// Load-test a node or the gateway and measure convergence.
    Bench(BenchArgs),
    /// GET a URL; exit 0 on a 2xx answer, 1 otherwise (a container's
    /// health check, where there is no curl).
    Probe(ProbeArgs),
    /// Operate a running cluster (signed with the cluster secret, or an
    /// admin API token).
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `tally admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Fold the departed actors of node NODE (a replaced pod's old disks,
    /// unclean restarts) into the actor of the node asked, so counters stop
    /// keeping an entry per incarnation. A node running as NODE keeps its
    /// current actor. Old copies of the retired actors are refused by the
    /// cluster from then on (wipe their data directory to rejoin). The node
    /// asked first pulls from every reachable member (409 if one does not
    /// answer), and answers once every reachable member holds the fold
    /// (`replicas` = `members`); `left` > 0: run it again later.
    Retire(RetireArgs),
}

/// `tally admin retire`.
#[derive(Debug, Args)]
pub struct RetireArgs {
    /// The node id whose departed actors to retire.
    #[arg(value_name = "NODE")]
    pub node: String,
    /// The node that does it (its HTTP address).
    #[arg(
        long = "via",
        value_name = "URL",
        default_value = "http://127.0.0.1:8010"
    )]
    pub via: String,
    /// An admin API token, for nodes started with --api-tokens-file
    /// (otherwise the request is signed with the cluster secret).
    #[arg(
        long,
        env = "TALLY_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// `tally probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to check [default: TALLY_PROBE_URL, else http://127.0.0.1:8010/ready].
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub timeout: Duration,
}

/// `tally node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node id (letters, digits, `.`, `_`, `-`). When absent, one is generated
    /// on first start and kept in the data directory.
    #[arg(long)]
    pub id: Option<String>,
    /// Address to accept gossip connections on (`0.0.0.0:9000` for every
    /// interface, then give --gossip-advertise).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub gossip_addr: SocketAddr,
    /// Address to serve the HTTP API on (`0.0.0.0:8010` for every
    /// interface, then give --http-advertise).
    #[arg(long, default_value = "127.0.0.1:8010")]
    pub http_addr: SocketAddr,
    /// The gossip address peers are told to dial: an IP or a DNS name with
    /// the port (e.g. `tally-0.tally.prod.svc.cluster.local:9000`)
    /// [default: --gossip-addr].
    #[arg(long, value_name = "HOST:PORT")]
    pub gossip_advertise: Option<HostPort>,
    /// The HTTP address discovery and gateways are told [default: --http-addr].
    #[arg(long, value_name = "HOST:PORT")]
    pub http_advertise: Option<HostPort>,
    /// Discovery server base URL (repeatable; any reachable one will do).
    #[arg(long, value_name = "URL")]
    pub discovery: Vec<String>,
    /// Gossip address of a static peer to join through (repeatable); a
    /// name is resolved again at every dial.
    #[arg(long, value_name = "HOST:PORT")]
    pub seed: Vec<HostPort>,
    /// A DNS name whose every A/AAAA record is a seed, resolved again every
    /// --dns-refresh (repeatable): a Kubernetes headless Service, e.g.
    /// `tally.prod.svc.cluster.local:9000`.
    #[arg(long, value_name = "NAME:PORT")]
    pub seed_dns: Vec<HostPort>,
    /// How often --seed-dns names are resolved again.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub dns_refresh: Duration,
    /// `/ready` waits for a first live peer; one that finds none for this
    /// long after start is ready anyway (and warns), so a node whose
    /// peers are all gone still serves.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    pub join_timeout: Duration,
    /// After SIGTERM the node stays up this long answering `/ready` with
    /// 503 (and its answers with `x-tally-draining`), so gateways and load
    /// balancers stop sending before it closes its port (0s: no drain).
    #[arg(long, default_value = "2s", value_parser = duration_or_zero)]
    pub drain_period: Duration,
    /// How long a write's Idempotency-Key is kept (and survives restarts): a
    /// retry with the same key within this long of the first attempt gets
    /// the first answer again, on any node, and is never applied twice.
    /// Longer windows hold more keys (about 700 bytes of memory each).
    #[arg(long, default_value = "24h", value_parser = humantime_duration)]
    pub idempotency_window: Duration,
    /// Deadline for the whole graceful stop after SIGTERM (drain, requests
    /// in flight, deregistration, final fsync); past it the node exits with
    /// an error. Keep it under Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    pub shutdown_timeout: Duration,
    /// How long a write with `?w=` (or a read with `?r=`) above 1 waits for
    /// other replicas to hold it (to send their state); past it the answer
    /// is 504 (for a write: outcome unknown, a retry with the same
    /// Idempotency-Key is safe).
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub write_timeout: Duration,
    /// Where the identity and the write-ahead log live [default: ./data/<id>, or ./data/node without --id].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Time between gossip rounds: each pings one member (failure detection,
    /// digest comparison); a silent member is pinged again over a fresh
    /// connection after a round, suspect after one more, dead 5 later.
    #[arg(long, default_value = "200ms", value_parser = humantime_duration)]
    pub gossip_interval: Duration,
    /// Most pulls started per round (where a probe showed states differ), and
    /// members sent membership news per round while there is any.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub fanout: u16,
    /// Every this many pulls, one asks for the full state (a backstop; free when digests agree).
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u64).range(1..))]
    pub full_sync_every: u64,
    /// Most inbound gossip connections at once; more are closed at once and
    /// counted (`tally_gossip_connections_refused_total`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_peer_connections: u16,
    /// A member silent (dead) this long leaves the member table, and its
    /// link is closed; it comes back if it restarts.
    #[arg(long, default_value = "10m", value_parser = humantime_duration)]
    pub forget_dead_after: Duration,
    /// Time between garbage-collection rounds: a deleted counter is dropped
    /// (memory, snapshot) about two rounds after every member holds the
    /// delete and twice --max-clock-skew has passed.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub gc_interval: Duration,
    /// How far apart nodes' clocks may be: a peer further off is refused
    /// (both sides log why). Deletes are collected and idempotency keys
    /// leave memory no sooner than twice this after they were stamped.
    /// Give every node of a cluster the same value.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    pub max_clock_skew: Duration,
    /// Discovery heartbeat period.
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub heartbeat: Duration,
    /// Cluster name; nodes refuse peers of another cluster.
    #[arg(long, default_value = "tally")]
    pub cluster: String,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub access: AccessArgs,
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
    /// Most counters local writes may create: once the node holds this
    /// many, a write to a new name gets 507 Insufficient Storage (writes to
    /// existing counters keep working). Merges from peers are never refused,
    /// so gossip can still take the node past it [default: unlimited].
    #[arg(long, value_name = "N")]
    pub max_counters: Option<u64>,
    /// Largest chunk, in encoded bytes, of the snapshot a `/ws` subscriber
    /// gets: the state is always sent in chunks, never as one frame.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=(8 << 20)))]
    pub stream_chunk_bytes: u64,
    #[command(flatten)]
    pub http: HttpLimitArgs,
}

/// Bounds of a process's HTTP server (slowloris, floods).
#[derive(Debug, Args, Clone)]
pub struct HttpLimitArgs {
    /// Most HTTP connections open at once, WebSockets included; more are
    /// closed as soon as they are accepted [default: 10000; 1000 for discovery].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
    /// Time for a request's headers to arrive; also how long a keep-alive
    /// connection may wait for its next request.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    pub header_timeout: Duration,
    /// Time for a request's body to arrive after its headers (then 408 and
    /// the connection is closed).
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    pub body_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    pub idle_timeout: Duration,
}

impl HttpLimitArgs {
    /// The limits, with `default_max` connections unless `--max-connections` says.
    pub fn limits(&self, default_max: usize) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections.map_or(default_max, |max| {
                usize::try_from(max).unwrap_or(usize::MAX)
            }),
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// The cluster secret, taken the same way by every process of a cluster.
#[derive(Debug, Args, Clone)]
pub struct SecretArgs {
    /// The cluster secret (at least 16 bytes, e.g. `openssl rand -hex 32`).
    /// Encrypts and authenticates gossip, signs calls to discovery and proves
    /// nodes to the gateway. During a rotation give several, separated by
    /// commas: the first is used to send, all are accepted.
    #[arg(
        long,
        env = "TALLY_CLUSTER_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cluster_key: Option<String>,
    /// Read the cluster secret(s) from this file instead (one per line).
    #[arg(long, value_name = "PATH", conflicts_with = "cluster_key")]
    pub cluster_key_file: Option<PathBuf>,
    /// Run without a cluster secret: anyone who reaches this process can
    /// read, join or change the cluster. For experiments on a closed machine only.
    #[arg(long, conflicts_with_all = ["cluster_key", "cluster_key_file"])]
    pub insecure: bool,
}

impl SecretArgs {
    /// The cluster's keys, `None` only with `--insecure` (which warns once).
    /// Without a secret and without `--insecure`, refuses to start.
    pub fn keys(&self) -> anyhow::Result<Option<ClusterKeys>> {
        let text = match (&self.cluster_key, &self.cluster_key_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("--cluster-key-file {}: {error}", path.display()))?,
            (None, None) if self.insecure => {
                tracing::warn!(
                    "--insecure: no cluster secret; anyone who can reach this process can read, join or change the cluster"
                );
                return Ok(None);
            }
            (None, None) => anyhow::bail!(
                "no cluster secret: give --cluster-key, TALLY_CLUSTER_KEY or --cluster-key-file (or --insecure for an open cluster)"
            ),
        };
        let keys =
            ClusterKeys::parse(&text).map_err(|error| anyhow::anyhow!("--cluster-key: {error}"))?;
        Ok(Some(keys))
    }
}

/// Who may use a node's or the gateway's HTTP API.
#[derive(Debug, Args, Clone)]
pub struct AccessArgs {
    /// Require API tokens: a file of `TOKEN ROLE` lines (roles `read`,
    /// `write`, `admin`). Every request then needs `Authorization: Bearer
    /// TOKEN` (401 without, 403 for a role too low). Without it the API is
    /// open to whoever reaches it.
    #[arg(long, value_name = "PATH", env = "TALLY_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// A web origin (e.g. `https://dash.example.com`) allowed to write and
    /// open streams from a browser (repeatable) [default: this server's own
    /// origin only].
    #[arg(long, value_name = "ORIGIN")]
    pub allowed_origin: Vec<String>,
}

impl AccessArgs {
    /// The tokens file, parsed (`None` when not given).
    pub fn tokens(&self) -> anyhow::Result<Option<ApiTokens>> {
        let Some(path) = &self.api_tokens_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("--api-tokens-file {}: {error}", path.display()))?;
        let tokens = ApiTokens::parse(&text)
            .map_err(|error| anyhow::anyhow!("--api-tokens-file {}: {error}", path.display()))?;
        Ok(Some(tokens))
    }
}

/// `tally discovery`.
#[derive(Debug, Args)]
pub struct DiscoveryArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Members silent for longer than this are dropped.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub http: HttpLimitArgs,
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
    /// A node's HTTP address, e.g. 127.0.0.1:8010 or
    /// tally-0.tally:8010 (repeatable; names are resolved at each connection).
    #[arg(long, value_name = "HOST:PORT")]
    pub node: Vec<HostPort>,
    /// Serve the web page from this directory instead of the one built
    /// into the binary (for page development).
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Most browsers on `/ws` from one client address (IPv6: one /64) at
    /// once; more get 429. Behind a reverse proxy every browser shares the
    /// proxy's address: raise it there.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_browsers_per_ip: u64,
    /// Most combined write batches in flight at once per healthy node:
    /// writes arriving while one is in flight travel together in the next;
    /// another starts only once a full batch (256 writes) waits, or the
    /// batch in flight has taken over 100 ms (its node may hang).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub write_lanes_per_node: u64,
    /// How long a read answered from the gateway's merged view waits for a
    /// write this gateway acknowledged to show there before asking a node
    /// (0s: ask a node at once).
    #[arg(long, default_value = "100ms", value_parser = duration_or_zero)]
    pub read_wait: Duration,
    #[command(flatten)]
    pub http: HttpLimitArgs,
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
    /// Serve the web page from this directory instead of the one built
    /// into the binary (for page development).
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
}

/// `tally bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// HTTP addresses of the nodes (or the gateway) to load; writes go round
    /// robin. Needed unless `--compare-gateway` is given (checked when the
    /// bench starts, so `--print-config` works without it).
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<String>,
    /// Compare a gateway with one node: load `--compare-direct` and then
    /// this gateway, the same way (writes, then reads, at each of
    /// `--compare-clients`), and print the table. Starts nothing itself.
    #[arg(long, value_name = "ADDR", requires = "compare_direct")]
    pub compare_gateway: Option<String>,
    /// The node loaded directly in the comparison.
    #[arg(long, value_name = "ADDR", requires = "compare_gateway")]
    pub compare_direct: Option<String>,
    /// Client counts of the comparison.
    #[arg(long, value_delimiter = ',', default_value = "32,64,256")]
    pub compare_clients: Vec<usize>,
    /// How long each comparison run loads its target.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub compare_duration: Duration,
    /// Alternating runs per cell of the comparison (medians are printed).
    #[arg(long, default_value_t = 3)]
    pub compare_rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Total increments to send.
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Counter to increment.
    #[arg(long, default_value = "bench")]
    pub counter: String,
    /// Write consistency of the increments (`?w=`): `1`, `majority`, `all`
    /// or a number, and `+key` to give every increment its own
    /// Idempotency-Key; several, comma-separated, run one after the other
    /// (`--w 1,1+key,majority,majority+key`) and print a line each.
    #[arg(
        long = "w",
        value_name = "LEVEL",
        value_delimiter = ',',
        default_value = "1"
    )]
    pub write_levels: Vec<String>,
    /// Also measure convergence: write on the first target, wait until every target shows it.
    #[arg(long)]
    pub convergence: bool,
}

/// Parses `200ms`, `1s`, `5m`, `1h`, `7d`, or a bare number of
/// milliseconds; zero is refused.
pub fn humantime_duration(text: &str) -> Result<Duration, String> {
    let duration = duration_or_zero(text)?;
    if duration.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(duration)
}

/// Like [`humantime_duration`], zero allowed.
pub fn duration_or_zero(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 200ms, 1s or 5m"))?;
    let seconds_per_unit = match unit {
        "" | "ms" => return Ok(Duration::from_millis(value)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    value
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
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
        assert_eq!(duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(humantime_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(humantime_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(humantime_duration("5w").is_err());
        assert!(humantime_duration("99999999999999999d").is_err());
    }

    fn secret(args: &[&str]) -> SecretArgs {
        let mut argv = vec!["tally", "discovery"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Discovery(discovery)) => discovery.secret,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_process_without_a_secret_refuses_to_start_unless_insecure() {
        // The variable may be set in the environment running the tests.
        if std::env::var_os("TALLY_CLUSTER_KEY").is_some() {
            return;
        }
        let error = secret(&[]).keys().unwrap_err().to_string();
        assert!(error.contains("--cluster-key"), "{error}");
        assert!(secret(&["--insecure"]).keys().unwrap().is_none());
        let keys = secret(&["--cluster-key", "a-long-enough-secret,another-long-secret"]);
        assert_eq!(keys.keys().unwrap().map(|k| k.len()), Some(2));
        let short = secret(&["--cluster-key", "short"])
            .keys()
            .unwrap_err()
            .to_string();
        assert!(short.contains("at least 16"), "{short}");
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "a-long-enough-secret\n").unwrap();
        let keys = secret(&["--cluster-key-file", path.to_str().unwrap()]);
        assert_eq!(keys.keys().unwrap().map(|k| k.len()), Some(1));
        let missing = secret(&["--cluster-key-file", "/nonexistent/key"]);
        assert!(missing
            .keys()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/key"));
    }

    #[test]
    fn http_limits_default_per_process_and_follow_the_flags() {
        let node = |args: &[&str]| {
            let mut argv = vec!["tally", "node"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Some(Command::Node(node)) => node,
                other => panic!("parsed as {other:?}"),
            }
        };
        let defaults = node(&[]);
        assert_eq!(defaults.http.limits(10_000), ServerLimits::default());
        assert_eq!(defaults.max_counters, None);
        assert_eq!(defaults.stream_chunk_bytes, 1 << 20);
        let set = node(&[
            "--max-connections",
            "50",
            "--header-timeout",
            "2s",
            "--max-counters",
            "7",
        ]);
        let limits = set.http.limits(10_000);
        assert_eq!(limits.max_connections, 50);
        assert_eq!(limits.header_timeout, Duration::from_secs(2));
        assert_eq!(set.max_counters, Some(7));
        let discovery = match Cli::try_parse_from(["tally", "discovery"]).unwrap().command {
            Some(Command::Discovery(discovery)) => discovery,
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(discovery.http.limits(1_000).max_connections, 1_000);
        assert!(Cli::try_parse_from(["tally", "node", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        // With the `TALLY_*` variables and list delimiters added too.
        crate::config::command(None).debug_assert();
        crate::config::command(Some(&Default::default())).debug_assert();
    }

    #[test]
    fn every_flag_has_a_variable_and_secrets_are_hidden() {
        let mut command = crate::config::command(None);
        command.build();
        let mut checked = 0;
        for sub in std::iter::once(&command).chain(command.get_subcommands()) {
            for arg in sub.get_arguments() {
                let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                    continue;
                };
                checked += 1;
                let env = env.to_str().unwrap();
                let id = arg.get_id().as_str();
                assert!(env.starts_with("TALLY_"), "--{long}: {env}");
                if id.contains("key") || id.contains("token") {
                    assert!(arg.is_hide_env_values_set(), "--{long} shows {env}");
                }
            }
            // Every setting of a command has a variable (a false flag's is
            // left out only when the variable says false).
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    let unset = std::env::var_os(crate::config::env_name(long)).is_none();
                    if !matches!(long, "help" | "version") && unset {
                        assert!(arg.get_env().is_some(), "tally {} --{long}", sub.get_name());
                    }
                }
            }
        }
        assert!(checked > 40, "{checked}");
        // The variables that existed before keep their names.
        let node = command.find_subcommand("node").unwrap();
        let env = |id: &str| {
            let arg = node.get_arguments().find(|arg| arg.get_id() == id).unwrap();
            arg.get_env().unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(env("cluster_key"), "TALLY_CLUSTER_KEY");
        assert_eq!(env("api_tokens_file"), "TALLY_API_TOKENS_FILE");
        assert_eq!(env("log"), "TALLY_LOG");
        assert_eq!(env("config"), "TALLY_CONFIG");
        assert_eq!(env("gossip_addr"), "TALLY_GOSSIP_ADDR");
        assert_eq!(env("max_peer_connections"), "TALLY_MAX_PEER_CONNECTIONS");
    }

    #[test]
    fn the_command_line_parses_as_before_with_variables() {
        // Parsed through the env-augmented command, flags mean what they did.
        use clap::FromArgMatches;
        let given = ["discovery", "insecure", "fanout"]
            .map(str::to_owned)
            .into();
        let matches = crate::config::command(Some(&given))
            .try_get_matches_from([
                "tally",
                "node",
                "--discovery",
                "http://a/x,y",
                "--insecure",
                "--fanout",
                "7",
            ])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Some(Command::Node(node)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(node.discovery, ["http://a/x,y"]);
        assert!(node.secret.insecure);
        assert_eq!(node.fanout, 7);
    }
}
