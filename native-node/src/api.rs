//! The node's HTTP API (axum, JSON). Every error is `{"error": "..."}`
//! with a fitting status; nothing a client sends can panic the node.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crdt_core::{CounterName, Op, DEFAULT_COUNTER};
use serde::{Deserialize, Serialize};
use tally_protocol::access::{self, AccessPolicy};
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::events::{MemberInfo, NodeEvent};
use tally_protocol::health_proof;
use tally_protocol::http_error::{ApiError, MAX_BODY_BYTES};
use tokio::sync::broadcast::error::RecvError;

use crate::gossip::Gossip;
use crate::membership::Status;
use crate::metrics::{Metrics, PeerCounts};
use crate::replica::Replica;
use crate::transport::Tcp;
use crate::writer::{WriteError, WriterHandle};

/// Largest page of `GET /counters`.
const MAX_PAGE: usize = 1000;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    /// This node's id.
    pub node: String,
    /// The replica.
    pub replica: Arc<Replica>,
    /// The write path.
    pub writer: WriterHandle,
    /// Gossip (membership, partitions).
    pub gossip: Arc<Gossip<Tcp>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether `/admin/partition` is enabled.
    pub allow_fault_injection: bool,
    /// The cluster secret(s), to prove this node to gateways (`None` with `--insecure`).
    pub cluster_keys: Option<ClusterKeys>,
    /// Bounds `/ws` subscribers: each holds a snapshot while it is sent.
    pub subscribers: Arc<tokio::sync::Semaphore>,
    /// API tokens, allowed origins, internal signatures.
    pub access: Arc<AccessPolicy>,
}

/// Most `/ws` subscribers at once (the gateways and tools following a node).
pub const MAX_SUBSCRIBERS: usize = 64;

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/counter", get(get_default))
        .route(
            "/increment",
            post(|s, b| write_default(s, b, Op::Increment)),
        )
        .route(
            "/decrement",
            post(|s, b| write_default(s, b, Op::Decrement)),
        )
        .route("/counters", get(list_counters))
        .route("/counters/{name}", get(get_named))
        .route(
            "/counters/{name}/increment",
            post(|s, p, b| write_named(s, p, b, Op::Increment)),
        )
        .route(
            "/counters/{name}/decrement",
            post(|s, p, b| write_named(s, p, b, Op::Decrement)),
        )
        .route("/state", get(get_state))
        .route("/peers", get(get_peers))
        .route("/health", get(get_health))
        .route("/metrics", get(get_metrics))
        .route("/ws", get(websocket))
        .route(
            "/admin/partition",
            post(set_partition).delete(heal_partition),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost: nothing, not even a 404, is answered to a caller the
        // policy refuses.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.access),
            access::enforce,
        ))
        .with_state(state)
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        let status = match error {
            WriteError::Invalid(_) => StatusCode::BAD_REQUEST,
            WriteError::Storage(_) | WriteError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.to_string())
    }
}

#[derive(Serialize)]
struct ValueAnswer {
    value: i128,
    node: String,
}

#[derive(Serialize)]
struct NamedAnswer {
    name: String,
    value: i128,
    node: String,
}

/// Body of a write: `{"amount": n}`, or no body at all for 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: u64,
}

/// Parses the optional amount; anything but a whole number ≥ 1 that fits u64 is refused.
fn parse_amount(body: &[u8]) -> Result<u64, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(1);
    }
    let parsed: AmountBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "body must be {{\"amount\": <integer from 1 to {}>}}: {e}",
            u64::MAX
        ))
    })?;
    if parsed.amount == 0 {
        return Err(ApiError::bad_request("amount must be at least 1"));
    }
    Ok(parsed.amount)
}

