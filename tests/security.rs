//! The closed cluster, checked with real processes on loopback: discovery
//! refuses unsigned calls and the gateway never routes to a node that cannot
//! prove the cluster secret; other web sites cannot post or open streams;
//! the old "freeze" sequence leaves a counter writable; API tokens give 401,
//! 403 or access by role on nodes and the gateway; and no process starts
//! without a secret unless told `--insecure`.
mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    free_port, http, signal_and_reap, status_and_json, wait_until, within, ChildLog, Cluster,
    DiscoveryProcess, GatewayApi, GatewayProcess, NodeProcess, TALLY,
};
use reqwest::Method;
use serde_json::{json, Value};
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::request_auth::{self, RequestParts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Generous bound for anything to happen on a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(20);
/// Bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// A foreign web site, as a browser on one of its pages would name it.
const EVIL_ORIGIN: &str = "http://evil.example";

/// Sends `method url` with optional bearer `token`, `Origin`
/// and JSON `body`: status and JSON (null when the answer is not JSON).
async fn call(
    method: Method,
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = http().request(method.clone(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    status_and_json(response).await
}

/// Asserts `answer` is `status` with a JSON `{"error": "..."}` body.
fn assert_refused(answer: &(u16, Value), status: u16, what: &str) {
    assert_eq!(answer.0, status, "{what}: {}", answer.1);
    assert!(
        answer.1["error"].is_string(),
        "{what}: the {status} carries no JSON error: {}",
        answer.1
    );
}

/// The status of a WebSocket handshake to `url` (101 when accepted).
async fn ws_status(url: &str, origin: Option<&str>) -> u16 {
    let mut request = url.into_client_request().expect("a ws:// request");
    if let Some(origin) = origin {
        let value = origin.parse().expect("an Origin header value");
        request.headers_mut().insert("origin", value);
    }
    let handshake = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request));
    match handshake.await.expect("the ws handshake hung") {
        Ok((_socket, response)) => response.status().as_u16(),
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("ws handshake to {url}: {error}"),
    }
}

// ---------------------------------------------------------------------------
// a) discovery refuses the unsigned, the gateway refuses the unproven

/// What a fake node was asked.
#[derive(Default)]
struct FakeCounts {
    health: AtomicUsize,
    increments: AtomicUsize,
    other: AtomicUsize,
}

/// A tiny HTTP server that looks like a node to anyone who does not ask for
/// proof: `GET /health` → 200 `{"status":"ok","node":"fake"}`, `POST
/// /increment` → 200 `{"value":0,"node":"fake"}`, anything else 404. It
/// counts what it gets. (Hand-written HTTP/1.1, one request per connection:
/// the test crate has no server framework among its dependencies.)
struct FakeNode {
    addr: String,
    counts: Arc<FakeCounts>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeNode {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let counts = Arc::new(FakeCounts::default());
        let server = tokio::spawn({
            let counts = Arc::clone(&counts);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(Self::answer(stream, Arc::clone(&counts)));
                }
            }
        });
        Self {
            addr,
            counts,
            server,
        }
    }

    async fn answer(mut stream: TcpStream, counts: Arc<FakeCounts>) {
        let Some((method, path)) = Self::read_request(&mut stream).await else {
            return;
        };
        let (status, body) = match (method.as_str(), path.as_str()) {
            ("GET", "/health" | "/ready") => {
                counts.health.fetch_add(1, Ordering::SeqCst);
                ("200 OK", r#"{"status":"ok","node":"fake"}"#)
            }
            ("POST", "/increment") => {
                counts.increments.fetch_add(1, Ordering::SeqCst);
                ("200 OK", r#"{"value":0,"node":"fake"}"#)
            }
            _ => {
                counts.other.fetch_add(1, Ordering::SeqCst);
                ("404 Not Found", r#"{"error":"no such route"}"#)
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Method and path (query dropped) of one request; reads its body too.
    async fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
        const LIMIT: usize = 64 * 1024;
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > LIMIT {
                return None;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut words = head.split_whitespace();
        let method = words.next()?.to_owned();
        let path = words.next()?.split('?').next()?.to_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0)
            .min(LIMIT);
        while buffer.len() - head_end < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        Some((method, path))
    }

    fn health_checks(&self) -> usize {
        self.counts.health.load(Ordering::SeqCst)
    }

    fn increments(&self) -> usize {
        self.counts.increments.load(Ordering::SeqCst)
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Waits until `gateway` counts `n` healthy nodes (asked with `token`, if
/// any; not listening yet counts as not yet).
async fn gateway_sees_healthy(gateway: &GatewayApi, n: u64, token: Option<&str>) -> bool {
    let url = gateway.url("/health");
    let client = http();
    wait_until(PATIENCE, || async {
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) => status_and_json(response).await.1["healthy_nodes"] == n,
            Err(_) => false,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_discovery_calls_are_refused_and_the_gateway_never_routes_to_a_fake_node() {
    within(TEST_LIMIT, async {
        let discovery = DiscoveryProcess::start("5s").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let args: Vec<String> = ["--discovery", &discovery.url(), "--heartbeat", "200ms"]
            .map(String::from)
            .to_vec();
        let real = NodeProcess::start("real-1", &dir.path().join("real-1"), &args);
        real.wait_ready().await;
        let listed_real = || async { discovery.peer_ids().await == Some(vec!["real-1".into()]) };
        assert!(
            wait_until(PATIENCE, listed_real).await,
            "the real node never registered"
        );
        let follower = GatewayProcess::spawn(&["--discovery".into(), discovery.url()]);
        assert!(
            gateway_sees_healthy(&follower, 1, None).await,
            "the discovery-fed gateway never routed to the real node"
        );

        // The fake tries to join through discovery, unsigned and signed with
        // a secret that is not the cluster's; and to evict the real node.
        let fake = FakeNode::start().await;
        let member = json!({ "id": "fake", "gossip_addr": fake.addr, "http_addr": fake.addr });
        let at = |path: &str| format!("{}{path}", discovery.url());
        let unsigned = call(Method::POST, &at("/register"), None, None, Some(&member)).await;
        assert_refused(&unsigned, 401, "unsigned POST /register");
        let stranger = ClusterKeys::parse("not-the-cluster-secret-at-all").expect("keys");
        let body = member.to_string();
        let parts = RequestParts {
            method: "POST",
            path_and_query: "/register",
            body: body.as_bytes(),
        };
        let mut forged = http().post(at("/register")).body(body.clone());
        let now = request_auth::unix_now_ms();
        for (name, value) in request_auth::sign(&stranger, parts, now, rand::random()) {
            forged = forged.header(name, value);
        }
        let forged = status_and_json(forged.send().await.expect("POST /register")).await;
        assert_refused(&forged, 401, "POST /register signed with another secret");
        let heartbeat = json!({ "id": "fake" });
        let unsigned = call(
            Method::POST,
            &at("/heartbeat"),
            None,
            None,
            Some(&heartbeat),
        )
        .await;
        assert_refused(&unsigned, 401, "unsigned POST /heartbeat");
        let evict = call(Method::DELETE, &at("/peers/real-1"), None, None, None).await;
        assert_refused(&evict, 401, "unsigned DELETE /peers/real-1");
        let list = call(Method::GET, &at("/peers"), None, None, None).await;
        assert_refused(&list, 401, "unsigned GET /peers");
        assert_eq!(
            discovery.peer_ids().await,
            Some(vec!["real-1".to_owned()]),
            "discovery's signed list changed"
        );
        // Two discovery polls later, the gateway following discovery still
        // knows the real node alone.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let followed: Vec<String> = (follower.nodes().await.into_iter())
            .map(|view| view.http_addr)
            .collect();
        assert_eq!(followed, vec![real.http_addr.clone()], "gateway's /nodes");

        // An operator pins the fake on a gateway: it is checked, and never routed to.
        let pinned = GatewayProcess::spawn(&[
            "--node".into(),
            real.http_addr.clone(),
            "--node".into(),
            fake.addr.clone(),
        ]);
        let real_in_rotation = wait_until(PATIENCE, || async {
            let (_, rows) = pinned.get("/nodes").await;
            let rows = rows.as_array().cloned().unwrap_or_default();
            (rows.iter()).any(|row| row["http_addr"] == real.http_addr && row["healthy"] == true)
        });
        assert!(
            real_in_rotation.await,
            "the pinning gateway never routed to the real node"
        );
        let checked = wait_until(PATIENCE, || async { fake.health_checks() >= 2 });
        assert!(checked.await, "the gateway never health-checked the fake");
        for i in 0..30 {
            let (status, body) = pinned.post("/increment", "").await;
            assert_eq!(status, 200, "increment {i} through the gateway: {body}");
            assert_eq!(body["node"], "real-1", "increment {i} answered by {body}");
        }
        assert_eq!(real.value().await, 30, "the real cluster's value");
        assert_eq!(fake.increments(), 0, "increments the fake received");
        let rows = pinned.nodes().await;
        let row = |addr: &str| rows.iter().find(|view| view.http_addr == addr);
        let fake_row = row(&fake.addr).expect("the fake's /nodes row");
        assert!(!fake_row.healthy, "/nodes shows the fake healthy");
        assert!(row(&real.http_addr).is_some_and(|view| view.healthy));
    })
    .await;
}

// ---------------------------------------------------------------------------
// b) other web sites cannot post, partition, crash or stream

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_posts_to_a_node_are_refused_and_origin_less_ones_pass() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(2, &["--allow-fault-injection"]).await;
        let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
        let n1_sees = |value: i64| {
            wait_until(PATIENCE, move || async move {
                n1.named("probe").await == Some(value)
            })
        };
        assert_eq!(n2.post("/counters/probe/increment", "").await.0, 200);
        assert!(n1_sees(1).await, "n1 never heard n2 (no gossip to test)");

        // A write from another site: refused, nothing written.
        let write = n1.url("/counters/cross-site/increment");
        let answer = call(Method::POST, &write, None, Some(EVIL_ORIGIN), None).await;
        assert_refused(&answer, 403, "cross-site POST /counters/…/increment");
        assert_eq!(
            n1.get("/counters/cross-site").await.0,
            404,
            "it was written"
        );

        // A partition from another site: refused, gossip still flows.
        let partition = n1.url("/admin/partition");
        let cut = json!({ "peers": ["n2"] });
        let answer = call(
            Method::POST,
            &partition,
            None,
            Some(EVIL_ORIGIN),
            Some(&cut),
        )
        .await;
        assert_refused(&answer, 403, "cross-site POST /admin/partition");
        assert_eq!(n2.post("/counters/probe/increment", "").await.0, 200);
        assert!(
            n1_sees(2).await,
            "n1 stopped hearing n2: the partition was set"
        );

        // The same without an Origin (curl, a script): done, gossip stops.
        let (status, body) = call(Method::POST, &partition, None, None, Some(&cut)).await;
        assert_eq!(status, 200, "POST /admin/partition without Origin: {body}");
        assert_eq!(body["partitioned_from"], json!(["n2"]));
        assert_eq!(n2.post("/counters/probe/increment", "").await.0, 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            n1.named("probe").await,
            Some(2),
            "n1 heard n2 while cut off"
        );

        // Healing from another site is refused too; from the node's own origin it works.
        let answer = call(Method::DELETE, &partition, None, Some(EVIL_ORIGIN), None).await;
        assert_refused(&answer, 403, "cross-site DELETE /admin/partition");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(n1.named("probe").await, Some(2), "the partition was healed");
        let own = format!("http://{}", n1.http_addr);
        let (status, body) = call(Method::DELETE, &partition, None, Some(&own), None).await;
        assert_eq!(status, 200, "same-origin DELETE /admin/partition: {body}");
        assert!(n1_sees(3).await, "n1 never caught up after the heal");
    })
    .await;
}

/// One `tally dev --nodes 1` process, stopped with SIGTERM on drop so its
/// children go with it.
struct Demo {
    gateway: GatewayApi,
    node_http: String,
    child: Child,
    /// Its output (and its children's); Drop stops the demo before the log prints.
    _log: ChildLog,
}

impl Demo {
    async fn start(data_dir: &Path) -> Self {
        let (gateway, discovery, http, gossip) =
            (free_port(), free_port(), free_port(), free_port());
        let log = ChildLog::new("demo");
        let child = common::tally_command(&log)
            .args(["dev", "--nodes", "1"])
            .args(["--gateway-addr", &format!("127.0.0.1:{gateway}")])
            .args(["--discovery-addr", &format!("127.0.0.1:{discovery}")])
            .args(["--http-port", &http.to_string()])
            .args(["--gossip-port", &gossip.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .env("TALLY_NODE_LOG", common::test_log_level())
            // The demo keys its own cluster, as it does for a user.
            .env_remove("TALLY_CLUSTER_KEY")
            .spawn()
            .expect("spawn tally dev");
        let demo = Self {
            gateway: GatewayApi {
                addr: format!("127.0.0.1:{gateway}"),
            },
            node_http: format!("127.0.0.1:{http}"),
            child,
            _log: log,
        };
        let ready = wait_until(PATIENCE, || async {
            demo.gateway.health().await.1["healthy_nodes"] == 1
        });
        assert!(ready.await, "the demo never served node-1");
        demo
    }
}

impl Drop for Demo {
    /// A failed test still stops the demo gracefully, so no node is orphaned.
    fn drop(&mut self) {
        common::terminate_within(&mut self.child, PATIENCE);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_demo_controls_writes_and_streams_are_refused_by_the_gateway() {
    within(TEST_LIMIT, async {
        let data = tempfile::tempdir().expect("data dir");
        let demo = Demo::start(data.path()).await;
        let gateway = &demo.gateway;
        let own = format!("http://{}", gateway.addr);
        let node_view = || async { gateway.node_view("node-1").await.expect("node-1's row") };

        // Demo buttons from another site: refused, the node untouched.
        for action in ["partition", "crash"] {
            let url = gateway.url(&format!("/demo/nodes/node-1/{action}"));
            let answer = call(Method::POST, &url, None, Some(EVIL_ORIGIN), None).await;
            assert_refused(&answer, 403, &format!("cross-site POST /demo/…/{action}"));
        }
        let view = node_view().await;
        assert!(!view.partitioned, "a cross-site partition was applied");
        let node_health = format!("http://{}/health", demo.node_http);
        assert!(
            common::answers_ok(&node_health, Duration::from_secs(2)).await && view.healthy,
            "a cross-site crash was applied"
        );

        // Writes: another site's refused, the page's own and curl's go through.
        let increment = gateway.url("/increment");
        let answer = call(Method::POST, &increment, None, Some(EVIL_ORIGIN), None).await;
        assert_refused(&answer, 403, "cross-site POST /increment");
        assert_eq!(
            gateway.get("/counter").await.1["value"],
            0,
            "it was written"
        );
        let (status, body) = call(Method::POST, &increment, None, Some(&own), None).await;
        assert_eq!(
            (status, &body["value"]),
            (200, &json!(1)),
            "same-origin write"
        );
        let (status, body) = call(Method::POST, &increment, None, None, None).await;
        assert_eq!(
            (status, &body["value"]),
            (200, &json!(2)),
            "Origin-less write"
        );

        // Streams: another site's upgrade refused, the page's own accepted.
        let stream = format!("ws://{}/ws", gateway.addr);
        assert_eq!(ws_status(&stream, Some(EVIL_ORIGIN)).await, 403);
        assert_eq!(ws_status(&stream, Some(&own)).await, 101);

        // The demo button itself works without a foreign Origin.
        let partition = gateway.url("/demo/nodes/node-1/partition");
        let (status, body) = call(Method::POST, &partition, None, None, None).await;
        assert_eq!(status, 200, "POST /demo/nodes/node-1/partition: {body}");
        assert!(
            node_view().await.partitioned,
            "the partition button did nothing"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// c) no counter can be frozen

/// The exact integer at `keys` in the JSON `text`: the first `"keys[0]"`,
/// then the first `"keys[1]"` after it, and so on; the number after the
/// last one's colon, read from the text (a `serde_json::Value` would keep
/// only 53 bits of a number beyond `i64`/`u64`). `None` when there is no
/// such key or the number is not an integer.
fn exact_integer(text: &str, keys: &[&str]) -> Option<i128> {
    let mut rest = text;
    for key in keys {
        let quoted = format!("\"{key}\"");
        rest = &rest[rest.find(&quoted)? + quoted.len()..];
    }
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    let (number, after) = rest.split_at(end);
    if after.starts_with(['.', 'e', 'E']) {
        return None;
    }
    number.parse().ok()
}

/// POSTs `{"amount": amount}` (written out as text, so any u64 is exact) to
/// `url`; the status, the exact value answered and the answer's text.
async fn write_exact(url: &str, amount: u64) -> (u16, Option<i128>, String) {
    let response = http()
        .post(url)
        .body(format!(r#"{{"amount":{amount}}}"#))
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    let text = response.text().await.expect("answer text");
    (status, exact_integer(&text, &["value"]), text)
}

/// `GET url`: the answer's text, which must be JSON.
async fn get_text(url: &str) -> String {
    let response = http().get(url).send().await.expect("GET");
    assert_eq!(response.status(), 200, "GET {url}");
    let text = response.text().await.expect("text");
    let json: Result<Value, _> = serde_json::from_str(&text);
    assert!(json.is_ok(), "GET {url}: not JSON: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn the_freeze_sequence_leaves_a_counter_writable() {
    within(TEST_LIMIT, async {
        let mut cluster = Cluster::start(1, &[]).await;
        const TWO_63: u64 = 1 << 63;
        const I64_MAX: i128 = i64::MAX as i128;
        // (route, amount, value after): the sequence that once filled both
        // u64 totals, then ordinary writes, then writes whose totals pass 2^64.
        let steps: [(&str, u64, i128); 8] = [
            ("increment", i64::MAX as u64, I64_MAX),
            ("decrement", u64::MAX, i128::from(i64::MIN)),
            ("increment", TWO_63, 0),
            ("increment", 1, 1),
            ("decrement", 3, -2),
            ("increment", i64::MAX as u64, I64_MAX - 2),
            ("decrement", u64::MAX - 5, i128::from(i64::MIN) + 3),
            ("increment", 5, i128::from(i64::MIN) + 8),
        ];
        let final_value = steps[steps.len() - 1].2;
        let node = &cluster.nodes[0];
        for base in ["/counters/frozen", ""] {
            for (i, (action, amount, expected)) in steps.into_iter().enumerate() {
                let url = node.url(&format!("{base}/{action}"));
                let (status, value, text) = write_exact(&url, amount).await;
                assert_eq!(status, 200, "step {i}: {action} {amount} on {url}: {text}");
                assert_eq!(value, Some(expected), "step {i}: {action} {amount}: {text}");
            }
        }
        // Leaving i64 is still refused, and changes nothing.
        for base in ["/counters/frozen", ""] {
            let url = node.url(&format!("{base}/decrement"));
            let (status, _, text) = write_exact(&url, 9).await;
            assert_eq!(status, 400, "a decrement below i64::MIN on {url}: {text}");
        }

        // Exact after the writes, and after a restart replays them: per
        // actor, both totals are now beyond u64.
        let inc = u128::from(i64::MAX as u64) * 2 + u128::from(TWO_63) + 1 + 5;
        let dec = u128::from(u64::MAX) * 2 + 3 - 5;
        assert!(inc > u128::from(u64::MAX) && dec > u128::from(u64::MAX));
        for round in ["written", "after restart"] {
            let node = &cluster.nodes[0];
            let named = get_text(&node.url("/counters/frozen")).await;
            let value = exact_integer(&named, &["value"]);
            assert_eq!(
                value,
                Some(final_value),
                "/counters/frozen ({round}): {named}"
            );
            let state = get_text(&node.url("/state")).await;
            let json: Value = serde_json::from_str(&state).expect("JSON");
            // One actor (the node's own), its totals read exactly.
            let actors = |field: &str| -> Vec<String> {
                json[field]
                    .as_object()
                    .map_or(Vec::new(), |map| map.keys().cloned().collect())
            };
            let actor = actors("increments");
            assert_eq!(actor.len(), 1, "/state ({round}): {state}");
            assert_eq!(actors("decrements"), actor, "/state ({round}): {state}");
            let exact = |keys: &[&str]| exact_integer(&state, keys);
            assert_eq!(
                exact(&["value"]),
                Some(final_value),
                "/state ({round}): {state}"
            );
            let totals = (
                exact(&["increments", &actor[0]]),
                exact(&["decrements", &actor[0]]),
            );
            let expected = (Some(inc as i128), Some(dec as i128));
            assert_eq!(totals, expected, "{}'s totals ({round}): {state}", actor[0]);
            if round == "written" {
                cluster.nodes[0].restart();
                cluster.nodes[0].wait_ready().await;
            }
        }
        // Still writable after the restart.
        let url = cluster.nodes[0].url("/counters/frozen/decrement");
        let (status, value, text) = write_exact(&url, 1).await;
        assert_eq!((status, value), (200, Some(final_value - 1)), "{text}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// d) API tokens: 401 / 403 / through, by role

const READ_TOKEN: &str = "reader-token-0123456789";
const WRITE_TOKEN: &str = "writer-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789ab";
const UNKNOWN_TOKEN: &str = "nobody-knows-this-token-42";

/// Checks the counter routes at `base` (a node's or the gateway's URL) per
/// role; each successful write adds 1 to `default`. Returns the writes made.
async fn counter_routes_by_role(base: &str, what: &str) -> i64 {
    let counter = format!("{base}/counter");
    let increment = format!("{base}/increment");
    let get = |token| call(Method::GET, &counter, token, None, None);
    let post = |token| call(Method::POST, &increment, token, None, None);
    assert_refused(
        &get(None).await,
        401,
        &format!("{what}: GET without a token"),
    );
    let unknown = get(Some(UNKNOWN_TOKEN)).await;
    assert_refused(&unknown, 401, &format!("{what}: GET, unknown token"));
    let before = get(Some(READ_TOKEN)).await;
    assert_eq!(before.0, 200, "{what}: GET, read token: {}", before.1);
    let before = before.1["value"].as_i64().expect("a value");
    assert_refused(
        &post(None).await,
        401,
        &format!("{what}: POST without a token"),
    );
    let unknown = post(Some(UNKNOWN_TOKEN)).await;
    assert_refused(&unknown, 401, &format!("{what}: POST, unknown token"));
    let read = post(Some(READ_TOKEN)).await;
    assert_refused(&read, 403, &format!("{what}: POST, read token"));
    for (token, role) in [(WRITE_TOKEN, "write"), (ADMIN_TOKEN, "admin")] {
        let (status, body) = post(Some(token)).await;
        assert_eq!(status, 200, "{what}: POST, {role} token: {body}");
    }
    let after = get(Some(ADMIN_TOKEN)).await.1["value"].as_i64();
    assert_eq!(
        after,
        Some(before + 2),
        "{what}: only the two allowed writes counted"
    );
    2
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_give_401_403_or_access_by_role_on_a_node_and_a_gateway() {
    within(TEST_LIMIT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        let file = format!(
            "# role per token\n{READ_TOKEN} read\n{WRITE_TOKEN} write\n{ADMIN_TOKEN} admin\n"
        );
        std::fs::write(&tokens, file).expect("write the tokens file");
        let tokens_arg = tokens.display().to_string();
        let args = [
            "--api-tokens-file".to_owned(),
            tokens_arg.clone(),
            "--allow-fault-injection".to_owned(),
        ];
        let node = NodeProcess::start("n1", &dir.path().join("n1"), &args);
        node.wait_ready_as(READ_TOKEN).await;

        // The node: counter routes, then /admin.
        let mut writes = counter_routes_by_role(&node.url(""), "node").await;
        let partition = node.url("/admin/partition");
        let nobody = json!({ "peers": [] });
        let admin = |method, token| call(method, &partition, token, None, Some(&nobody));
        assert_refused(
            &admin(Method::POST, None).await,
            401,
            "/admin without a token",
        );
        let write = admin(Method::POST, Some(WRITE_TOKEN)).await;
        assert_refused(&write, 403, "POST /admin/partition, write token");
        let (status, body) = admin(Method::POST, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "POST /admin/partition, admin token: {body}");
        let (status, body) = admin(Method::DELETE, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "DELETE /admin/partition, admin token: {body}");
        let stream = format!("ws://{}/ws", node.http_addr);
        assert_eq!(
            ws_status(&stream, None).await,
            401,
            "node /ws without a token"
        );
        let unknown = format!("{stream}?access_token={UNKNOWN_TOKEN}");
        assert_eq!(
            ws_status(&unknown, None).await,
            401,
            "node /ws, unknown token"
        );
        let read = format!("{stream}?access_token={READ_TOKEN}");
        assert_eq!(ws_status(&read, None).await, 101, "node /ws, read token");

        // A gateway in front, with the same file: it still health-checks and
        // follows the node (signed with the cluster secret), and clients
        // need tokens.
        let gateway = GatewayProcess::spawn(&[
            "--node".into(),
            node.http_addr.clone(),
            "--api-tokens-file".into(),
            tokens_arg,
        ]);
        assert!(
            gateway_sees_healthy(&gateway, 1, Some(READ_TOKEN)).await,
            "the gateway never saw the node with tokens healthy"
        );
        // Probes carry no token: liveness and readiness stay open, nothing else.
        for probe in ["/health", "/ready"] {
            let (status, body) = call(Method::GET, &gateway.url(probe), None, None, None).await;
            assert_eq!(status, 200, "gateway {probe} without a token: {body}");
            let (status, body) = call(Method::GET, &node.url(probe), None, None, None).await;
            assert_eq!(status, 200, "node {probe} without a token: {body}");
        }
        let nodes = call(Method::GET, &gateway.url("/nodes"), None, None, None).await;
        assert_refused(&nodes, 401, "gateway /nodes without a token");
        writes += counter_routes_by_role(&gateway.url(""), "gateway").await;
        let (status, body) = call(
            Method::POST,
            &gateway.url("/increment"),
            Some(WRITE_TOKEN),
            None,
            None,
        )
        .await;
        assert_eq!((status, &body["node"]), (200, &json!("n1")), "{body}");
        writes += 1;
        let (status, body) = call(
            Method::GET,
            &node.url("/counter"),
            Some(READ_TOKEN),
            None,
            None,
        )
        .await;
        assert_eq!((status, body["value"].as_i64()), (200, Some(writes)));

        // A gateway without the file in front of the same node answers no
        // read from its own view: the node decides who reads.
        let open_gateway = GatewayProcess::spawn(&["--node".into(), node.http_addr.clone()]);
        assert!(
            gateway_sees_healthy(&open_gateway, 1, None).await,
            "the gateway without tokens never saw the node healthy"
        );
        let read = call(Method::GET, &open_gateway.url("/counter"), None, None, None).await;
        assert_refused(
            &read,
            401,
            "a read through a gateway without tokens, no token",
        );
        let (status, body) = call(
            Method::GET,
            &open_gateway.url("/counter"),
            Some(READ_TOKEN),
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, body["value"].as_i64()),
            (200, Some(writes)),
            "{body}"
        );
        drop(open_gateway);

        // /nodes: healthy, and the value came over the node's stream.
        let nodes_url = gateway.url("/nodes");
        assert_refused(
            &call(Method::GET, &nodes_url, None, None, None).await,
            401,
            "gateway /nodes without a token",
        );
        let streamed = wait_until(PATIENCE, || async {
            let (_, rows) = call(Method::GET, &nodes_url, Some(READ_TOKEN), None, None).await;
            rows[0]["id"] == "n1" && rows[0]["healthy"] == true && rows[0]["value"] == writes
        });
        assert!(
            streamed.await,
            "/nodes never showed n1 healthy at {writes}: {}",
            call(Method::GET, &nodes_url, Some(READ_TOKEN), None, None)
                .await
                .1
        );
        let stream = format!("ws://{}/ws", gateway.addr);
        assert_eq!(
            ws_status(&stream, None).await,
            401,
            "gateway /ws without a token"
        );
        let read = format!("{stream}?access_token={READ_TOKEN}");
        assert_eq!(ws_status(&read, None).await, 101, "gateway /ws, read token");
    })
    .await;
}

// ---------------------------------------------------------------------------
// e) no secret, no start

/// Runs `tally args` without `TALLY_CLUSTER_KEY`; its exit success, stdout
/// and stderr. Killed (and the test failed) if it is still running after
/// [`PATIENCE`].
async fn run_without_secret(args: &[String]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(TALLY);
    command
        .args(args)
        .env_remove("TALLY_CLUSTER_KEY")
        .env_remove("TALLY_API_TOKENS_FILE")
        .env("TALLY_LOG", common::test_log_level())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = tokio::time::timeout(PATIENCE, command.output());
    let output = run
        .await
        .unwrap_or_else(|_| panic!("tally {args:?} kept running without a secret"))
        .expect("run tally");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// A child process killed (and reaped) on drop.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_without_a_secret_refuses_to_start_naming_the_flag() {
    within(TEST_LIMIT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = || format!("127.0.0.1:{}", free_port());
        let data_dir = dir.path().join("node").display().to_string();
        let node = |extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = vec![
                "node".into(),
                "--id".into(),
                "lonely".into(),
                "--http-addr".into(),
                addr(),
                "--gossip-addr".into(),
                addr(),
                "--data-dir".into(),
                data_dir.clone(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let commands: [Vec<String>; 3] = [
            node(&[]),
            vec!["discovery".into(), "--addr".into(), addr()],
            vec![
                "gateway".into(),
                "--addr".into(),
                addr(),
                "--node".into(),
                "127.0.0.1:1".into(),
            ],
        ];
        for args in &commands {
            let (success, stdout, stderr) = run_without_secret(args).await;
            let what = format!("tally {}", args[0]);
            assert!(
                !success,
                "{what} started without a secret; stdout:\n{stdout}"
            );
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{what}: stderr is not one line:\n{stderr}");
            assert!(
                lines[0].contains("--cluster-key"),
                "{what}: the error does not name --cluster-key: {stderr}"
            );
        }

        // With --insecure, a node starts (and says why it is open).
        let args = node(&["--insecure"]);
        let log = ChildLog::new("insecure-node");
        let child = common::tally_command(&log)
            .env_remove("TALLY_CLUSTER_KEY")
            .args(&args)
            .spawn()
            .expect("spawn tally node --insecure");
        let mut child = Reaped(Some(child));
        let http_addr = &args[4];
        let health = format!("http://{http_addr}/health");
        let ready = common::answers_ok(&health, PATIENCE).await;
        let exited = child.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(ready, "the --insecure node never served (exit: {exited:?})");
        let (status, body) =
            common::status_and_json(http().get(&health).send().await.expect("GET /health")).await;
        assert_eq!((status, &body["node"]), (200, &json!("lonely")), "{body}");
        if let Some(mut running) = child.0.take() {
            signal_and_reap(&mut running, "TERM");
        }
    })
    .await;
}
