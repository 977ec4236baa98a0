//! Benchmark (not a test): what a browser costs a cluster holding many
//! counters, and what the page costs the browser.
//!
//! Starts real `tally node` processes and a `tally gateway` (the release
//! binary next to this example, or `--tally PATH`) on loopback, loads
//! `--counters` counters, and prints:
//! - the page's download (`/`, the script, the wasm, the style; brotli, as a
//!   browser asks for it) and its stream until the first picture is complete
//!   (`/ws?limit=2000`, what the page opens: bytes and time to the last
//!   `Counters` chunk) — against one stream of every counter (`/ws`, no limit);
//! - the page itself in headless Chromium (`/usr/bin/chromium` driven by
//!   `/usr/bin/chromedriver`): milliseconds from navigation start until its
//!   list shows counters, the bytes of its HTTP resources as Chromium counts
//!   them, and how long typing a filter takes to narrow the list (its 300 ms
//!   debounce included) — skipped with `--no-chromium`;
//! - the gateway's RSS before and with `--browsers` pages connected while a
//!   writer keeps `--write-rate` writes/s going, and what each page received.
//!
//! ```text
//! cargo xtask web && cargo build --release -p tally --bin tally --example browser_bench
//! target/release/examples/browser_bench --counters 1000000 --browsers 100
//! ```
//! Figures to read, not pass/fail checks; the run fails only when something
//! does not work at all (a write refused, a stream that never completes).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use crdt_core::wire;
use futures_util::StreamExt;
use tally_protocol::events::ClusterEvent;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
struct Args {
    /// Counters to load (each incremented once, round robin over the nodes).
    #[arg(long, default_value_t = 1_000_000)]
    counters: usize,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Pages connected at once for the memory figure.
    #[arg(long, default_value_t = 100)]
    browsers: usize,
    /// Writes per second while the pages are connected.
    #[arg(long, default_value_t = 200)]
    write_rate: u32,
    /// Seconds the pages stay connected under writes.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent HTTP clients loading the counters.
    #[arg(long, default_value_t = 128)]
    clients: usize,
    /// The `tally` binary [default: `tally` in the directory above this example].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Skip loading the page in headless Chromium.
    #[arg(long)]
    no_chromium: bool,
}

/// The run's cluster secret (loopback only, thrown away with the run).
const CLUSTER_KEY: &str = "browser-bench-cluster-secret";
const PATIENCE: Duration = Duration::from_secs(900);
/// What the page asks for (`web/src/socket.rs`, `SNAPSHOT_COUNTERS`).
const PAGE_STREAM: &str = "/ws?limit=2000";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.counters > 0 && args.nodes > 0,
        "--counters and --nodes must be positive"
    );
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot locate the target directory")?
            .join("tally"),
    };
    ensure!(
        tally.exists(),
        "{} not found: build it or pass --tally",
        tally.display()
    );
    std::env::set_var("TALLY_CLUSTER_KEY", CLUSTER_KEY);
    std::env::set_var("TALLY_LOG", "warn");
    tokio::runtime::Runtime::new()?.block_on(run(args, tally))
}

