//! Many named counters in one cluster: thousands of counters written on
//! several nodes converge everywhere, an empty node catches up on a large
//! keyspace through frame-sized chunks, and the listing API pages, filters
//! and validates as documented.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::{wait_until_backing_off, Cluster, NodeProcess};
use futures_util::{stream, StreamExt};
use serde_json::Value;
use tally_protocol::idempotency::IDEMPOTENCY_KEY_HEADER;

/// Requests in flight at once while loading counters.
const IN_FLIGHT: usize = 32;
/// Largest page the API serves.
const PAGE: usize = 1000;
/// Generous bound for a debug build on a busy 2-core machine; never a
/// timing assertion (a catch-up takes seconds when the machine is quiet).
const CONVERGE: Duration = Duration::from_secs(300);
/// Longest pause between two full listings while waiting: listing 100,000
/// counters on every node is work for the nodes too, and polling it every
/// 20 ms slowed the very catch-up it waits for (past 120 s on a loaded
/// machine, where the listing right after the deadline found it complete).
const LONGEST_POLL_PAUSE: Duration = Duration::from_secs(1);

/// One write: node index, counter name, signed amount (negative = decrement).
type Write = (usize, String, i64);

/// Expected values: counter name → sum of acknowledged amounts.
type Expected = BTreeMap<String, i64>;

/// Percent-encodes a counter name for a URL path segment.
fn encode_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends every write, [`IN_FLIGHT`] at a time; panics unless all are
/// acknowledged, so the returned sums are exactly what the cluster must hold.
async fn write_all(nodes: &[NodeProcess], writes: Vec<Write>) -> Expected {
    write_all_with(nodes, writes, IN_FLIGHT).await
}

