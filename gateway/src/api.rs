//! The gateway's routes.
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::HandlerWithoutStateExt;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_http::services::ServeDir;

use tally_protocol::access::{self, AccessPolicy};

use crate::config::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::state::Shared;
use crate::trail::Lag;
use crate::{browser, counters, demo, page, proxy};
use tally_protocol::batch::Direction::{Decrement, Increment};

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id, or its HTTP address until the id is known.
    pub id: String,
    pub http_addr: String,
    pub gossip_addr: Option<String>,
    /// In the rotation.
    pub healthy: bool,
    /// Cut off from its peers by the demo.
    pub partitioned: bool,
    /// Its value of the "default" counter, from its stream (`None` before the stream delivered).
    pub value: Option<i128>,
    /// How far it trails the gateway's merged view (`None` before the stream delivered).
    pub lag: Option<Lag>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    // The page's files hold no data, so they are served to anyone; every
    // route above them (the API, streams, demo buttons) passes the policy.
    let access = Arc::new(AccessPolicy {
        tokens: shared.config.api_tokens.clone(),
        allowed_origins: shared.config.allowed_origins.clone(),
        internal: None,
    });
    let mut routes = Router::new()
        .route("/counter", get(counters::read_default))
        .route(
            "/increment",
            post(|s, r| counters::write_default(s, r, Increment)),
        )
        .route(
            "/decrement",
            post(|s, r| counters::write_default(s, r, Decrement)),
        )
        .route("/counters", get(proxy::forward))
        .route(
            "/counters/{name}",
            get(counters::read_named).delete(proxy::forward),
        )
        // Deletes, resets and expiries go to a node alone (never combined),
        // failing over only before the request was sent, like every write.
        .route("/counters/{name}/reset", post(proxy::forward))
        .route("/counters/{name}/ttl", put(proxy::forward))
        .route(
            "/counters/{name}/increment",
            post(|s, p, r| counters::write_named(s, p, r, Increment)),
        )
        .route(
            "/counters/{name}/decrement",
            post(|s, p, r| counters::write_named(s, p, r, Decrement)),
        )
        .route("/nodes", get(nodes))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/ws", get(browser::upgrade))
        .route("/watch", get(browser::watch));
    // Without controls the demo routes don't exist at all (404 like any unknown path).
    if shared.controls.is_some() {
        routes = routes.route("/demo/nodes/{id}/{action}", post(demo::act));
    }
    let routes = routes.route_layer(middleware::from_fn_with_state(access, access::enforce));
    // `--web-dir` (development) serves a directory as it is on disk; without
    // it, the page compiled into the binary (`page.rs`).
    let routes = match &shared.config.web_dir {
        Some(dir) if dir.is_dir() => routes.fallback_service(
            ServeDir::new(dir)
                .call_fallback_on_method_not_allowed(true)
                .not_found_service(not_found.into_service()),
        ),
        Some(dir) => {
            tracing::warn!(dir = %dir.display(), "--web-dir does not exist: no web page");
            routes.route("/", get(page::no_web_dir)).fallback(not_found)
        }
        None if page::is_embedded() => routes.fallback(embedded_page),
        None => {
            tracing::warn!(
                "built without the web bundle: no web page (run `cargo xtask web`, then rebuild)"
            );
            routes.route("/", get(page::not_built)).fallback(not_found)
        }
    };
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Liveness: the gateway process answers (200 whatever the nodes do, so
/// an orchestrator never restarts a gateway for its nodes' sake).
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let healthy_nodes = shared.balancer().healthy_count();
    let word = if healthy_nodes > 0 {
        "ok"
    } else {
        "no healthy node"
    };
    Json(json!({ "status": word, "healthy_nodes": healthy_nodes })).into_response()
}

/// Readiness: at least one node in the rotation, else 503.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let healthy_nodes = shared.balancer().healthy_count();
    let (status, word) = if healthy_nodes > 0 {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no healthy node",
        )
    };
    let body = json!({ "status": word, "healthy_nodes": healthy_nodes });
    (status, Json(body)).into_response()
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Json<Vec<NodeView>> {
    // Copy the table first: the two locks are never held together.
    let table = shared.balancer().nodes().to_vec();
    let replicas = shared.replicas();
    let views = table
        .into_iter()
        .map(|node| NodeView {
            id: node.name().to_owned(),
            value: replicas.default_value(&node.http_addr),
            lag: replicas.lag(&node.http_addr),
            http_addr: node.http_addr,
            gossip_addr: node.gossip_addr,
            healthy: node.healthy,
            partitioned: node.partitioned,
        })
        .collect();
    Json(views)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// A file of the embedded page, or 404 like any unknown route.
async fn embedded_page(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match page::respond(&method, uri.path(), &headers) {
        Some(answer) => answer,
        None => not_found().await.into_response(),
    }
}