async fn run(args: Args, tally: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nodes: Vec<Proc> = Vec::new();
    for i in 1..=args.nodes {
        let (http_addr, gossip_addr) = (free_addr()?, free_addr()?);
        let id = format!("n{i}");
        let data = dir.path().join(&id).display().to_string();
        let mut node_args = vec![
            "node",
            "--id",
            &id,
            "--http-addr",
            &http_addr,
            "--gossip-addr",
            &gossip_addr,
            "--data-dir",
            &data,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        if let Some(first) = nodes.first() {
            node_args.extend(["--seed".to_owned(), first.extra.clone()]);
        }
        let mut node = Proc::spawn(&tally, &node_args, &dir.path().join(format!("{id}.log")))?;
        node.addr = http_addr;
        node.extra = gossip_addr;
        nodes.push(node);
    }
    for node in &nodes {
        wait_http(&format!("http://{}/health", node.addr)).await?;
    }
    let started = Instant::now();
    load(&nodes, args.counters, args.clients).await?;
    println!(
        "loaded {} counters into {} nodes in {:.1} s",
        args.counters,
        nodes.len(),
        started.elapsed().as_secs_f64()
    );

    let gateway_addr = free_addr()?;
    // Every page comes from this one address: lift the per-address cap.
    let pages = (args.browsers + 8).to_string();
    let mut gateway_args = vec![
        "gateway".to_owned(),
        "--addr".into(),
        gateway_addr.clone(),
        "--max-browsers-per-ip".into(),
        pages,
    ];
    for node in &nodes {
        gateway_args.extend(["--node".to_owned(), node.addr.clone()]);
    }
    let gateway = Proc::spawn(&tally, &gateway_args, &dir.path().join("gateway.log"))?;
    let base = format!("http://{gateway_addr}");
    wait_http(&format!("{base}/health")).await?;
    // The gateway follows every node: wait until its merged view holds everything.
    let followed = Instant::now();
    wait_for(|| async {
        let page = counted(&base, PAGE_STREAM).await.ok();
        page.is_some_and(|page| page.counters >= args.counters.min(2000))
    })
    .await?;
    wait_for(|| async {
        // Each try downloads every counter: leave the gateway time to follow.
        tokio::time::sleep(Duration::from_secs(5)).await;
        full_stream_counters(&base).await.unwrap_or(0) >= args.counters
    })
    .await?;
    println!(
        "gateway followed every node in {:.1} s; RSS {:.0} MiB",
        followed.elapsed().as_secs_f64(),
        mib(gateway.rss_kib())
    );

    println!("\nthe page's load:");
    let mut assets = 0u64;
    for path in ["/", "/tally_web.js", "/tally_web_bg.wasm", "/style.css"] {
        let response = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("accept-encoding", "br, gzip")
            .send()
            .await?;
        let bytes = response.bytes().await?.len() as u64;
        println!("  {path:<20} {:>9} bytes", bytes);
        assets += bytes;
    }
    let page = counted(&base, PAGE_STREAM).await?;
    println!(
        "  {PAGE_STREAM:<20} {:>9} bytes until the snapshot ended ({} counters, {} frames) in {:.0} ms",
        page.bytes,
        page.counters,
        page.frames,
        page.elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "  total {:.2} MiB (assets {:.2} MiB)",
        (assets + page.bytes) as f64 / 1048576.0,
        assets as f64 / 1048576.0
    );
    let everything = counted(&base, "/ws").await?;
    println!(
        "  for comparison, /ws without a limit: {:.1} MiB, {} counters in {:.0} ms",
        everything.bytes as f64 / 1048576.0,
        everything.counters,
        everything.elapsed.as_secs_f64() * 1000.0
    );

    if !args.no_chromium {
        let shown = in_chromium(&base).await?;
        println!(
            "  in Chromium: {} counters listed {:.0} ms after navigation start; \
             HTTP resources {:.2} MiB; filter `key-00001` narrowed the list and the stream in {:.0} ms",
            shown.listed,
            shown.listed_ms,
            shown.resource_bytes as f64 / 1048576.0,
            shown.filter_ms
        );
    }

    println!(
        "\n{} pages connected, {} writes/s for {} s:",
        args.browsers, args.write_rate, args.seconds
    );
    let before = gateway.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut pages = Vec::new();
    for _ in 0..args.browsers {
        let (url, stop, received, connected) = (
            format!("ws://{gateway_addr}{PAGE_STREAM}"),
            Arc::clone(&stop),
            Arc::clone(&received),
            Arc::clone(&connected),
        );
        pages.push(tokio::spawn(async move {
            let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else {
                return;
            };
            connected.fetch_add(1, Relaxed);
            while !stop.load(Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
                    Ok(Some(Ok(Message::Binary(frame)))) => {
                        received.fetch_add(frame.len() as u64, Relaxed);
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(None | Some(Err(_))) => return,
                }
            }
        }));
    }
    let writer = {
        let (url, stop, rate) = (
            format!("http://{}/counters/", nodes[0].addr),
            Arc::clone(&stop),
            args.write_rate,
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                tick.tick().await;
                // A few hot counters and a long tail, as a real load.
                let name = match i % 4 {
                    0 => format!("hot-{}", i % 3),
                    _ => format!("key-{:07}", i * 7919 % 1_000_000),
                };
                let _ = http.post(format!("{url}{name}/increment")).send().await;
                i += 1;
            }
        })
    };
    let mut peak = before;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(gateway.rss_kib());
    }
    stop.store(true, Relaxed);
    let _ = writer.await;
    for page in pages {
        let _ = page.await;
    }
    let pages_connected = connected.load(Relaxed).max(1);
    println!(
        "  gateway RSS {:.0} MiB before, peak {:.0} MiB with the pages ({} connected)",
        mib(before),
        mib(peak),
        connected.load(Relaxed)
    );
    println!(
        "  each page received {:.2} MiB (snapshot + {} s of changes)",
        received.load(Relaxed) as f64 / pages_connected as f64 / 1048576.0,
        args.seconds
    );
    let top = counted(&base, "/ws?prefix=hot-").await?;
    println!(
        "  /ws?prefix=hot-: {} counters, {} bytes",
        top.counters, top.bytes
    );
    drop(nodes);
    drop(gateway);
    Ok(())
}

/// What one stream delivered until its snapshot's last chunk.
struct Counted {
    bytes: u64,
    frames: u64,
    counters: usize,
    elapsed: Duration,
}

async fn counted(base: &str, path: &str) -> anyhow::Result<Counted> {
    let url = format!("{}{path}", base.replace("http://", "ws://"));
    let started = Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut bytes, mut frames, mut counters) = (0u64, 0u64, 0usize);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), socket.next()).await;
        let Ok(Some(Ok(message))) = next else {
            bail!("{path}: the stream ended before its snapshot did");
        };
        let Message::Binary(frame) = message else {
            continue;
        };
        bytes += frame.len() as u64;
        frames += 1;
        if let ClusterEvent::Counters { state, last, .. } = wire::decode(&frame)? {
            counters += state.len();
            if last {
                break;
            }
        }
    }
    Ok(Counted {
        bytes,
        frames,
        counters,
        elapsed: started.elapsed(),
    })
}

