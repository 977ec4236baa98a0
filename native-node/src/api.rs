//! The node's HTTP API (axum, JSON). Every error is `{"error": "..."}`
//! with a fitting status; nothing a client sends can panic the node.
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use crdt_core::{CounterMap, CounterName, IdempotencyKey, Op, RemovalKind, DEFAULT_COUNTER};
use serde::{Deserialize, Serialize};
use tally_protocol::access::{self, AccessPolicy};
use tally_protocol::batch::{self, BatchAnswer, BatchRequest, Direction, ItemResult};
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::events::{MemberInfo, NodeEvent, SnapshotChunker, MAX_COLLECTED_NAMES};
use tally_protocol::http_error::{ApiError, MAX_BODY_BYTES};
use tally_protocol::http_server::{IpSlot, PerIpLimit};
use tally_protocol::idempotency::{self, IDEMPOTENCY_KEY_HEADER};
use tally_protocol::watch::{self, CounterSource, WatchHub, WatchQuery};
use tally_protocol::{health_proof, probes};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::OwnedSemaphorePermit;

use crate::consistency::{self, Level, QuorumError, Replicas};
use crate::gossip::Gossip;
use crate::idempotency::{InFlightKeys, IN_FLIGHT_WAIT};
use crate::membership::Status;
use crate::metrics::{Metrics, PeerCounts, StateSize};
use crate::readiness::Readiness;
use crate::replica::Replica;
use crate::retirement::RetireError;
use crate::transport::Tcp;
use crate::writer::{LifecycleChanged, LifecycleOp, LocalWrite, WriteError, WriterHandle, Written};
use tally_protocol::clock::now_ms;

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
    /// Bounds `/ws` subscribers per client address.
    pub subscribers_per_ip: Arc<PerIpLimit>,
    /// `--max-counters`: when local writes may create a counter.
    pub counter_limit: Arc<CounterLimit>,
    /// Largest encoded snapshot chunk on `/ws`.
    pub stream_chunk_bytes: usize,
    /// What `/ready` answers; draining once shutdown begins.
    pub readiness: Arc<Readiness>,
    /// The `/watch` event source.
    pub watch: Arc<WatchHub>,
    /// Keyed writes in progress on this node.
    pub in_flight: Arc<InFlightKeys>,
    /// `--write-timeout`: how long `?w=`/`?r=` above 1 wait for replicas.
    pub write_timeout: Duration,
}

/// Most `/ws` subscribers at once (the gateways and tools following a node).
pub const MAX_SUBSCRIBERS: usize = 64;

/// Most `/ws` subscribers from one client address at once (a gateway
/// needs one per node).
pub const MAX_SUBSCRIBERS_PER_IP: usize = 8;

/// A subscriber that cannot take one frame in this long is dropped, so a
/// stalled socket never holds its task, its slot and a snapshot forever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `--max-counters`: a local write may create a counter only while the map
/// holds fewer than `max`. Writes to existing counters, and merges from
/// peers, are never refused, so the map can still outgrow `max` by gossip.
#[derive(Debug, Default)]
pub struct CounterLimit {
    max: Option<usize>,
    /// Creations admitted and not yet acknowledged: counted against `max`
    /// so concurrent writes to new names cannot overshoot it.
    creating: Mutex<usize>,
}

/// A creation admitted under the limit, counted until the write finishes.
#[derive(Debug)]
pub struct Creation(Arc<CounterLimit>);

impl Drop for Creation {
    fn drop(&mut self) {
        let mut creating = (self.0.creating.lock()).unwrap_or_else(PoisonError::into_inner);
        *creating = creating.saturating_sub(1);
    }
}

impl CounterLimit {
    /// At most `max` counters created by local writes (`None`: unlimited).
    pub fn new(max: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max,
            creating: Mutex::new(0),
        })
    }

    /// Whether a local write to `name` may go ahead: always for a counter
    /// that exists; for a new one, only under the limit (507 otherwise).
    /// Hold the answer until the write is done.
    pub fn admit(
        self: &Arc<Self>,
        replica: &Replica,
        name: &CounterName,
    ) -> Result<Option<Creation>, ApiError> {
        let Some(max) = self.max else {
            return Ok(None);
        };
        let mut creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        let held = {
            let state = replica.read();
            if state.map.get(name.as_str()).is_some() {
                return Ok(None);
            }
            state.map.len()
        };
        if held.saturating_add(*creating) >= max {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "counter limit reached: this node holds {held} counters (--max-counters {max}); \
                     {name:?} cannot be created, existing counters can still be written"
                ),
            ));
        }
        *creating += 1;
        Ok(Some(Creation(Arc::clone(self))))
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/counter", get(get_default))
        .route(
            "/increment",
            post(|s, q, h, b| write_default(s, q, h, b, Op::Increment)),
        )
        .route(
            "/decrement",
            post(|s, q, h, b| write_default(s, q, h, b, Op::Decrement)),
        )
        .route("/counters", get(list_counters))
        .route("/counters/{name}", get(get_named).delete(delete_named))
        .route("/counters/{name}/reset", post(reset_named))
        .route("/counters/{name}/ttl", put(set_ttl))
        .route(
            "/counters/{name}/increment",
            post(|s, p, q, h, b| write_named(s, p, q, h, b, Op::Increment)),
        )
        .route(
            "/counters/{name}/decrement",
            post(|s, p, q, h, b| write_named(s, p, q, h, b, Op::Decrement)),
        )
        .route(batch::BATCH_PATH, post(write_batch))
        .route("/state", get(get_state))
        .route("/peers", get(get_peers))
        .route("/health", get(get_health))
        .route("/ready", get(get_ready))
        .route("/metrics", get(get_metrics))
        .route("/ws", get(websocket))
        .route("/watch", get(watch))
        .route(
            "/admin/partition",
            post(set_partition).delete(heal_partition),
        )
        .route("/admin/retire/{node}", post(retire_node))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response_with_state(
            Arc::clone(&state.readiness),
            mark_draining,
        ))
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
            WriteError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            WriteError::KeyInFlight(_) => StatusCode::CONFLICT,
        };
        Self::new(status, error.to_string())
    }
}

