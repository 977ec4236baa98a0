//! `tally dev` (and `tally` with no subcommand): the local demo cluster.
//!
//! Starts a discovery server and N nodes as separate `tally` processes (so
//! crashing one is real), runs the gateway in this process with demo
//! controls (crash / restart a node process; partition / heal go through
//! the nodes' fault-injection API), and stops everything on Ctrl-C or
//! SIGTERM: every child gets SIGTERM and is waited for, so no node outlives
//! the demo and the next start finds its data and its ports free.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::cli::DevArgs;
use anyhow::{bail, Context};
use futures_util::future::BoxFuture;
use tally_gateway::{DemoControls, GatewayConfig};
use tally_protocol::cluster_key::ClusterKeys;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

/// Where the demo keeps its cluster secret, inside `--data-dir`.
const SECRET_FILE: &str = "cluster.key";
/// Time the children get to stop gracefully before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long startup waits for every node to answer `/health`.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);
const STARTUP_POLL: Duration = Duration::from_millis(100);

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

/// Where every part of the demo listens, checked for clashes and overflow.
struct Layout {
    specs: Vec<NodeSpec>,
}

impl Layout {
    fn new(args: &DevArgs) -> anyhow::Result<Self> {
        let ip = args.discovery_addr.ip();
        let port = |base: u16, offset: u16, flag: &str| {
            base.checked_add(offset).with_context(|| {
                format!("{flag} {base} + {} nodes goes past port 65535", args.nodes)
            })
        };
        let mut specs = Vec::new();
        for i in 0..args.nodes {
            let id = format!("node-{}", i + 1);
            specs.push(NodeSpec {
                gossip_addr: SocketAddr::new(ip, port(args.gossip_port, i, "--gossip-port")?),
                http_addr: SocketAddr::new(ip, port(args.http_port, i, "--http-port")?),
                data_dir: args.data_dir.join(&id),
                id,
            });
        }
        let layout = Self { specs };
        layout.check_distinct(args)?;
        Ok(layout)
    }

    /// Every address but the gateway's, named for error messages.
    fn child_addrs(&self, args: &DevArgs) -> Vec<(String, SocketAddr)> {
        let mut addrs = vec![("discovery".to_owned(), args.discovery_addr)];
        for spec in &self.specs {
            addrs.push((format!("{} HTTP", spec.id), spec.http_addr));
            addrs.push((format!("{} gossip", spec.id), spec.gossip_addr));
        }
        addrs
    }

    /// Two parts on one port would fail later and obscurely; say so now.
    fn check_distinct(&self, args: &DevArgs) -> anyhow::Result<()> {
        let mut taken: HashMap<u16, String> = HashMap::new();
        let all = std::iter::once(("gateway".to_owned(), args.gateway_addr))
            .chain(self.child_addrs(args));
        for (what, addr) in all {
            if addr.port() == 0 {
                bail!("port 0 for {what}: the demo needs fixed ports");
            }
            if let Some(first) = taken.insert(addr.port(), what.clone()) {
                bail!("port {} is given twice: {first} and {what}", addr.port());
            }
        }
        Ok(())
    }
}

/// Ctrl-C and SIGTERM, listened for from the moment the demo starts, so
/// that a signal during startup still stops the children gracefully.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        tracing::info!("stopping the demo");
    }
}