/// [`write_all`] with `in_flight` requests at a time. Each write carries
/// its own `Idempotency-Key`, so one whose connection failed (a loaded
/// machine can stall a node past the client's timeout) is retried the way
/// a real client would, and still counts once.
async fn write_all_with(nodes: &[NodeProcess], writes: Vec<Write>, in_flight: usize) -> Expected {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Relaxed);
    let http = common::http();
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/counters/")).collect();
    let answers: Vec<(String, i64, Result<u16, String>)> =
        stream::iter(writes.into_iter().enumerate())
            .map(|(index, (node, name, amount))| {
                let verb = if amount >= 0 {
                    "increment"
                } else {
                    "decrement"
                };
                let url = format!("{}{}/{verb}", urls[node], encode_segment(&name));
                let body = format!("{{\"amount\": {}}}", amount.unsigned_abs());
                let key = format!("keyspace-{call}-{index}");
                let http = http.clone();
                async move {
                    let mut status = Err(String::new());
                    for _attempt in 0..3 {
                        let request = http
                            .post(&url)
                            .header(IDEMPOTENCY_KEY_HEADER, &key)
                            .body(body.clone());
                        status = request
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                            .map_err(|e| format!("{e:?}"));
                        if status.is_ok() {
                            break;
                        }
                    }
                    (name, amount, status)
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
    let mut expected = Expected::new();
    let mut failures = Vec::new();
    for (name, amount, status) in answers {
        match status {
            Ok(200) => *expected.entry(name).or_default() += amount,
            other => failures.push((name, other)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} writes were not acknowledged, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    expected
}

/// Every counter a node holds under `prefix`, read page by page.
async fn list_all(http: &reqwest::Client, node: &NodeProcess, prefix: &str) -> Option<Expected> {
    let mut counters = Expected::new();
    let mut after: Option<String> = None;
    loop {
        let limit = PAGE.to_string();
        let mut query = vec![("prefix", prefix), ("limit", limit.as_str())];
        if let Some(after) = &after {
            query.push(("after", after.as_str()));
        }
        let response = http
            .get(node.url("/counters"))
            .query(&query)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let page: Value = response.json().await.ok()?;
        for counter in page["counters"].as_array()? {
            counters.insert(
                counter["name"].as_str()?.to_owned(),
                counter["value"].as_i64()?,
            );
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Some(counters),
        }
    }
}

/// A short account of how `actual` differs from `expected`, for failure messages.
fn difference(expected: &Expected, actual: &Expected) -> String {
    let missing = expected.keys().filter(|k| !actual.contains_key(*k)).count();
    let extra = actual.keys().filter(|k| !expected.contains_key(*k)).count();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| actual.get(k).filter(|a| *a != v).map(|a| (k, *v, *a)))
        .collect();
    format!(
        "{} expected, {} held: {missing} missing, {extra} unexpected, {} wrong (e.g. {:?})",
        expected.len(),
        actual.len(),
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    )
}

/// Waits until every node lists exactly `expected` under `prefix`; panics with the difference otherwise.
async fn assert_all_hold(nodes: &[&NodeProcess], prefix: &str, expected: &Expected) {
    let http = common::http();
    let converged = wait_until_backing_off(CONVERGE, LONGEST_POLL_PAUSE, || async {
        for node in nodes {
            if list_all(&http, node, prefix).await.as_ref() != Some(expected) {
                return false;
            }
        }
        true
    })
    .await;
    if !converged {
        let mut report = String::new();
        for node in nodes {
            let actual = list_all(&http, node, prefix).await.unwrap_or_default();
            report += &format!("\n  {}: {}", node.id, difference(expected, &actual));
        }
        panic!("nodes did not converge within {CONVERGE:?}:{report}");
    }
}

/// 10,000 counters: each written on one node, every 10th also on a second,
/// every 25th on all three, every 7th also decremented elsewhere.
fn ten_thousand_writes() -> Vec<Write> {
    let mut writes = Vec::new();
    for i in 0..10_000usize {
        let name = format!("many/{i:05}");
        let amount = (i % 5 + 1) as i64;
        writes.push((i % 3, name.clone(), amount));
        if i % 10 == 0 {
            writes.push(((i + 1) % 3, name.clone(), 2));
        }
        if i % 25 == 0 {
            writes.push(((i + 2) % 3, name.clone(), 3));
        }
        if i % 7 == 0 {
            writes.push(((i + 2) % 3, name, -((i % 4 + 1) as i64)));
        }
    }
    writes
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_counters_written_on_three_nodes_converge_everywhere() {
    let cluster = Cluster::start(3, &[]).await;
    let expected = write_all(&cluster.nodes, ten_thousand_writes()).await;
    assert_eq!(expected.len(), 10_000);
    assert!(
        expected.values().any(|v| *v < 0),
        "some counters must go negative"
    );
    let nodes: Vec<&NodeProcess> = cluster.nodes.iter().collect();
    assert_all_hold(&nodes, "many/", &expected).await;
}

/// Counters the catch-up test loads: 100k, the size the keyspace issue
/// asks an empty node to catch up on. `TALLY_KEYSPACE_COUNTERS` changes it
/// (the release benchmark `examples/keyspace_bench.rs` goes to 1M).
fn catch_up_counters() -> usize {
    std::env::var("TALLY_KEYSPACE_COUNTERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}
/// Requests in flight while bulk loading: bigger group commits, fewer deltas.
const BULK_IN_FLIGHT: usize = 128;
const SMALL_FRAME: &str = "65536";

/// Starts an empty node seeded with `seed` and waits until it lists exactly
/// `expected`; returns it with the push frames it received.
async fn join_empty_node(
    cluster: &Cluster,
    id: &str,
    seed: &str,
    extra: &[&str],
    expected: &Expected,
) -> (NodeProcess, u64) {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(["--seed".into(), seed.to_owned()]);
    let newcomer = NodeProcess::start(id, &cluster.dir.path().join(id), &args);
    newcomer.wait_ready().await;
    assert_all_hold(&[&newcomer], "bulk/", expected).await;
    let pushes = newcomer
        .metric("tally_gossip_frames_in_total", "type=\"push\"")
        .await;
    (newcomer, pushes)
}

/// Replaces every node of `cluster` by a fresh process on the same data
/// directory (same id, new ports) started with `extra`, seeded with the first.
async fn restart_all_with(cluster: &mut Cluster, extra: &[&str]) {
    let mut restarted: Vec<NodeProcess> = Vec::new();
    for old in &mut cluster.nodes {
        old.terminate();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(first) = restarted.first() {
            args.extend(["--seed".into(), first.gossip_addr.clone()]);
        }
        restarted.push(NodeProcess::start(&old.id, &old.data_dir, &args));
    }
    for node in &restarted {
        node.wait_ready().await;
    }
    cluster.nodes = restarted;
}

/// Asserts that none of `nodes` rejected a gossip frame.
async fn assert_no_rejected_frames<'a>(nodes: impl IntoIterator<Item = &'a NodeProcess>) {
    for node in nodes {
        let rejected = node.metric("tally_rejected_frames_total", "").await;
        assert_eq!(rejected, 0, "{} rejected frames", node.id);
    }
}

/// One large keyspace, loaded once, joined twice: first through 64 KiB
/// frames on every node (dozens of chunks), then, after the cluster restarts
/// from its logs with the default 1 MiB frames, through a few big chunks.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_node_catches_up_on_a_large_keyspace() {
    let small = ["--max-frame", SMALL_FRAME];
    let mut cluster = Cluster::start(3, &small).await;
    let writes =
        (0..catch_up_counters()).map(|i| (i % 3, format!("bulk/{i:06}"), (i % 3 + 1) as i64));
    let expected = write_all_with(&cluster.nodes, writes.collect(), BULK_IN_FLIGHT).await;
    let old: Vec<&NodeProcess> = cluster.nodes.iter().collect();
    assert_all_hold(&old, "bulk/", &expected).await;

    let seed = cluster.nodes[0].gossip_addr.clone();
    let (joiner, pushes) =
        join_empty_node(&cluster, "small-joiner", &seed, &small, &expected).await;
    // Chunks hold at most 32 KiB of estimated entries (~70 bytes each here).
    assert!(
        pushes >= 50,
        "expected many chunks under a 64 KiB frame limit, got {pushes}"
    );
    assert_no_rejected_frames(cluster.nodes.iter().chain([&joiner])).await;
    drop(joiner);

    restart_all_with(&mut cluster, &[]).await;
    let old: Vec<&NodeProcess> = cluster.nodes.iter().collect();
    assert_all_hold(&old, "bulk/", &expected).await;
    let seed = cluster.nodes[0].gossip_addr.clone();
    let (joiner, pushes) = join_empty_node(&cluster, "joiner", &seed, &[], &expected).await;
    assert!(
        pushes >= 2,
        "the keyspace exceeds one 1 MiB frame's half; got {pushes} push frames"
    );
    assert_no_rejected_frames(cluster.nodes.iter().chain([&joiner])).await;
}

fn names(page: &Value) -> Vec<&str> {
    page["counters"]
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_filters_and_validates() {
    let cluster = Cluster::start(1, &[]).await;
    let node = &cluster.nodes[0];
    let unicode = "pages/ünï côdé";
    for name in ["pages/a", "pages/b", "pages/c", "pagesX", "other", unicode] {
        let path = format!("/counters/{}/increment", encode_segment(name));
        assert_eq!(node.post(&path, "").await.0, 200, "{name}");
    }
    assert_eq!(
        node.post("/counters/other/decrement", r#"{"amount": 5}"#)
            .await
            .0,
        200
    );

    // Prefix filter: "pagesX" shares the text but not the "pages/" prefix.
    let (status, all) = node.get("/counters?prefix=pages/").await;
    assert_eq!(status, 200);
    assert_eq!(names(&all), ["pages/a", "pages/b", "pages/c", unicode]);
    assert_eq!(all["next"], Value::Null);

    // Cursor: `next` is the last name of a full page; following it resumes after it.
    let (_, first) = node.get("/counters?prefix=pages/&limit=2").await;
    assert_eq!(names(&first), ["pages/a", "pages/b"]);
    assert_eq!(first["next"], "pages/b");
    let (_, second) = node
        .get("/counters?prefix=pages/&limit=2&after=pages/b")
        .await;
    assert_eq!(names(&second), ["pages/c", unicode]);
    assert_eq!(
        second["next"],
        Value::Null,
        "an exactly full last page has no next"
    );
    // A cursor before the prefix starts at the prefix; one past everything is empty.
    let (_, early) = node.get("/counters?prefix=pages/&limit=1&after=a").await;
    assert_eq!(names(&early), ["pages/a"]);
    let (_, late) = node.get("/counters?prefix=pages/&after=zzz").await;
    assert_eq!(names(&late), Vec::<&str>::new());
    assert_eq!(late["next"], Value::Null);
    // Values come with names; no prefix lists everything in name order.
    let (_, everything) = node.get("/counters?limit=1000").await;
    let listed: Vec<(&str, i64)> = everything["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["value"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("other", -4),
            ("pages/a", 1),
            ("pages/b", 1),
            ("pages/c", 1),
            (unicode, 1),
            ("pagesX", 1)
        ]
    );

    // Limit bounds.
    for bad in ["0", "1001", "-1", "abc", "99999999999999999999999"] {
        let (status, answer) = node.get(&format!("/counters?limit={bad}")).await;
        assert_eq!(status, 400, "limit={bad}");
        assert!(answer["error"].is_string(), "limit={bad}: {answer}");
    }
    assert_eq!(node.get("/counters?limit=1").await.0, 200);
    assert_eq!(node.get("/counters?limit=1000").await.0, 200);

    // Names: 128 bytes is the most; control characters are refused.
    let longest = "n".repeat(128);
    assert_eq!(
        node.post(&format!("/counters/{longest}/increment"), "")
            .await
            .0,
        200
    );
    assert_eq!(node.get(&format!("/counters/{longest}")).await.0, 200);
    let two_byte_chars = "é".repeat(65); // 130 bytes in 65 characters
    let too_long = "n".repeat(129);
    for bad in [
        too_long.as_str(),
        two_byte_chars.as_str(),
        "tab\there",
        "nul\0",
        "line\nbreak",
        "del\u{7f}",
    ] {
        let segment = encode_segment(bad);
        for (status, answer) in [
            node.post(&format!("/counters/{segment}/increment"), "")
                .await,
            node.post(&format!("/counters/{segment}/decrement"), "")
                .await,
            node.get(&format!("/counters/{segment}")).await,
        ] {
            assert_eq!(status, 400, "{bad:?}: {answer}");
            assert!(answer["error"].is_string(), "{bad:?}: {answer}");
        }
    }

    // Never written: 404 with a JSON error, and still not listed.
    let (status, answer) = node.get("/counters/never-written").await;
    assert_eq!(status, 404);
    assert!(answer["error"].is_string(), "{answer}");
    let (_, listing) = node.get("/counters?prefix=never").await;
    assert_eq!(names(&listing), Vec::<&str>::new());
    // A written one answers with its name and value.
    let (status, answer) = node
        .get(&format!("/counters/{}", encode_segment(unicode)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["name"], unicode);
    assert_eq!(answer["value"], 1);
}
