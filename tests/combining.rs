//! The gateway's combined writes and local reads against real `tally node`
//! processes: many clients counted exactly once, a batch that fails after
//! it was sent answered with errors and never resent, writes behind a batch
//! stuck at a hung node going on by another node, reads that see the
//! reader's own writes, and tokens judged per client.
mod common;

use std::process::Command;
use std::time::Duration;

use common::{http, within, Cluster, GatewayProcess, NodeProcess};
use futures_util::future::join_all;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(30);
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// POSTs `{"amount": amount}` to `url` (with `token`): status and JSON.
async fn write(
    client: &reqwest::Client,
    url: &str,
    amount: u64,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = client.post(url).body(format!("{{\"amount\": {amount}}}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) => common::status_and_json(response).await,
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_through_the_gateway_are_each_counted_exactly_once() {
    const CLIENTS: u64 = 32;
    const PER_CLIENT: u64 = 40;
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, &[]).await;
        let gateway = GatewayProcess::start(&cluster.nodes, None).await;
        let clients = (0..CLIENTS).map(|client| {
            let (up, down) = (
                gateway.url("/counters/sum/increment"),
                gateway.url("/counters/sum/decrement"),
            );
            let default = gateway.url("/increment");
            async move {
                let http = http();
                let mut expected = (0i64, 0i64);
                for i in 0..PER_CLIENT {
                    let amount = 1 + (client * PER_CLIENT + i) % 7;
                    // Two counters, both directions: combined items of each kind.
                    let (url, sign) = match i % 3 {
                        0 => (&down, -1),
                        1 => (&up, 1),
                        _ => (&default, 0),
                    };
                    let (status, body) = write(&http, url, amount, None).await;
                    assert_eq!(status, 200, "client {client} write {i}: {body}");
                    match sign {
                        0 => expected.1 += amount as i64,
                        sign => expected.0 += sign * amount as i64,
                    }
                }
                expected
            }
        });
        let (sum, default) = join_all(clients)
            .await
            .into_iter()
            .fold((0, 0), |total, one| (total.0 + one.0, total.1 + one.1));
        assert!(
            cluster.converge(Some("sum"), sum, PATIENCE).await,
            "nodes never all showed sum = {sum}"
        );
        assert!(
            cluster.converge(None, default, PATIENCE).await,
            "nodes never all showed default = {default}"
        );
        // Combining: fewer operations reached the nodes than clients sent.
        let mut operations = 0;
        for node in &cluster.nodes {
            operations += node.metric("tally_increments_total", "").await;
            operations += node.metric("tally_decrements_total", "").await;
        }
        assert!(
            operations > 0 && operations <= CLIENTS * PER_CLIENT,
            "{operations} operations"
        );
    })
    .await;
}

