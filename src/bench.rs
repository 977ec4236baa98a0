//! `tally bench`: a bounded load generator. It sends `--requests`
//! increments from `--clients` concurrent clients (each with its own
//! keep-alive connection), round robin over `--target`s, and prints
//! throughput and latency percentiles (once per `--w` level, so plain and
//! quorum writes compare in one run); with `--convergence` it then
//! measures how long a write on the first target takes to show on all.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::BenchArgs;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tally_protocol::idempotency::IDEMPOTENCY_KEY_HEADER;

/// Longest a convergence probe waits before reporting a failure.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(10);
const CONVERGENCE_PROBES: usize = 20;

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let (Some(gateway), Some(direct)) = (&args.compare_gateway, &args.compare_direct) {
        return crate::compare::run(direct, gateway, &args).await;
    }
    if args.targets.is_empty() {
        bail!("give at least one --target <addr> (or --compare-gateway with --compare-direct)");
    }
    if args.clients == 0 || args.requests == 0 {
        bail!("--clients and --requests must be at least 1");
    }
    crdt_core::CounterName::new(&args.counter).map_err(|e| anyhow::anyhow!("--counter: {e}"))?;
    let targets: Arc<Vec<String>> = Arc::new(args.targets.iter().map(|t| base_url(t)).collect());
    for run in &args.write_levels {
        let (level, keyed) = match run.strip_suffix("+key") {
            Some(level) => (level, true),
            None => (run.as_str(), false),
        };
        let (ok, errors, elapsed, latencies) = load(&targets, &args, level, keyed).await?;
        let keys = if keyed { ", keyed" } else { "" };
        println!(
            "bench: {ok} increments (w={level}{keys}) in {:.2} s = {:.0}/s with {} clients over {} target(s); errors {errors}",
            elapsed.as_secs_f64(),
            ok as f64 / elapsed.as_secs_f64(),
            args.clients,
            targets.len(),
        );
        println!(
            "latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            ms(latencies.value_at_quantile(0.50)),
            ms(latencies.value_at_quantile(0.99)),
            ms(latencies.value_at_quantile(0.999)),
            ms(latencies.max())
        );
    }
    if args.convergence {
        convergence(&targets, &args.counter).await?;
    }
    Ok(())
}

/// One load run: `--requests` increments with `?w=level` (each with a key
/// of its own when `keyed`) from `--clients` clients; what succeeded, what failed, how long it took, the latencies.
async fn load(
    targets: &Arc<Vec<String>>,
    args: &BenchArgs,
    level: &str,
    keyed: bool,
) -> anyhow::Result<(u64, u64, Duration, Histogram<u64>)> {
    let query = match level {
        "1" => String::new(),
        level => format!("?w={level}"),
    };
    let remaining = Arc::new(AtomicU64::new(args.requests));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Keys unique across runs and clients: a rerun must not replay.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        ^ u128::from(std::process::id());
    let mut clients = Vec::with_capacity(args.clients);
    for client_index in 0..args.clients {
        let (targets, remaining, errors) = (
            Arc::clone(targets),
            Arc::clone(&remaining),
            Arc::clone(&errors),
        );
        let (counter, query) = (args.counter.clone(), query.clone());
        clients.push(tokio::spawn(async move {
            let http = client()?;
            let mut latencies = Histogram::<u64>::new(3)?;
            let mut turn = client_index;
            while take_one(&remaining) {
                let url = format!(
                    "{}/counters/{counter}/increment{query}",
                    targets[turn % targets.len()]
                );
                turn += 1;
                let mut request = http.post(&url);
                if keyed {
                    let key = format!("bench-{run:x}-{client_index}-{turn}");
                    request = request.header(IDEMPOTENCY_KEY_HEADER, key);
                }
                let sent = Instant::now();
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        latencies.record(sent.elapsed().as_micros() as u64)?;
                    }
                    _ => {
                        errors.fetch_add(1, Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    for client in clients {
        latencies.add(client.await.context("client task")??)?;
    }
    let elapsed = started.elapsed();
    Ok((latencies.len(), errors.load(Relaxed), elapsed, latencies))
}

fn take_one(remaining: &AtomicU64) -> bool {
    remaining
        .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(1))
        .is_ok()
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn base_url(target: &str) -> String {
    if target.starts_with("http://") {
        target.trim_end_matches('/').to_owned()
    } else {
        format!("http://{target}")
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?)
}

/// Writes on the first target, then polls every target until it shows the
/// new value; prints the time to convergence.
async fn convergence(targets: &[String], counter: &str) -> anyhow::Result<()> {
    let http = client()?;
    let mut times = Histogram::<u64>::new(3)?;
    for _ in 0..CONVERGENCE_PROBES {
        let written = Instant::now();
        let answer: serde_json::Value = http
            .post(format!("{}/counters/{counter}/increment", targets[0]))
            .send()
            .await?
            .json()
            .await?;
        let value = answer["value"]
            .as_i64()
            .context("write answer has no value")?;
        for target in targets {
            loop {
                let seen: serde_json::Value = http
                    .get(format!("{target}/counters/{counter}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                if seen["value"].as_i64().unwrap_or(i64::MIN) >= value {
                    break;
                }
                if written.elapsed() > CONVERGENCE_TIMEOUT {
                    bail!("{target} did not converge within {CONVERGENCE_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        times.record(written.elapsed().as_micros() as u64)?;
    }
    println!(
        "convergence (write on {} → seen by all {}): p50 {:.2} ms, max {:.2} ms over {CONVERGENCE_PROBES} probes",
        targets[0],
        targets.len(),
        ms(times.value_at_quantile(0.5)),
        ms(times.max())
    );
    Ok(())
}
