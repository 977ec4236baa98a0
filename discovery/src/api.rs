//! HTTP surface of the discovery server. Every error is JSON: `{"error": "..."}`.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::registry::{validate_id, Registry, RegistryError, DEFAULT_CAPACITY};
use crate::Member;
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::http_error::ApiError;
use tally_protocol::http_server::{self, ConnectionStats, ServerLimits, DISCOVERY_MAX_CONNECTIONS};
use tally_protocol::request_auth::server::{require_signature, RequestVerifier};

pub use tally_protocol::http_error::MAX_BODY_BYTES;

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The registry shared by all request handlers and the sweeper, and the
/// verifier of signed requests (absent only with `--insecure`).
#[derive(Clone)]
pub struct DiscoveryState {
    registry: Arc<Mutex<Registry>>,
    verifier: Option<Arc<RequestVerifier>>,
}

impl DiscoveryState {
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, DEFAULT_CAPACITY)
    }

    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::new(ttl, capacity))),
            verifier: None,
        }
    }

    /// Requires every register, heartbeat, deregister and peer listing to be
    /// signed with one of `keys` (401 otherwise, and nothing changes).
    pub fn with_keys(mut self, keys: ClusterKeys) -> Self {
        self.verifier = Some(Arc::new(RequestVerifier::new(keys)));
        self
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The table stays consistent even if a holder panicked: every update is a single insert/remove.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops expired members now (the server also does this periodically).
    pub fn sweep(&self) {
        for id in self.lock().sweep(Instant::now()) {
            tracing::info!(%id, "discovery member expired");
        }
    }
}

/// The discovery routes over `state`.
pub fn router(state: DiscoveryState) -> Router {
    let members = Router::new()
        .route("/register", post(register))
        .route("/heartbeat", post(heartbeat))
        .route("/peers", get(peers))
        .route("/peers/{id}", delete(deregister));
    // `route_layer`: only requests that matched a route are checked, so an
    // unknown path is still a plain 404.
    let members = match &state.verifier {
        Some(verifier) => members.route_layer(middleware::from_fn_with_state(
            Arc::clone(verifier),
            require_signature,
        )),
        None => members,
    };
    members
        // Probes, open to all: discovery keeps no state it must recover,
        // so it is ready as soon as it serves.
        .route("/health", get(health))
        .route("/ready", get(health))
        // Must come after the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves discovery on an already-bound `listener` until `shutdown` resolves,
/// then finishes in-flight requests.
///
/// With `keys`, every call but `/health` and `/ready` must be signed with the cluster
/// secret; `None` (only with `--insecure`) leaves the registry open.
/// HTTP limits are the defaults, with at most [`DISCOVERY_MAX_CONNECTIONS`]
/// connections (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    ttl: Duration,
    keys: Option<ClusterKeys>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DiscoveryError> {
    let limits = ServerLimits::with_max_connections(DISCOVERY_MAX_CONNECTIONS);
    serve_with(listener, ttl, keys, limits, shutdown).await
}

/// [`serve`] within `limits`: connection cap, header, body and idle
/// timeouts (`tally_protocol::http_server`).
pub async fn serve_with(
    listener: TcpListener,
    ttl: Duration,
    keys: Option<ClusterKeys>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DiscoveryError> {
    let state = match keys {
        Some(keys) => DiscoveryState::new(ttl).with_keys(keys),
        None => DiscoveryState::new(ttl),
    };
    let sweeper = tokio::spawn(sweep_forever(state.clone(), sweep_interval(ttl)));
    let stats = Arc::new(ConnectionStats::default());
    let result = http_server::serve(listener, router(state), limits, stats, shutdown).await;
    sweeper.abort();
    Ok(result?)
}

/// Reads already hide expired members; sweeping only frees their memory, so it need not be eager.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn sweep_forever(state: DiscoveryState, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        state.sweep();
    }
}

#[derive(Deserialize)]
struct HeartbeatRequest {
    id: String,
}

async fn register(
    State(state): State<DiscoveryState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let member: Member = parse_json(body)?;
    let id = member.id.clone();
    let mut registry = state.lock();
    registry.register(member, Instant::now())?;
    tracing::debug!(%id, "discovery member registered");
    Ok(Json(
        json!({ "id": id, "ttl_ms": registry.ttl().as_millis() }),
    ))
}

async fn heartbeat(
    State(state): State<DiscoveryState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let HeartbeatRequest { id } = parse_json(body)?;
    validate_id(&id)?;
    let mut registry = state.lock();
    if !registry.heartbeat(&id, Instant::now()) {
        return Err(unknown_member(&id));
    }
    Ok(Json(
        json!({ "id": id, "ttl_ms": registry.ttl().as_millis() }),
    ))
}

async fn peers(State(state): State<DiscoveryState>) -> impl IntoResponse {
    Json(state.lock().peers(Instant::now()))
}

async fn deregister(
    State(state): State<DiscoveryState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.lock().remove(&id, Instant::now()) {
        tracing::info!(%id, "discovery member deregistered");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown_member(&id))
    }
}

async fn health(State(state): State<DiscoveryState>) -> impl IntoResponse {
    let members = state.lock().live_count(Instant::now());
    Json(json!({ "status": "ok", "members": members }))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {uri}"),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let message = format!("method {method} not allowed on {}", uri.path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message)
}

/// Parses JSON ourselves so a missing `Content-Type` is not an error and every
/// failure maps to our JSON error body (oversized bodies → 413, malformed → 400).
fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {err}")))
}

fn unknown_member(id: &str) -> ApiError {
    ApiError::not_found(format!("unknown member {id:?}"))
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        let status = match err {
            RegistryError::InvalidId(_) => StatusCode::BAD_REQUEST,
            RegistryError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, err.to_string())
    }
}
