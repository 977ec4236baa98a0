//! Durability of the write path, with real processes and real files: no
//! acknowledged increment is lost to a SIGKILL, a clean stop replays too,
//! and a wiped data directory comes back as a new actor without hiding
//! what its old incarnation wrote.
//!
//! A SIGKILL leaves the kernel's page cache alone, so these tests prove that
//! nothing is acknowledged before it reached the kernel and that recovery
//! replays it; that the fdatasync comes before the answer is the writer's
//! design (checked with strace: record write, fdatasync, then the response).
//! Losing the page cache itself (a power cut) needs a VM to test.
//!
//! `figures` (ignored) measures throughput, fsyncs, recovery time and disk
//! use; run it with the release build:
//! `cargo test --release -p tally --test durability figures -- --ignored --nocapture`.
//! `TALLY_BIN=<path>` measures another build of the binary (before/after comparisons).
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, ChildLog, Cluster, NodeProcess};
use rand::Rng;
use serde_json::Value;

const CLIENTS: usize = 32;
const CRASHES: usize = 5;
/// The kill lands this long after the first acknowledgement of a round.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 50..=300;
const CONVERGE: Duration = Duration::from_secs(20);
/// Upper bound on any one test; a hang is a failure, not a stuck CI job.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// What the clients of one round saw.
#[derive(Default)]
struct Tally {
    /// Requests sent (each may or may not have been applied).
    sent: AtomicU64,
    /// Requests answered 200 with a complete body: these must survive.
    acked: AtomicU64,
    /// The largest value an acknowledgement reported.
    highest_acked_value: AtomicI64,
}

/// Sends increments until `stop`; gives up at the first failure (the node died).
async fn increment_until_stopped(url: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let http = common::http();
    while !stop.load(SeqCst) {
        tally.sent.fetch_add(1, SeqCst);
        let Ok(response) = http.post(&url).send().await else {
            return;
        };
        if response.status() != 200 {
            return;
        }
        // Only a complete answer counts as an acknowledgement.
        let Ok(answer) = response.json::<Value>().await else {
            return;
        };
        let Some(value) = answer["value"].as_i64() else {
            return;
        };
        tally.acked.fetch_add(1, SeqCst);
        tally.highest_acked_value.fetch_max(value, SeqCst);
    }
}

/// Loads the node with [`CLIENTS`] clients, SIGKILLs it mid-load, restarts
/// it on the same data directory, and checks the recovered value against
/// what the clients saw; [`CRASHES`] times, the counter growing throughout.
async fn crash_under_load(extra_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    let mut node = NodeProcess::start("crashy", dir.path(), &extra);
    node.wait_ready().await;
    let mut total_acked = 0;
    let mut before = node.value().await;
    assert_eq!(before, 0);
    for round in 1..=CRASHES {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let url = node.url("/increment");
                tokio::spawn(increment_until_stopped(url, tally.clone(), stop.clone()))
            })
            .collect();
        let loaded = wait_until(Duration::from_secs(10), || {
            let acked = tally.acked.load(SeqCst);
            async move { acked > 0 }
        })
        .await;
        assert!(loaded, "round {round}: no increment was acknowledged");
        let kill_after = rand::thread_rng().gen_range(KILL_AFTER_MS);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        stop.store(true, SeqCst);
        node.kill9();
        for client in clients {
            tokio::time::timeout(Duration::from_secs(15), client)
                .await
                .expect("a client hung after the kill")
                .expect("client task");
        }
        let (sent, acked) = (tally.sent.load(SeqCst), tally.acked.load(SeqCst));
        let highest = tally.highest_acked_value.load(SeqCst);

        node.restart();
        node.wait_ready().await;
        let after = node.value().await;
        println!(
            "round {round}: killed after {kill_after} ms; acked {acked}, in flight {}, value {before} -> {after}",
            sent - acked
        );
        let acked = acked as i64;
        let in_flight = sent as i64 - acked;
        assert!(
            after >= before + acked,
            "round {round}: lost acknowledged increments: {before} + {acked} acked, recovered {after}"
        );
        assert!(
            after >= highest,
            "round {round}: an acknowledgement reported {highest}, recovered only {after}"
        );
        assert!(
            after <= before + acked + in_flight,
            "round {round}: invented increments: {before} + {acked} acked + {in_flight} in flight, recovered {after}"
        );
        total_acked += acked;
        before = after;
    }
    assert!(before >= total_acked);
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_increments_survive_sigkill() {
    common::within(TEST_TIMEOUT, crash_under_load(&[])).await;
}

/// The same with tiny segments and snapshots, so kills also land in
/// segment rotations, snapshot writes and the clean-up after them.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_increments_survive_sigkill_during_snapshots() {
    let args = ["--segment-bytes", "2048", "--snapshot-bytes", "8192"];
    common::within(TEST_TIMEOUT, crash_under_load(&args)).await;
}

