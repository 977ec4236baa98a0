//! Benchmark: one cluster holding many named counters.
//!
//! Runs real `tally node` processes (the release binary next to this
//! example, or `--tally PATH`) on loopback and prints:
//! - load rate and convergence time for `--counters` counters written over HTTP;
//! - resident memory per node (VmRSS, and the peak VmHWM);
//! - gossip bytes/s per node, idle and under a light write trickle, against
//!   the same cluster holding 1 counter;
//! - restart (WAL replay) time, snapshot size and time, restart-from-snapshot time;
//! - time, traffic and memory for an empty node to catch up through `--seed`
//!   (last, because it may fail: it is guarded by a deadline and a memory cap).
//!
//! ```text
//! cargo build --release -p tally --bin tally --example keyspace_bench
//! target/release/examples/keyspace_bench --counters 1000000
//! ```
//! Timings are figures to read, not pass/fail checks; the run fails only
//! when the cluster does not do what it must (lose or misreport counters,
//! or not let a new node catch up within the deadline and memory cap).
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
    /// The `tally` binary [default: `tally` in the directory above this example].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Seconds of idleness over which gossip traffic is sampled.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Writes per second to one counter while gossip traffic is sampled under light load.
    #[arg(long, default_value_t = 50)]
    trickle_rate: u32,
    /// Extra arguments for every node, space separated (e.g. `--node-args="--max-frame 65536"`).
    #[arg(long, default_value = "")]
    node_args: String,
    /// Log filter for the nodes (their logs go to `<data dir>.log`).
    #[arg(long, default_value = "info")]
    log: String,
    /// Keep data and node logs in this (new) directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip the 1-counter baseline cluster.
    #[arg(long)]
    no_baseline: bool,
    /// Give up on the catch-up phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    catch_up_secs: u64,
    /// Give up on the catch-up phase when any node's VmRSS exceeds this many MiB.
    #[arg(long, default_value_t = 4096)]
    rss_cap_mib: u64,
}

/// The benchmark cluster's secret (loopback only, thrown away with the run).
const BENCH_CLUSTER_KEY: &str = "keyspace-bench-cluster-secret";
/// Longest readiness or convergence may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(100);
/// A node that takes longer than this to answer `/health` counts as stalled.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A stopped node gets this long to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
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
    let temporary = tempfile::tempdir()?;
    let root = match &args.dir {
        Some(dir) => {
            ensure!(!dir.exists(), "--dir {} already exists", dir.display());
            dir.clone()
        }
        None => temporary.path().to_owned(),
    };
    let extra: Vec<String> = args
        .node_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    println!("tally binary: {}", tally.display());
    println!("data under:   {}", root.display());
    println!("node args:    {extra:?}\n");

    let baseline = if args.no_baseline {
        None
    } else {
        Some(baseline(&tally, &root.join("baseline"), &extra, &args).await?)
    };

    let mut cluster = Cluster::start(&tally, &root.join("big"), &extra).await?;
    load_and_converge(&cluster, args.counters, args.clients).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    gossip_figures(&cluster, args.counters, &args, baseline.as_ref()).await?;
    // The trickle wrote one more counter; the restarts' writes add theirs.
    let total = restarts(&mut cluster, &extra, args.counters + 1).await?;
    cluster.wait_counters(total).await?;
    let caught_up = catch_up(&tally, &mut cluster, &extra, total, &args).await;
    for node in &mut cluster.nodes {
        node.stop();
    }
    caught_up
}

/// Idle figures of a 3-node cluster holding a single counter.
struct Baseline {
    rss_kib: Vec<u64>,
    idle_bytes_per_sec: Vec<f64>,
    trickle_bytes_per_sec: Vec<f64>,
}