fn counter_name(name: &str) -> Result<CounterName, ApiError> {
    CounterName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn default_name() -> CounterName {
    CounterName::new(DEFAULT_COUNTER).expect("the default name is valid")
}

async fn get_default(State(state): State<ApiState>) -> Json<ValueAnswer> {
    let value = state.replica.read().map.value(DEFAULT_COUNTER).unwrap_or(0);
    Json(ValueAnswer {
        value,
        node: state.node,
    })
}

async fn write_default(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
    op: fn(u64) -> Op,
) -> Result<Json<ValueAnswer>, ApiError> {
    let amount = parse_amount(&body?)?;
    let value = state.writer.write(default_name(), op(amount)).await?;
    Ok(Json(ValueAnswer {
        value,
        node: state.node,
    }))
}

async fn get_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<NamedAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let value = state.replica.read().map.value(name.as_str());
    match value {
        Some(value) => Ok(Json(NamedAnswer {
            name: name.to_string(),
            value,
            node: state.node,
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("counter {name:?} was never written"),
        )),
    }
}

async fn write_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
    op: fn(u64) -> Op,
) -> Result<Json<NamedAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let amount = parse_amount(&body?)?;
    let value = state.writer.write(name.clone(), op(amount)).await?;
    Ok(Json(NamedAnswer {
        name: name.to_string(),
        value,
        node: state.node,
    }))
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Serialize)]
struct PageEntry {
    name: String,
    value: i128,
}

#[derive(Serialize)]
struct Page {
    counters: Vec<PageEntry>,
    next: Option<String>,
}

async fn list_counters(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let replica = state.replica.read();
    let mut counters: Vec<PageEntry> = replica
        .map
        .page(&query.prefix, query.after.as_deref())
        .take(limit + 1)
        .map(|(name, counter)| PageEntry {
            name: name.to_string(),
            value: counter.value(),
        })
        .collect();
    let next = if counters.len() > limit {
        counters.truncate(limit);
        counters.last().map(|last| last.name.clone())
    } else {
        None
    };
    Ok(Json(Page { counters, next }))
}

#[derive(Serialize)]
struct StateAnswer {
    node: String,
    value: i128,
    increments: BTreeMap<String, u128>,
    decrements: BTreeMap<String, u128>,
}

async fn get_state(State(state): State<ApiState>) -> Json<StateAnswer> {
    let replica = state.replica.read();
    let counter = replica.map.get(DEFAULT_COUNTER);
    let entries = || counter.into_iter().flat_map(|c| c.entries());
    Json(StateAnswer {
        node: state.node.clone(),
        value: counter.map_or(0, |c| c.value()),
        increments: entries()
            .map(|(actor, e)| (actor.to_string(), e.inc))
            .collect(),
        decrements: entries()
            .map(|(actor, e)| (actor.to_string(), e.dec))
            .collect(),
    })
}

async fn get_peers(State(state): State<ApiState>) -> Json<Vec<MemberInfo>> {
    Json(member_infos(&state, false))
}

/// Members as the API and the stream show them; `with_self` adds this node.
fn member_infos(state: &ApiState, with_self: bool) -> Vec<MemberInfo> {
    let members = state.gossip.members();
    let mut infos: Vec<MemberInfo> = members
        .peers()
        .into_iter()
        .map(|(record, status)| MemberInfo {
            id: record.id,
            gossip_addr: record.gossip_addr,
            http_addr: record.http_addr,
            status: status.as_str().to_owned(),
        })
        .collect();
    if with_self {
        let me = members.me();
        infos.push(MemberInfo {
            id: me.id.clone(),
            gossip_addr: me.gossip_addr.clone(),
            http_addr: me.http_addr.clone(),
            status: Status::Alive.as_str().to_owned(),
        });
    }
    infos
}

/// Alive, with this node's id; when a gateway sends a challenge, the answer
/// carries proof that this node holds the cluster secret (`health_proof`).
async fn get_health(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let alive = state.gossip.members().alive();
    let body =
        Json(serde_json::json!({ "status": "ok", "node": state.node, "peers_alive": alive }));
    let challenge = headers
        .get(health_proof::CHALLENGE_HEADER)
        .and_then(|value| value.to_str().ok());
    let proof = match (&state.cluster_keys, challenge) {
        (Some(keys), Some(challenge)) => health_proof::prove(keys, challenge, &state.node),
        _ => None,
    };
    match proof {
        Some(proof) => ([(health_proof::PROOF_HEADER, proof)], body).into_response(),
        None => body.into_response(),
    }
}