struct Supervisor {
    exe: PathBuf,
    /// The demo's cluster secret, handed to every child in `TALLY_CLUSTER_KEY`.
    secret: String,
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
            // The demo's stop button should stop a node promptly.
            .args(["--drain-period", "500ms"])
            .env("TALLY_CLUSTER_KEY", &self.secret)
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            // Own process group: a terminal's Ctrl-C reaches only the
            // supervisor, which stops nodes before discovery, in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", spec.id))
    }

    fn spawn_all(&self) -> anyhow::Result<()> {
        for spec in &self.specs {
            let child = self.spawn_node(spec)?;
            self.children().insert(spec.id.clone(), child);
        }
        Ok(())
    }

    fn spec(&self, id: &str) -> Result<&NodeSpec, String> {
        self.specs
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| format!("no node {id:?} in this demo"))
    }

    fn children(&self) -> MutexGuard<'_, HashMap<String, Child>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A node whose process has already ended, with how it ended.
    fn exited(&self) -> Option<(String, ExitStatus)> {
        let mut children = self.children();
        children
            .iter_mut()
            .find_map(|(id, child)| match child.try_wait() {
                Ok(Some(status)) => Some((id.clone(), status)),
                _ => None,
            })
    }

    /// Waits until every node answers `/health`; fails as soon as one exits
    /// (typically: its port was taken, or its data is unreadable).
    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(STARTUP_POLL * 5)
            .no_proxy()
            .build()?;
        let deadline = Instant::now() + STARTUP_PATIENCE;
        let mut waiting: Vec<&NodeSpec> = self.specs.iter().collect();
        while !waiting.is_empty() {
            if let Some((id, status)) = self.exited() {
                bail!("{id} exited during startup ({status}); its log is above");
            }
            if Instant::now() > deadline {
                let ids: Vec<&str> = waiting.iter().map(|spec| spec.id.as_str()).collect();
                tracing::warn!(nodes = ?ids, "not answering yet; serving anyway");
                return Ok(());
            }
            let mut still = Vec::new();
            for spec in waiting {
                let url = format!("http://{}/health", spec.http_addr);
                let answered = http.get(url).send().await;
                if !answered.is_ok_and(|response| response.status().is_success()) {
                    still.push(spec);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(STARTUP_POLL).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to every node at once, then waits for each (killing any
    /// that outstays `STOP_GRACE`).
    async fn stop_all(&self) {
        let children: Vec<(String, Child)> = self.children().drain().collect();
        for (_, child) in &children {
            terminate(child);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (id, child) in children {
            stop_within(&id, child, deadline).await;
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
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return; // Already reaped.
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Waits for a child that was sent SIGTERM; kills it at `deadline`.
async fn stop_within(name: &str, mut child: Child, deadline: Instant) {
    if tokio::time::timeout_at(deadline, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(%name, "did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

/// Fails with a message naming the port when any address is taken.
fn check_free(addrs: &[(String, SocketAddr)]) -> anyhow::Result<()> {
    for (what, addr) in addrs {
        if let Err(error) = std::net::TcpListener::bind(addr) {
            bail!("port {} ({what}, {addr}) is not free: {error}", addr.port());
        }
    }
    Ok(())
}

fn spawn_discovery(exe: &Path, addr: SocketAddr, secret: &str) -> anyhow::Result<Child> {
    Command::new(exe)
        .args(["discovery", "--addr", &addr.to_string(), "--ttl", "5s"])
        .env("TALLY_CLUSTER_KEY", secret)
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting discovery")
}

/// The demo cluster's secret: random, made on the first run and kept (owner
/// read/write only) in the data directory, so a second run with the same data
/// is the same cluster and no two demos share a secret.
fn demo_secret(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) => return Ok(secret.trim().to_owned()),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("reading {}", path.display()))
        }
        Err(_) => {}
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let stop = StopSignals::listen()?;
    let layout = Layout::new(&args)?;
    // The gateway's listener is ours for good: bind it before starting anything.
    let listener = TcpListener::bind(args.gateway_addr)
        .await
        .with_context(|| {
            let (port, addr) = (args.gateway_addr.port(), args.gateway_addr);
            format!("port {port} (gateway, {addr}) is not free")
        })?;
    check_free(&layout.child_addrs(&args))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;

    let secret = demo_secret(&args.data_dir)?;
    let exe = std::env::current_exe().context("locating the tally executable")?;
    let discovery = spawn_discovery(&exe, args.discovery_addr, &secret)?;
    let supervisor = Arc::new(Supervisor {
        exe,
        secret,
        discovery_url: format!("http://{}", args.discovery_addr),
        specs: layout.specs,
        children: Mutex::default(),
    });
    let outcome = match supervisor.spawn_all() {
        Ok(()) => serve(&args, listener, Arc::clone(&supervisor), stop).await,
        Err(error) => Err(error),
    };
    // Whatever happened, the children go too, gracefully.
    supervisor.stop_all().await;
    terminate(&discovery);
    stop_within("discovery", discovery, Instant::now() + STOP_GRACE).await;
    outcome?;
    println!("demo stopped; data kept in {}", args.data_dir.display());
    Ok(())
}

/// Waits for the nodes, then serves the gateway until a stop signal.
async fn serve(
    args: &DevArgs,
    listener: TcpListener,
    supervisor: Arc<Supervisor>,
    stop: StopSignals,
) -> anyhow::Result<()> {
    let mut stop = Box::pin(stop.received());
    tokio::select! {
        ready = supervisor.wait_until_ready() => ready?,
        () = &mut stop => return Ok(()),
    }
    let config = GatewayConfig {
        nodes: (supervisor.specs.iter())
            .map(|s| s.http_addr.to_string())
            .collect(),
        discovery: vec![supervisor.discovery_url.clone()],
        web_dir: args.web_dir.clone(),
        cluster_keys: Some(ClusterKeys::parse(&supervisor.secret)?),
        ..GatewayConfig::default()
    };
    if !config.has_page() {
        match &config.web_dir {
            Some(dir) => println!("note: --web-dir {} does not exist: no web page", dir.display()),
            None => println!("note: this binary was built without the web page; run `cargo xtask web` (or `cargo xtask demo`), then rebuild"),
        }
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
    let controls: Arc<dyn DemoControls> = supervisor;
    tally_gateway::serve(listener, config, Some(controls), stop)
        .await
        .context("gateway failed")
}