async fn baseline(
    tally: &Path,
    dir: &Path,
    extra: &[String],
    args: &Args,
) -> anyhow::Result<Baseline> {
    let cluster = Cluster::start(tally, dir, extra).await?;
    load(&cluster.nodes, 1, 1).await?;
    cluster.wait_counters(1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secs = args.idle_secs;
    let idle_bytes_per_sec = gossip_rate(&cluster.nodes, secs, sleep(secs)).await?;
    let trickle = trickle(&cluster.nodes, args.trickle_rate, secs);
    let trickle_bytes_per_sec = gossip_rate(&cluster.nodes, secs, trickle).await?;
    let rss_kib: Vec<u64> = cluster.nodes.iter().map(|n| n.memory().rss_kib).collect();
    println!("baseline, 3 nodes holding 1 counter:");
    for (i, node) in cluster.nodes.iter().enumerate() {
        println!(
            "  {}: VmRSS {:.1} MiB, gossip out idle {:.0} B/s, under {} writes/s {:.0} B/s",
            node.id,
            mib(rss_kib[i]),
            idle_bytes_per_sec[i],
            args.trickle_rate,
            trickle_bytes_per_sec[i]
        );
    }
    println!();
    Ok(Baseline {
        rss_kib,
        idle_bytes_per_sec,
        trickle_bytes_per_sec,
    })
}

async fn load_and_converge(cluster: &Cluster, count: usize, clients: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let push_before = metric_each(
        &cluster.nodes,
        "tally_gossip_bytes_out_total",
        "type=\"push\"",
    )
    .await?;
    let rate = load(&cluster.nodes, count, clients).await?;
    println!(
        "load: {count} counters in {:.1} s = {rate:.0} acknowledged writes/s ({clients} clients)",
        started.elapsed().as_secs_f64()
    );
    cluster.wait_counters(count).await?;
    println!(
        "converged: every node holds {count} counters {:.1} s after the load began",
        started.elapsed().as_secs_f64()
    );
    let push_after = metric_each(
        &cluster.nodes,
        "tally_gossip_bytes_out_total",
        "type=\"push\"",
    )
    .await?;
    let pushed: Vec<String> = push_after
        .iter()
        .zip(&push_before)
        .map(|(after, before)| format!("{:.1}", mib(after.saturating_sub(*before) / 1024)))
        .collect();
    println!(
        "pull answers (push frames) sent while loading, MiB per node: {}",
        pushed.join(", ")
    );
    for node in &cluster.nodes {
        verify_listing(node, count).await?;
    }
    println!("verified: every node lists every counter with value 1\n");
    Ok(())
}

async fn gossip_figures(
    cluster: &Cluster,
    count: usize,
    args: &Args,
    baseline: Option<&Baseline>,
) -> anyhow::Result<()> {
    let secs = args.idle_secs;
    let idle = gossip_rate(&cluster.nodes, secs, sleep(secs)).await?;
    let trickle_rate = args.trickle_rate;
    let trickled = gossip_rate(
        &cluster.nodes,
        secs,
        trickle(&cluster.nodes, trickle_rate, secs),
    )
    .await?;
    println!("memory and gossip, 3 nodes holding {count} counters:");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let memory = node.memory();
        println!(
            "  {}: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB), gossip out idle {:.0} B/s, under {trickle_rate} writes/s {:.0} B/s",
            node.id,
            mib(memory.rss_kib),
            mib(memory.hwm_kib),
            idle[i],
            trickled[i]
        );
    }
    if let Some(baseline) = baseline {
        let per_counter: Vec<String> = cluster
            .nodes
            .iter()
            .zip(&baseline.rss_kib)
            .map(|(n, base)| {
                let grown = n.memory().rss_kib.saturating_sub(*base) * 1024;
                format!("{:.0}", grown as f64 / count as f64)
            })
            .collect();
        println!(
            "  resident bytes per counter over the baseline: {}",
            per_counter.join(", ")
        );
        let ratio = |now: &[f64], then: &[f64]| now.iter().sum::<f64>() / then.iter().sum::<f64>();
        println!(
            "  gossip relative to the 1-counter cluster: idle ×{:.2}, under {trickle_rate} writes/s ×{:.2}",
            ratio(&idle, &baseline.idle_bytes_per_sec),
            ratio(&trickled, &baseline.trickle_bytes_per_sec)
        );
    }
    Ok(())
}