#[derive(Serialize)]
struct ValueAnswer {
    value: i128,
    node: String,
    /// Replicas that held the write (`?w=`) or were merged for the read (`?r=`).
    replicas: usize,
    /// Only on the answer to a retried keyed write: the first answer again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    /// When the counter expires (ms since the Unix epoch), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

#[derive(Serialize)]
struct NamedAnswer {
    name: String,
    value: i128,
    node: String,
    /// As in [`ValueAnswer`].
    replicas: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    /// As in [`ValueAnswer`].
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

/// `DELETE /counters/{name}`.
#[derive(Serialize)]
struct DeletedAnswer {
    name: String,
    deleted: bool,
    node: String,
    replicas: usize,
}

/// `PUT /counters/{name}/ttl`.
#[derive(Serialize)]
struct ExpiryAnswer {
    name: String,
    expires_at_ms: u64,
    node: String,
    replicas: usize,
}

/// The body of `PUT /counters/{name}/ttl`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlBody {
    ttl: String,
}

/// The node that gave a write's first answer: the node part of the actor
/// that applied it (`node-1~lq3x9` → `node-1`).
fn answering_node(state: &ApiState, written: &Written) -> String {
    if !written.replayed {
        return state.node.clone();
    }
    let actor = written.actor.as_str();
    actor
        .rsplit_once('~')
        .map_or(actor, |(node, _)| node)
        .to_owned()
}

/// The request's `Idempotency-Key`, if any (400 when invalid).
fn header_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let value = headers.get(IDEMPOTENCY_KEY_HEADER);
    idempotency::parse_key(value.map(|value| value.as_bytes())).map_err(ApiError::bad_request)
}

/// Applies one write; with an `Idempotency-Key`, at most once across the
/// cluster: an attempt of the same key on this node is waited for, and the
/// writer answers a key it already holds from its registration.
async fn submit(
    state: &ApiState,
    key: Option<IdempotencyKey>,
    write: LocalWrite,
) -> Result<Written, ApiError> {
    let Some(key) = key else {
        let _creation = admit(state, &write.name)?;
        return Ok(state.writer.submit(write).await?);
    };
    let _turn = state
        .in_flight
        .turn(&key, IN_FLIGHT_WAIT)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    let _creation = admit(state, &write.name)?;
    let written = state
        .writer
        .submit(LocalWrite {
            key: Some(key.clone()),
            ..write
        })
        .await?;
    if !written.replayed {
        state.in_flight.crash_if_hooked(&key);
    }
    Ok(written)
}

/// `?w=` (writes) and `?r=` (reads), see [`crate::consistency`]; `?ttl=`
/// (writes, [`tally_protocol::ttl`]).
#[derive(Debug, Default, Deserialize)]
struct ConsistencyQuery {
    w: Option<String>,
    r: Option<String>,
    ttl: Option<String>,
}

type ConsistencyParams = Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>;

/// The replicas `?w=` (`param` "w") or `?r=` wants in the cluster as this
/// node knows it: 400 for a bad value, 503 for more than the cluster has.
fn wanted_replicas(
    state: &ApiState,
    params: ConsistencyParams,
    param: &'static str,
) -> Result<usize, ApiError> {
    let Query(query) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    wanted_in(state, query, param)
}

/// A write's `?w=` replicas and `?ttl=` (400 for a bad value of either).
fn write_options(
    state: &ApiState,
    params: ConsistencyParams,
) -> Result<(usize, Option<Duration>), ApiError> {
    let Query(mut query) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let ttl = (query.ttl.take())
        .map(|ttl| tally_protocol::ttl::parse_ttl(&ttl))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((wanted_in(state, query, "w")?, ttl))
}

