//! A harness that runs real `tally` processes on loopback for integration tests.
//!
//! Every process it starts writes its stdout and stderr to a [`ChildLog`],
//! not to the test's output: a passing test prints nothing of theirs, a
//! failing one prints all of it, each line prefixed with the process name.
//! `TALLY_TEST_LOG` sets the processes' log level (default `warn`).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_discovery::DiscoveryClient;
use tally_gateway::NodeView;
use tally_protocol::cluster_key::ClusterKeys;

/// The `tally` binary cargo built for these tests.
pub const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// A port nobody listens on right now (the OS picks it).
///
/// Ports come from 20000–32767, below Linux's ephemeral range: a port the
/// OS hands to some outgoing connection can then never steal one we picked
/// between this check and the node's bind. Each test process starts at a
/// different offset, and threads take turns through one counter.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_backing_off(timeout, POLL_PAUSE, check).await
}

/// The first pause between two checks of a wait.
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// Like [`wait_until`], but each pause doubles up to `longest_pause`: for
/// checks that cost the processes under test real work (listing a large
/// keyspace), so that waiting does not slow what it waits for.
pub async fn wait_until_backing_off<F, Fut>(
    timeout: Duration,
    longest_pause: Duration,
    mut check: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = POLL_PAUSE.min(longest_pause);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(longest_pause);
    }
    false
}

/// An HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        // Below the servers' 10 s keep-alive limit: a connection the server
        // is closing is never picked for the next request.
        .pool_idle_timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("client")
}

/// Waits up to `timeout` until `GET url` answers with a success status.
pub async fn answers_ok(url: &str, timeout: Duration) -> bool {
    let http = http();
    wait_until(timeout, || {
        let request = http.get(url).send();
        async move { matches!(request.await, Ok(r) if r.status().is_success()) }
    })
    .await
}

/// An answer's status and JSON body (null when the body is not JSON).
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// POST `body` to `url`: status and JSON. Panics when it cannot be sent.
pub async fn post_to(url: &str, body: &str) -> (u16, Value) {
    let response = http()
        .post(url)
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    status_and_json(response).await
}