async fn get_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let peers = {
        let members = state.gossip.members();
        PeerCounts {
            alive: members.count(Status::Alive),
            suspect: members.count(Status::Suspect),
            dead: members.count(Status::Dead),
        }
    };
    let counters = state.replica.read().map.len();
    let text = state.metrics.render(&state.node, counters, peers);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionBody {
    peers: Vec<String>,
}

async fn set_partition(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_fault_injection(&state)?;
    let body: PartitionBody = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"peers\": [ids]}}: {e}")))?;
    let peers: HashSet<String> = body.peers.into_iter().collect();
    state.gossip.set_partition(peers.clone());
    Ok(Json(
        serde_json::json!({ "node": state.node, "partitioned_from": peers }),
    ))
}

async fn heal_partition(
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_fault_injection(&state)?;
    state.gossip.set_partition(HashSet::new());
    Ok(Json(
        serde_json::json!({ "node": state.node, "partitioned_from": [] }),
    ))
}

fn require_fault_injection(state: &ApiState) -> Result<(), ApiError> {
    if state.allow_fault_injection {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such route (start the node with --allow-fault-injection)",
        ))
    }
}

async fn websocket(State(state): State<ApiState>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = Arc::clone(&state.subscribers).try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many /ws subscribers (at most {MAX_SUBSCRIBERS})"),
        )
        .into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        stream_changes(state, socket).await;
        drop(permit);
    })
}

/// Streams the replica to one subscriber: a snapshot, the members, then
/// every change. A subscriber too slow to keep up gets a fresh snapshot
/// instead of an ever-growing backlog.
async fn stream_changes(state: ApiState, mut socket: WebSocket) {
    let mut changes = state.replica.subscribe();
    let mut member_changes = state.gossip.member_changes();
    let snapshot = |state: &ApiState| NodeEvent::Snapshot {
        node: state.node.clone(),
        state: state.replica.read().map.clone(),
    };
    let members = |state: &ApiState| NodeEvent::Members {
        node: state.node.clone(),
        members: member_infos(state, true),
    };
    if send_event(&mut socket, &snapshot(&state)).await.is_err()
        || send_event(&mut socket, &members(&state)).await.is_err()
    {
        return;
    }
    loop {
        let event = tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => NodeEvent::Delta {
                    node: state.node.clone(),
                    delta: change.delta.clone(),
                    via_gossip: change.from_peer.is_some(),
                },
                Err(RecvError::Lagged(_)) => snapshot(&state),
                Err(RecvError::Closed) => return,
            },
            changed = member_changes.changed() => match changed {
                Ok(()) => members(&state),
                Err(_) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        if send_event(&mut socket, &event).await.is_err() {
            return;
        }
    }
}

async fn send_event(socket: &mut WebSocket, event: &NodeEvent) -> Result<(), axum::Error> {
    socket
        .send(WsMessage::Binary(crdt_core::wire::encode(event).into()))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_whole_positive_numbers_only() {
        assert_eq!(parse_amount(b"").unwrap(), 1);
        assert_eq!(parse_amount(b"{\"amount\": 5}").unwrap(), 5);
        assert_eq!(
            parse_amount(b"{\"amount\": 18446744073709551615}").unwrap(),
            u64::MAX
        );
        for bad in [
            "{\"amount\": 0}",
            "{\"amount\": -1}",
            "{\"amount\": 1.5}",
            "{\"amount\": \"abc\"}",
            "{\"amount\": 18446744073709551616}",
            "{\"amout\": 2}",
            "abc",
            "{}",
        ] {
            assert!(parse_amount(bad.as_bytes()).is_err(), "{bad} was accepted");
        }
    }
}