fn wanted_in(
    state: &ApiState,
    query: ConsistencyQuery,
    param: &'static str,
) -> Result<usize, ApiError> {
    let value = if param == "w" { query.w } else { query.r };
    let level = Level::parse_optional(param, value.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if level.is_local() {
        return Ok(1);
    }
    level
        .required(param, state.gossip.cluster_size())
        .map_err(|e| quorum_error(e, param))
}

fn quorum_error(error: QuorumError, param: &'static str) -> ApiError {
    match error {
        QuorumError::TooFew { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        QuorumError::TimedOut { .. } if param == "w" => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "outcome unknown: {error}; the write is durable on this node and may still reach \
                 the others; retrying with the same Idempotency-Key is safe"
            ),
        ),
        QuorumError::TimedOut { .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("read not answered: {error}"),
        ),
    }
}

/// After a durable local write: waits until `wanted` replicas hold the
/// writes (each a counter and, for a keyed write, its key); returns how
/// many did.
async fn replicate_written(
    state: &ApiState,
    writes: &[(CounterName, Option<IdempotencyKey>)],
    wanted: usize,
) -> Result<usize, ApiError> {
    if wanted <= 1 {
        return Ok(1);
    }
    let changes = consistency::writes_in(&state.replica.read().map, writes);
    consistency::replicate(&state.gossip, changes, wanted, state.write_timeout)
        .await
        .map_err(|e| quorum_error(e, "w"))
}

/// Before a read: merges `name` from `wanted` replicas; returns how many.
async fn gather_read(
    state: &ApiState,
    name: &CounterName,
    wanted: usize,
) -> Result<usize, ApiError> {
    if wanted <= 1 {
        return Ok(1);
    }
    let names = [name.clone()];
    consistency::gather(&state.gossip, &names, wanted, state.write_timeout)
        .await
        .map_err(|e| quorum_error(e, "r"))
}

/// Parses the optional amount (one rule with the gateway: [`batch::parse_amount`]).
fn parse_amount(body: &[u8]) -> Result<u64, ApiError> {
    batch::parse_amount(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn counter_name(name: &str) -> Result<CounterName, ApiError> {
    CounterName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn default_name() -> CounterName {
    CounterName::new(DEFAULT_COUNTER).expect("the default name is valid")
}

async fn get_default(
    State(state): State<ApiState>,
    params: ConsistencyParams,
) -> Result<Json<ValueAnswer>, ApiError> {
    let wanted = wanted_replicas(&state, params, "r")?;
    let replicas = gather_read(&state, &default_name(), wanted).await?;
    let value = present_value(&state.replica.read().map, DEFAULT_COUNTER).unwrap_or(0);
    Ok(Json(ValueAnswer {
        value,
        node: state.node,
        replicas,
        replayed: false,
        expires_at_ms: None,
    }))
}

async fn write_default(
    State(state): State<ApiState>,
    params: ConsistencyParams,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    op: fn(u64) -> Op,
) -> Result<Json<ValueAnswer>, ApiError> {
    let name = default_name();
    let (written, replicas) = write_counter(&state, params, &headers, body, &name, op).await?;
    Ok(Json(ValueAnswer {
        value: written.value,
        node: answering_node(&state, &written),
        replicas,
        replayed: written.replayed,
        expires_at_ms: written.expires_at_ms,
    }))
}

/// One write to `name` as every write route makes it: the amount, the
/// key, then `?w=` replicas; the write's answer and the replicas that held it.
async fn write_counter(
    state: &ApiState,
    params: ConsistencyParams,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    name: &CounterName,
    op: fn(u64) -> Op,
) -> Result<(Written, usize), ApiError> {
    let amount = parse_amount(&body?)?;
    let (wanted, ttl) = write_options(state, params)?;
    let write = LocalWrite {
        ttl,
        ..LocalWrite::plain(name.clone(), op(amount))
    };
    let key = header_key(headers)?;
    let written = submit(state, key.clone(), write).await?;
    let replicas = replicate_written(state, &[(name.clone(), key)], wanted).await?;
    Ok((written, replicas))
}

async fn get_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: ConsistencyParams,
) -> Result<Json<NamedAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let wanted = wanted_replicas(&state, params, "r")?;
    let replicas = gather_read(&state, &name, wanted).await?;
    let (value, expires_at_ms) = {
        let replica = state.replica.read();
        let counter = replica.map.get(name.as_str());
        let expiry = counter.and_then(crdt_core::PnCounter::expiry);
        (present_value(&replica.map, name.as_str()), expiry)
    };
    match value {
        Some(value) => Ok(Json(NamedAnswer {
            name: name.to_string(),
            value,
            node: state.node,
            replicas,
            replayed: false,
            expires_at_ms,
        })),
        None => Err(not_found(&name)),
    }
}

/// A counter's value as reads see it: `None` when it was never written,
/// was deleted, or is past its expiry on this node's clock (the sweep
/// deletes it within [`crate::expiry::SWEEP_INTERVAL`]).
pub fn present_value(map: &CounterMap, name: &str) -> Option<i128> {
    if map.is_expired(name, now_ms()) {
        return None;
    }
    map.value(name)
}

fn not_found(name: &CounterName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("counter {name:?} does not exist (never written, deleted, or expired)"),
    )
}

