//! Benchmark: one cluster holding many named counters.
//!
//! Runs real `tally node` processes (the release binary next to this
//! example, or `--tally PATH`) on loopback and prints:
//! - load rate and convergence time for `--counters` counters written over HTTP;
//! - resident memory per node (VmRSS, and the peak VmHWM);
//! - idle gossip bytes/s per node, against the same cluster holding 1 counter;
//! - time and traffic for an empty node to catch up through `--seed`;
//! - restart (WAL replay) time, snapshot size and time, restart-from-snapshot time.
//!
//! ```text
//! cargo build --release -p tally --bin tally --example keyspace_bench
//! target/release/examples/keyspace_bench --counters 1000000
//! ```
//! Timings are figures to read, not pass/fail checks; the run only fails
//! when the cluster does not do what it must (lose or misreport counters).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use serde_json::Value;

/// Command line of the benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Counters to load (each incremented once, round robin over the nodes).
    #[arg(long, default_value_t = 1_000_000)]
    counters: usize,
    /// Concurrent HTTP clients loading them.
    #[arg(long, default_value_t = 192)]
    clients: usize,
    /// The `tally` binary [default: next to this example's directory].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Seconds of idleness over which gossip traffic is sampled.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Extra arguments for every node (e.g. `--max-frame 65536`), space separated.
    #[arg(long, default_value = "")]
    node_args: String,
    /// Log filter for the nodes (their logs go to `<data dir>.log`).
    #[arg(long, default_value = "info")]
    log: String,
    /// Skip the 1-counter baseline cluster.
    #[arg(long)]
    no_baseline: bool,
}

/// Longest any wait (readiness, convergence, catch-up) may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(100);
/// Snapshot threshold for the snapshot phase: any log at all is due.
const SMALL_SNAPSHOT_BYTES: &str = "4096";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.counters > 0 && args.clients > 0,
        "--counters and --clients must be positive"
    );
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => default_tally()?,
    };
    ensure!(
        tally.exists(),
        "{} not found: run `cargo build --release -p tally --bin tally` first or pass --tally",
        tally.display()
    );
    // Inherited by every node process; set before any thread exists.
    std::env::set_var("TALLY_LOG", &args.log);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args, tally))
}

/// `target/release/tally` when this example runs from `target/release/examples/`.
fn default_tally() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?;
    Ok(profile_dir.join("tally"))
}

async fn run(args: Args, tally: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let extra: Vec<String> = args
        .node_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    println!("tally binary: {}", tally.display());
    println!("data under:   {}", dir.path().display());
    println!("node args:    {extra:?}\n");

    let baseline = if args.no_baseline {
        None
    } else {
        let cluster = Cluster::start(&tally, &dir.path().join("baseline"), &extra).await?;
        load(&cluster.nodes, 1, 1).await?;
        cluster.wait_counters(1).await?;
        let idle = idle_gossip(&cluster.nodes, args.idle_secs).await?;
        let rss = cluster
            .nodes
            .iter()
            .map(|n| n.memory().rss_kib)
            .collect::<Vec<_>>();
        println!("baseline (1 counter): RSS KiB per node {rss:?}, idle gossip out B/s {idle:?}\n");
        Some((rss, idle))
    };

    let mut cluster = Cluster::start(&tally, &dir.path().join("big"), &extra).await?;
    let started = Instant::now();
    let rate = load(&cluster.nodes, args.counters, args.clients).await?;
    println!(
        "load: {} counters in {:.1} s = {rate:.0} writes/s ({} clients)",
        args.counters,
        started.elapsed().as_secs_f64(),
        args.clients
    );
    cluster.wait_counters(args.counters).await?;
    println!(
        "converged (all nodes list {} counters) {:.1} s after the load began",
        args.counters,
        started.elapsed().as_secs_f64()
    );
    for node in &cluster.nodes {
        verify_listing(node, args.counters).await?;
    }
    println!("verified: every node lists every counter with value 1\n");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = idle_gossip(&cluster.nodes, args.idle_secs).await?;
    println!("memory and idle gossip with {} counters:", args.counters);
    for (node, bytes_per_sec) in cluster.nodes.iter().zip(&idle) {
        let memory = node.memory();
        println!(
            "  {}: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB), idle gossip out {bytes_per_sec:.0} B/s",
            node.id,
            mib(memory.rss_kib),
            mib(memory.hwm_kib)
        );
    }
    if let Some((base_rss, base_idle)) = &baseline {
        let grown: Vec<f64> = cluster
            .nodes
            .iter()
            .zip(base_rss)
            .map(|(n, base)| {
                (n.memory().rss_kib.saturating_sub(*base) * 1024) as f64 / args.counters as f64
            })
            .collect();
        println!("  memory per counter over the baseline: {grown:.0?} bytes");
        let ratio = idle.iter().sum::<f64>() / base_idle.iter().sum::<f64>().max(1.0);
        println!("  idle gossip vs 1-counter cluster: ×{ratio:.2}");
    }

    catch_up(&tally, &mut cluster, &extra, args.counters).await?;
    restarts(&mut cluster, &extra, args.counters).await?;
    for node in &mut cluster.nodes {
        node.stop();
    }
    Ok(())
}