/// POST `body` to `url` with extra `headers` through `client`: status and
/// JSON, or the error when no answer came (refused, reset, timed out).
pub async fn post_with_headers(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Result<(u16, Value)> {
    let mut request = client.post(url).body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    // A body cut off by a dying server is no answer.
    let bytes = response.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The `"value"` that `GET url` answers (a counter), None while there is no
/// such answer (unreachable, an error, not JSON).
pub async fn value_at(url: &str) -> Option<i64> {
    let response = http().get(url).send().await.ok()?;
    response.json::<Value>().await.ok()?["value"].as_i64()
}

/// The sum of the samples of metric `name` whose labels contain `label`
/// (every sample for ""), from the `/metrics` of the node at `http_addr`.
pub async fn metric_at(http_addr: &str, name: &str, label: &str) -> u64 {
    let text = http()
        .get(format!("http://{http_addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The cluster secret of every node the harness starts, passed the way an
/// operator should pass it: in `TALLY_CLUSTER_KEY`, never on the command line.
pub const CLUSTER_KEY: &str = "tally-test-cluster-key";

/// The log level of the processes tests start: `TALLY_TEST_LOG`, default `warn`.
pub fn test_log_level() -> String {
    std::env::var("TALLY_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// Runs `work`, failing the test after `limit`. Unlike
/// `timeout(..).await.expect(..)`, it panics while `work` (and every process
/// it owns) is still alive, so their [`ChildLog`]s are printed.
pub async fn within<F: std::future::Future>(limit: Duration, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    match tokio::time::timeout(limit, work.as_mut()).await {
        Ok(output) => output,
        Err(_) => panic!("test timed out after {limit:?}"),
    }
}

/// Where one child process's stdout and stderr go: a log file (appended to,
/// so a restarted process adds to it), printed only when the test fails.
///
/// A failing test is one whose thread is panicking when the log is dropped;
/// the lines then go through `eprintln!`, which the test harness captures and
/// shows with the failure. Drop the process before its log, so every line
/// is in.
pub struct ChildLog {
    name: String,
    file: tempfile::NamedTempFile,
}

impl ChildLog {
    /// An empty log for the process called `name` (the prefix of its lines).
    pub fn new(name: &str) -> Self {
        let file = tempfile::Builder::new()
            .prefix(&format!("tally-test-{name}-"))
            .suffix(".log")
            .tempfile()
            .expect("child log file");
        Self {
            name: name.into(),
            file,
        }
    }

    /// Sends `command`'s stdout and stderr to this log.
    pub fn attach(&self, command: &mut Command) {
        let open = || {
            OpenOptions::new()
                .append(true)
                .open(self.file.path())
                .expect("open child log")
        };
        command.stdout(open()).stderr(open());
    }

    /// Everything the process wrote so far.
    pub fn contents(&self) -> String {
        std::fs::read_to_string(self.file.path()).unwrap_or_default()
    }

    /// Prints the log to the test's stderr, each line prefixed by the name.
    pub fn print(&self) {
        let contents = self.contents();
        if contents.is_empty() {
            eprintln!("[{}] (no output)", self.name);
        }
        for line in contents.lines() {
            eprintln!("[{}] {line}", self.name);
        }
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print();
        }
    }
}

/// A command for `program` (a `tally` binary) logging at
/// [`test_log_level`] into `log`, with no stdin and the cluster key
/// [`CLUSTER_KEY`] in `TALLY_CLUSTER_KEY`: every node, discovery server and
/// gateway the harness starts belongs to one cluster.
pub fn command_for(program: &str, log: &ChildLog) -> Command {
    let mut command = Command::new(program);
    command
        .env("TALLY_LOG", test_log_level())
        .env("TALLY_CLUSTER_KEY", CLUSTER_KEY)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    log.attach(&mut command);
    command
}

/// A `tally` command as [`command_for`] makes it.
pub fn tally_command(log: &ChildLog) -> Command {
    command_for(TALLY, log)
}

/// Sends `signal` (as `kill` names it: "TERM", "INT") and waits for the exit.
pub fn signal_and_reap(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// SIGTERM, then waits up to `patience` for the exit and SIGKILLs after
/// that: a test that fails still stops its processes, and none is orphaned.
pub fn terminate_within(child: &mut Child, patience: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + patience;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_and_reap(child);
}

/// `(actor, increments)` of every incarnation of node `id` in a node's
/// `/state` answer (`default` counter), in actor order.
pub fn incarnations(state: &Value, id: &str) -> Vec<(String, u64)> {
    let prefix = format!("{id}~");
    state["increments"]
        .as_object()
        .map(|actors| {
            actors
                .iter()
                .filter(|(actor, _)| actor.starts_with(&prefix))
                .map(|(actor, total)| (actor.clone(), total.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL, then waits for the exit (no zombie left behind).
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One `tally node` process.
pub struct NodeProcess {
    pub id: String,
    pub http_addr: String,
    pub gossip_addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    cluster_key: String,
    /// Extra environment of its next starts ([`NodeProcess::set_env`]).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Its output; Drop stops the process before the log prints.
    log: ChildLog,
}

impl NodeProcess {
    /// Starts a node with fresh ports and the cluster key [`CLUSTER_KEY`];
    /// `extra` goes on the command line.
    pub fn start(id: &str, data_dir: &Path, extra: &[String]) -> Self {
        Self::start_with_key(id, data_dir, extra, CLUSTER_KEY)
    }

    /// [`NodeProcess::start`] with another cluster key (in `TALLY_CLUSTER_KEY`).
    pub fn start_with_key(id: &str, data_dir: &Path, extra: &[String], cluster_key: &str) -> Self {
        let http_addr = format!("127.0.0.1:{}", free_port());
        let gossip_addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "node",
            "--id",
            id,
            "--http-addr",
            &http_addr,
            "--gossip-addr",
            &gossip_addr,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Fast rounds unless the test sets its own.
        // Every test node runs on this machine's one clock: housekeeping
        // need not wait twice the 30 s a real cluster allows.
        if !extra.iter().any(|arg| arg == "--max-clock-skew") {
            args.extend(["--max-clock-skew".to_string(), "2s".to_string()]);
        }
        if !extra.iter().any(|arg| arg == "--gossip-interval") {
            args.extend(["--gossip-interval".to_string(), "100ms".to_string()]);
        }
        // Tests stop nodes often: a short drain unless the test sets one.
        if !extra.iter().any(|arg| arg == "--drain-period") {
            args.extend(["--drain-period".to_string(), "100ms".to_string()]);
        }
        args.push("--data-dir".into());
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().cloned());
        let mut node = Self {
            id: id.into(),
            http_addr,
            gossip_addr,
            data_dir: data_dir.into(),
            args,
            cluster_key: cluster_key.into(),
            env: Vec::new(),
            child: None,
            log: ChildLog::new(id),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let child = tally_command(&self.log)
            .env("TALLY_CLUSTER_KEY", &self.cluster_key)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .args(&self.args)
            .spawn()
            .expect("spawn tally node");
        self.child = Some(child);
    }

    /// Base URL of its HTTP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    /// Waits until `/health` answers.
    pub async fn wait_ready(&self) {
        let ready = answers_ok(&self.url("/health"), Duration::from_secs(20)).await;
        assert!(ready, "node {} did not become ready", self.id);
    }

    /// Sets `name` to `value` in the environment of its next starts
    /// ([`NodeProcess::restart`]); it overrides the harness's own, such as
    /// `TALLY_CLUSTER_KEY`.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.remove_env(name);
        self.env.push((name.into(), value.into()));
    }

    /// Undoes [`NodeProcess::set_env`] for its next starts.
    pub fn remove_env(&mut self, name: &str) {
        self.env.retain(|(set, _)| set != name);
    }

    /// Everything its process wrote so far.
    pub fn log_contents(&self) -> String {
        self.log.contents()
    }

    /// Whether its process has exited (by itself or killed); reaps it.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Sends `signal` (as `kill` names it: "STOP", "CONT") to its process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running node");
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// SIGTERM, then waits for the exit and returns how it went.
    pub fn stop_gracefully(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().ok()
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_and_reap(&mut child, "TERM");
        }
    }

    /// SIGINT (Ctrl-C), then waits for the exit.
    pub fn interrupt(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_and_reap(&mut child, "INT");
        }
    }

    /// Starts it again with the same command line (same ports and data dir).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The `default` counter's value.
    pub async fn value(&self) -> i64 {
        self.get_json("/counter").await["value"]
            .as_i64()
            .expect("value")
    }

    /// A named counter's value (None when 404).
    pub async fn named(&self, name: &str) -> Option<i64> {
        value_at(&self.url(&format!("/counters/{name}"))).await
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        http()
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    /// GET `path`; returns status and JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = http().get(self.url(path)).send().await.expect("GET");
        status_and_json(response).await
    }

    /// POST `body` to `path`; returns status and JSON.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        post_to(&self.url(path), body).await
    }

    /// The sum of the samples of metric `name` whose labels contain `label`
    /// (every sample for "") in its `/metrics`.
    pub async fn metric(&self, name: &str, label: &str) -> u64 {
        metric_at(&self.http_addr, name, label).await
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Several nodes seeded through the first one.
pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes (ids n1..), each seeded with the first's gossip address.
    pub async fn start(n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<NodeProcess> = Vec::new();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for i in 1..=n {
            let mut args = extra.clone();
            if let Some(first) = nodes.first() {
                args.extend(["--seed".to_string(), first.gossip_addr.clone()]);
            }
            nodes.push(NodeProcess::start(
                &format!("n{i}"),
                &dir.path().join(format!("n{i}")),
                &args,
            ));
        }
        for node in &nodes {
            node.wait_ready().await;
        }
        Self { nodes, dir }
    }

    /// Waits until every node shows `expected` for counter `name` (None = default).
    pub async fn converge(&self, name: Option<&str>, expected: i64, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            for node in &self.nodes {
                let value = match name {
                    None => Some(node.value().await),
                    Some(name) => node.named(name).await,
                };
                if value != Some(expected) {
                    return false;
                }
            }
            true
        })
        .await
    }
}

/// One `tally discovery` process on a fixed loopback port (so it can be restarted in place).
pub struct DiscoveryProcess {
    pub port: u16,
    ttl: String,
    child: Option<Child>,
    /// Its output; Drop stops the process before the log prints.
    log: ChildLog,
}

impl DiscoveryProcess {
    /// Starts discovery on a fresh port with members expiring after `ttl` (e.g. "1s").
    pub async fn start(ttl: &str) -> Self {
        Self::start_on(free_port(), ttl).await
    }

    /// Starts discovery on `port` and waits until it answers.
    pub async fn start_on(port: u16, ttl: &str) -> Self {
        let mut discovery = Self {
            port,
            ttl: ttl.into(),
            child: None,
            log: ChildLog::new(&format!("discovery:{port}")),
        };
        discovery.spawn_and_wait().await;
        discovery
    }

    /// Its base URL, as given to `--discovery`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the registry is lost.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait().await;
    }

    /// Ids listed by its `GET /peers`, asked with a request signed by
    /// [`CLUSTER_KEY`] (None while it does not answer).
    pub async fn peer_ids(&self) -> Option<Vec<String>> {
        let keys = ClusterKeys::parse(CLUSTER_KEY).expect("the test cluster key");
        let client = DiscoveryClient::new(vec![self.url()])
            .ok()?
            .signed_with(keys);
        let peers = client.peers().await.ok()?;
        Some(peers.into_iter().map(|peer| peer.id).collect())
    }

    async fn spawn_and_wait(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let child = tally_command(&self.log)
            .args(["discovery", "--addr", &addr, "--ttl", &self.ttl])
            .spawn()
            .expect("spawn tally discovery");
        self.child = Some(child);
        let url = format!("{}/health", self.url());
        let ready = answers_ok(&url, Duration::from_secs(20)).await;
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        assert!(
            ready,
            "discovery on port {} did not come up (exit status: {exited:?})",
            self.port
        );
    }
}

impl Drop for DiscoveryProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A gateway's HTTP API: a `tally gateway` process, or the one inside `tally dev`.
pub struct GatewayApi {
    /// Where it listens, `127.0.0.1:<port>`.
    pub addr: String,
}

impl GatewayApi {
    /// `path` on the gateway, as a URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: status and JSON (0 and null when unreachable).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        match http().get(self.url(path)).send().await {
            Ok(response) => status_and_json(response).await,
            Err(_) => (0, Value::Null),
        }
    }

    /// `GET /health`: status and body (0 and null when unreachable).
    pub async fn health(&self) -> (u16, Value) {
        self.get("/health").await
    }

    /// POST `body` to `path`: status and JSON.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        post_to(&self.url(path), body).await
    }

    /// `GET /nodes`: the gateway's table of nodes.
    pub async fn nodes(&self) -> Vec<NodeView> {
        let response = http()
            .get(self.url("/nodes"))
            .send()
            .await
            .expect("GET /nodes");
        response.json().await.expect("/nodes JSON")
    }

    /// The `/nodes` row of node `id`.
    pub async fn node_view(&self, id: &str) -> Option<NodeView> {
        self.nodes().await.into_iter().find(|view| view.id == id)
    }

    /// How many counters under `prefix` the gateway's merged view holds,
    /// deleted ones not collected yet included: the `Counters` chunks of
    /// its `/ws?prefix=`, counted to the last.
    pub async fn view_counters(&self, prefix: &str) -> usize {
        use futures_util::StreamExt;
        use tally_protocol::events::ClusterEvent;
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://{}/ws?prefix={prefix}", self.addr);
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("gateway /ws");
        let mut counters = 0;
        let read = async {
            while let Some(Ok(frame)) = socket.next().await {
                let Message::Binary(bytes) = frame else {
                    continue;
                };
                if let Ok(ClusterEvent::Counters { state, last, .. }) =
                    crdt_core::wire::decode(&bytes)
                {
                    counters += state.len();
                    if last {
                        return;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the gateway's snapshot");
        counters
    }
}

/// One `tally gateway` process; it derefs to its [`GatewayApi`], and Drop kills it.
pub struct GatewayProcess {
    api: GatewayApi,
    child: Child,
    /// Its output; Drop stops the process before the log prints.
    log: ChildLog,
}

impl GatewayProcess {
    /// Starts a gateway in front of `nodes` (serving the web bundle in
    /// `web_dir`, if given) and waits until it sees all of them healthy.
    pub async fn start(nodes: &[NodeProcess], web_dir: Option<&Path>) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = ChildLog::new("gateway");
        let mut command = tally_command(&log);
        command.args(["gateway", "--addr", &addr]);
        if let Some(web_dir) = web_dir {
            command.arg("--web-dir").arg(web_dir);
        }
        for node in nodes {
            command.args(["--node", &node.http_addr]);
        }
        let child = command.spawn().expect("spawn tally gateway");
        let gateway = Self {
            api: GatewayApi { addr },
            child,
            log,
        };
        let everyone = nodes.len() as u64;
        let ready = wait_until(Duration::from_secs(30), || async {
            gateway.health().await.1["healthy_nodes"] == everyone
        })
        .await;
        assert!(ready, "the gateway never saw {everyone} healthy nodes");
        gateway
    }

    /// Resident memory in bytes, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("gateway /proc status");
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("VmRSS line");
        kib * 1024
    }
}

impl Deref for GatewayProcess {
    type Target = GatewayApi;

    fn deref(&self) -> &GatewayApi {
        &self.api
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Like [`answers_ok`], for a server started with `--api-tokens-file`: the
/// request carries `Authorization: Bearer token`.
pub async fn answers_ok_as(url: &str, token: &str, timeout: Duration) -> bool {
    let http = http();
    wait_until(timeout, || {
        let request = http.get(url).bearer_auth(token).send();
        async move { matches!(request.await, Ok(r) if r.status().is_success()) }
    })
    .await
}

impl NodeProcess {
    /// [`NodeProcess::wait_ready`] for a node started with
    /// `--api-tokens-file`: asks `/health` with `token`.
    pub async fn wait_ready_as(&self, token: &str) {
        let ready = answers_ok_as(&self.url("/health"), token, Duration::from_secs(20)).await;
        assert!(ready, "node {} did not become ready", self.id);
    }
}

impl GatewayProcess {
    /// Starts `tally gateway --addr <fresh port>` followed by `args` (its
    /// nodes, discovery, tokens file…) and returns at once: the caller
    /// waits for whatever readiness it needs.
    pub fn spawn(args: &[String]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = ChildLog::new("gateway");
        let child = tally_command(&log)
            .args(["gateway", "--addr", &addr])
            .args(args)
            .spawn()
            .expect("spawn tally gateway");
        Self {
            api: GatewayApi { addr },
            child,
            log,
        }
    }
}