/// Applies a delete, reset or expiry to `name` and waits for `wanted`
/// replicas of it: 404 when the counter does not read as present here.
async fn change_lifecycle(
    state: &ApiState,
    name: &CounterName,
    op: LifecycleOp,
    wanted: usize,
) -> Result<(LifecycleChanged, usize), ApiError> {
    let Some(changed) = state.writer.change_lifecycle(name.clone(), op).await? else {
        return Err(not_found(name));
    };
    let replicas = replicate_written(state, &[(name.clone(), None)], wanted).await?;
    Ok((changed, replicas))
}

/// `DELETE /counters/{name}`: removes what this node holds of the counter
/// (observed-remove: an increment it has not seen yet survives).
async fn delete_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: ConsistencyParams,
) -> Result<Json<DeletedAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let wanted = wanted_replicas(&state, params, "w")?;
    let delete = LifecycleOp::Remove(RemovalKind::Delete);
    let (_, replicas) = change_lifecycle(&state, &name, delete, wanted).await?;
    Ok(Json(DeletedAnswer {
        name: name.to_string(),
        deleted: true,
        node: state.node,
        replicas,
    }))
}

/// `POST /counters/{name}/reset`: like a delete, but the counter reads 0.
async fn reset_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: ConsistencyParams,
) -> Result<Json<NamedAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let wanted = wanted_replicas(&state, params, "w")?;
    let reset = LifecycleOp::Remove(RemovalKind::Reset);
    let (changed, replicas) = change_lifecycle(&state, &name, reset, wanted).await?;
    Ok(Json(NamedAnswer {
        name: name.to_string(),
        value: changed.value.unwrap_or(0),
        node: state.node,
        replicas,
        replayed: false,
        expires_at_ms: None,
    }))
}

/// `PUT /counters/{name}/ttl` with `{"ttl":"5m"}`: the counter expires
/// that long from now (the latest expiry set anywhere wins).
async fn set_ttl(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: ConsistencyParams,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExpiryAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let body = body?;
    let TtlBody { ttl } = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(r#"body must be {"ttl":"DURATION"} (500ms, 2s, 5m, 1h, 7d)"#)
    })?;
    let ttl =
        tally_protocol::ttl::parse_ttl(&ttl).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let wanted = wanted_replicas(&state, params, "w")?;
    let expire = LifecycleOp::ExpireIn(ttl);
    let (changed, replicas) = change_lifecycle(&state, &name, expire, wanted).await?;
    Ok(Json(ExpiryAnswer {
        name: name.to_string(),
        expires_at_ms: changed.expires_at_ms.unwrap_or(0),
        node: state.node,
        replicas,
    }))
}

async fn write_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: ConsistencyParams,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    op: fn(u64) -> Op,
) -> Result<Json<NamedAnswer>, ApiError> {
    let name = counter_name(&name)?;
    let (written, replicas) = write_counter(&state, params, &headers, body, &name, op).await?;
    Ok(Json(NamedAnswer {
        name: name.to_string(),
        value: written.value,
        node: answering_node(&state, &written),
        replicas,
        replayed: written.replayed,
        expires_at_ms: written.expires_at_ms,
    }))
}

/// `POST /batch`: every valid item in one commit (one fsync), each answered
/// with its own result (see [`tally_protocol::batch`]). An item that is
/// invalid or over the counter limit is refused alone.
///
/// With `?w=`, the whole batch is answered once that many replicas hold
/// every counter it wrote (header [`batch::REPLICAS_HEADER`]), or 504.
async fn write_batch(
    State(state): State<ApiState>,
    params: ConsistencyParams,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let (wanted, ttl) = write_options(&state, params)?;
    let answer = batch_answer(&state, &body, ttl).await?;
    // The counters it wrote (the body decoded once more, only for `w` > 1).
    let request: Option<BatchRequest> = (wanted > 1)
        .then(|| crdt_core::wire::decode(&body).ok())
        .flatten();
    let mut written: Vec<(CounterName, Option<IdempotencyKey>)> =
        (request.iter().flat_map(|r| &r.items))
            .zip(&answer.results)
            .filter(|(_, result)| matches!(result, ItemResult::Applied { .. }))
            .filter_map(|(item, _)| {
                let key = item
                    .key
                    .as_deref()
                    .and_then(|key| IdempotencyKey::new(key).ok());
                Some((CounterName::new(&item.counter).ok()?, key))
            })
            .collect();
    written.sort();
    written.dedup();
    let replicas = if written.is_empty() {
        1
    } else {
        replicate_written(&state, &written, wanted).await?
    };
    let encoded = crdt_core::wire::encode(&answer);
    Ok((
        [
            (header::CONTENT_TYPE, batch::BATCH_CONTENT_TYPE.to_owned()),
            (
                header::HeaderName::from_static(batch::REPLICAS_HEADER),
                replicas.to_string(),
            ),
        ],
        encoded,
    )
        .into_response())
}

