//! Every resource a client can hold is bounded, on real processes: slow or
//! silent HTTP clients are cut off after the header timeout without
//! starving anyone, connections beyond the cap are closed at once, slow
//! bodies get 408, `--max-counters` refuses new names with 507, `/ws`
//! subscribers are capped per address, and a node's snapshot travels in
//! chunks the gateway assembles.
mod common;

use std::time::{Duration, Instant};

use common::{tally_command, wait_until, within, ChildLog, GatewayProcess, NodeProcess};
use crdt_core::{wire, CounterMap};
use futures_util::{stream, StreamExt};
use tally_protocol::events::{ClusterEvent, NodeEvent, CHUNK_ENVELOPE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Generous bound for a debug build on a shared 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A node alone in a fresh data directory, ready.
async fn lone_node(id: &str, extra: &[&str]) -> (NodeProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(id, &dir.path().join(id), &args(extra));
    node.wait_ready().await;
    (node, dir)
}

/// Whether the server closes `stream` within `within` (EOF or reset),
/// discarding whatever it sends first.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A slowloris client: sends a request line and then one byte of a header
/// every 200 ms, never finishing it. Returns how long after `start` the
/// server closed the connection (None if it did not within `limit`).
async fn slow_client(addr: String, start: Instant, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(&addr).await.ok()?;
    if stream
        .write_all(b"GET /counter HTTP/1.1\r\n")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let header = b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut buf = [0u8; 256];
    for byte in header.iter().cycle() {
        if start.elapsed() > limit {
            return None;
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {} // an error answer; the close follows
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(&[*byte]).await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_clients_neither_starve_a_node_nor_outlive_the_header_timeout() {
    let (node, _dir) = lone_node("n1", &["--header-timeout", "3s"]).await;
    within(PATIENCE, async {
        let start = Instant::now();
        let limit = Duration::from_secs(20);
        let clients: Vec<_> = (0..200)
            .map(|_| tokio::spawn(slow_client(node.http_addr.clone(), start, limit)))
            .collect();
        // Let them all connect and start dribbling.
        let loaded = wait_until(Duration::from_millis(2500), || async {
            node.metric("tally_http_connections_open", "").await >= 200
        })
        .await;
        assert!(loaded, "the slow clients never all connected");
        let asked = Instant::now();
        let answer = common::http()
            .get(node.url("/counter"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .expect("a normal request answered within 1 s under 200 slow clients");
        assert!(answer.status().is_success());
        assert!(asked.elapsed() < Duration::from_secs(1));
        let mut closed_after = Vec::new();
        for client in clients {
            let closed = client.await.expect("client task");
            closed_after.push(closed.expect("a slow client was never cut off"));
        }
        let earliest = closed_after.iter().min().unwrap();
        let latest = closed_after.iter().max().unwrap();
        // Not by the idle timeout (they send a byte every 200 ms), not before the header timeout.
        assert!(
            *earliest >= Duration::from_millis(2500),
            "closed after {earliest:?}"
        );
        assert!(
            *latest <= Duration::from_secs(10),
            "closed after {latest:?}"
        );
        let drained = wait_until(Duration::from_secs(5), || async {
            node.metric("tally_http_connections_open", "").await < 10
        })
        .await;
        assert!(drained, "slow connections still counted open");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_are_closed_at_once_and_service_resumes_after() {
    let (node, _dir) = lone_node(
        "n1",
        &["--max-connections", "20", "--header-timeout", "30s"],
    )
    .await;
    within(PATIENCE, async {
        // The harness's own requests may hold a slot a moment longer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut streams = Vec::new();
        for _ in 0..30 {
            streams.push(TcpStream::connect(&node.http_addr).await.expect("connect"));
        }
        // A connection over the cap is closed without a byte; one under it
        // waits for its request (longer than this: --header-timeout 30s).
        let checks = streams.into_iter().map(|mut stream| async move {
            let closed = closed_within(&mut stream, Duration::from_secs(2)).await;
            (closed, stream)
        });
        let checked = futures_util::future::join_all(checks).await;
        let (refused, held): (Vec<_>, Vec<_>) =
            checked.into_iter().partition(|(closed, _)| *closed);
        let refused = refused.len();
        assert_eq!(held.len(), 20, "the cap let {} connections in", held.len());
        assert_eq!(refused, 10);
        // While the cap is full, even a normal request is closed at once.
        let full = common::http().get(node.url("/counter")).send().await;
        assert!(full.is_err(), "a request got through a full cap: {full:?}");
        drop(held);
        let resumed = wait_until(Duration::from_secs(5), || async {
            let answer = common::http().get(node.url("/counter")).send().await;
            matches!(answer, Ok(answer) if answer.status().is_success())
        })
        .await;
        assert!(resumed, "service did not resume once the connections went");
        let counted = node
            .metric("tally_http_connections_refused_total", "")
            .await;
        assert!(counted >= 11, "refused connections counted: {counted}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_slower_than_the_body_timeout_gets_408_and_the_connection_closes() {
    let (node, _dir) = lone_node("n1", &["--body-timeout", "1s"]).await;
    within(PATIENCE, async {
        let mut stream = TcpStream::connect(&node.http_addr).await.expect("connect");
        let head = "POST /counters/slow/increment HTTP/1.1\r\nhost: x\r\n\
                    content-length: 14\r\n\r\n{\"amount\"";
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        read.await.expect("the connection was closed").unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("{\"error\":"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(800));
        // Nothing was written.
        assert_eq!(node.named("slow").await, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_discovery_and_gateway_all_close_silent_connections_after_the_header_timeout() {
    let (node, _dir) = lone_node("n1", &["--header-timeout", "1s"]).await;
    let discovery_addr = format!("127.0.0.1:{}", common::free_port());
    let log = ChildLog::new("discovery");
    let mut discovery = tally_command(&log)
        .args([
            "discovery",
            "--addr",
            &discovery_addr,
            "--header-timeout",
            "1s",
        ])
        .spawn()
        .expect("spawn tally discovery");
    let discovery_up = common::answers_ok(
        &format!("http://{discovery_addr}/health"),
        Duration::from_secs(20),
    )
    .await;
    let gateway = GatewayProcess::spawn(&args(&[
        "--node",
        &node.http_addr,
        "--header-timeout",
        "1s",
    ]));
    let gateway_up = common::answers_ok(&gateway.url("/nodes"), Duration::from_secs(20)).await;
    let outcome = within(PATIENCE, async {
        assert!(
            discovery_up && gateway_up,
            "discovery or gateway did not start"
        );
        for (what, addr) in [
            ("node", node.http_addr.as_str()),
            ("discovery", discovery_addr.as_str()),
            ("gateway", gateway.addr.as_str()),
        ] {
            let started = Instant::now();
            let mut silent = TcpStream::connect(addr).await.expect("connect");
            assert!(
                closed_within(&mut silent, Duration::from_secs(6)).await,
                "{what} kept a silent connection open"
            );
            let after = started.elapsed();
            assert!(
                after >= Duration::from_millis(800),
                "{what} closed it after {after:?}"
            );
        }
    });
    outcome.await;
    let _ = discovery.kill();
    let _ = discovery.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn max_counters_refuses_new_names_with_507_and_keeps_existing_ones_writable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limited = NodeProcess::start(
        "limited",
        &dir.path().join("limited"),
        &args(&["--max-counters", "3"]),
    );
    let open = NodeProcess::start(
        "open",
        &dir.path().join("open"),
        &args(&["--seed", &limited.gossip_addr]),
    );
    limited.wait_ready().await;
    open.wait_ready().await;
    within(PATIENCE * 2, async {
        for name in ["a", "b", "c"] {
            let (status, body) = limited
                .post(&format!("/counters/{name}/increment"), "")
                .await;
            assert_eq!(status, 200, "{name}: {body}");
        }
        let (status, body) = limited.post("/counters/d/increment", "").await;
        assert_eq!(status, 507, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("--max-counters"),
            "{body}"
        );
        // The default counter does not exist yet either.
        let (status, _) = limited.post("/increment", "").await;
        assert_eq!(status, 507);
        assert_eq!(
            limited.named("d").await,
            None,
            "a refused write left a counter"
        );
        // Existing counters stay writable, both ways.
        let (status, body) = limited
            .post("/counters/a/increment", "{\"amount\": 4}")
            .await;
        assert_eq!((status, body["value"].as_i64()), (200, Some(5)), "{body}");
        let (status, body) = limited.post("/counters/b/decrement", "").await;
        assert_eq!((status, body["value"].as_i64()), (200, Some(0)), "{body}");
        assert_eq!(limited.metric("tally_counters", "").await, 3);
        assert_eq!(limited.metric("tally_entries", "").await, 3);
        assert_eq!(limited.metric("tally_actors", "").await, 1);
        assert!(limited.metric("tally_state_bytes", "").await > 0);

        // Merges from peers are never refused: the limit is about local creation.
        for name in ["p", "q", "r", "s"] {
            let (status, _) = open.post(&format!("/counters/{name}/increment"), "").await;
            assert_eq!(status, 200);
        }
        let merged = wait_until(PATIENCE, || async { limited.named("s").await == Some(1) }).await;
        assert!(
            merged,
            "gossip did not bring the peer's counters past the limit"
        );
        assert_eq!(limited.metric("tally_counters", "").await, 7);
        assert_eq!(limited.metric("tally_actors", "").await, 2);
        // Now past the limit, a new name is still refused, a gossiped one is writable.
        let (status, _) = limited.post("/counters/t/increment", "").await;
        assert_eq!(status, 507);
        let (status, body) = limited.post("/counters/p/increment", "").await;
        assert_eq!((status, body["value"].as_i64()), (200, Some(2)), "{body}");
    })
    .await;
}

/// The status of a WebSocket handshake with `url` (101 when it opened), and the socket.
async fn open_ws(
    url: &str,
) -> (
    u16,
    Option<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>,
) {
    let handshake = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url));
    match handshake.await.expect("handshake answered") {
        Ok((socket, response)) => (response.status().as_u16(), Some(socket)),
        Err(WsError::Http(response)) => (response.status().as_u16(), None),
        Err(error) => panic!("handshake failed: {error}"),
    }
}

/// Opens `cap` streams from this address, checks the next one is refused
/// with 429, and that a slot freed is a slot to take again.
async fn per_address_cap_holds(url: &str, cap: usize) {
    let mut sockets = Vec::new();
    for i in 0..cap {
        let (status, socket) = open_ws(url).await;
        assert_eq!(status, 101, "stream {i} of {cap} refused");
        sockets.push(socket.unwrap());
    }
    let (status, _) = open_ws(url).await;
    assert_eq!(status, 429, "stream {} from one address accepted", cap + 1);
    let mut first = sockets.remove(0);
    first.close(None).await.expect("close");
    drop(first);
    // The slot comes back once the node sees the close: retry a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match open_ws(url).await {
            (101, Some(socket)) => break Some(socket),
            (429, None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => break None,
        }
    };
    assert!(
        reopened.is_some(),
        "a closed stream's slot was never given back"
    );
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_streams_are_capped_per_client_address_on_nodes_and_the_gateway() {
    let (node, _dir) = lone_node("n1", &[]).await;
    within(
        PATIENCE,
        per_address_cap_holds(&format!("ws://{}/ws", node.http_addr), 8),
    )
    .await;

    // The gateway's own stream from the node comes from this address too:
    // a fresh node for it, so the count above does not mix in.
    let (other, _other_dir) = lone_node("n2", &[]).await;
    let gateway = GatewayProcess::start(std::slice::from_ref(&other), None).await;
    within(
        PATIENCE,
        per_address_cap_holds(&gateway.url("/ws").replace("http", "ws"), 8),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_snapshot_spans_many_chunks_is_followed_by_the_gateway() {
    const COUNTERS: usize = 3_000;
    const CHUNK: usize = 4096;
    let (node, _dir) = lone_node("n1", &["--stream-chunk-bytes", &CHUNK.to_string()]).await;
    within(PATIENCE * 3, async {
        let http = common::http();
        let writes = stream::iter(0..COUNTERS)
            .map(|i| {
                let request = http
                    .post(node.url(&format!("/counters/counter-{i:05}/increment")))
                    .body(format!("{{\"amount\": {}}}", i + 1))
                    .send();
                async move { request.await.map(|answer| answer.status().as_u16()) }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        assert!(
            writes.iter().all(|w| matches!(w, Ok(200))),
            "a write failed"
        );
        let (status, _) = node.post("/increment", "{\"amount\": 42}").await;
        assert_eq!(status, 200);

        // The node's own stream: chunks under the limit that add up to its state.
        let url = format!("ws://{}/ws", node.http_addr);
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("node /ws");
        let mut state = CounterMap::new();
        let mut chunks = 0;
        loop {
            let Some(Ok(Message::Binary(frame))) = socket.next().await else {
                panic!("the node's stream ended before its snapshot did");
            };
            assert!(
                frame.len() <= CHUNK + CHUNK_ENVELOPE_BYTES,
                "a {}-byte frame (chunks are {CHUNK})",
                frame.len()
            );
            let NodeEvent::Snapshot {
                state: chunk,
                first,
                last,
                ..
            } = wire::decode(&frame).unwrap()
            else {
                panic!("the snapshot was interrupted");
            };
            assert_eq!(first, chunks == 0);
            state.merge(&chunk);
            chunks += 1;
            if last {
                break;
            }
        }
        assert!(chunks > 10, "only {chunks} chunks");
        assert_eq!(state.len(), COUNTERS + 1);
        assert_eq!(state.value("default"), Some(42));
        assert_eq!(state.value("counter-02999"), Some(3000));
        drop(socket);

        // The gateway follows it: `/nodes` shows the node's value, nothing missing.
        let gateway = GatewayProcess::start(std::slice::from_ref(&node), None).await;
        let followed = wait_until(PATIENCE, || async {
            let view = gateway.node_view("n1").await;
            view.is_some_and(|v| v.value == Some(42) && v.lag.is_some_and(|lag| lag.total == 0))
        })
        .await;
        assert!(
            followed,
            "the gateway never showed the node's state: {:?}",
            gateway.nodes().await
        );
        // And a browser gets all of it.
        let url = gateway.url("/ws").replace("http", "ws");
        let (mut browser, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("gateway /ws");
        let mut seen = CounterMap::new();
        while seen.len() < COUNTERS + 1 {
            let Some(Ok(Message::Binary(frame))) = browser.next().await else {
                panic!("the browser stream ended");
            };
            match wire::decode(&frame).unwrap() {
                ClusterEvent::Counters { state, first, .. } => {
                    if first {
                        seen = state;
                    } else {
                        seen.merge(&state);
                    }
                }
                ClusterEvent::CountersDelta { delta } => {
                    seen.merge(&delta);
                }
                _ => {}
            }
        }
        assert_eq!(seen, state);
        let expected = COUNTERS as u64 + 1;
        assert_eq!(node.metric("tally_counters", "").await, expected);
        assert_eq!(node.metric("tally_entries", "").await, expected);
    })
    .await;
}
