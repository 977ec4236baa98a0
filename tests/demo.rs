//! `tally dev` as a user runs it: a real supervisor process with its
//! discovery server, node processes and in-process gateway. Starts, serves
//! through the gateway, stops on a signal leaving nothing behind, keeps its
//! data across runs, drives the demo controls, and refuses taken ports.
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use common::{free_port, post_to, value_at, wait_until, ChildLog, GatewayApi};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use serde_json::Value;
use tally_gateway::NodeView;

const NODES: u16 = 3;
const PATIENCE: Duration = Duration::from_secs(30);

/// Every port one demo uses; node `i` (from 0) listens on `base + i`.
#[derive(Debug, Clone, Copy)]
struct Ports {
    gateway: u16,
    discovery: u16,
    http_base: u16,
    gossip_base: u16,
}

/// Whether `port` can be bound on loopback right now.
fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port whose `NODES` consecutive ports are free and none of `avoid`.
/// Drawn below Linux's ephemeral range, where no outgoing connection lands.
fn free_run(avoid: &[u16]) -> u16 {
    let mut rng = rand::thread_rng();
    for _ in 0..1_000 {
        let base = rng.gen_range(20_000..32_000);
        let mut run = base..base + NODES;
        if run.all(|port| !avoid.contains(&port) && bindable(port)) {
            return base;
        }
    }
    panic!("no {NODES} consecutive free ports below 32000");
}

impl Ports {
    fn pick() -> Self {
        let (gateway, discovery) = (free_port(), free_port());
        let http_base = free_run(&[]);
        let http_run: Vec<u16> = (http_base..http_base + NODES).collect();
        let gossip_base = free_run(&http_run);
        Self {
            gateway,
            discovery,
            http_base,
            gossip_base,
        }
    }

    fn node_http(&self, index: u16) -> String {
        format!("127.0.0.1:{}", self.http_base + index)
    }

    /// Every address the demo listens on.
    fn all(&self) -> Vec<SocketAddr> {
        let nodes = (0..NODES).flat_map(|i| [self.http_base + i, self.gossip_base + i]);
        [self.gateway, self.discovery]
            .into_iter()
            .chain(nodes)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect()
    }
}

/// Runs `tally dev` with these ports and data dir; its output (and its
/// children's) goes to `log`.
fn spawn_dev(ports: &Ports, data_dir: &Path, log: &ChildLog) -> Child {
    common::tally_command(log)
        .arg("dev")
        .args(["--nodes", &NODES.to_string()])
        .args(["--gateway-addr", &format!("127.0.0.1:{}", ports.gateway)])
        .args([
            "--discovery-addr",
            &format!("127.0.0.1:{}", ports.discovery),
        ])
        .args(["--http-port", &ports.http_base.to_string()])
        .args(["--gossip-port", &ports.gossip_base.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .env("TALLY_NODE_LOG", common::test_log_level())
        // The demo keys its own cluster, as it does for a user.
        .env_remove("TALLY_CLUSTER_KEY")
        .spawn()
        .expect("spawn tally dev")
}

/// Waits for `child` to exit; kills it and fails after `timeout`.
async fn exit_within(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After "(comm)": state, then the parent's pid.
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(1) == Some(parent.to_string().as_str())
        })
        .collect()
}

/// Running, i.e. neither gone nor a zombie.
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|state| state != "Z" && state != "X")
}

fn refuses_connections(addr: &SocketAddr) -> bool {
    TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_err()
}

/// One `tally dev` process and its ports.
struct Demo {
    ports: Ports,
    /// The demo's own gateway, the way a user reaches it.
    gateway: GatewayApi,
    child: Child,
    /// Its output; Drop stops the demo before the log prints.
    log: ChildLog,
}

impl Demo {
    /// Starts a demo on fresh ports, choosing again when a port was taken
    /// between the choice and the demo's own check.
    async fn start(data_dir: &Path) -> Self {
        for _ in 0..3 {
            let demo = Self::start_on(Ports::pick(), data_dir);
            match demo.ready().await {
                Ok(()) => return demo,
                Err(output) if output.contains("is not free") => continue,
                Err(_) => panic!("the demo did not start (its output follows)"),
            }
        }
        panic!("the demo found a taken port three times in a row");
    }