async fn batch_answer(
    state: &ApiState,
    body: &[u8],
    ttl: Option<Duration>,
) -> Result<BatchAnswer, ApiError> {
    let request: BatchRequest = crdt_core::wire::decode(body)
        .map_err(|e| ApiError::bad_request(format!("body must be a postcard batch: {e}")))?;
    let count = request.items.len();
    if count == 0 || count > batch::MAX_BATCH_ITEMS {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {} items, not {count}",
            batch::MAX_BATCH_ITEMS
        )));
    }
    let refused = |error: ApiError| ItemResult::Refused {
        status: error.status.as_u16(),
        error: error.message,
    };
    let mut results: Vec<Option<ItemResult>> = vec![None; count];
    let mut writes = Vec::with_capacity(count);
    let mut positions = Vec::with_capacity(count);
    // Held until the commit is done, like a single write's.
    let mut creations = Vec::new();
    // Every key of the batch, in order: turns are taken in key order, so
    // two batches sharing keys cannot wait for each other.
    let mut keys = std::collections::BTreeSet::new();
    for (position, item) in request.items.into_iter().enumerate() {
        let admitted = counter_name(&item.counter).and_then(|name| {
            if item.amount == 0 {
                return Err(ApiError::bad_request(batch::AmountError::Zero.to_string()));
            }
            let key = idempotency::parse_key(item.key.as_deref().map(str::as_bytes))
                .map_err(ApiError::bad_request)?;
            if let Some(key) = &key {
                if !keys.insert(key.clone()) {
                    return Err(WriteError::KeyInFlight(key.to_string()).into());
                }
            }
            let creation = admit(state, &name)?;
            Ok((name, key, creation))
        });
        match admitted {
            Ok((name, key, creation)) => {
                creations.extend(creation);
                let op = match item.direction {
                    Direction::Increment => Op::Increment(item.amount),
                    Direction::Decrement => Op::Decrement(item.amount),
                };
                writes.push(LocalWrite { name, op, key, ttl });
                positions.push(position);
            }
            Err(error) => results[position] = Some(refused(error)),
        }
    }
    let mut turns = Vec::with_capacity(keys.len());
    for key in &keys {
        let turn = state.in_flight.turn(key, IN_FLIGHT_WAIT).await;
        turns.push(turn.map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?);
    }
    let mut actor = None;
    let keyed: Vec<_> = writes.iter().map(|write| write.key.clone()).collect();
    let outcomes = state.writer.write_all(writes).await;
    drop(creations);
    for (key, outcome) in keyed.iter().zip(&outcomes) {
        if let (Some(key), Ok(written)) = (key, outcome) {
            if !written.replayed {
                state.in_flight.crash_if_hooked(key);
            }
        }
    }
    drop(turns);
    for (position, outcome) in positions.into_iter().zip(outcomes) {
        results[position] = Some(match outcome {
            Ok(written) => {
                if !written.replayed {
                    actor = Some(written.actor);
                }
                ItemResult::Applied {
                    value: written.value,
                    seq: written.seq,
                    replayed: written.replayed,
                }
            }
            Err(error) => refused(error.into()),
        });
    }
    let actor = actor.unwrap_or_else(|| state.replica.actor());
    Ok(BatchAnswer {
        node: state.node.clone(),
        actor: actor.as_str().to_owned(),
        // Every position got a result above: refused up front or written.
        results: results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| refused(WriteError::ShuttingDown.into())))
            .collect(),
    })
}

/// [`CounterLimit::admit`], counting a refusal as a refused operation.
fn admit(state: &ApiState, name: &CounterName) -> Result<Option<Creation>, ApiError> {
    let admitted = state.counter_limit.admit(&state.replica, name);
    if admitted.is_err() {
        state
            .metrics
            .rejected_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    admitted
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
    let now = now_ms();
    let mut counters: Vec<PageEntry> = replica
        .map
        .page(&query.prefix, query.after.as_deref())
        .filter(|(_, counter)| counter.expiry().is_none_or(|at| at > now))
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
/// A node whose writer refuses writes (a WAL failure) answers 503 with the
/// reason, so gateways take it out of their rotation.
async fn get_health(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, body) = match state.writer.refusal() {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unavailable", "node": state.node, "reason": reason }),
        ),
        None => {
            let alive = state.gossip.members().alive();
            let body =
                serde_json::json!({ "status": "ok", "node": state.node, "peers_alive": alive });
            (StatusCode::OK, body)
        }
    };
    with_proof(&state, &headers, (status, Json(body)).into_response())
}

/// Whether this node should get traffic now (see [`crate::readiness`]):
/// 200 `{"status":"ready"}`, or 503 with the reason. Answers a gateway's
/// challenge like `/health`, so only a member of the cluster passes.
async fn get_ready(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let alive = state.gossip.members().alive();
    let known = state.gossip.knows_other_nodes();
    let assessed = (state.readiness).assess(
        alive,
        known,
        state.writer.refusal(),
        std::time::Instant::now(),
    );
    let (status, body) = match assessed {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ready",
                "node": state.node,
                "peers_alive": alive,
                // Whether this node checks API tokens: a gateway answering
                // reads from its own view must then check them itself.
                "tokens": state.access.tokens.is_some(),
            }),
        ),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "node": state.node, "reason": not_ready.to_string() }),
        ),
    };
    with_proof(&state, &headers, (status, Json(body)).into_response())
}

