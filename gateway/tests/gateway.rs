//! The gateway on real sockets, alone or in front of a minimal stand-in
//! node (proxy, failover and stream behaviour against fuller stand-ins is
//! in `stand_in_nodes.rs`; tests against real nodes come with the `tally`
//! binary).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tally_gateway::{serve, DemoControls, GatewayConfig, NodeView};
use tally_protocol::events::{ClusterEvent, NodeEvent};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message};

const PATIENCE: Duration = Duration::from_secs(10);

struct Gateway {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tally_gateway::GatewayError>>,
}

impl Gateway {
    async fn start(config: GatewayConfig, controls: Option<Arc<dyn DemoControls>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(listener, config, controls, shutdown));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.url(path)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let request = client.post(self.url(path)).body(body);
        let response = request.header("content-type", "application/json").send();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn browser(&self) -> WsClient {
        let url = format!("ws://{}/ws", self.addr);
        let (socket, _) = timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        socket
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let served = timeout(PATIENCE, self.task).await.unwrap().unwrap();
        assert!(served.is_ok(), "{served:?}");
    }
}

type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_event(socket: &mut WsClient) -> ClusterEvent {
    loop {
        let message = timeout(PATIENCE, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(bytes) = message {
            return wire::decode(&bytes).unwrap();
        }
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A directory that does not exist, so the "bundle not built" page shows.
fn no_web_dir() -> Option<PathBuf> {
    Some(std::env::temp_dir().join("tally-gateway-test-no-such-dir"))
}

fn empty_config() -> GatewayConfig {
    GatewayConfig {
        web_dir: no_web_dir(),
        ..GatewayConfig::default()
    }
}

/// An address where nothing listens (bound, then released).
async fn dead_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Polls `condition` until it holds, failing the test after `PATIENCE`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let waiting = async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(PATIENCE, waiting)
        .await
        .unwrap_or_else(|_| panic!("never: {what}"));
}

/// The least of a node the gateway talks to: `/ready` passes (naming the
/// node) only while `passing` is set, `/counter` names the node and counts
/// the reads, and `/ws` streams one snapshot of a default counter at
/// `value`. Runs until the test ends.
struct StandIn {
    addr: String,
    passing: Arc<AtomicBool>,
    health_checks: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
}

impl StandIn {
    async fn start(id: &str, passing: bool, value: u64) -> Self {
        let passing = Arc::new(AtomicBool::new(passing));
        let health_checks = Arc::new(AtomicUsize::new(0));
        let reads = Arc::new(AtomicUsize::new(0));
        let (checks, pass, health_id) = (health_checks.clone(), passing.clone(), id.to_owned());
        let health = move || async move {
            checks.fetch_add(1, Ordering::SeqCst);
            match pass.load(Ordering::SeqCst) {
                true => (
                    StatusCode::OK,
                    Json(json!({"status": "ok", "node": health_id})),
                ),
                false => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "sick"})),
                ),
            }
        };
        let (counted, read_id) = (reads.clone(), id.to_owned());
        let read = move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Json(json!({"value": value, "node": read_id}))
        };
        let snapshot = NodeEvent::Snapshot {
            node: id.to_owned(),
            state: default_counter_at(value),
            first: true,
            last: true,
        };
        let stream = move |upgrade: WebSocketUpgrade| async move {
            upgrade.on_upgrade(move |mut socket| async move {
                let frame = WsMessage::Binary(wire::encode(&snapshot).into());
                if socket.send(frame).await.is_ok() {
                    while let Some(Ok(_)) = socket.recv().await {}
                }
            })
        };
        let app = Router::new()
            .route("/ready", get(health))
            .route("/counter", get(read))
            .route("/ws", get(stream));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            passing,
            health_checks,
            reads,
        }
    }

    fn start_passing(&self) {
        self.passing.store(true, Ordering::SeqCst);
    }

    fn health_checks(&self) -> usize {
        self.health_checks.load(Ordering::SeqCst)
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

fn default_counter_at(value: u64) -> CounterMap {
    let mut state = CounterMap::new();
    let (actor, name) = (
        ActorId::new("x").unwrap(),
        CounterName::new("default").unwrap(),
    );
    state.apply(&actor, &name, Op::Increment(value)).unwrap();
    state
}

#[tokio::test]
async fn without_nodes_everything_answers_json_errors() {
    let gateway = Gateway::start(empty_config(), None).await;

    let (status, body) = gateway.get("/ready").await;
    assert_eq!(
        (status, json(&body)["healthy_nodes"].as_u64()),
        (503, Some(0))
    );
    // Alive all the same: liveness does not depend on the nodes.
    assert_eq!(gateway.get("/health").await.0, 200);
    let (status, body) = gateway.get("/counter").await;
    assert_eq!(status, 503);
    assert!(json(&body)["error"].is_string(), "{body}");
    let (status, body) = gateway.post("/counters/x/increment", Vec::new()).await;
    assert_eq!((status, body["error"].is_string()), (503, true));
    // An invalid write is refused as a node would refuse it, node or not.
    let (status, body) = gateway.post("/counters/x/increment", b"{}".to_vec()).await;
    assert_eq!((status, body["error"].is_string()), (400, true));

    let (status, body) = gateway.get("/no/such/route").await;
    assert_eq!((status, json(&body)["error"].is_string()), (404, true));
    let (status, body) = gateway.post("/counter", Vec::new()).await;
    assert_eq!((status, body["error"].is_string()), (405, true));
    let (status, body) = gateway.post("/demo/nodes/n1/crash", Vec::new()).await;
    assert_eq!(
        (status, body["error"].is_string()),
        (404, true),
        "no controls"
    );

    let (status, body) = gateway.get("/ws").await;
    assert_eq!(
        (status, json(&body)["error"].is_string()),
        (400, true),
        "not an upgrade"
    );

    let (status, body) = gateway.get("/nodes").await;
    assert_eq!((status, json(&body)), (200, serde_json::json!([])));
    let (status, body) = gateway.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("web bundle not built"), "{body}");
    gateway.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_proxying() {
    let gateway = Gateway::start(empty_config(), None).await;
    let body = vec![b' '; tally_gateway::MAX_BODY_BYTES + 1];
    let (status, answer) = gateway.post("/increment", body).await;
    assert_eq!(
        (status, answer["error"].is_string()),
        (413, true),
        "{answer}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn only_nodes_that_pass_their_health_check_are_used() {
    let good = StandIn::start("good", false, 1).await;
    let sick = StandIn::start("sick", false, 2).await;
    let dead = dead_addr().await;
    let config = GatewayConfig {
        nodes: vec![good.addr.clone(), sick.addr.clone(), dead.clone()],
        health_interval: Duration::from_millis(20),
        ..empty_config()
    };
    let gateway = Gateway::start(config, None).await;

    // Several rounds of failing checks: nothing enters the rotation.
    eventually("three health checks", || async {
        good.health_checks() >= 3
    })
    .await;
    let (status, body) = gateway.get("/ready").await;
    assert_eq!(
        (status, json(&body)["healthy_nodes"].as_u64()),
        (503, Some(0))
    );
    assert_eq!(gateway.get("/counter").await.0, 503);

    good.start_passing();
    eventually("/ready answers 200", || async {
        gateway.get("/ready").await.0 == 200
    })
    .await;
    let (_, body) = gateway.get("/ready").await;
    assert_eq!(json(&body)["healthy_nodes"].as_u64(), Some(1), "{body}");
    for _ in 0..4 {
        // `?r=` bypasses the gateway's merged view: a node answers.
        let (status, body) = gateway.get("/counter?r=1").await;
        assert_eq!((status, json(&body)["node"].as_str()), (200, Some("good")));
    }
    assert_eq!(
        sick.reads(),
        0,
        "a node failing its health check is never used"
    );

    let (_, body) = gateway.get("/nodes").await;
    let nodes: Vec<NodeView> = serde_json::from_str(&body).unwrap();
    let health: Vec<(&str, bool)> = (nodes.iter())
        .map(|node| (node.http_addr.as_str(), node.healthy))
        .collect();
    let expected = [
        (good.addr.as_str(), true),
        (&sick.addr, false),
        (&dead, false),
    ];
    assert_eq!(health, expected);
    gateway.stop().await;
}

#[tokio::test]
async fn browsers_get_the_node_list_first() {
    let node = StandIn::start("n1", true, 3).await;
    let config = GatewayConfig {
        nodes: vec![node.addr.clone()],
        ..empty_config()
    };
    let gateway = Gateway::start(config, None).await;
    // Wait until the gateway holds the node's state, so there is something
    // the node list could wrongly come after.
    eventually("the node's state reaches the gateway", || async {
        let (_, body) = gateway.get("/nodes").await;
        let nodes: Vec<NodeView> = serde_json::from_str(&body).unwrap();
        nodes.first().and_then(|node| node.value) == Some(3)
    })
    .await;
    let mut browser = gateway.browser().await;
    match next_event(&mut browser).await {
        ClusterEvent::Nodes { nodes, controls } => {
            assert!(!controls);
            assert_eq!(nodes.len(), 1);
            assert_eq!(nodes[0].http_addr, node.addr);
        }
        other => panic!("expected Nodes first, got {other:?}"),
    }
    match next_event(&mut browser).await {
        ClusterEvent::Summary { nodes } => {
            let shown: Vec<_> = nodes.iter().map(|n| (n.id.as_str(), n.value)).collect();
            assert_eq!(shown, [("n1", 3)]);
        }
        other => panic!("expected the node summaries next, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut browser).await,
        ClusterEvent::Busiest { .. }
    ));
    // Then the merged view, not each node's replica.
    match next_event(&mut browser).await {
        ClusterEvent::Counters {
            prefix,
            state,
            first: true,
            last: true,
        } => {
            assert_eq!((prefix.as_str(), state.value("default")), ("", Some(3)));
        }
        other => panic!("expected the counters next, got {other:?}"),
    }
    gateway.stop().await;
    // Shutting down closes the browser's stream rather than leaving it hanging.
    let closed = timeout(PATIENCE, async {
        while let Some(Ok(message)) = browser.next().await {
            if message.is_close() {
                break;
            }
        }
    });
    closed.await.unwrap();
}

#[tokio::test]
async fn browsers_beyond_the_cap_get_503() {
    let config = GatewayConfig {
        max_browsers: 1,
        ..empty_config()
    };
    let gateway = Gateway::start(config, None).await;
    let _first = gateway.browser().await;
    let url = format!("ws://{}/ws", gateway.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected a 503 refusal, got {:?}", other.map(|_| ())),
    }
    gateway.stop().await;
}

/// Records what the demo buttons asked for; refuses nodes named "busy".
#[derive(Default)]
struct RecordingControls(Mutex<Vec<String>>);

impl RecordingControls {
    fn record(&self, what: String) -> Result<(), String> {
        if what.ends_with("busy") {
            return Err("busy is busy".into());
        }
        self.0.lock().unwrap().push(what);
        Ok(())
    }
}

impl DemoControls for RecordingControls {
    fn crash<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.record(format!("crash {node}")) })
    }
    fn restart<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.record(format!("restart {node}")) })
    }
}