    fn start_on(ports: Ports, data_dir: &Path) -> Self {
        let log = ChildLog::new("demo");
        let child = spawn_dev(&ports, data_dir, &log);
        let gateway = GatewayApi {
            addr: format!("127.0.0.1:{}", ports.gateway),
        };
        Self {
            ports,
            gateway,
            child,
            log,
        }
    }

    /// What the demo and its children wrote to stdout and stderr so far.
    fn output(&self) -> String {
        self.log.contents()
    }

    /// Waits until the gateway sees every node healthy; `Err(output)` when
    /// the demo exits first or never gets there.
    async fn ready(&self) -> Result<(), String> {
        let ready = wait_until(PATIENCE, || async {
            !running(self.child.id())
                || self.gateway.health().await.1["healthy_nodes"] == u64::from(NODES)
        })
        .await;
        let healthy = self.gateway.health().await.1["healthy_nodes"] == u64::from(NODES);
        match ready && healthy {
            true => Ok(()),
            false => Err(self.output()),
        }
    }

    /// POST with no body through the gateway: status and JSON.
    async fn post(&self, path: &str) -> (u16, Value) {
        self.gateway.post(path, "").await
    }

    /// Waits until the gateway's `/nodes` row of node `id` passes `check`.
    async fn node_view_becomes(&self, id: &str, check: impl Fn(&NodeView) -> bool) -> bool {
        wait_until(PATIENCE, || async {
            self.gateway
                .node_view(id)
                .await
                .is_some_and(|view| check(&view))
        })
        .await
    }

    /// Node `index`'s own value of the default counter, asked directly.
    async fn node_value(&self, index: u16) -> Option<i64> {
        value_at(&format!("http://{}/counter", self.ports.node_http(index))).await
    }

    async fn all_nodes_show(&self, expected: i64) -> bool {
        wait_until(PATIENCE, || async {
            for index in 0..NODES {
                if self.node_value(index).await != Some(expected) {
                    return false;
                }
            }
            true
        })
        .await
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        kill(pid, signal).expect("signal the demo");
    }

    /// Stops the demo with `signal`; checks it exits cleanly, reaps every
    /// child, and frees every port.
    async fn stop_with(mut self, signal: Signal) {
        let children = children_of(self.child.id());
        assert_eq!(
            children.len(),
            usize::from(NODES) + 1,
            "discovery + nodes: {children:?}"
        );
        self.signal(signal);
        let status = exit_within(&mut self.child, PATIENCE).await;
        assert!(status.success(), "{status} (the demo's output follows)");
        let left: Vec<u32> = children.into_iter().filter(|pid| running(*pid)).collect();
        assert!(
            left.is_empty(),
            "children still running after the demo stopped: {left:?}"
        );
        for addr in self.ports.all() {
            assert!(
                refuses_connections(&addr),
                "{addr} still accepts connections"
            );
        }
    }
}