/// Adds the proof of cluster membership a gateway's challenge asks for.
fn with_proof(state: &ApiState, headers: &HeaderMap, mut answer: Response) -> Response {
    let challenge = headers
        .get(health_proof::CHALLENGE_HEADER)
        .and_then(|value| value.to_str().ok());
    let proof = match (&state.cluster_keys, challenge) {
        (Some(keys), Some(challenge)) => health_proof::prove(keys, challenge, &state.node),
        _ => None,
    };
    if let Some(value) = proof.and_then(|proof| header::HeaderValue::from_str(&proof).ok()) {
        answer
            .headers_mut()
            .insert(health_proof::PROOF_HEADER, value);
    }
    answer
}

async fn mark_draining(State(readiness): State<Arc<Readiness>>, mut answer: Response) -> Response {
    if readiness.is_draining() {
        answer.headers_mut().insert(
            probes::DRAINING_HEADER,
            header::HeaderValue::from_static("true"),
        );
    }
    answer
}

async fn get_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let peers = {
        let members = state.gossip.members();
        PeerCounts {
            alive: members.count(Status::Alive),
            suspect: members.count(Status::Suspect),
            dead: members.count(Status::Dead),
            suspicions: members.suspicions(),
        }
    };
    let size = {
        let replica = state.replica.read();
        StateSize {
            counters: replica.map.len(),
            actors: replica.map.summary().len(),
            entries: replica.map.entry_count(),
            keys: replica.map.key_count(),
            removed: replica.map.removed_count(),
        }
    };
    let text = state.metrics.render(&state.node, size, peers);
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

/// How long `POST /admin/retire/{node}` waits for members to report what
/// they hold before answering 409.
const RETIRE_PATIENCE: Duration = Duration::from_secs(5);
const RETIRE_POLL: Duration = Duration::from_millis(100);
/// How long it then waits for every reachable member to hold the fold.
const RETIRE_SPREAD_PATIENCE: Duration = Duration::from_secs(15);

/// `POST /admin/retire/{node}`.
#[derive(Serialize)]
struct RetiredAnswer {
    /// The node that did it.
    node: String,
    /// Whose departed actors were retired.
    retired_node: String,
    /// The actors retired.
    retired: Vec<String>,
    /// The actor they were folded into (this node's).
    into: String,
    /// Counters whose entry of a retired actor was folded.
    taken_over: usize,
    /// Counters left unfolded for now (a retired actor still owes a key's
    /// cancellation there, or is itself a survivor of a recorded
    /// takeover); run the command again later.
    left: usize,
    /// Nodes holding the fold when answered, this one included.
    replicas: usize,
    /// Reachable members, this node included: once `replicas` reaches it,
    /// the node that answered may be replaced.
    members: usize,
}

