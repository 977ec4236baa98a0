//! Benchmark: creating then deleting many counters returns memory and
//! snapshot size to near an empty node's (issue #20).
//!
//! Runs one real `tally node` (the release binary next to this example, or
//! `--tally PATH`) on loopback and prints its resident memory (VmRSS) and
//! the size of its data directory: empty; after creating `--counters`
//! counters (`POST /batch`); after deleting them all, garbage collection
//! (`tally_removed_counters` back to 0) and a fresh snapshot.
//!
//! ```text
//! cargo build --release -p tally --bin tally --example lifecycle_bench
//! target/release/examples/lifecycle_bench --counters 1000000
//! ```
//! Figures to read, not pass/fail checks; the run fails only when the node
//! does not do what it must (refuse a write, keep a deleted counter).
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use tally_protocol::batch::{BatchItem, BatchRequest, Direction, BATCH_CONTENT_TYPE};

/// Command line of the benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Counters to create, then delete.
    #[arg(long, default_value_t = 1_000_000)]
    counters: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The `tally` binary [default: `tally` in the directory above this example].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Keep the node running this long at the end (to inspect it), printing its pid.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

const CLUSTER_KEY: &str = "lifecycle-bench-cluster-secret";
const PATIENCE: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(200);
/// Items per `POST /batch` (the protocol's most).
const BATCH: usize = tally_protocol::batch::MAX_BATCH_ITEMS;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tally = support::tally_binary(args.tally.as_deref())?;
    tokio::runtime::Runtime::new()?.block_on(run(args, tally))
}

struct Node {
    child: Child,
    http: String,
    data: PathBuf,
}

impl Node {
    fn start(tally: &Path, dir: &Path) -> anyhow::Result<Node> {
        let http = support::free_addr()?;
        let gossip = support::free_addr()?;
        let data = dir.join("b1");
        let log = std::fs::File::create(dir.join("b1.log"))?;
        let child = Command::new(tally)
            .env("TALLY_CLUSTER_KEY", CLUSTER_KEY)
            .env("RUST_LOG", "warn")
            .args(["node", "--id", "b1", "--http-addr", &http])
            .args(["--gossip-addr", &gossip, "--data-dir"])
            .arg(&data)
            // Snapshots often, so the data directory's size follows the state.
            .args([
                "--snapshot-bytes",
                "4194304",
                "--gc-interval",
                "200ms",
                "--max-clock-skew",
                "1s",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", tally.display()))?;
        Ok(Node { child, http, data })
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib: u64 = (status.lines())
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        kib as f64 / 1024.0
    }

    fn data_mib(&self) -> f64 {
        dir_size(&self.data) as f64 / (1024.0 * 1024.0)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn metric(&self, client: &reqwest::Client, name: &str) -> anyhow::Result<u64> {
        support::metric(client, &self.http, name).await
    }

    async fn wait_for(
        &self,
        client: &reqwest::Client,
        what: &str,
        mut holds: impl FnMut(u64) -> bool,
        metric: &str,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if let Ok(value) = self.metric(client, metric).await {
                if holds(value) {
                    return Ok(started.elapsed());
                }
            }
            tokio::time::sleep(POLL).await;
        }
        anyhow::bail!("{what}: not within {PATIENCE:?}")
    }

    fn report(&self, phase: &str, counters: u64) {
        println!(
            "{phase:<34} counters held {counters:>8}  VmRSS {:>8.1} MiB  data dir {:>8.1} MiB",
            self.rss_mib(),
            self.data_mib()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn name(index: usize) -> String {
    format!("bench:{index:07}")
}

async fn run(args: Args, tally: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(&tally, dir.path())?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    while !client
        .get(node.url("/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(started.elapsed() < PATIENCE, "the node never became ready");
        tokio::time::sleep(POLL).await;
    }
    node.report("empty", 0);

    let created = Instant::now();
    let batches = args.counters.div_ceil(BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (client, next, url) = (client.clone(), next.clone(), node.url("/batch"));
        let total = args.counters;
        clients.push(tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, Relaxed);
                if batch >= batches {
                    return Ok::<_, anyhow::Error>(());
                }
                let items = (batch * BATCH..((batch + 1) * BATCH).min(total))
                    .map(|index| BatchItem {
                        counter: name(index),
                        direction: Direction::Increment,
                        amount: 1,
                        key: None,
                    })
                    .collect();
                let body = crdt_core::wire::encode(&BatchRequest { items });
                let answer = (client.post(&url))
                    .header("content-type", BATCH_CONTENT_TYPE)
                    .body(body)
                    .send()
                    .await?;
                ensure!(
                    answer.status().is_success(),
                    "batch refused: {}",
                    answer.status()
                );
            }
        }));
    }
    for task in clients {
        task.await??;
    }
    let held = node.metric(&client, "tally_counters").await?;
    ensure!(held == args.counters as u64, "created {held} counters");
    println!(
        "created {} counters in {:.1} s",
        args.counters,
        created.elapsed().as_secs_f64()
    );
    // A snapshot of the full state (the log grows by 4 MiB between them).
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.report("after creating", held);

    let deleting = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (client, next, base) = (client.clone(), next.clone(), node.url("/counters/"));
        let total = args.counters;
        clients.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Relaxed);
                if index >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let answer = client
                    .delete(format!("{base}{}", name(index)))
                    .send()
                    .await?;
                ensure!(
                    answer.status().is_success(),
                    "delete refused: {}",
                    answer.status()
                );
            }
        }));
    }
    for task in clients {
        task.await??;
    }
    println!("deleted them in {:.1} s", deleting.elapsed().as_secs_f64());
    let collected = node
        .wait_for(
            &client,
            "garbage collection",
            |n| n == 0,
            "tally_removed_counters",
        )
        .await?;
    let held = node.metric(&client, "tally_counters").await?;
    ensure!(held == 0, "{held} counters left after garbage collection");
    println!(
        "collected within {:.1} s of the last delete",
        collected.as_secs_f64()
    );
    // Writes to one counter until the next snapshot covers the collected state.
    let before = node.metric(&client, "tally_snapshots_total").await?;
    let mut filler = 0;
    while node.metric(&client, "tally_snapshots_total").await? <= before {
        ensure!(filler < 1_000_000, "no snapshot after {filler} writes");
        let items = (0..BATCH)
            .map(|_| BatchItem {
                counter: "filler".into(),
                direction: Direction::Increment,
                amount: 1,
                key: None,
            })
            .collect();
        let body = crdt_core::wire::encode(&BatchRequest { items });
        let answer = (client.post(node.url("/batch")))
            .header("content-type", BATCH_CONTENT_TYPE)
            .body(body)
            .send()
            .await?;
        ensure!(answer.status().is_success(), "filler refused");
        filler += BATCH;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.report("after deleting and collecting", 1);
    // The node's change broadcast keeps its last 4,096 deltas (for slow
    // followers), the deletes' among them: one small commit each turns it over.
    for _ in 0..CHANGE_BACKLOG {
        let answer = (client.post(node.url("/counters/filler/increment")))
            .send()
            .await?;
        ensure!(answer.status().is_success(), "filler refused");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.report("after 4,096 more commits", 1);
    if args.hold_secs > 0 {
        println!("node pid {}", node.child.id());
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        node.report("at the end", 1);
    }
    Ok(())
}

/// `replica.rs`'s broadcast backlog.
const CHANGE_BACKLOG: usize = 4096;

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    (entries.filter_map(Result::ok))
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
