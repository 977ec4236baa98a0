//! `tally dev` (and `tally` with no subcommand): the local demo cluster.
//!
//! Starts a discovery server and N nodes as separate `tally` processes (so
//! crashing one is real), runs the gateway in this process with demo
//! controls (crash / restart a node process; partition / heal go through
//! the nodes' fault-injection API), and stops everything on Ctrl-C.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::future::BoxFuture;
use tally::cli::{DevArgs, GatewayArgs};
use tally_gateway::{DemoControls, GatewayConfig};
use tokio::process::{Child, Command};

/// The demo's shared secret: nodes authenticate gossip even in the demo.
const DEMO_CLUSTER_KEY: &str = "tally-demo-cluster-key";
/// Time a node gets to stop gracefully before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Defaults of `tally dev`, for `tally` with no subcommand.
pub fn default_args() -> DevArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        dev: DevArgs,
    }
    Defaults::parse_from(["tally"]).dev
}

/// One node process the supervisor can start again.
struct NodeSpec {
    id: String,
    gossip_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: PathBuf,
}

struct Supervisor {
    exe: PathBuf,
    discovery_url: String,
    specs: Vec<NodeSpec>,
    children: Mutex<HashMap<String, Child>>,
}

impl Supervisor {
    fn spawn_node(&self, spec: &NodeSpec) -> anyhow::Result<Child> {
        Command::new(&self.exe)
            .args(["node", "--id", &spec.id])
            .args(["--gossip-addr", &spec.gossip_addr.to_string()])
            .args(["--http-addr", &spec.http_addr.to_string()])
            .args(["--discovery", &self.discovery_url])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--allow-fault-injection")
            .env("TALLY_CLUSTER_KEY", DEMO_CLUSTER_KEY)
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", spec.id))
    }

    fn spec(&self, id: &str) -> Result<&NodeSpec, String> {
        self.specs
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| format!("no node {id:?} in this demo"))
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn stop_all(&self) {
        let children: Vec<(String, Child)> = self.children().drain().collect();
        for (id, mut child) in children {
            terminate(&child);
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(node = %id, "did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

impl DemoControls for Supervisor {
    fn crash<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.spec(node)?;
            let child = self.children().remove(node);
            let Some(mut child) = child else {
                return Err(format!("{node} is already down"));
            };
            // SIGKILL: no goodbye, no flush. The WAL must make this harmless.
            child
                .kill()
                .await
                .map_err(|e| format!("killing {node}: {e}"))?;
            tracing::warn!(%node, "crashed by the demo");
            Ok(())
        })
    }

    fn restart<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let spec = self.spec(node)?;
            let mut children = self.children();
            if let Some(child) = children.get_mut(node) {
                if matches!(child.try_wait(), Ok(None)) {
                    return Err(format!("{node} is already running"));
                }
            }
            let child = self.spawn_node(spec).map_err(|e| format!("{e:#}"))?;
            children.insert(node.to_owned(), child);
            tracing::info!(%node, "restarted by the demo");
            Ok(())
        })
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Fails with a message naming the port when any address is taken.
fn check_free(addrs: &[(&str, SocketAddr)]) -> anyhow::Result<()> {
    for (what, addr) in addrs {
        if let Err(error) = std::net::TcpListener::bind(addr) {
            bail!("port {} ({what}, {addr}) is not free: {error}", addr.port());
        }
    }
    Ok(())
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let ip = args.discovery_addr.ip();
    let specs: Vec<NodeSpec> = (0..args.nodes)
        .map(|i| NodeSpec {
            id: format!("node-{}", i + 1),
            gossip_addr: SocketAddr::new(ip, args.gossip_port + i),
            http_addr: SocketAddr::new(ip, args.http_port + i),
            data_dir: args.data_dir.join(format!("node-{}", i + 1)),
        })
        .collect();
    let mut wanted = vec![
        ("gateway", args.gateway_addr),
        ("discovery", args.discovery_addr),
    ];
    for spec in &specs {
        wanted.push(("node HTTP", spec.http_addr));
        wanted.push(("node gossip", spec.gossip_addr));
    }
    check_free(&wanted)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;

    let exe = std::env::current_exe().context("locating the tally executable")?;
    let mut discovery = Command::new(&exe)
        .args([
            "discovery",
            "--addr",
            &args.discovery_addr.to_string(),
            "--ttl",
            "5s",
        ])
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting discovery")?;
    let supervisor = Arc::new(Supervisor {
        exe,
        discovery_url: format!("http://{}", args.discovery_addr),
        specs,
        children: Mutex::default(),
    });
    for spec in &supervisor.specs {
        let child = supervisor.spawn_node(spec)?;
        supervisor.children().insert(spec.id.clone(), child);
    }

    let listener = tokio::net::TcpListener::bind(args.gateway_addr)
        .await
        .with_context(|| format!("port {} (gateway) is not free", args.gateway_addr.port()))?;
    let config = GatewayConfig {
        nodes: supervisor
            .specs
            .iter()
            .map(|s| s.http_addr.to_string())
            .collect(),
        discovery: vec![supervisor.discovery_url.clone()],
        web_dir: args.web_dir.clone(),
        ..GatewayConfig::default()
    };
    if config.resolved_web_dir().is_none() {
        println!("note: the web bundle is not built; run `cargo xtask web` (or `cargo xtask demo`) for the page");
    }
    println!(
        "Tally demo: {} nodes, data in {}",
        args.nodes,
        args.data_dir.display()
    );
    println!(
        "Open http://{} — Ctrl-C stops everything",
        args.gateway_addr
    );
    let controls: Arc<dyn DemoControls> = supervisor.clone();
    let served =
        tally_gateway::serve(listener, config, Some(controls), tally::shutdown::signal()).await;
    supervisor.stop_all().await;
    terminate(&discovery);
    let _ = tokio::time::timeout(STOP_GRACE, discovery.wait()).await;
    served.context("gateway failed")?;
    println!("demo stopped; data kept in {}", args.data_dir.display());
    Ok(())
}

/// `tally gateway`.
pub async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    if args.node.is_empty() && args.discovery.is_empty() {
        bail!("give at least one --node <http addr> or --discovery <url>");
    }
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is port {} in use?)",
                args.addr,
                args.addr.port()
            )
        })?;
    let config = GatewayConfig {
        nodes: args.node,
        discovery: args.discovery,
        web_dir: args.web_dir,
        ..GatewayConfig::default()
    };
    tracing::info!(addr = %args.addr, "gateway serving");
    tally_gateway::serve(listener, config, None, tally::shutdown::signal()).await?;
    Ok(())
}