/// Retires the departed actors of `node` ([`crate::retirement`]): every
/// actor of that node but the one it writes as now, once a pull from every
/// reachable member completed (else 409).
async fn retire_node(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Json<RetiredAnswer>, ApiError> {
    tally_protocol::node_id::validate_node_id(&node)
        .map_err(|error| ApiError::bad_request(format!("node {node:?}: {error}")))?;
    // With a tokens file, the access layer already asked for an admin
    // token or the cluster's signature. Without one it lets every caller
    // through, so a cluster with a secret asks for the signature here:
    // retiring refuses nodes, which no anonymous caller may do.
    if state.access.tokens.is_none() && state.access.internal.is_some() {
        let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        state.access.check_signed_write(
            &axum::http::Method::POST,
            path_and_query,
            &headers,
            b"",
        )?;
    }
    let conflict = |error: crate::retirement::RetireError| {
        ApiError::new(StatusCode::CONFLICT, error.to_string())
    };
    let retirement = Arc::clone(state.gossip.retirement());
    let into = state.replica.actor();
    let current = if node == state.node {
        Some(into.to_string())
    } else {
        let status = state.gossip.members().status_of(&node);
        match status {
            Some(Status::Alive | Status::Suspect) => Some(
                (retirement.actor_of(&node))
                    .ok_or_else(|| conflict(RetireError::UnknownActor(node.clone())))?,
            ),
            _ => None,
        }
    };
    // A dead member may hold writes of the departed actors nobody else
    // does: raising this node's watermarks over them would hide them for
    // good (a change below the watermarks that is not held is taken for a
    // collected one).
    let members: Vec<(String, bool)> = (state.gossip.members().peers().into_iter())
        .map(|(record, status)| (record.id, status == Status::Dead))
        .collect();
    crate::retirement::none_dead(&members).map_err(conflict)?;
    // Pull from every reachable member, and wait a few seconds for the
    // answers: then this node holds every write of the departed actors.
    let asked = tokio::time::Instant::now();
    state.gossip.refresh_watermarks();
    poll_until(RETIRE_PATIENCE, || {
        let pulled = crate::retirement::pulled_from_all(&state.gossip.pulled_since(asked));
        (pulled.is_ok(), pulled)
    })
    .await
    .map_err(conflict)?;
    let (held, departed) = {
        let state = state.replica.read();
        let held = state.map.summary();
        let mut departed =
            crate::retirement::departed_actors(&node, held.keys(), current.as_deref());
        // Retired before and collected since: nothing left to do.
        departed.retain(|actor| {
            !retirement.is_retired(actor.as_str()) || state.map.holds_entries_of(actor)
        });
        (held, departed)
    };
    // The departed actors write no more, and this node now holds every
    // write of theirs that any reachable member holds: it holds them up to
    // their highest seq. Saying so (watermarks, journaled like a pull's)
    // lets garbage collection, which drops only what every member holds,
    // drop the folded entries even if nobody ever pulled from those actors.
    let through: crdt_core::Watermarks = (departed.iter())
        .map(|actor| (actor.clone(), held.get(actor).copied().unwrap_or(0)))
        .collect();
    state
        .replica
        .merge_remote(&CounterMap::new(), Some(&through));
    crate::gossip::RemoteSink::persist(&state.writer, CounterMap::new(), Some(through)).await;
    let mut answer = RetiredAnswer {
        node: state.node.clone(),
        retired_node: node,
        retired: Vec::new(),
        into: into.to_string(),
        taken_over: 0,
        left: 0,
        replicas: 1,
        members: 1,
    };
    for actor in departed {
        let done = state.writer.retire(actor.clone()).await?;
        answer.taken_over += done.taken_over;
        answer.left += done.left;
        // Only once the takeovers are durable: from now on old copies of
        // the actor are refused.
        retirement.learn([(actor.to_string(), now_ms())]);
        answer.retired.push(actor.to_string());
    }
    // Answered once every reachable member holds the fold, or after
    // RETIRE_SPREAD_PATIENCE: a node replaced right after it folded would
    // otherwise take the only copy with it. A member's pull reports what it
    // holds of this node's seqs (members with takeovers waiting for
    // garbage collection pull every round).
    let through = state.replica.read().map.last_seq(into.as_str());
    let nothing_to_spread = answer.taken_over == 0;
    (answer.replicas, answer.members) = poll_until(RETIRE_SPREAD_PATIENCE, || {
        let reports: Vec<_> = (state.gossip.member_reports().into_iter())
            .filter(|(id, _)| state.gossip.members().status_of(id) != Some(Status::Dead))
            .map(|(id, report)| (id, report.map(|r| r.watermarks)))
            .collect();
        let holding = crate::retirement::holding(&into, through, &reports);
        let spread = holding == reports.len() || nothing_to_spread;
        (spread, (1 + holding, 1 + reports.len()))
    })
    .await;
    tracing::info!(
        retired = ?answer.retired,
        taken_over = answer.taken_over,
        left = answer.left,
        replicas = answer.replicas,
        "retired the departed actors of node {}",
        answer.retired_node
    );
    Ok(Json(answer))
}

/// Asks `check` every [`RETIRE_POLL`] until it says it is done or
/// `patience` has passed; returns its last answer.
async fn poll_until<T>(patience: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let mut waited = Duration::ZERO;
    loop {
        let (done, answer) = check();
        if done || waited >= patience {
            return answer;
        }
        tokio::time::sleep(RETIRE_POLL).await;
        waited += RETIRE_POLL;
    }
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

/// The slots a stream subscriber (`/ws`, `/watch`) holds while connected:
/// one of [`MAX_SUBSCRIBERS`] and one of its address's; 503 or 429 when
/// none is left.
fn subscriber_slots(
    state: &ApiState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<(OwnedSemaphorePermit, Option<IpSlot>), ApiError> {
    // Served by another loop than ours (tests), the peer is unknown: only the global cap applies.
    let ip_slot = match peer {
        Some(Extension(ConnectInfo(peer))) => {
            let slot = state
                .subscribers_per_ip
                .try_acquire(peer.ip())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many stream subscribers from {} (at most {} per address)",
                            peer.ip(),
                            state.subscribers_per_ip.max()
                        ),
                    )
                })?;
            Some(slot)
        }
        None => None,
    };
    let permit = Arc::clone(&state.subscribers)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many stream subscribers (at most {MAX_SUBSCRIBERS})"),
            )
        })?;
    Ok((permit, ip_slot))
}

/// `GET /watch?prefix=P`: Server-Sent Events of counter values (see
/// `tally_protocol::watch`).
async fn watch(
    State(state): State<ApiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
) -> Response {
    let slots = match subscriber_slots(&state, peer) {
        Ok(slots) => slots,
        Err(refused) => return refused.into_response(),
    };
    let last_event_id = watch::last_event_id(&headers);
    let source: Arc<dyn CounterSource> = state.replica.clone();
    (state.watch).stream(source, query.prefix, last_event_id, slots)
}

