//! The gateway on real sockets, with no nodes behind it (tests against real
//! nodes come with the `tally node` binary).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_core::wire;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::Value;
use tally_gateway::{serve, DemoControls, GatewayConfig, NodeView};
use tally_protocol::events::ClusterEvent;
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

#[tokio::test]
async fn without_nodes_everything_answers_json_errors() {
    let gateway = Gateway::start(empty_config(), None).await;

    let (status, body) = gateway.get("/health").await;
    assert_eq!(
        (status, json(&body)["healthy_nodes"].as_u64()),
        (503, Some(0))
    );
    let (status, body) = gateway.get("/counter").await;
    assert_eq!(status, 503);
    assert!(json(&body)["error"].is_string(), "{body}");
    let (status, body) = gateway.post("/counters/x/increment", b"{}".to_vec()).await;
    assert_eq!((status, body["error"].is_string()), (503, true));

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
async fn unreachable_nodes_are_listed_unhealthy_and_never_used() {
    let addr = dead_addr().await;
    let config = GatewayConfig {
        nodes: vec![addr.clone()],
        health_interval: Duration::from_millis(50),
        ..empty_config()
    };
    let gateway = Gateway::start(config, None).await;
    let (_, body) = gateway.get("/nodes").await;
    let nodes: Vec<NodeView> = serde_json::from_str(&body).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].id.as_str(), nodes[0].healthy),
        (addr.as_str(), false)
    );
    assert_eq!((nodes[0].value, nodes[0].lag), (None, None));
    assert_eq!(gateway.get("/counter").await.0, 503);
    gateway.stop().await;
}

#[tokio::test]
async fn browsers_get_the_node_list_first() {
    let addr = dead_addr().await;
    let config = GatewayConfig {
        nodes: vec![addr.clone()],
        ..empty_config()
    };
    let gateway = Gateway::start(config, None).await;
    let mut browser = gateway.browser().await;
    match next_event(&mut browser).await {
        ClusterEvent::Nodes { nodes, controls } => {
            assert!(!controls);
            assert_eq!(nodes.len(), 1);
            assert_eq!(nodes[0].http_addr, addr);
        }
        other => panic!("expected Nodes first, got {other:?}"),
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
        gateway.get("/health").await.0,
        503,
        "API routes win over files"
    );
    gateway.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A browser that stops reading while a node streams many deltas must be
/// resynced (fresh `Nodes` + `NodeState`s) or dropped, and the gateway's
/// memory must stay flat. Convergence through resyncs is covered against a
/// stand-in node (`stand_in_nodes.rs`); this adds a real node and the memory bound.
#[tokio::test]
#[ignore = "needs the `tally node` binary (target/debug/tally)"]
async fn a_slow_browser_is_resynced_not_buffered() {
    // 1. Start one `tally node` and a gateway with `event_buffer: 16` pointing at it.
    // 2. Open two browsers; the slow one reads only its first frame.
    // 3. Send 1,000 increments through the gateway; the fast browser sees them all.
    // 4. The slow browser, reading again, gets a `Nodes` event followed by a
    //    `NodeState` whose "default" value is 1,000 (it skipped ahead), and the
    //    gateway's RSS stays within a fixed bound throughout.
}