impl Drop for Demo {
    /// A failed test still stops the demo gracefully, so no node is orphaned.
    fn drop(&mut self) {
        common::terminate_within(&mut self.child, PATIENCE);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_stops_on_a_signal_and_keeps_its_data() {
    let data = tempfile::tempdir().expect("data dir");
    let demo = Demo::start(data.path()).await;
    for _ in 0..10 {
        assert_eq!(demo.post("/increment").await.0, 200);
    }
    assert!(demo.all_nodes_show(10).await, "nodes never converged at 10");
    let ports = demo.ports;
    demo.stop_with(Signal::SIGINT).await;

    // Same ports (all freed) and same data: the count is still there.
    let again = Demo::start_on(ports, data.path());
    again.ready().await.expect("the demo starts again");
    assert!(
        again.all_nodes_show(10).await,
        "the data did not survive a restart"
    );
    assert_eq!(again.gateway.get("/counter").await.1["value"], 10);
    again.stop_with(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_controls_crash_restart_partition_and_heal() {
    let data = tempfile::tempdir().expect("data dir");
    let demo = Demo::start(data.path()).await;
    for _ in 0..3 {
        assert_eq!(demo.post("/increment").await.0, 200);
    }
    assert!(demo.all_nodes_show(3).await);

    // Crash: node-2's process is gone, writes carry on without it.
    assert_eq!(demo.post("/demo/nodes/node-2/crash").await.0, 200);
    let node2: SocketAddr = demo.ports.node_http(1).parse().expect("addr");
    assert!(
        refuses_connections(&node2),
        "node-2 still listens after the crash"
    );
    assert_eq!(
        demo.post("/demo/nodes/node-2/crash").await.0,
        409,
        "crashing twice"
    );
    let down = demo.node_view_becomes("node-2", |view| !view.healthy);
    assert!(down.await, "/nodes still shows node-2 healthy");
    for _ in 0..4 {
        assert_eq!(demo.post("/increment").await.0, 200);
    }

    // Restart: it comes back with its data and catches up.
    assert_eq!(demo.post("/demo/nodes/node-2/restart").await.0, 200);
    assert!(
        demo.all_nodes_show(7).await,
        "node-2 did not catch up after restart"
    );
    assert_eq!(
        demo.post("/demo/nodes/node-2/restart").await.0,
        409,
        "restarting a running node"
    );
    let back = demo.node_view_becomes("node-2", |view| view.healthy);
    assert!(back.await, "/nodes never showed node-2 healthy again");

    // Partition node-3: writes elsewhere spread to node-2 but not to it.
    assert_eq!(demo.post("/demo/nodes/node-3/partition").await.0, 200);
    let cut = demo
        .gateway
        .node_view("node-3")
        .await
        .is_some_and(|view| view.partitioned);
    assert!(cut, "/nodes does not show node-3 partitioned");
    let url = format!("http://{}/increment", demo.ports.node_http(0));
    assert_eq!(post_to(&url, r#"{"amount": 10}"#).await.0, 200);
    let spread = wait_until(PATIENCE, || async { demo.node_value(1).await == Some(17) });
    assert!(spread.await, "node-2 never saw node-1's write");
    assert_eq!(
        demo.node_value(2).await,
        Some(7),
        "a partitioned node heard its peers"
    );

    // Heal: node-3 catches up.
    assert_eq!(demo.post("/demo/nodes/node-3/heal").await.0, 200);
    assert!(
        demo.all_nodes_show(17).await,
        "node-3 did not catch up after heal"
    );
    let healed = demo
        .gateway
        .node_view("node-3")
        .await
        .is_some_and(|view| !view.partitioned);
    assert!(healed, "/nodes still shows node-3 partitioned");
    demo.stop_with(Signal::SIGTERM).await;
}

/// Runs a demo that must refuse to start; returns its output.
async fn refused_start(ports: &Ports) -> String {
    let data = tempfile::tempdir().expect("data dir");
    let log = ChildLog::new("demo");
    let mut child = spawn_dev(ports, data.path(), &log);
    let status = exit_within(&mut child, PATIENCE).await;
    let output = log.contents();
    assert!(
        !status.success(),
        "started despite a taken port; output:\n{output}"
    );
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn taken_ports_are_refused_by_number() {
    let mut ports = Ports::pick();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    ports.gateway = taken.local_addr().expect("addr").port();
    let output = refused_start(&ports).await;
    let named = format!("port {} (gateway", ports.gateway);
    assert!(
        output.contains(&named),
        "the output does not name the gateway port:\n{output}"
    );

    // A node's port: refused before any node starts.
    let ports = Ports::pick();
    let node2 = TcpListener::bind(("127.0.0.1", ports.http_base + 1)).expect("bind node-2's port");
    let output = refused_start(&ports).await;
    let named = format!("port {} (node-2 HTTP", ports.http_base + 1);
    assert!(
        output.contains(&named),
        "the output does not name node-2's port:\n{output}"
    );
    drop((taken, node2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_during_startup_still_stops_every_child() {
    let data = tempfile::tempdir().expect("data dir");
    let mut demo = Demo::start_on(Ports::pick(), data.path());
    let pid = demo.child.id();
    // Signal as soon as the children exist, before the nodes can be ready.
    let spawned = wait_until(PATIENCE, || async {
        children_of(pid).len() == usize::from(NODES) + 1
    })
    .await;
    assert!(spawned, "the demo never started its children");
    let children = children_of(pid);
    demo.signal(Signal::SIGTERM);
    let status = exit_within(&mut demo.child, PATIENCE).await;
    assert!(status.success(), "{status} (the demo's output follows)");
    let left: Vec<u32> = children.into_iter().filter(|pid| running(*pid)).collect();
    assert!(left.is_empty(), "children outlived the demo: {left:?}");
}
