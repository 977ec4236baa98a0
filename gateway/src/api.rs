//! The gateway's routes.
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::HandlerWithoutStateExt;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_http::services::ServeDir;

use tally_protocol::access::{self, AccessPolicy};

use crate::config::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::replicas::Lag;
use crate::state::Shared;
use crate::{browser, demo, proxy};

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
        .route("/counter", get(proxy::forward))
        .route("/increment", post(proxy::forward))
        .route("/decrement", post(proxy::forward))
        .route("/counters", get(proxy::forward))
        .route("/counters/{name}", get(proxy::forward))
        .route("/counters/{name}/increment", post(proxy::forward))
        .route("/counters/{name}/decrement", post(proxy::forward))
        .route("/nodes", get(nodes))
        .route("/health", get(health))
        .route("/ws", get(browser::upgrade));
    // Without controls the demo routes don't exist at all (404 like any unknown path).
    if shared.controls.is_some() {
        routes = routes.route("/demo/nodes/{id}/{action}", post(demo::act));
    }
    let routes = routes.route_layer(middleware::from_fn_with_state(access, access::enforce));
    let web_dir = shared.config.resolved_web_dir();
    let routes = match web_dir {
        Some(dir) => routes.fallback_service(
            ServeDir::new(dir)
                .call_fallback_on_method_not_allowed(true)
                .not_found_service(not_found.into_service()),
        ),
        None => routes.route("/", get(no_web_bundle)).fallback(not_found),
    };
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let healthy_nodes = shared.balancer().healthy_count();
    let (status, word) = if healthy_nodes > 0 {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
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

async fn no_web_bundle() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><meta charset=utf-8><title>Tally</title>",
        "<p>web bundle not built — run <code>cargo xtask web</code>.</p>",
        "<p>The API works: <a href=/nodes>/nodes</a>, <a href=/counter>/counter</a>.</p>",
    ))
}
