//! Demo controls: crash and restart (done by the demo supervisor through
//! [`DemoControls`]), partition and heal (done here, through the node's
//! fault-injection API).
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::demo_controls::DemoControls;
use crate::error::ApiError;
use crate::node_table;
use crate::proxy::relay;
use crate::state::Shared;

/// `POST /demo/nodes/{id}/{action}`; only routed when controls were given.
pub async fn act(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let Path((node, action)) = match path {
        Ok(path) => path,
        Err(bad) => return ApiError::new(bad.status(), bad.body_text()).into_response(),
    };
    let Some(controls) = shared.controls.clone() else {
        return ApiError::not_found("demo controls are off").into_response();
    };
    let done = match action.as_str() {
        "crash" => crash(&shared, controls.as_ref(), &node).await,
        "restart" => restart(&shared, controls.as_ref(), &node).await,
        "partition" => partition(&shared, &node, true).await,
        "heal" => partition(&shared, &node, false).await,
        _ => return ApiError::not_found(format!("unknown demo action {action:?}")).into_response(),
    };
    match done {
        Ok(None) => Json(json!({ "node": node, "action": action })).into_response(),
        Ok(Some(refusal)) => refusal,
        Err(error) => error.into_response(),
    }
}

/// Done, or the node's own refusal to pass on, or our error.
type Outcome = Result<Option<Response>, ApiError>;

fn refused(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

async fn crash(shared: &Arc<Shared>, controls: &dyn DemoControls, node: &str) -> Outcome {
    controls.crash(node).await.map_err(refused)?;
    // Don't wait for the next health check to show it down.
    node_table::mark_unhealthy(shared, node);
    Ok(None)
}

async fn restart(shared: &Arc<Shared>, controls: &dyn DemoControls, node: &str) -> Outcome {
    controls.restart(node).await.map_err(refused)?;
    // A fresh process starts with no partition; health checks bring it back.
    node_table::update(shared, |b| b.set_partitioned(node, false));
    Ok(None)
}

/// Partition: the node drops traffic from every other node; heal undoes it.
async fn partition(shared: &Arc<Shared>, node: &str, cut: bool) -> Outcome {
    let (addr, others) = {
        let balancer = shared.balancer();
        let target = (balancer.find(node))
            .ok_or_else(|| ApiError::not_found(format!("no node {node:?}")))?;
        let others: Vec<String> = (balancer.nodes().iter())
            .filter(|other| other.http_addr != target.http_addr)
            .filter_map(|other| other.id.clone())
            .collect();
        (target.http_addr.clone(), others)
    };
    let url = format!("http://{addr}/admin/partition");
    let request = if cut {
        shared.http.post(url).json(&json!({ "peers": others }))
    } else {
        shared.http.delete(url)
    };
    let unreachable = |error: reqwest::Error| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("node {node} unreachable: {error}"),
        )
    };
    let response = request.send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Ok(Some(relay(response).await.map_err(unreachable)?));
    }
    node_table::update(shared, |b| b.set_partitioned(&addr, cut));
    Ok(None)
}