/// Starts an empty node seeded with the first and waits until it holds `count` counters.
async fn catch_up(
    tally: &Path,
    cluster: &mut Cluster,
    extra: &[String],
    count: usize,
) -> anyhow::Result<()> {
    let mut args = extra.to_vec();
    args.extend(["--seed".into(), cluster.nodes[0].gossip_addr.clone()]);
    let dir = cluster.dir.join("n4");
    let started = Instant::now();
    let newcomer = NodeProc::start(tally, "n4", &dir, &args)?;
    newcomer.wait_ready().await?;
    let mut last_report = Instant::now();
    loop {
        let held = newcomer.metric("tally_counters", "").await.unwrap_or(0) as usize;
        if held >= count {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "  … n4 holds {held} after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        ensure!(
            started.elapsed() < PATIENCE,
            "n4 did not catch up ({held}/{count})"
        );
        tokio::time::sleep(POLL).await;
    }
    let elapsed = started.elapsed();
    verify_listing(&newcomer, count).await?;
    let push_in = newcomer
        .metric("tally_gossip_bytes_in_total", "type=\"push\"")
        .await?;
    let frames_in = newcomer
        .metric("tally_gossip_frames_in_total", "type=\"push\"")
        .await?;
    let delta_out = newcomer
        .metric("tally_gossip_bytes_out_total", "type=\"delta\"")
        .await?;
    let wal = dir_size(&dir.join("wal"));
    println!("\ncatch-up of an empty node (n4, --seed n1):");
    println!(
        "  holds all {count} counters {:.2} s after spawn (listing verified)",
        elapsed.as_secs_f64()
    );
    println!(
        "  received {frames_in} push frames, {:.1} MiB (avg {:.0} KiB/frame); its WAL is {:.1} MiB → {:.2}× transfer",
        mib(push_in / 1024),
        push_in as f64 / frames_in.max(1) as f64 / 1024.0,
        mib(wal / 1024),
        push_in as f64 / wal.max(1) as f64
    );
    println!(
        "  n4 re-forwarded {:.1} MiB as eager deltas",
        mib(delta_out / 1024)
    );
    for node in cluster.nodes.iter().chain([&newcomer]) {
        let memory = node.memory();
        println!(
            "  {}: VmRSS {:.1} MiB, peak VmHWM {:.1} MiB",
            node.id,
            mib(memory.rss_kib),
            mib(memory.hwm_kib)
        );
    }
    cluster.nodes.push(newcomer);
    Ok(())
}

