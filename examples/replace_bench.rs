//! Benchmark: entries per counter as every node of a 3-node cluster is
//! replaced again and again, with and without retiring (issue #20).
//!
//! Runs three real `tally node`s on loopback. Each round replaces every
//! node in turn (SIGKILL, then the same id and addresses on a fresh data
//! directory: a new actor), and the new incarnation increments each of
//! `--counters` counters once. With `--retire`, each replacement is
//! followed by `tally admin retire` of that node, sent to the next node
//! (again while it answers 409 or leaves counters for later, as README
//! tells operators).
//! After each round it prints entries per counter (`tally_entries` /
//! counters) on every node and checks every counter's value.
//!
//! ```text
//! cargo build --release -p tally --bin tally --example replace_bench
//! target/release/examples/replace_bench --rounds 10            # without retiring
//! target/release/examples/replace_bench --rounds 10 --retire
//! ```
//! Figures to read, not pass/fail checks; the run fails only when a value
//! is wrong or a command fails.
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;

/// Command line of the benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Rounds; each replaces all three nodes.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Counters each incarnation writes to.
    #[arg(long, default_value_t = 100)]
    counters: usize,
    /// Retire each replaced node's departed actors (`tally admin retire`).
    #[arg(long)]
    retire: bool,
    /// The `tally` binary [default: `tally` in the directory above this example].
    #[arg(long)]
    tally: Option<PathBuf>,
}

const CLUSTER_KEY: &str = "replace-bench-cluster-secret";
const NODES: usize = 3;
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tally = support::tally_binary(args.tally.as_deref())?;
    tokio::runtime::Runtime::new()?.block_on(run(args, tally))
}

/// One node's place in the cluster: its id and addresses outlive its processes.
struct Slot {
    id: String,
    http: String,
    gossip: String,
    child: Option<Child>,
}

impl Slot {
    fn start(&mut self, tally: &Path, dir: &Path, seed: &str, round: usize) -> anyhow::Result<()> {
        let data = dir.join(format!("{}-{round}", self.id));
        let log = std::fs::File::create(dir.join(format!("{}-{round}.log", self.id)))?;
        let child = Command::new(tally)
            .env("TALLY_CLUSTER_KEY", CLUSTER_KEY)
            .args(["node", "--id", &self.id, "--http-addr", &self.http])
            .args(["--gossip-addr", &self.gossip, "--seed", seed])
            .args([
                "--gc-interval",
                "200ms",
                "--max-clock-skew",
                "1s",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", tally.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn metric(&self, client: &reqwest::Client, name: &str) -> anyhow::Result<u64> {
        support::metric(client, &self.http, name).await
    }

    async fn value(&self, client: &reqwest::Client, counter: &str) -> Option<i64> {
        let answer = client.get(self.url(&format!("/counters/{counter}")));
        let json: serde_json::Value = answer.send().await.ok()?.json().await.ok()?;
        json["value"].as_i64()
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            let ready = client.get(self.url("/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        anyhow::bail!("{} not ready within {PATIENCE:?}", self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.kill();
    }
}

fn counter(index: usize) -> String {
    format!("c{index}")
}

async fn write_all(client: &reqwest::Client, slot: &Slot, counters: usize) -> anyhow::Result<()> {
    for index in 0..counters {
        let url = slot.url(&format!("/counters/{}/increment", counter(index)));
        let answer = client.post(url).send().await?;
        ensure!(answer.status().is_success(), "write: {}", answer.status());
    }
    Ok(())
}

/// `tally admin retire ID` sent to `via`, again while it answers 409 (a
/// member that was just replaced may take a few seconds to answer pulls)
/// or leaves counters for later (a survivor of a fold not yet collected);
/// returns the last answer.
async fn retire(tally: &Path, id: &str, via: &Slot) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        let output = Command::new(tally)
            .env("TALLY_CLUSTER_KEY", CLUSTER_KEY)
            .args(["admin", "retire", id, "--via", &via.url("")])
            .output()?;
        let error = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let answer: Option<serde_json::Value> = (output.status.success())
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten();
        let done = answer.as_ref().is_some_and(|a| a["left"] == 0);
        if done || started.elapsed() >= PATIENCE {
            return answer.with_context(|| format!("tally admin retire {id}: {error}"));
        }
        ensure!(
            output.status.success() || error.contains("409"),
            "tally admin retire {id}: {error}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(args: Args, tally: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let client = reqwest::Client::new();
    let mut slots: Vec<Slot> = (1..=NODES)
        .map(|i| {
            Ok(Slot {
                id: format!("r{i}"),
                http: support::free_addr()?,
                gossip: support::free_addr()?,
                child: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let seed_of = |slots: &[Slot], i: usize| slots[(i + 1) % NODES].gossip.clone();
    for i in 0..NODES {
        let seed = seed_of(&slots, i);
        slots[i].start(&tally, dir.path(), &seed, 0)?;
    }
    for slot in &slots {
        slot.wait_ready(&client).await?;
        write_all(&client, slot, args.counters).await?;
    }
    println!(
        "3 nodes, {} counters, each incarnation increments each once; retiring: {}",
        args.counters, args.retire
    );
    let mut expected = NODES as i64;
    report(&client, &slots, 0, args.counters, expected).await?;
    for round in 1..=args.rounds {
        for i in 0..NODES {
            slots[i].kill();
            let seed = seed_of(&slots, i);
            slots[i].start(&tally, dir.path(), &seed, round)?;
            slots[i].wait_ready(&client).await?;
            write_all(&client, &slots[i], args.counters).await?;
            if args.retire {
                let via = &slots[(i + 1) % NODES];
                retire(&tally, &slots[i].id, via).await?;
            }
        }
        expected += NODES as i64;
        report(&client, &slots, round, args.counters, expected).await?;
    }
    Ok(())
}

/// Waits until every node reads `expected` for every counter and entries
/// settle (garbage collection), then prints entries per counter per node.
async fn report(
    client: &reqwest::Client,
    slots: &[Slot],
    round: usize,
    counters: usize,
    expected: i64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut entries = vec![0u64; slots.len()];
    loop {
        let mut converged = true;
        for slot in slots {
            for index in [0, counters - 1] {
                converged &= slot.value(client, &counter(index)).await == Some(expected);
            }
        }
        let now: Vec<u64> = {
            let mut now = Vec::new();
            for slot in slots {
                now.push(slot.metric(client, "tally_entries").await?);
            }
            now
        };
        let settled = now == entries;
        entries = now;
        if converged && settled {
            break;
        }
        ensure!(
            started.elapsed() < PATIENCE,
            "round {round}: no convergence on {expected} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let per_counter: Vec<String> = (entries.iter())
        .map(|e| format!("{:.1}", *e as f64 / counters as f64))
        .collect();
    println!(
        "round {round:>2}: entries per counter on r1 r2 r3: {}   every counter reads {expected}",
        per_counter.join(" ")
    );
    Ok(())
}