/// What loading the page in Chromium took.
struct BrowserLoad {
    listed: u64,
    listed_ms: f64,
    resource_bytes: u64,
    filter_ms: f64,
}

/// Waits (in the page) until its counter list shows rows, then answers
/// `[ms since navigation start, bytes of HTTP resources, rows]`.
const LISTED_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
const check = () => {
  const rows = document.querySelectorAll('.counters li[data-name]').length;
  if (rows > 0 && document.querySelector('input.filter')) {
    let bytes = 0;
    for (const entry of performance.getEntriesByType('navigation')) bytes += entry.transferSize;
    for (const entry of performance.getEntriesByType('resource')) bytes += entry.transferSize;
    done([performance.now(), bytes, rows]);
  } else {
    setTimeout(check, 5);
  }
};
check();
"#;

/// Types `arguments[0]` into the filter box, waits until every listed row
/// starts with it and the page's log says the gateway streams the new
/// subscription, and answers the milliseconds that took.
const FILTER_SCRIPT: &str = r#"
const wanted = arguments[0];
const done = arguments[arguments.length - 1];
const input = document.querySelector('input.filter');
const started = performance.now();
input.value = wanted;
input.dispatchEvent(new Event('input', { bubbles: true }));
const check = () => {
  const names = [...document.querySelectorAll('.counters li[data-name]')].map((li) => li.dataset.name);
  const log = document.querySelector('.log')?.textContent ?? '';
  const subscribed = log.includes(`following "${wanted}`);
  if (subscribed && names.length > 0 && names.every((name) => name.startsWith(wanted))) {
    done(performance.now() - started);
  } else {
    setTimeout(check, 5);
  }
};
check();
"#;

/// Opens the page in headless Chromium and measures it (see the module docs).
async fn in_chromium(base: &str) -> anyhow::Result<BrowserLoad> {
    use thirtyfour::prelude::*;
    let port = free_addr()?
        .rsplit_once(':')
        .context("an address")?
        .1
        .to_owned();
    let driver = Proc::spawn(
        Path::new("/usr/bin/chromedriver"),
        &[
            format!("--port={port}"),
            "--allowed-ips=127.0.0.1".to_owned(),
        ],
        &std::env::temp_dir().join("browser_bench-chromedriver.log"),
    )?;
    let driver_url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{driver_url}/status")).await?;
    let profile = tempfile::tempdir()?;
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary("/usr/bin/chromium")?;
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ] {
        caps.add_arg(arg)?;
    }
    caps.add_arg(&profile_arg)?;
    let browser = WebDriver::new(&driver_url, caps).await?;
    let measured = async {
        browser.set_script_timeout(Duration::from_secs(60)).await?;
        browser.goto(format!("{base}/")).await?;
        let listed = browser.execute_async(LISTED_SCRIPT, Vec::new()).await?;
        let [listed_ms, resource_bytes, rows]: [f64; 3] =
            serde_json::from_value(listed.json().clone())?;
        let filtered = browser
            .execute_async(FILTER_SCRIPT, vec![serde_json::json!("key-00001")])
            .await?;
        let filter_ms: f64 = serde_json::from_value(filtered.json().clone())?;
        anyhow::Ok(BrowserLoad {
            listed: rows as u64,
            listed_ms,
            resource_bytes: resource_bytes as u64,
            filter_ms,
        })
    }
    .await;
    let _ = browser.quit().await;
    drop(driver);
    measured
}

async fn full_stream_counters(base: &str) -> anyhow::Result<usize> {
    Ok(counted(base, "/ws").await?.counters)
}

async fn load(nodes: &[Proc], count: usize, clients: usize) -> anyhow::Result<()> {
    let urls: Arc<Vec<String>> = Arc::new(
        nodes
            .iter()
            .map(|n| format!("http://{}/counters/", n.addr))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.min(count) {
        let (urls, next, failures) = (Arc::clone(&urls), Arc::clone(&next), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count {
                    return;
                }
                let url = format!("{}key-{i:07}/increment", urls[i % urls.len()]);
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
    Ok(())
}

async fn wait_http(url: &str) -> anyhow::Result<()> {
    let url = url.to_owned();
    wait_for(|| {
        let url = url.clone();
        async move {
            let answer = reqwest::get(&url).await;
            matches!(answer, Ok(r) if r.status().is_success())
        }
    })
    .await
    .with_context(|| format!("{url} never answered"))
}

async fn wait_for<F, Fut>(mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        ensure!(started.elapsed() < PATIENCE, "gave up after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A child process, killed when dropped. `addr` is its HTTP address;
/// `extra` a node's gossip address.
struct Proc {
    child: Child,
    addr: String,
    extra: String,
}

impl Proc {
    fn spawn(tally: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = Command::new(tally)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", tally.display()))?;
        Ok(Proc {
            child,
            addr: String::new(),
            extra: String::new(),
        })
    }

    /// Resident memory, from `/proc/<pid>/status`.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        (status.ok())
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
