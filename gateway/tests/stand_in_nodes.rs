//! Proxy, failover and stream behaviour against stand-in nodes: small real
//! HTTP servers speaking the node API. They exist for the faults a real node
//! cannot be made to show on cue (a write that hangs after it arrived);
//! the same scenarios run against `tally node` once the binary is there.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::routing::{get, post};
use axum::{Json, Router};
use crdt_core::{wire, ActorId, CounterMap, CounterName, Op, RemovalKind};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tally_gateway::{serve, GatewayConfig, Lag, NodeView};
use tally_protocol::batch::{BatchAnswer, BatchRequest, ItemResult, BATCH_PATH};
use tally_protocol::events::{BusyCounter, ClusterEvent, MemberInfo, NodeEvent};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(10);
/// Health checks run once at start and then not again during a test, so
/// only the proxy's own (passive) checks can change a node's health.
const ONCE: Duration = Duration::from_secs(3600);

struct StandIn {
    addr: String,
    writes: Arc<AtomicUsize>,
    /// Single writes (`POST /increment`) that carried an `Idempotency-Key`.
    keyed: Arc<AtomicUsize>,
    /// `POST /batch` requests.
    batches: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl StandIn {
    /// A node named `id` holding `state`, whose writes take `write_delay`.
    async fn start(id: &str, state: CounterMap, write_delay: Duration) -> Self {
        Self::launch(id, state, Vec::new(), write_delay).await
    }

    /// A node that streams `deltas` as fast as it can right after its snapshot.
    async fn streaming(id: &str, deltas: Vec<CounterMap>) -> Self {
        Self::launch(id, CounterMap::new(), deltas, Duration::ZERO).await
    }

    async fn launch(
        id: &str,
        state: CounterMap,
        deltas: Vec<CounterMap>,
        write_delay: Duration,
    ) -> Self {
        let writes = Arc::new(AtomicUsize::new(0));
        let (id, counted) = (id.to_owned(), Arc::clone(&writes));
        let (keyed, batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let keyed_counted = Arc::clone(&keyed);
        let (batch_id, batch_counted) = (id.clone(), Arc::clone(&writes));
        let batches_counted = Arc::clone(&batches);
        let value = state.value("default").unwrap_or(0) as i64;
        let (health_id, read_id, ws_id) = (id.clone(), id.clone(), id.clone());
        let app = Router::new()
            .route(
                "/ready",
                get(move || async move { Json(json!({"status": "ok", "node": health_id})) }),
            )
            .route(
                "/counter",
                get(move || async move { Json(json!({"value": value, "node": read_id})) }),
            )
            .route(
                "/counters/{name}",
                get(|| async {
                    (
                        axum::http::StatusCode::NOT_FOUND,
                        Json(json!({"error": "no such counter"})),
                    )
                }),
            )
            .route(
                "/increment",
                post(move |headers: axum::http::HeaderMap| async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    if headers.contains_key("idempotency-key") {
                        keyed_counted.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(write_delay).await;
                    Json(json!({"value": value + 1, "node": id}))
                }),
            )
            // What the gateway's combined writes use: every item applied.
            .route(
                BATCH_PATH,
                post(move |body: axum::body::Bytes| async move {
                    batch_counted.fetch_add(1, Ordering::SeqCst);
                    batches_counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(write_delay).await;
                    let request: BatchRequest = wire::decode(&body).unwrap();
                    let results = (request.items.iter())
                        .map(|_| ItemResult::Applied {
                            value: i128::from(value) + 1,
                            seq: 1,
                            replayed: false,
                        })
                        .collect();
                    let answer = BatchAnswer {
                        node: batch_id.clone(),
                        actor: format!("{batch_id}~1"),
                        results,
                    };
                    wire::encode(&answer)
                }),
            )
            .route(
                "/ws",
                get(move |upgrade: WebSocketUpgrade| async move {
                    upgrade.on_upgrade(move |mut socket| async move {
                        let member = MemberInfo {
                            id: ws_id.clone(),
                            gossip_addr: format!("gossip-of-{ws_id}"),
                            http_addr: String::new(),
                            status: "alive".into(),
                        };
                        let snapshot = NodeEvent::Snapshot {
                            node: ws_id.clone(),
                            state,
                            first: true,
                            last: true,
                        };
                        let members = NodeEvent::Members {
                            node: ws_id.clone(),
                            members: vec![member],
                        };
                        let deltas = deltas.into_iter().map(|delta| NodeEvent::Delta {
                            node: ws_id.clone(),
                            delta,
                            via_gossip: false,
                        });
                        for event in [snapshot, members].into_iter().chain(deltas) {
                            let frame = WsMessage::Binary(wire::encode(&event).into());
                            if socket.send(frame).await.is_err() {
                                return;
                            }
                        }
                        while let Some(Ok(_)) = socket.recv().await {}
                    })
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Self {
            addr,
            writes,
            keyed,
            batches,
            stop: Some(stop),
            task,
        }
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Stops listening and closes its idle connections: from now on, connecting fails.
    async fn crash(mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        timeout(PATIENCE, self.task).await.unwrap().unwrap();
    }
}

struct Gateway {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Gateway {
    async fn start(nodes: &[&StandIn], request_timeout: Duration) -> Self {
        Self::start_with(nodes, request_timeout, GatewayConfig::default()).await
    }

    async fn start_with(
        nodes: &[&StandIn],
        request_timeout: Duration,
        base: GatewayConfig,
    ) -> Self {
        let config = GatewayConfig {
            nodes: nodes.iter().map(|node| node.addr.clone()).collect(),
            health_interval: ONCE,
            request_timeout,
            web_dir: Some(std::env::temp_dir().join("tally-gateway-test-no-such-dir")),
            ..base
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, config, None, std::future::pending()));
        let gateway = Self {
            addr,
            http: reqwest::Client::new(),
        };
        gateway.wait_for_healthy(nodes.len()).await;
        gateway
    }

    async fn wait_for_healthy(&self, count: usize) {
        let waiting = async {
            loop {
                let (_, body) = self.call(reqwest::Method::GET, "/health").await;
                if body["healthy_nodes"].as_u64() == Some(count as u64) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(PATIENCE, waiting)
            .await
            .expect("nodes never became healthy");
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let response = self.http.request(method, url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn nodes(&self) -> Vec<NodeView> {
        let (_, body) = self.call(reqwest::Method::GET, "/nodes").await;
        serde_json::from_value(body).unwrap()
    }
}

fn state_with(increments: &[(&str, u64)]) -> CounterMap {
    let mut state = CounterMap::new();
    let default = CounterName::new("default").unwrap();
    for (actor, amount) in increments {
        let actor = ActorId::new(actor).unwrap();
        state
            .apply(&actor, &default, Op::Increment(*amount))
            .unwrap();
    }
    state
}

#[tokio::test]
async fn reads_are_spread_round_robin_and_node_errors_pass_through() {
    let a = StandIn::start("a", CounterMap::new(), Duration::ZERO).await;
    let b = StandIn::start("b", CounterMap::new(), Duration::ZERO).await;
    let gateway = Gateway::start(&[&a, &b], PATIENCE).await;
    let mut answered_by = Vec::new();
    for _ in 0..4 {
        let (status, body) = gateway.call(reqwest::Method::GET, "/counter").await;
        assert_eq!(status, 200);
        answered_by.push(body["node"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered_by, ["a", "b", "a", "b"]);
    let (status, body) = gateway.call(reqwest::Method::GET, "/counters/nope").await;
    assert_eq!((status, body), (404, json!({"error": "no such counter"})));
}

#[tokio::test]
async fn a_write_that_may_have_landed_is_never_sent_twice() {
    let slow = StandIn::start("slow", CounterMap::new(), PATIENCE * 2).await;
    let fast = StandIn::start("fast", CounterMap::new(), Duration::ZERO).await;
    let gateway = Gateway::start(&[&slow, &fast], Duration::from_millis(300)).await;

    let (status, body) = gateway.call(reqwest::Method::POST, "/increment").await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(
        (slow.writes(), fast.writes()),
        (1, 0),
        "no retry on another node"
    );

    // The slow node left the rotation at once; the next write goes to the other.
    let (status, body) = gateway.call(reqwest::Method::POST, "/increment").await;
    assert_eq!((status, body["node"].as_str()), (200, Some("fast")));
    let slow_view = gateway.nodes().await.into_iter().find(|n| n.id == "slow");
    assert_eq!(slow_view.map(|n| n.healthy), Some(false));
}

#[tokio::test]
async fn a_write_fails_over_when_the_node_cannot_be_reached() {
    let gone = StandIn::start("gone", CounterMap::new(), Duration::ZERO).await;
    let alive = StandIn::start("alive", CounterMap::new(), Duration::ZERO).await;
    let gateway = Gateway::start(&[&gone, &alive], PATIENCE).await;
    gone.crash().await;

    // "gone" is still in the rotation (no health check since) and first in line.
    let (status, body) = gateway.call(reqwest::Method::POST, "/increment").await;
    assert_eq!(
        (status, body["node"].as_str()),
        (200, Some("alive")),
        "{body}"
    );
    assert_eq!(alive.writes(), 1);
    let (_, health) = gateway.call(reqwest::Method::GET, "/health").await;
    assert_eq!(health["healthy_nodes"], 1);
}

#[tokio::test]
async fn node_streams_reach_browsers_and_show_lag() {
    let ahead = StandIn::start("ahead", state_with(&[("x", 5), ("y", 2)]), Duration::ZERO).await;
    let behind = StandIn::start("behind", state_with(&[("x", 5)]), Duration::ZERO).await;
    let gateway = Gateway::start(&[&ahead, &behind], PATIENCE).await;

    let url = format!("ws://{}/ws", gateway.addr);
    let (mut browser, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut values = std::collections::BTreeMap::new();
    let watching = async {
        while values.len() < 2 {
            let Some(Ok(Message::Binary(frame))) = browser.next().await else {
                panic!("browser stream ended");
            };
            // Each node's value comes summed up, not as its replica.
            if let ClusterEvent::Summary { nodes } = wire::decode(&frame).unwrap() {
                for node in nodes {
                    values.insert(node.id, Some(node.value));
                }
            }
        }
    };
    timeout(PATIENCE, watching)
        .await
        .expect("node states never arrived");
    assert_eq!(values["ahead"], Some(7));
    assert_eq!(values["behind"], Some(5));

    let views = gateway.nodes().await;
    let view = |id: &str| views.iter().find(|n| n.id == id).cloned().unwrap();
    assert_eq!(view("ahead").value, Some(7));
    assert_eq!(view("ahead").lag, Some(Lag::default()));
    let lag = Lag {
        default: 2,
        total: 2,
        entries_behind: 1,
    };
    assert_eq!(view("behind").lag, Some(lag));
    assert_eq!(
        view("behind").gossip_addr.as_deref(),
        Some("gossip-of-behind")
    );
}

#[tokio::test]
async fn a_browser_that_falls_behind_still_converges() {
    const WRITES: u64 = 5_000;
    let mut node_state = CounterMap::new();
    let (actor, default) = (
        ActorId::new("x").unwrap(),
        CounterName::new("default").unwrap(),
    );
    let deltas = (0..WRITES)
        .map(|_| {
            node_state
                .apply(&actor, &default, Op::Increment(1))
                .unwrap()
        })
        .collect();
    let node = StandIn::streaming("busy", deltas).await;
    // A one-event buffer: any browser slower than the node lags and must be resynced.
    let tiny_buffer = GatewayConfig {
        event_buffer: 1,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start_with(&[&node], PATIENCE, tiny_buffer).await;
    let url = format!("ws://{}/ws", gateway.addr);
    let (mut browser, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    // Rebuild the node's replica the way the web page does.
    let (mut replica, mut resyncs) = (CounterMap::new(), 0);
    let converging = async {
        while replica.value("default") != Some(i128::from(WRITES)) {
            let Some(Ok(Message::Binary(frame))) = browser.next().await else {
                panic!("browser stream ended");
            };
            match wire::decode(&frame).unwrap() {
                ClusterEvent::Nodes { .. } => resyncs += 1,
                // The first chunk of the counters replaces, the rest merge.
                ClusterEvent::Counters {
                    state, first: true, ..
                } => replica = state,
                ClusterEvent::Counters { state, .. } => {
                    replica.merge(&state);
                }
                ClusterEvent::CountersDelta { delta } => {
                    replica.merge(&delta);
                }
                ClusterEvent::Summary { .. } | ClusterEvent::Busiest { .. } => {}
            }
        }
    };
    timeout(PATIENCE, converging)
        .await
        .expect("browser never caught up");
    assert_eq!(replica, node_state);
    eprintln!("browser got {resyncs} Nodes events (1 = never lagged)");
}

#[tokio::test]
async fn a_write_with_an_idempotency_key_is_passed_through_alone_and_keeps_it() {
    let node = StandIn::start("n", CounterMap::new(), Duration::ZERO).await;
    let gateway = Gateway::start(&[&node], PATIENCE).await;
    let url = format!("http://{}/increment", gateway.addr);
    let keyed = gateway
        .http
        .post(&url)
        .header("idempotency-key", "k-1")
        .send();
    let answer = keyed.await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let batches = node.batches.load(Ordering::SeqCst);
    assert_eq!((node.keyed.load(Ordering::SeqCst), batches), (1, 0));
    // Without the key the same write is combined: it goes as a batch.
    let (status, body) = gateway.call(reqwest::Method::POST, "/increment").await;
    assert_eq!((status, body["node"].as_str()), (200, Some("n")), "{body}");
    assert_eq!(node.batches.load(Ordering::SeqCst), 1);
    assert_eq!(node.keyed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_browser_gets_only_the_counters_under_its_prefix() {
    const WRITES: u64 = 200;
    let mut node_state = CounterMap::new();
    let actor = ActorId::new("x").unwrap();
    let names = ["page/a", "page/b", "other", "pag"].map(|n| CounterName::new(n).unwrap());
    let deltas = (0..WRITES)
        .map(|i| {
            let name = &names[i as usize % names.len()];
            node_state.apply(&actor, name, Op::Increment(1)).unwrap()
        })
        .collect();
    let node = StandIn::streaming("busy", deltas).await;
    let gateway = Gateway::start(&[&node], PATIENCE).await;
    let url = format!("ws://{}/ws?prefix=page%2F", gateway.addr);
    let (mut browser, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    let (mut seen, mut busiest) = (CounterMap::new(), Vec::new());
    let done = |seen: &CounterMap| {
        let each = Some(i128::from(WRITES / 4));
        seen.value("page/a") == each && seen.value("page/b") == each
    };
    let following = async {
        while !done(&seen) {
            let Some(Ok(Message::Binary(frame))) = browser.next().await else {
                panic!("browser stream ended");
            };
            let streamed = match wire::decode(&frame).unwrap() {
                ClusterEvent::Counters { prefix, state, .. } => {
                    assert_eq!(prefix, "page/");
                    state
                }
                ClusterEvent::CountersDelta { delta } => delta,
                ClusterEvent::Busiest { top } => {
                    busiest = top;
                    continue;
                }
                _ => continue,
            };
            for (name, _) in streamed.counters() {
                assert!(name.as_str().starts_with("page/"), "{name} streamed");
            }
            seen.merge(&streamed);
        }
    };
    timeout(PATIENCE, following)
        .await
        .expect("the prefix's counters never arrived");
    assert_eq!(seen.len(), 2);
    // The busiest list is the whole keyspace's, whatever the prefix.
    let listed = async {
        while busiest.len() < names.len() {
            let Some(Ok(Message::Binary(frame))) = browser.next().await else {
                panic!("browser stream ended");
            };
            if let ClusterEvent::Busiest { top } = wire::decode(&frame).unwrap() {
                busiest = top;
            }
        }
    };
    timeout(PATIENCE, listed)
        .await
        .expect("the busiest list never held every counter");
    assert!(busiest.iter().any(|busy| busy.name == "other"));
}

#[tokio::test]
async fn a_deleted_counter_reaches_browsers_as_gone_and_leaves_the_busiest() {
    let mut node_state = CounterMap::new();
    let actor = ActorId::new("x").unwrap();
    let names = ["page/gone", "page/kept", "other"].map(|n| CounterName::new(n).unwrap());
    let mut deltas: Vec<CounterMap> = (0..30)
        .map(|i| {
            let name = &names[i % names.len()];
            node_state.apply(&actor, name, Op::Increment(1)).unwrap()
        })
        .collect();
    let removal = node_state.remove(&actor, &names[0], RemovalKind::Delete, 1);
    deltas.push(removal.unwrap().expect("page/gone is present"));
    let node = StandIn::streaming("busy", deltas).await;
    let gateway = Gateway::start(&[&node], PATIENCE).await;
    let url = format!("ws://{}/ws?prefix=page%2F", gateway.addr);
    let (mut browser, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    // Rebuild what the page holds, whether the delete arrives in the
    // catch-up or as a delta; and the latest busiest list.
    let (mut seen, mut busiest) = (CounterMap::new(), Vec::new());
    let settled = |seen: &CounterMap, busiest: &[BusyCounter]| {
        let listed = |name: &str| busiest.iter().any(|busy| busy.name == name);
        seen.get("page/gone").is_some()
            && seen.value("page/gone").is_none()
            && seen.value("page/kept") == Some(10)
            && listed("page/kept")
            && !listed("page/gone")
    };
    let following = async {
        while !settled(&seen, &busiest) {
            let Some(Ok(Message::Binary(frame))) = browser.next().await else {
                panic!("browser stream ended");
            };
            match wire::decode(&frame).unwrap() {
                ClusterEvent::Counters {
                    state, first: true, ..
                } => seen = state,
                ClusterEvent::Counters { state, .. } => {
                    seen.merge(&state);
                }
                ClusterEvent::CountersDelta { delta } => {
                    seen.merge(&delta);
                }
                ClusterEvent::Busiest { top } => busiest = top,
                _ => {}
            }
        }
    };
    timeout(PATIENCE, following).await.unwrap_or_else(|_| {
        panic!(
            "never settled: page/gone reads {:?}, busiest {busiest:?}",
            seen.value("page/gone")
        )
    });
}
