//! `tally bench --compare-gateway G --compare-direct N`: the same load on a
//! node and on a gateway, side by side. Durable increments (`POST
//! /counters/{c}/increment {"amount":1}`) and reads (`GET /counters/{c}`)
//! from 32, 64 and 256 clients (`--compare-clients`), each for
//! `--compare-duration`, each client on its own keep-alive connection;
//! `--compare-rounds` alternating runs per cell, medians reported.
//! Starts nothing: point it at a running node and gateway.
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cli::BenchArgs;

/// One run's figures.
struct Figures {
    per_second: f64,
    p99_ms: f64,
    errors: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Write,
    Read,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Write => "durable increments",
            Kind::Read => "GET /counters/{c}",
        }
    }
}

/// Runs every comparison and prints the table (Markdown).
pub async fn run(direct: &str, gateway: &str, args: &BenchArgs) -> anyhow::Result<()> {
    crdt_core::CounterName::new(&args.counter).map_err(|e| anyhow::anyhow!("--counter: {e}"))?;
    let (direct, gateway) = (base_url(direct), base_url(gateway));
    println!(
        "comparing {direct} (direct) with {gateway} (gateway), {:?} per run, median of {} alternating runs",
        args.compare_duration,
        args.compare_rounds.max(1)
    );
    println!(
        "| load | clients | direct /s | direct p99 | gateway /s | gateway p99 | gateway ÷ direct |"
    );
    println!("|---|---|---|---|---|---|---|");
    for kind in [Kind::Write, Kind::Read] {
        for &clients in &args.compare_clients {
            let clients = clients.max(1);
            // Alternating runs, medians: a shared machine's noise hits both sides.
            let (mut nears, mut fars) = (Vec::new(), Vec::new());
            for _ in 0..args.compare_rounds.max(1) {
                nears.push(load(&direct, kind, clients, args).await?);
                fars.push(load(&gateway, kind, clients, args).await?);
            }
            let (near, far) = (median(nears), median(fars));
            let errors = match near.errors + far.errors {
                0 => String::new(),
                _ => format!(" (errors: {} / {})", near.errors, far.errors),
            };
            println!(
                "| {} | {clients} | {:.0} | {:.2} ms | {:.0} | {:.2} ms | {:.2}×{errors} |",
                kind.name(),
                near.per_second,
                near.p99_ms,
                far.per_second,
                far.p99_ms,
                far.per_second / near.per_second.max(1.0),
            );
        }
    }
    Ok(())
}

/// The run with the median throughput, its p99 the median of the p99s,
/// its errors the sum.
fn median(mut runs: Vec<Figures>) -> Figures {
    let errors = runs.iter().map(|run| run.errors).sum();
    let mut p99s: Vec<f64> = runs.iter().map(|run| run.p99_ms).collect();
    p99s.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let middle = runs.len() / 2;
    Figures {
        per_second: runs.get(middle).map_or(0.0, |run| run.per_second),
        p99_ms: p99s.get(middle).copied().unwrap_or(0.0),
        errors,
    }
}

async fn load(base: &str, kind: Kind, clients: usize, args: &BenchArgs) -> anyhow::Result<Figures> {
    let url: http::Uri = match kind {
        Kind::Write => format!("{base}/counters/{}/increment", args.counter),
        Kind::Read => format!("{base}/counters/{}", args.counter),
    }
    .parse()
    .context("target URL")?;
    // Reads need the counter to exist.
    if kind == Kind::Read {
        let client = one_connection();
        let write: http::Uri = format!("{base}/counters/{}/increment", args.counter).parse()?;
        send(&client, &write, Kind::Write)
            .await
            .context("seeding the counter")?;
    }
    let duration = args.compare_duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = one_connection();
            let mut latencies = Histogram::<u64>::new(3)?;
            let mut errors = 0u64;
            while started.elapsed() < duration {
                let sent = Instant::now();
                match send(&client, &url, kind).await {
                    Ok(()) => latencies.record(sent.elapsed().as_micros() as u64)?,
                    Err(_) => errors += 1,
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for task in tasks {
        let (one, failed) = task.await.context("client task")??;
        latencies.add(one)?;
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the cluster settle between runs (gossip, group commits in flight).
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Figures {
        per_second: latencies.len() as f64 / elapsed,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    })
}

type OneConnection = Client<HttpConnector, Full<Bytes>>;

/// A client that keeps (at most) one idle connection: one simulated client.
fn one_connection() -> OneConnection {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

async fn send(client: &OneConnection, url: &http::Uri, kind: Kind) -> anyhow::Result<()> {
    let request = match kind {
        Kind::Write => http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))?,
        Kind::Read => http::Request::get(url.clone()).body(Full::new(Bytes::new()))?,
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .context("timed out")??;
    let status = answer.status();
    answer.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "{status}");
    Ok(())
}

fn base_url(target: &str) -> String {
    if target.starts_with("http://") {
        target.trim_end_matches('/').to_owned()
    } else {
        format!("http://{target}")
    }
}