#[tokio::test]
async fn demo_routes_call_the_controls() {
    let controls = Arc::new(RecordingControls::default());
    let gateway = Gateway::start(empty_config(), Some(controls.clone())).await;
    assert_eq!(gateway.post("/demo/nodes/n1/crash", vec![]).await.0, 200);
    assert_eq!(gateway.post("/demo/nodes/n1/restart", vec![]).await.0, 200);
    let (status, body) = gateway.post("/demo/nodes/busy/crash", vec![]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("busy is busy"))
    );
    let (status, body) = gateway.post("/demo/nodes/n1/explode", vec![]).await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    let (status, body) = gateway.post("/demo/nodes/unknown/partition", vec![]).await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    assert_eq!(*controls.0.lock().unwrap(), ["crash n1", "restart n1"]);

    let mut browser = gateway.browser().await;
    let first = next_event(&mut browser).await;
    assert!(
        matches!(first, ClusterEvent::Nodes { controls: true, .. }),
        "{first:?}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn the_web_bundle_is_served_at_the_root() {
    let dir = std::env::temp_dir().join(format!("tally-gateway-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>tally page</h1>").unwrap();
    let config = GatewayConfig {
        web_dir: Some(dir.clone()),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(config, None).await;
    assert_eq!(gateway.get("/").await, (200, "<h1>tally page</h1>".into()));
    let (status, body) = gateway.get("/missing.js").await;
    assert_eq!((status, json(&body)["error"].is_string()), (404, true));
    assert_eq!(
        gateway.get("/ready").await.0,
        503,
        "API routes win over files"
    );
    gateway.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}