async fn websocket(
    State(state): State<ApiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (permit, ip_slot) = match subscriber_slots(&state, peer) {
        Ok(slots) => slots,
        Err(refused) => return refused.into_response(),
    };
    // Subscribers only listen; anything they send is tiny or a mistake.
    upgrade
        .max_message_size(4 * 1024)
        .on_upgrade(move |socket| async move {
            if let Err(error) = stream_changes(state, socket).await {
                tracing::debug!(%error, "/ws subscriber dropped");
            }
            drop(permit);
            drop(ip_slot);
        })
}

/// Streams the replica to one subscriber: a snapshot (in chunks), the
/// members, then every change. A subscriber too slow to keep up gets a
/// fresh snapshot instead of an ever-growing backlog; one that cannot take
/// a frame within [`SEND_TIMEOUT`] is dropped.
async fn stream_changes(state: ApiState, mut socket: WebSocket) -> Result<(), axum::Error> {
    // Subscribed before the snapshot is taken: a change the snapshot
    // misses (a counter created behind the chunker) arrives as a delta.
    let mut changes = state.replica.subscribe();
    let mut collections = state.replica.subscribe_collections();
    let mut member_changes = state.gossip.member_changes();
    let members = |state: &ApiState| NodeEvent::Members {
        node: state.node.clone(),
        members: member_infos(state, true),
    };
    send_snapshot(&state, &mut socket).await?;
    send_event(&mut socket, &members(&state)).await?;
    loop {
        let event = tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => NodeEvent::Delta {
                    node: state.node.clone(),
                    delta: change.delta.clone(),
                    via_gossip: change.from_peer.is_some(),
                },
                Err(RecvError::Lagged(_)) => {
                    send_snapshot(&state, &mut socket).await?;
                    continue;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            changed = member_changes.changed() => match changed {
                Ok(()) => members(&state),
                Err(_) => return Ok(()),
            },
            collected = collections.recv() => match collected {
                Ok(names) => {
                    for names in names.chunks(MAX_COLLECTED_NAMES) {
                        let event = NodeEvent::Collected {
                            node: state.node.clone(),
                            names: names.to_vec(),
                        };
                        send_event(&mut socket, &event).await?;
                    }
                    continue;
                }
                // Missed names only leave deleted copies at the follower.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Ok(()),
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return Ok(()),
                Some(Ok(_)) => continue,
            },
        };
        send_event(&mut socket, &event).await?;
    }
}

/// The whole replica as `Snapshot` chunks of at most `stream_chunk_bytes`
/// encoded, each taken under a short read lock: the map is never cloned
/// whole, and no frame grows with the keyspace.
async fn send_snapshot(state: &ApiState, socket: &mut WebSocket) -> Result<(), axum::Error> {
    let mut chunker = SnapshotChunker::new();
    let mut first = true;
    while !chunker.is_done() {
        let (chunk, last) = {
            let replica = state.replica.read();
            chunker.next_chunk(&replica.map, state.stream_chunk_bytes)
        };
        let event = NodeEvent::Snapshot {
            node: state.node.clone(),
            state: chunk,
            first,
            last,
        };
        send_event(socket, &event).await?;
        first = false;
    }
    Ok(())
}

async fn send_event(socket: &mut WebSocket, event: &NodeEvent) -> Result<(), axum::Error> {
    let frame = WsMessage::Binary(crdt_core::wire::encode(event).into());
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new("subscriber too slow: send timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> CounterName {
        CounterName::new(text).unwrap()
    }

    #[test]
    fn the_counter_limit_refuses_only_new_names_and_counts_creations_in_flight() {
        use crate::replica::ReplicaState;
        let actor = crdt_core::ActorId::new("n1~1").unwrap();
        let replica = Replica::new(actor.clone(), ReplicaState::default());
        let _ = (replica.write().map).apply(&actor, &name("a"), Op::Increment(1));
        let limit = CounterLimit::new(Some(2));
        // An existing counter needs no room.
        assert!(limit.admit(&replica, &name("a")).unwrap().is_none());
        // One held, one being created: full, though the creation has not landed yet.
        let creating = limit.admit(&replica, &name("b")).unwrap();
        assert!(creating.is_some());
        let refused = limit.admit(&replica, &name("c")).unwrap_err();
        assert_eq!(refused.status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(
            refused.message.contains("--max-counters 2"),
            "{}",
            refused.message
        );
        // A creation that failed gives its room back.
        drop(creating);
        assert!(limit.admit(&replica, &name("c")).unwrap().is_some());
        // Past the limit (by gossip), existing counters stay writable.
        for extra in ["x", "y", "z"] {
            let _ = (replica.write().map).apply(&actor, &name(extra), Op::Increment(1));
        }
        assert!(limit.admit(&replica, &name("z")).unwrap().is_none());
        assert!(limit.admit(&replica, &name("new")).is_err());
        let unlimited = CounterLimit::new(None);
        assert!(unlimited.admit(&replica, &name("new")).unwrap().is_none());
    }
}