/// [`common::incarnations`], the smallest total first.
fn incarnations(state: &Value, id: &str) -> Vec<(String, u64)> {
    let mut found = common::incarnations(state, id);
    found.sort_by_key(|(_, total)| *total);
    found
}

/// Increments the default counter `times` on the first node, then waits
/// until every node shows `total`.
async fn increment_n1_until_all_show(cluster: &Cluster, times: usize, total: i64) {
    for _ in 0..times {
        assert_eq!(cluster.nodes[0].post("/increment", "").await.0, 200);
    }
    assert!(
        cluster.converge(None, total, CONVERGE).await,
        "no convergence on {total}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_node_comes_back_as_a_new_actor_and_loses_nothing() {
    common::within(TEST_TIMEOUT, async {
        let mut cluster = Cluster::start(2, &[]).await;
        increment_n1_until_all_show(&cluster, 5, 5).await;
        let old_actor = incarnations(&cluster.nodes[0].get_json("/state").await, "n1");

        let n1 = &mut cluster.nodes[0];
        n1.kill9();
        std::fs::remove_dir_all(&n1.data_dir).expect("wipe n1's data directory");
        n1.restart();
        n1.wait_ready().await;
        increment_n1_until_all_show(&cluster, 3, 8).await;
        for node in &cluster.nodes {
            let actors = incarnations(&node.get_json("/state").await, "n1");
            assert_eq!(
                actors.len(),
                2,
                "{}: two incarnations of n1: {actors:?}",
                node.id
            );
            assert_eq!(
                (actors[0].1, actors[1].1),
                (3, 5),
                "{}: {actors:?}",
                node.id
            );
            assert_eq!(
                actors[1].0, old_actor[0].0,
                "the old incarnation keeps its totals"
            );
        }
    })
    .await;
}

async fn assert_values(node: &NodeProcess, default: i64, named: &[(&str, i64)]) {
    assert_eq!(node.value().await, default, "{}: default counter", node.id);
    for (name, expected) in named {
        assert_eq!(
            node.named(name).await,
            Some(*expected),
            "{}: counter {name}",
            node.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_replays_and_named_counters_survive_restarts() {
    common::within(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = NodeProcess::start("steady", dir.path(), &[]);
        node.wait_ready().await;
        let writes = [
            ("/increment", r#"{"amount": 10}"#),
            ("/decrement", r#"{"amount": 3}"#),
            ("/counters/apples/increment", ""),
            ("/counters/apples/increment", r#"{"amount": 3}"#),
            ("/counters/pears/decrement", r#"{"amount": 2}"#),
            ("/counters/pears/increment", r#"{"amount": 9}"#),
            ("/counters/plums/decrement", ""),
        ];
        for (path, body) in writes {
            assert_eq!(node.post(path, body).await.0, 200, "{path}");
        }
        let expected = [("apples", 4), ("pears", 7), ("plums", -1)];
        assert_values(&node, 7, &expected).await;

        node.terminate();
        node.restart();
        node.wait_ready().await;
        assert_values(&node, 7, &expected).await;
        let listing = node.get_json("/counters").await;
        let names: Vec<&str> = listing["counters"]
            .as_array()
            .map(|all| all.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        for (name, _) in expected {
            assert!(names.contains(&name), "{name} missing from {listing}");
        }

        // The actor's sequence goes on where it stopped, through a crash as well.
        assert_eq!(node.post("/increment", "").await.0, 200);
        node.kill9();
        node.restart();
        node.wait_ready().await;
        assert_values(&node, 8, &expected).await;
    })
    .await;
}

/// News from a peer is not waited for, but it must not wait forever either:
/// a steady stream of it used to postpone its sync indefinitely.
#[tokio::test(flavor = "multi_thread")]
async fn peer_news_is_made_durable_while_more_keeps_coming() {
    common::within(TEST_TIMEOUT, async {
        let mut cluster = Cluster::start(2, &[]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stream = {
            let (url, stop) = (cluster.nodes[1].url("/increment"), stop.clone());
            tokio::spawn(async move {
                let http = common::http();
                while !stop.load(SeqCst) {
                    let _ = http.post(&url).send().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let listener = &cluster.nodes[0];
        assert!(
            wait_until(CONVERGE, || async { listener.value().await > 0 }).await,
            "n1 never heard of n2's writes"
        );
        let before = listener.metric("tally_wal_fsyncs_total", "").await;
        let synced = wait_until(CONVERGE, || async {
            listener.metric("tally_wal_fsyncs_total", "").await > before
        })
        .await;
        assert!(synced, "n1 never synced the news while it kept coming");
        // Crash n1 mid-stream; with n2 gone too, only n1's own log can answer.
        cluster.nodes[0].kill9();
        stop.store(true, SeqCst);
        stream.await.expect("stream task");
        cluster.nodes[1].kill9();
        cluster.nodes[0].restart();
        cluster.nodes[0].wait_ready().await;
        assert!(
            cluster.nodes[0].value().await > 0,
            "the synced news was lost"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Figures (not a test): run with the release build, see the module docs.
// Sizes can be lowered with DURABILITY_RECORDS (default 1,000,000).
// ---------------------------------------------------------------------------

/// The binary to measure: `TALLY_BIN`, or the one cargo built.
fn tally_bin() -> String {
    std::env::var("TALLY_BIN").unwrap_or_else(|_| common::TALLY.to_owned())
}

/// A node logging at `info` into its [`ChildLog`], so the recovery line can be read.
struct LoggedNode {
    child: std::process::Child,
    http_addr: String,
    /// Its output; Drop stops the process before the log prints.
    log: ChildLog,
}

impl LoggedNode {
    async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let http_addr = format!("127.0.0.1:{}", common::free_port());
        let gossip_addr = format!("127.0.0.1:{}", common::free_port());
        let log = ChildLog::new("fig");
        let child = common::command_for(&tally_bin(), &log)
            .args(["node", "--id", "fig", "--http-addr", &http_addr])
            .args(["--gossip-addr", &gossip_addr, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("TALLY_LOG", "info")
            .spawn()
            .expect("spawn tally node");
        let node = Self {
            child,
            http_addr,
            log,
        };
        let url = format!("http://{}/health", node.http_addr);
        let ready = common::answers_ok(&url, Duration::from_secs(120)).await;
        assert!(ready, "node did not become ready");
        node
    }

    /// `tally_wal_fsyncs_total` from /metrics.
    async fn fsyncs(&self) -> u64 {
        common::metric_at(&self.http_addr, "tally_wal_fsyncs_total", "").await
    }

    /// `elapsed_ms` of the "recovered from the write-ahead log" line.
    fn recovery_ms(&self) -> u64 {
        let log = self.log.contents();
        log.lines()
            .find(|line| line.contains("recovered from the write-ahead log"))
            .and_then(|line| line.split("elapsed_ms=").nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .expect("a recovery line with elapsed_ms")
    }

    fn terminate(mut self) {
        common::signal_and_reap(&mut self.child, "TERM");
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        // Already reaped after `terminate`; a failed figure run leaves no node behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tally bench`; returns its output and wall time.
async fn bench(http_addr: &str, clients: usize, requests: u64) -> (String, Duration) {
    let started = Instant::now();
    let output = tokio::process::Command::new(tally_bin())
        .args(["bench", "--log", "warn", "--target", http_addr])
        .args(["--clients", &clients.to_string()])
        .args(["--requests", &requests.to_string()])
        .output()
        .await
        .expect("run tally bench");
    assert!(output.status.success(), "bench failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (text, started.elapsed())
}

fn disk_usage(dir: &Path) -> String {
    let du = std::process::Command::new("du")
        .arg("-sh")
        .arg(dir)
        .output()
        .expect("du");
    String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// The WAL's files with their sizes.
fn wal_files(data_dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(data_dir.join("wal")) else {
        return "no wal directory".into();
    };
    let mut files: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            format!("{} {} B", entry.file_name().to_string_lossy(), size)
        })
        .collect();
    files.sort();
    files.join(", ")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, run by hand with --release"]
async fn figures() {
    let records: u64 = std::env::var("DURABILITY_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");

    println!("== throughput: durable increments against one node");
    let node = LoggedNode::start(&dir.path().join("throughput"), &[]).await;
    for (clients, requests) in [(1, 2_000), (16, 20_000), (64, 50_000), (256, 100_000)] {
        let fsyncs_before = node.fsyncs().await;
        let (output, elapsed) = bench(&node.http_addr, clients, requests).await;
        let fsyncs = node.fsyncs().await - fsyncs_before;
        println!("{output}");
        println!(
            "fsyncs: {fsyncs} in {:.2} s = {:.0}/s, {:.1} increments per fsync\n",
            elapsed.as_secs_f64(),
            fsyncs as f64 / elapsed.as_secs_f64(),
            requests as f64 / fsyncs.max(1) as f64
        );
    }
    node.terminate();

    for (name, title, extra) in [
        ("full-log", "no snapshot: the whole log replays", &[][..]),
        (
            "compacted",
            "--snapshot-bytes 8 MiB",
            &["--snapshot-bytes", "8388608"][..],
        ),
    ] {
        println!("== {records} increments, {title}");
        let data = dir.path().join(name);
        let node = LoggedNode::start(&data, extra).await;
        let (output, _) = bench(&node.http_addr, 256, records).await;
        println!("{output}");
        node.terminate();
        println!(
            "disk: {} ({}): {}",
            disk_usage(&data),
            data.display(),
            wal_files(&data)
        );
        let started = Instant::now();
        let node = LoggedNode::start(&data, extra).await;
        println!(
            "recovery: {} ms in the node's log, {} ms from spawn to /health\n",
            node.recovery_ms(),
            started.elapsed().as_millis()
        );
        node.terminate();
    }
}