/// Restart from the WAL alone, then force a snapshot and restart from it (on n1).
async fn restarts(cluster: &mut Cluster, extra: &[String], count: usize) -> anyhow::Result<()> {
    let node = &mut cluster.nodes[0];
    let wal_dir = node.data_dir.join("wal");
    println!(
        "\nrestart of n1 from its WAL ({:.1} MiB):",
        mib(dir_size(&wal_dir) / 1024)
    );
    let (ready, replay_ms) = node.restart(extra).await?;
    println!(
        "  log says recovered in {replay_ms} ms; serving HTTP {:.2} s after spawn",
        ready.as_secs_f64()
    );
    verify_count(node, count).await?;

    let mut small = extra.to_vec();
    small.extend(["--snapshot-bytes".into(), SMALL_SNAPSHOT_BYTES.into()]);
    node.restart(&small).await?;
    let node: &NodeProc = node;
    let written = Instant::now();
    let status = http()
        .post(node.url("/counters/snapshot-trigger/increment"))
        .send()
        .await?
        .status();
    ensure!(status.is_success(), "trigger write failed: {status}");
    wait(|| async { node.metric("tally_snapshots_total", "").await.unwrap_or(0) >= 1 }).await?;
    let snapshot_time = written.elapsed();
    let snapshots: Vec<(String, u64)> = std::fs::read_dir(&wal_dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    println!("\nsnapshot of n1 ({} counters):", count + 1);
    for (name, size) in &snapshots {
        println!(
            "  {name}: {:.1} MiB ({:.1} bytes/counter)",
            mib(size / 1024),
            *size as f64 / (count + 1) as f64
        );
    }
    println!(
        "  written {:.2} s after the triggering write; WAL dir now {:.1} MiB",
        snapshot_time.as_secs_f64(),
        mib(dir_size(&wal_dir) / 1024)
    );

    let node = &mut cluster.nodes[0];
    let (ready, replay_ms) = node.restart(extra).await?;
    println!("restart of n1 from the snapshot: log says recovered in {replay_ms} ms; serving HTTP {:.2} s after spawn", ready.as_secs_f64());
    verify_count(node, count + 1).await?;
    Ok(())
}

/// Writes `count` distinct counters `key-<i>` round robin over `nodes`; returns writes/s.
async fn load(nodes: &[NodeProc], count: usize, clients: usize) -> anyhow::Result<f64> {
    let urls: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.url("/counters/")).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.min(count) {
        let (urls, next, failures) = (Arc::clone(&urls), Arc::clone(&next), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            let http = http();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count {
                    return;
                }
                let url = format!("{}{}/increment", urls[i % urls.len()], counter_name(i));
                let ok = matches!(http.post(url).send().await, Ok(r) if r.status().is_success());
                if !ok {
                    failures.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let failed = failures.load(Relaxed);
    ensure!(failed == 0, "{failed} writes were not acknowledged");
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn counter_name(i: usize) -> String {
    format!("key-{i:07}")
}

/// Pages through a node's whole listing; every counter must be there with value 1.
async fn verify_listing(node: &NodeProc, count: usize) -> anyhow::Result<()> {
    let http = http();
    let mut after: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let mut request = http
            .get(node.url("/counters"))
            .query(&[("prefix", "key-"), ("limit", "1000")]);
        if let Some(after) = &after {
            request = request.query(&[("after", after)]);
        }
        let page: Value = request.send().await?.json().await?;
        for counter in page["counters"].as_array().context("no counters in page")? {
            let expected = counter_name(seen);
            ensure!(
                counter["name"] == expected.as_str() && counter["value"] == 1,
                "{}: expected {expected} = 1, found {counter}",
                node.id
            );
            seen += 1;
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    ensure!(
        seen == count,
        "{} lists {seen} counters, expected {count}",
        node.id
    );
    Ok(())
}

async fn verify_count(node: &NodeProc, count: usize) -> anyhow::Result<()> {
    let held = node.metric("tally_counters", "").await? as usize;
    ensure!(
        held == count,
        "{} holds {held} counters after restart, expected {count}",
        node.id
    );
    Ok(())
}

/// Bytes/s of gossip sent by each node over `secs` of idleness.
async fn idle_gossip(nodes: &[NodeProc], secs: u64) -> anyhow::Result<Vec<f64>> {
    let mut before = Vec::new();
    for node in nodes {
        before.push(node.metric("tally_gossip_bytes_out_total", "").await?);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    for (node, before) in nodes.iter().zip(before) {
        let after = node.metric("tally_gossip_bytes_out_total", "").await?;
        rates.push(after.saturating_sub(before) as f64 / elapsed);
    }
    Ok(rates)
}

/// Polls `check` until it holds, for at most [`PATIENCE`].
async fn wait<F, Fut>(mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        ensure!(
            started.elapsed() < PATIENCE,
            "gave up waiting after {PATIENCE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("an HTTP client with default TLS-free settings")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Three nodes seeded through the first.
struct Cluster {
    nodes: Vec<NodeProc>,
    dir: PathBuf,
}

impl Cluster {
    async fn start(tally: &Path, dir: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let mut nodes: Vec<NodeProc> = Vec::new();
        for i in 1..=3 {
            let mut args = extra.to_vec();
            if let Some(first) = nodes.first() {
                args.extend(["--seed".into(), first.gossip_addr.clone()]);
            }
            let id = format!("n{i}");
            nodes.push(NodeProc::start(tally, &id, &dir.join(&id), &args)?);
        }
        for node in &nodes {
            node.wait_ready().await?;
        }
        Ok(Self {
            nodes,
            dir: dir.to_owned(),
        })
    }

    /// Waits until every node holds `count` counters.
    async fn wait_counters(&self, count: usize) -> anyhow::Result<()> {
        wait(|| async {
            for node in &self.nodes {
                if node.metric("tally_counters", "").await.unwrap_or(0) as usize != count {
                    return false;
                }
            }
            true
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

/// One `tally node` process, logging into `<data_dir>.log`.
struct NodeProc {
    id: String,
    tally: PathBuf,
    http_addr: String,
    gossip_addr: String,
    data_dir: PathBuf,
    base_args: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    fn start(tally: &Path, id: &str, data_dir: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let http_addr = free_addr()?;
        let gossip_addr = free_addr()?;
        let base_args = [
            "node",
            "--id",
            id,
            "--http-addr",
            &http_addr,
            "--gossip-addr",
            &gossip_addr,
            "--data-dir",
            &data_dir.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut node = Self {
            id: id.to_owned(),
            tally: tally.to_owned(),
            http_addr,
            gossip_addr,
            data_dir: data_dir.to_owned(),
            base_args,
            child: None,
        };
        node.spawn(extra)?;
        Ok(node)
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    fn spawn(&mut self, extra: &[String]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.tally)
            .args(&self.base_args)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.tally.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM and wait: a graceful stop.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Stops it, starts it again on the same ports and data with `extra`;
    /// returns the time until HTTP answered and the replay time the node logged.
    async fn restart(&mut self, extra: &[String]) -> anyhow::Result<(Duration, u64)> {
        self.stop();
        let started = Instant::now();
        self.spawn(extra)?;
        self.wait_ready().await?;
        let ready = started.elapsed();
        let log = std::fs::read_to_string(self.log_path())?;
        let replay_ms = log
            .lines()
            .rev()
            .find(|line| line.contains("recovered from the write-ahead log"))
            .and_then(|line| line.split("elapsed_ms=").nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .context("no recovery line with elapsed_ms in the node log")?;
        Ok((ready, replay_ms))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = http();
        let url = self.url("/health");
        let started = Instant::now();
        loop {
            if matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > PATIENCE {
                bail!(
                    "{} did not become ready (log: {})",
                    self.id,
                    self.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sum of a metric's samples whose labels contain `label`.
    async fn metric(&self, name: &str, label: &str) -> anyhow::Result<u64> {
        let text = http()
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|line| line.split(['{', ' ']).next() == Some(name) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    fn memory(&self) -> Memory {
        let status = self
            .child
            .as_ref()
            .and_then(|c| std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok())
            .unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.stop();
    }
}