/// Restart from the WAL alone, then force a snapshot and restart from it (on n1).
/// Returns how many counters the cluster holds afterwards.
async fn restarts(cluster: &mut Cluster, extra: &[String], count: usize) -> anyhow::Result<usize> {
    let node = &mut cluster.nodes[0];
    let wal_dir = node.data_dir.join("wal");
    println!(
        "\nrestart of n1 from its WAL alone ({:.1} MiB):",
        mib(dir_size(&wal_dir) / 1024)
    );
    let (ready, replay_ms) = node.restart(extra).await?;
    println!(
        "  log: recovered in {replay_ms} ms; HTTP answered {:.2} s after spawn",
        ready.as_secs_f64()
    );
    verify_count(node, count).await?;

    let mut small = extra.to_vec();
    small.extend(["--snapshot-bytes".into(), SMALL_SNAPSHOT_BYTES.into()]);
    node.restart(&small).await?;
    let node: &NodeProc = node;
    // The log is far past the threshold, so the first write after the
    // restart starts a snapshot. Writes go on from that moment until the
    // snapshot is done: their latency shows whether taking it stalls the
    // write path.
    let during = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Instant::now();
    let writers: Vec<_> = (0..16)
        .map(|client| {
            let (url, during, stop) = (
                node.url(&format!("/counters/during-snapshot-{client}/increment")),
                Arc::clone(&during),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let http = http();
                while !stop.load(Relaxed) {
                    let started = Instant::now();
                    if http.post(&url).send().await.is_ok() {
                        during.lock().unwrap().push(started.elapsed());
                    }
                }
            })
        })
        .collect();
    wait(|| async { node.metric("tally_snapshots_total", "").await.unwrap_or(0) >= 1 }).await?;
    let snapshot_time = written.elapsed();
    stop.store(true, Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let mut latencies = std::mem::take(&mut *during.lock().unwrap());
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "writes while the snapshot was taken (16 clients): {} acknowledged, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        quantile(0.5),
        quantile(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    // The 16 writers' counters, and no trigger write any more.
    let count = count + 15;
    println!("snapshot of n1 ({} counters):", count + 1);
    for (name, size) in snapshot_files(&wal_dir)? {
        println!(
            "  {name}: {:.1} MiB ({:.1} bytes/counter), done {:.2} s after the triggering write",
            mib(size / 1024),
            size as f64 / (count + 1) as f64,
            snapshot_time.as_secs_f64()
        );
    }
    println!(
        "  WAL directory after the snapshot: {:.1} MiB",
        mib(dir_size(&wal_dir) / 1024)
    );

    let node = &mut cluster.nodes[0];
    let (ready, replay_ms) = node.restart(extra).await?;
    println!(
        "restart of n1 from the snapshot: log: recovered in {replay_ms} ms; HTTP answered {:.2} s after spawn\n",
        ready.as_secs_f64()
    );
    verify_count(node, count + 1).await?;
    Ok(count + 1)
}

fn snapshot_files(wal_dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    Ok(std::fs::read_dir(wal_dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .map(|e| {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect())
}

/// What the catch-up watch saw of the old nodes.
#[derive(Default)]
struct Watch {
    /// Peak VmRSS per old node, KiB.
    peak_rss_kib: Vec<u64>,
    /// Seconds each old node did not answer `/health` within [`PROBE_TIMEOUT`].
    stalled_probes: Vec<u32>,
}

/// Starts an empty node seeded with the first and waits until it holds
/// `count` counters (`limits.counters` of them `key-…`), within
/// `--catch-up-secs` and `--rss-cap-mib`.
async fn catch_up(
    tally: &Path,
    cluster: &mut Cluster,
    extra: &[String],
    count: usize,
    limits: &Args,
) -> anyhow::Result<()> {
    let mut args = extra.to_vec();
    args.extend(["--seed".into(), cluster.nodes[0].gossip_addr.clone()]);
    let dir = cluster.dir.join("n4");
    println!("catch-up of an empty node (n4, --seed n1):");
    let started = Instant::now();
    let newcomer = NodeProc::start(tally, "n4", &dir, &args)?;
    newcomer.wait_ready().await?;
    let mut watch = Watch {
        peak_rss_kib: vec![0; cluster.nodes.len()],
        stalled_probes: vec![0; cluster.nodes.len()],
    };
    let outcome = watch_catch_up(cluster, &newcomer, count, limits, &mut watch, started).await;
    let elapsed = started.elapsed();
    for (i, node) in cluster.nodes.iter().enumerate() {
        println!(
            "  {}: peak VmRSS during catch-up {:.1} MiB, /health unanswered within {PROBE_TIMEOUT:?} in {} probes",
            node.id,
            mib(watch.peak_rss_kib[i]),
            watch.stalled_probes[i]
        );
    }
    let memory = newcomer.memory();
    println!(
        "  n4: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB)",
        mib(memory.rss_kib),
        mib(memory.hwm_kib)
    );
    if let Err(failure) = outcome {
        cluster.nodes.push(newcomer);
        println!("  FAILED after {:.0} s: {failure:#}", elapsed.as_secs_f64());
        return Err(failure.context("catch-up of an empty node"));
    }
    verify_listing(&newcomer, limits.counters).await?;
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
    println!(
        "  holds all {count} counters {:.2} s after spawn (listing verified)",
        elapsed.as_secs_f64()
    );
    println!(
        "  received {frames_in} push frames, {:.1} MiB (avg {:.0} KiB/frame) for a {:.1} MiB WAL: {:.2}× transfer",
        mib(push_in / 1024),
        push_in as f64 / frames_in.max(1) as f64 / 1024.0,
        mib(wal / 1024),
        push_in as f64 / wal.max(1) as f64
    );
    println!(
        "  n4 re-forwarded {:.1} MiB of what it learned as eager deltas",
        mib(delta_out / 1024)
    );
    cluster.nodes.push(newcomer);
    Ok(())
}

/// Polls the newcomer's counter count once a second, recording the old
/// nodes' memory and responsiveness, until it holds `count` or a limit hits.
async fn watch_catch_up(
    cluster: &Cluster,
    newcomer: &NodeProc,
    count: usize,
    limits: &Args,
    watch: &mut Watch,
    started: Instant,
) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(limits.catch_up_secs);
    let cap_kib = limits.rss_cap_mib * 1024;
    let mut last_report = Instant::now();
    loop {
        let held = newcomer.metric("tally_counters", "").await.unwrap_or(0) as usize;
        if held >= count {
            return Ok(());
        }
        let mut rss = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let memory = node.memory();
            watch.peak_rss_kib[i] = watch.peak_rss_kib[i].max(memory.rss_kib);
            rss.push(format!("{:.0}", mib(memory.rss_kib)));
            if !node.answers_health().await {
                watch.stalled_probes[i] += 1;
            }
            ensure!(
                memory.rss_kib <= cap_kib,
                "{} reached {:.0} MiB resident (cap {} MiB); n4 held {held}/{count}",
                node.id,
                mib(memory.rss_kib),
                limits.rss_cap_mib
            );
        }
        ensure!(
            started.elapsed() < deadline,
            "n4 held {held}/{count} after {deadline:?}"
        );
        if last_report.elapsed() >= Duration::from_secs(10) {
            println!(
                "  … {:.0} s: n4 holds {held}; old nodes' VmRSS MiB [{}]; stalled /health probes {:?}",
                started.elapsed().as_secs_f64(),
                rss.join(", "),
                watch.stalled_probes
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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

/// Pages through a node's `key-` counters: every one must be there with value 1.
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

/// Gossip bytes/s each node sent while `during` ran (it should take `secs`).
async fn gossip_rate(
    nodes: &[NodeProc],
    secs: u64,
    during: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Vec<f64>> {
    let before = metric_each(nodes, "tally_gossip_bytes_out_total", "").await?;
    let started = Instant::now();
    during.await?;
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64 / 2.0);
    let after = metric_each(nodes, "tally_gossip_bytes_out_total", "").await?;
    Ok(after
        .iter()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / elapsed)
        .collect())
}

async fn sleep(secs: u64) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(())
}

/// Increments the counter `trickle` `rate` times a second for `secs`, round robin over `nodes`.
async fn trickle(nodes: &[NodeProc], rate: u32, secs: u64) -> anyhow::Result<()> {
    let http = http();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    for i in 0..u64::from(rate) * secs {
        ticker.tick().await;
        let node = &nodes[i as usize % nodes.len()];
        let status = http
            .post(node.url("/counters/trickle/increment"))
            .send()
            .await?
            .status();
        ensure!(status.is_success(), "trickle write failed: {status}");
    }
    Ok(())
}

/// One metric's value on each node.
async fn metric_each(nodes: &[NodeProc], name: &str, label: &str) -> anyhow::Result<Vec<u64>> {
    let mut values = Vec::new();
    for node in nodes {
        values.push(node.metric(name, label).await?);
    }
    Ok(values)
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
    client(Duration::from_secs(60))
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .expect("a plain-HTTP client builds")
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

/// Resident memory of a process, from `/proc/<pid>/status`.
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

/// One `tally node` process, logging into `<data_dir>.log`; stopped when dropped.
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
            // Nodes refuse to start without a cluster secret; one per run.
            .env("TALLY_CLUSTER_KEY", BENCH_CLUSTER_KEY)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.tally.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`]
    /// (a node whose runtime is stalled never finishes a graceful stop).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM for {STOP_GRACE:?}; killing it", self.id);
        let _ = child.kill();
        let _ = child.wait();
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
        let started = Instant::now();
        while !self.answers_health().await {
            if started.elapsed() > PATIENCE {
                bail!(
                    "{} did not become ready (log: {})",
                    self.id,
                    self.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// True when `/health` answers 200 within [`PROBE_TIMEOUT`].
    async fn answers_health(&self) -> bool {
        let probe = client(PROBE_TIMEOUT).get(self.url("/health")).send().await;
        matches!(probe, Ok(r) if r.status().is_success())
    }

    /// Sum of a metric's samples whose labels contain `label`.
    async fn metric(&self, name: &str, label: &str) -> anyhow::Result<u64> {
        let text = client(Duration::from_secs(10))
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
