//! A harness that runs real `tally` processes on loopback for integration tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// An HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client")
}

/// One `tally node` process.
pub struct NodeProcess {
    pub id: String,
    pub http_addr: String,
    pub gossip_addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts a node with fresh ports; `extra` goes on the command line.
    pub fn start(id: &str, data_dir: &Path, extra: &[String]) -> Self {
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
            "--gossip-interval",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--data-dir".into());
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().cloned());
        let mut node = Self {
            id: id.into(),
            http_addr,
            gossip_addr,
            data_dir: data_dir.into(),
            args,
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::env::var("TALLY_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(TALLY)
            .args(&self.args)
            .env("TALLY_LOG", log)
            .stdin(Stdio::null())
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
        let http = http();
        let url = self.url("/health");
        let ready = wait_until(Duration::from_secs(20), || {
            let request = http.get(&url).send();
            async move { matches!(request.await, Ok(r) if r.status().is_success()) }
        })
        .await;
        assert!(ready, "node {} did not become ready", self.id);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
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
        let response = http()
            .get(self.url(&format!("/counters/{name}")))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().await.ok()?["value"].as_i64()
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

    /// POST `body` to `path`; returns status and JSON.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = http()
            .post(self.url(path))
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
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

impl NodeProcess {
    /// SIGINT (Ctrl-C), then waits for the exit.
    pub fn interrupt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

/// One `tally discovery` process on a fixed loopback port (so it can be restarted in place).
pub struct DiscoveryProcess {
    pub port: u16,
    ttl: String,
    child: Option<Child>,
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
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait().await;
    }

    /// Ids listed by its `GET /peers` (None while it does not answer).
    pub async fn peer_ids(&self) -> Option<Vec<String>> {
        let response = http()
            .get(format!("{}/peers", self.url()))
            .send()
            .await
            .ok()?;
        let peers: Vec<Value> = response.error_for_status().ok()?.json().await.ok()?;
        peers
            .iter()
            .map(|p| p["id"].as_str().map(str::to_owned))
            .collect()
    }

    async fn spawn_and_wait(&mut self) {
        let log = std::env::var("TALLY_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let addr = format!("127.0.0.1:{}", self.port);
        let child = Command::new(TALLY)
            .args(["discovery", "--addr", &addr, "--ttl", &self.ttl])
            .env("TALLY_LOG", log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn tally discovery");
        self.child = Some(child);
        let url = format!("{}/health", self.url());
        let http = http();
        let ready = wait_until(Duration::from_secs(20), || {
            let request = http.get(&url).send();
            async move { matches!(request.await, Ok(r) if r.status().is_success()) }
        })
        .await;
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
