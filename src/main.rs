//! The `tally` binary: parses the command line and runs the chosen part.
mod admin;
mod bench;
mod cli;
mod compare;
mod config;
mod dev;

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::cli::{Cli, Command, DiscoveryArgs, GatewayArgs, NodeArgs};
use anyhow::Context;
use tally_gateway::GatewayConfig;
use tally_node::gossip::GossipConfig;
use tally_node::node::{self, NodeConfig};
use tokio::net::TcpListener;

/// mimalloc returns freed memory to the operating system on its own, so a
/// node that created and deleted a million counters shrinks back (glibc's
/// allocator kept most of it: fragmentation pinned its pages).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First thing, while this is the only thread: reading the config file
    // sets environment variables (see `config::parse`).
    let cli = match config::parse(std::env::args_os().collect()) {
        Ok(config::Parsed::Run(cli)) => *cli,
        Ok(config::Parsed::Print(text)) => {
            use std::io::Write;
            // Not `print!`: a closed pipe (`| head`) must not panic.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(config::Error::Clap(error)) => error.exit(),
        Err(config::Error::Config(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cli.log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Some(Command::Node(args)) => run_node(*args).await,
            Some(Command::Discovery(args)) => run_discovery(args).await,
            Some(Command::Gateway(args)) => run_gateway(args).await,
            Some(Command::Bench(args)) => bench::run(args).await,
            Some(Command::Probe(args)) => probe(args).await,
            Some(Command::Admin(command)) => admin::run(command).await,
            Some(Command::Dev(args)) => dev::run(args).await,
            None => dev::run(dev::default_args()).await,
        }
    })
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| match &args.id {
        Some(id) => format!("./data/{id}").into(),
        None => "./data/node".into(),
    });
    if let Some(id) = &args.id {
        tally_protocol::validate_node_id(id)?;
    }
    let config = NodeConfig {
        id: args.id,
        gossip_addr: args.gossip_addr,
        http_addr: args.http_addr,
        gossip_advertise: args.gossip_advertise,
        http_advertise: args.http_advertise,
        discovery: args.discovery,
        seeds: args.seed,
        seed_dns: args.seed_dns,
        dns_refresh: args.dns_refresh,
        join_timeout: args.join_timeout,
        drain_period: args.drain_period,
        idempotency_window: args.idempotency_window,
        gc_interval: args.gc_interval,
        max_clock_skew: args.max_clock_skew,
        shutdown_timeout: args.shutdown_timeout,
        data_dir,
        gossip: GossipConfig {
            interval: args.gossip_interval,
            fanout: usize::from(args.fanout),
            full_sync_every: args.full_sync_every,
            max_inbound: usize::from(args.max_peer_connections),
            forget_dead_after: args.forget_dead_after,
        },
        heartbeat: args.heartbeat,
        cluster: args.cluster,
        cluster_keys: args.secret.keys()?,
        api_tokens: args.access.tokens()?,
        allowed_origins: args.access.allowed_origin.clone(),
        allow_fault_injection: args.allow_fault_injection,
        write_timeout: args.write_timeout,
        max_frame: args.max_frame as usize,
        segment_bytes: args.segment_bytes,
        snapshot_bytes: args.snapshot_bytes,
        http: args
            .http
            .limits(tally_protocol::http_server::DEFAULT_MAX_CONNECTIONS),
        max_counters: (args.max_counters).map(|max| usize::try_from(max).unwrap_or(usize::MAX)),
        stream_chunk_bytes: args.stream_chunk_bytes as usize,
    };
    node::run(config, |_| {}, tally_node::shutdown::signal())
        .await
        .context("node failed")
}

async fn run_discovery(args: DiscoveryArgs) -> anyhow::Result<()> {
    let keys = args.secret.keys()?;
    let listener = bind(args.addr).await?;
    tracing::info!(addr = %args.addr, ttl_ms = args.ttl.as_millis() as u64, "discovery serving");
    let limits = (args.http).limits(tally_protocol::http_server::DISCOVERY_MAX_CONNECTIONS);
    let shutdown = tally_node::shutdown::signal();
    tally_discovery::serve_with(listener, args.ttl, keys, limits, shutdown).await?;
    Ok(())
}

async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    if args.node.is_empty() && args.discovery.is_empty() {
        anyhow::bail!("give at least one --node <http addr> or --discovery <url>");
    }
    let cluster_keys = args.secret.keys()?;
    let api_tokens = args.access.tokens()?;
    let listener = bind(args.addr).await?;
    let config = GatewayConfig {
        nodes: args.node.iter().map(ToString::to_string).collect(),
        discovery: args.discovery,
        web_dir: args.web_dir,
        cluster_keys,
        api_tokens,
        allowed_origins: args.access.allowed_origin,
        http: args
            .http
            .limits(tally_protocol::http_server::DEFAULT_MAX_CONNECTIONS),
        max_browsers_per_ip: args.max_browsers_per_ip as usize,
        lanes_per_node: args.write_lanes_per_node as usize,
        read_wait: args.read_wait,
        ..GatewayConfig::default()
    };
    tracing::info!(addr = %args.addr, "gateway serving");
    tally_gateway::serve(listener, config, None, tally_node::shutdown::signal()).await?;
    Ok(())
}

/// `tally probe`: one GET, success on 2xx.
async fn probe(args: cli::ProbeArgs) -> anyhow::Result<()> {
    let url = (args.url)
        .or_else(|| std::env::var("TALLY_PROBE_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8010/ready".into());
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}");
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is port {} in use?)", addr.port()))
}
