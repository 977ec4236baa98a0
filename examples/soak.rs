//! Soak benchmark (not a test): three real nodes under mixed load for a long
//! time, with a node killed (-9) and restarted periodically, 1,000 idle TCP
//! connections and 200 slowloris clients held open against the nodes. Every
//! minute it prints one row per node — RSS, open fds, WAL size — and the
//! load's p99 latency, so growth shows as a trend.
//!
//! ```text
//! cargo build --release -p tally --bin tally --example soak
//! target/release/examples/soak --minutes 30
//! ```
//! Everything runs on 127.0.0.1; every loop is bounded by `--minutes`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Concurrent load clients (increments and reads, half each).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Idle TCP connections held open against the nodes' HTTP ports.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Slowloris clients (a header byte every few seconds) held open.
    #[arg(long, default_value_t = 200)]
    slowloris: usize,
    /// Seconds between kill -9 of a node (restarted a second later).
    #[arg(long, default_value_t = 90)]
    kill_every: u64,
    /// The `tally` binary [default: next to this example's directory].
    #[arg(long)]
    tally: Option<PathBuf>,
}

const KEY: &str = "soak-benchmark-cluster-secret";
const NODES: usize = 3;

struct Node {
    id: String,
    http: String,
    gossip: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, tally: &Path, seed: Option<&str>) -> anyhow::Result<()> {
        let mut command = Command::new(tally);
        command
            .args(["node", "--id", &self.id, "--http-addr", &self.http])
            .args(["--gossip-addr", &self.gossip, "--snapshot-bytes", "4194304"])
            .arg("--data-dir")
            .arg(&self.dir)
            .env("TALLY_CLUSTER_KEY", KEY)
            .env("TALLY_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(seed) = seed {
            command.args(["--seed", seed]);
        }
        self.child = Some(command.spawn().context("starting a node")?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .map(|meta| meta.len())
            .sum()
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("locating the tally binary")?
            .join("tally"),
    };
    tokio::runtime::Runtime::new()?.block_on(run(args, tally))
}

async fn run(args: Args, tally: PathBuf) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes: Vec<Node> = (1..=NODES)
        .map(|i| Node {
            id: format!("n{i}"),
            http: free_addr(),
            gossip: free_addr(),
            dir: root.path().join(format!("n{i}")),
            child: None,
        })
        .collect();
    let seed = nodes[0].gossip.clone();
    for (index, node) in nodes.iter_mut().enumerate() {
        node.start(&tally, (index > 0).then_some(seed.as_str()))?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http_addrs: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));

    for client in 0..args.clients {
        let (addrs, latencies) = (http_addrs.clone(), Arc::clone(&latencies));
        let (acked, failed) = (Arc::clone(&acked), Arc::clone(&failed));
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .expect("client");
            let mut turn = client;
            while Instant::now() < deadline {
                turn += 1;
                let addr = &addrs[turn % addrs.len()];
                let started = Instant::now();
                let result = if turn % 2 == 0 {
                    http.post(format!(
                        "http://{addr}/counters/soak-{}/increment",
                        turn % 100
                    ))
                    .send()
                    .await
                } else {
                    http.get(format!("http://{addr}/counter")).send().await
                };
                match result {
                    Ok(answer) if answer.status().is_success() => {
                        if turn % 2 == 0 {
                            acked.fetch_add(1, Relaxed);
                        }
                        let micros = started.elapsed().as_micros() as u64;
                        let _ = latencies.lock().unwrap().record(micros.max(1));
                    }
                    _ => {
                        failed.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    for index in 0..args.idle {
        let addr = http_addrs[index % NODES].clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                // Held until the server closes it, then opened again.
                if let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await {
                    let mut byte = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    for index in 0..args.slowloris {
        let addr = http_addrs[index % NODES].clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await {
                    let _ = stream
                        .write_all(b"POST /increment HTTP/1.1\r\nHost: soak\r\n")
                        .await;
                    while stream.write_all(b"X").await.is_ok() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    println!("| min | node | RSS MiB | fds | WAL KiB | p99 ms | writes acked | failed |");
    println!("|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let mut next_kill = Instant::now() + Duration::from_secs(args.kill_every);
    let mut victim = 0;
    let mut minute = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Instant::now() >= next_kill {
            victim = (victim + 1) % NODES;
            nodes[victim].kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let seed_for = (victim != 0).then_some(seed.as_str());
            nodes[victim].start(&tally, seed_for)?;
            next_kill = Instant::now() + Duration::from_secs(args.kill_every);
        }
        if started.elapsed() >= Duration::from_secs((minute + 1) * 60) {
            minute += 1;
            let p99 = {
                let mut histogram = latencies.lock().unwrap();
                let p99 = histogram.value_at_quantile(0.99) as f64 / 1000.0;
                histogram.reset();
                p99
            };
            for node in &nodes {
                let Some(pid) = node.pid() else { continue };
                println!(
                    "| {minute} | {} | {:.1} | {} | {} | {p99:.1} | {} | {} |",
                    node.id,
                    rss_mib(pid),
                    fds(pid),
                    dir_bytes(&node.dir.join("wal")) / 1024,
                    acked.load(Relaxed),
                    failed.load(Relaxed),
                );
            }
        }
    }
    for node in &mut nodes {
        node.kill();
    }
    Ok(())
}
