//! A rolling restart under load: each of three nodes in turn gets SIGTERM
//! and is started again while clients write through the gateway without
//! pause. The graceful stop (not ready, draining header, requests in flight
//! finished, clean exit) and the gateway's readiness checks must add up to
//! zero failed requests and zero lost acknowledged writes.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, wait_until, Cluster, GatewayProcess};

const CLIENTS: usize = 8;
const COUNTER: &str = "rolling";
const PATIENCE: Duration = Duration::from_secs(30);

/// What the clients saw.
#[derive(Default)]
struct Load {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    max_latency_us: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

/// One client: increments by 1 through the gateway until told to stop.
async fn client(url: String, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let http = http();
    while !stop.load(Relaxed) {
        let started = Instant::now();
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"amount": 1}"#)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let latency = started.elapsed().as_micros() as u64;
        load.max_latency_us.fetch_max(latency, Relaxed);
        match answer {
            Ok(response) if response.status().is_success() => {
                load.acknowledged.fetch_add(1, Relaxed);
            }
            other => {
                load.failed.fetch_add(1, Relaxed);
                let what = match other {
                    Ok(response) => {
                        let status = response.status();
                        format!("{status}: {}", response.text().await.unwrap_or_default())
                    }
                    Err(error) => error.to_string(),
                };
                let mut first = load.first_failure.lock().unwrap();
                first.get_or_insert(what);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_write() {
    // The drain as shipped would do; shortened so the test stays quick,
    // but longer than the gateway's one-second readiness checks.
    let mut cluster = Cluster::start(3, &["--drain-period", "1500ms"]).await;
    let gateway = GatewayProcess::start(&cluster.nodes, None).await;
    let url = gateway.url(&format!("/counters/{COUNTER}/increment"));

    let (load, stop) = (Arc::new(Load::default()), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(url.clone(), Arc::clone(&load), Arc::clone(&stop))))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    for index in 0..cluster.nodes.len() {
        let node = &mut cluster.nodes[index];
        let status = node.stop_gracefully().expect("node was running");
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            node.id
        );
        node.restart();
        node.wait_ready().await;
        let everyone_back = wait_until(PATIENCE, || async {
            gateway.health().await.1["healthy_nodes"] == 3
        })
        .await;
        assert!(everyone_back, "the gateway never took {} back", node.id);
        // A moment of steady load with every node in before the next one goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    stop.store(true, Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let elapsed = started.elapsed();
    let (acknowledged, failed) = (load.acknowledged.load(Relaxed), load.failed.load(Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} failed requests during the roll (first: {:?})",
        load.first_failure.lock().unwrap()
    );
    assert!(acknowledged > 0, "no write got through");
    let expected = i64::try_from(acknowledged).unwrap();
    assert!(
        cluster.converge(Some(COUNTER), expected, PATIENCE).await,
        "acknowledged writes lost or counted twice: expected {expected} on every node"
    );
    println!(
        "rolling restart of 3 nodes: {acknowledged} writes in {elapsed:?} ({:.0}/s), 0 failed, max latency {:.1} ms",
        acknowledged as f64 / elapsed.as_secs_f64(),
        load.max_latency_us.load(Relaxed) as f64 / 1000.0
    );
}