fn signal(node: &NodeProcess, signal: &str) {
    let pid = node.pid().expect("a running node");
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_fails_after_it_was_sent_answers_every_client_with_an_error_and_is_not_resent()
{
    const CLIENTS: u32 = 12;
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(1, &[]).await;
        let node = &cluster.nodes[0];
        let gateway = GatewayProcess::start(&cluster.nodes, None).await;
        assert_eq!(gateway.post("/counters/frozen/increment", "").await.0, 200);
        // Stopped, not dead: its kernel still accepts connections and
        // takes requests into its buffers, so a batch leaves the gateway
        // and then hears nothing until the gateway's request timeout.
        signal(node, "STOP");
        let clients = (0..CLIENTS).map(|client| {
            let url = gateway.url("/counters/frozen/increment");
            async move {
                // Odd powers of two: the final sum names the writes that
                // landed, and a write applied twice would set an even bit.
                let amount = 1u64 << (2 * client + 1);
                (amount, write(&http(), &url, amount, None).await)
            }
        });
        let answers = join_all(clients).await;
        signal(node, "CONT");
        let mut sent = 0u64;
        for (amount, (status, body)) in &answers {
            match status {
                // Sent, outcome unknown.
                502 | 504 => sent |= amount,
                // Never sent: the node had left the rotation.
                503 => {}
                other => panic!("write of {amount}: {other} {body}"),
            }
        }
        assert!(
            sent > 0,
            "no batch was sent before the node left: {answers:?}"
        );
        // Once the node runs again it may apply what it had received (or
        // not: the gateway gave up on those connections); nothing else
        // arrives, and nothing twice.
        assert!(
            common::wait_until(PATIENCE, || async { node.named("frozen").await.is_some() }).await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let landed = node.named("frozen").await.expect("value") - 1;
        let landed = u64::try_from(landed).expect("a non-negative sum");
        assert_eq!(
            landed & !sent,
            0,
            "landed {landed:#b}, sent {sent:#b}: a write that was never sent, or one applied twice"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_behind_a_batch_stuck_at_a_hung_node_go_on_by_another_node() {
    const WRITES: usize = 30;
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, &[]).await;
        let gateway = GatewayProcess::start(&cluster.nodes, None).await;
        let url = gateway.url("/counters/hung/increment");
        assert_eq!(write(&http(), &url, 1, None).await.0, 200);
        // Hung, not dead: a batch sent to it hears nothing until the
        // gateway's request timeout (5 s).
        signal(&cluster.nodes[1], "STOP");
        let started = std::time::Instant::now();
        // One write every 20 ms: round robin sends the first batches to
        // each node in turn, so one of them sticks at the hung node while
        // the rest arrive behind it.
        let writes = (0..WRITES).map(|i| {
            let url = url.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                let sent = started.elapsed();
                let (status, body) = write(&http(), &url, 1, None).await;
                (sent, started.elapsed(), status, body)
            }
        });
        let answers = join_all(writes).await;
        signal(&cluster.nodes[1], "CONT");
        let stuck: Vec<_> = (answers.iter())
            .filter(|(_, _, status, _)| matches!(status, 502 | 504))
            .collect();
        let Some(&&(stuck_sent, stuck_answered, _, _)) = stuck.first() else {
            panic!("no batch went to the hung node: {answers:?}");
        };
        // A write sent after the stuck batch left and answered before it:
        // it did not wait for the hung node's timeout behind it.
        let went_on = (answers.iter())
            .filter(|(sent, answered, status, _)| {
                *status == 200 && *sent > stuck_sent && *answered < stuck_answered
            })
            .count();
        assert!(
            went_on > 0,
            "every write behind the stuck batch waited for its timeout: {answers:?}"
        );
        for (_, _, status, body) in &answers {
            assert!(matches!(status, 200 | 502 | 503 | 504), "{status} {body}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_through_the_gateway_is_seen_by_the_next_read_through_it() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, &[]).await;
        let gateway = GatewayProcess::start(&cluster.nodes, None).await;
        let http = http();
        let mut local = 0;
        for i in 0..100 {
            let (status, written) =
                write(&http, &gateway.url("/counters/ryw/increment"), 1, None).await;
            assert_eq!(status, 200, "write {i}: {written}");
            let (status, read) = gateway.get("/counters/ryw").await;
            assert_eq!(status, 200, "read {i}: {read}");
            let (written, seen) = (written["value"].as_i64(), read["value"].as_i64());
            assert!(
                seen >= written,
                "read {i} saw {seen:?} after a write answered {written:?}"
            );
            local += usize::from(read["node"] == "gateway");
        }
        assert!(local > 0, "no read was answered from the gateway's view");
        // `?r=` asks a node.
        let (status, read) = gateway.get("/counters/ryw?r=node").await;
        assert_eq!(status, 200, "{read}");
        assert_ne!(read["node"], "gateway");
    })
    .await;
}

const READ_TOKEN: &str = "combining-read-token-0123456789";
const WRITE_TOKEN: &str = "combining-write-token-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_judged_per_client_when_writes_are_combined() {
    const ROUNDS: usize = 30;
    within(TEST_LIMIT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("{READ_TOKEN} read\n{WRITE_TOKEN} write\n"))
            .expect("tokens");
        // The nodes check tokens; this gateway has no file of its own, so
        // only the nodes can refuse: a combined batch must carry each
        // client's own token, never another's.
        let node = NodeProcess::start(
            "n1",
            &dir.path().join("n1"),
            &["--api-tokens-file".into(), tokens.display().to_string()],
        );
        node.wait_ready_as(READ_TOKEN).await;
        let gateway = GatewayProcess::spawn(&["--node".into(), node.http_addr.clone()]);
        let up = common::wait_until(PATIENCE, || async {
            gateway.health().await.1["healthy_nodes"] == 1
        })
        .await;
        assert!(up, "the gateway never saw the node healthy");
        let url = gateway.url("/counters/guarded/increment");
        let callers = [
            (Some(WRITE_TOKEN), 200),
            (Some(READ_TOKEN), 403),
            (None, 401),
        ];
        let mut accepted = 0;
        for round in 0..ROUNDS {
            // The three at once, so they wait in the gateway together.
            let answers = join_all(callers.iter().map(|(token, _)| {
                let url = url.clone();
                async move { write(&http(), &url, 1, *token).await }
            }))
            .await;
            for ((token, expected), (status, body)) in callers.iter().zip(answers) {
                assert_eq!(status, *expected, "round {round}, token {token:?}: {body}");
            }
            accepted += 1;
        }
        let seen = http()
            .get(node.url("/counters/guarded"))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .expect("read");
        let (_, body) = common::status_and_json(seen).await;
        assert_eq!(body["value"].as_i64(), Some(accepted), "{body}");
    })
    .await;
}
