//! The counter routes: writes go through the combiner (`writes`), reads
//! are answered from the merged view (`replicas`); what neither may take
//! is proxied unchanged (`proxy`).
//!
//! Proxied unchanged: a write carrying `Idempotency-Key` (its meaning is
//! the node's, and a combined write would lose it), any request with a
//! query string other than a write's lone `?w=` (`?r=`, whose merge of
//! replicas only a node can do, and whatever later features put there),
//! and a read the view cannot answer in time. A write's `?w=` is combined
//! only with writes of the same `w` (see `writes`).
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use crdt_core::{CounterName, DEFAULT_COUNTER};
use serde::Serialize;
use tally_protocol::batch::{self, Direction};

use crate::error::ApiError;
use crate::proxy;
use crate::replicas::LocalRead;
use crate::state::Shared;
use crate::writes;

/// Header of keyed writes: never combined, each proxied alone.
pub use tally_protocol::idempotency::IDEMPOTENCY_KEY_HEADER as IDEMPOTENCY_KEY;

/// What reads answered from the merged view give as `"node"`.
pub const LOCAL_NODE: &str = "gateway";

/// A counter answer, the node's shape: `{"name"?, "value", "node", "replicas"?}`.
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    value: i128,
    node: &'a str,
    /// Replicas holding a write (a read from the merged view has none to report).
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<usize>,
}

/// What a write's query string allows.
#[derive(Debug, PartialEq, Eq)]
enum WriteQuery {
    /// Combined with writes of the same `w` (`None`: no query, or `w=1`,
    /// the default). The node judges the value: a batch carries its `w`
    /// as given, so an invalid one is every client's 400.
    Combine(Option<String>),
    /// Any other query: to a node unchanged.
    Proxy,
}

fn write_query(query: Option<&str>) -> WriteQuery {
    let Some(query) = query else {
        return WriteQuery::Combine(None);
    };
    let Some(value) = query.strip_prefix("w=") else {
        return WriteQuery::Proxy;
    };
    let plain =
        !value.is_empty() && value.len() <= 16 && value.bytes().all(|b| b.is_ascii_alphanumeric());
    match value {
        "1" => WriteQuery::Combine(None),
        _ if plain => WriteQuery::Combine(Some(value.to_owned())),
        _ => WriteQuery::Proxy,
    }
}

/// `POST /increment`, `/decrement`.
pub async fn write_default(
    State(shared): State<Arc<Shared>>,
    request: Request,
    direction: Direction,
) -> Response {
    write(shared, request, None, direction).await
}

/// `POST /counters/{name}/increment`, `/decrement`.
pub async fn write_named(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    request: Request,
    direction: Direction,
) -> Response {
    write(shared, request, Some(name), direction).await
}

/// The request taken whole (the hot path of the gateway: its headers are
/// looked at, never copied), its body read under the route's size limit.
async fn write(
    shared: Arc<Shared>,
    request: Request,
    name: Option<String>,
    direction: Direction,
) -> Response {
    let level = match write_query(request.uri().query()) {
        WriteQuery::Combine(level) if !request.headers().contains_key(IDEMPOTENCY_KEY) => level,
        _ => return forward_whole(shared, request).await,
    };
    let authorization = request.headers().get(AUTHORIZATION).cloned();
    // The node's checks, in the node's order, with its messages: the
    // answer is the same whether the write is combined or not.
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::new(rejection.status(), rejection.body_text()).into_response()
        }
    };
    let counter = name.as_deref().unwrap_or(DEFAULT_COUNTER);
    if let Err(error) = CounterName::new(counter) {
        return ApiError::bad_request(error.to_string()).into_response();
    }
    let amount = match batch::parse_amount(&body) {
        Ok(amount) => amount,
        Err(error) => return ApiError::bad_request(error.to_string()).into_response(),
    };
    let submitted = writes::submit(
        &shared,
        authorization,
        level,
        counter.to_owned(),
        direction,
        amount,
    );
    match submitted.await {
        Ok(done) => Json(Answer {
            name: name.as_deref(),
            value: done.value,
            node: &done.node,
            replicas: Some(done.replicas),
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// A write the gateway does not combine: to a node unchanged.
async fn forward_whole(shared: Arc<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    // The body limit travels in the extensions.
    let mut rest = Request::new(body);
    *rest.extensions_mut() = parts.extensions;
    let body = Bytes::from_request(rest, &()).await;
    proxy::forward(State(shared), method, uri, headers, body).await
}

/// `GET /counter`.
pub async fn read_default(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    read(shared, method, uri, headers, None).await
}

/// `GET /counters/{name}`.
pub async fn read_named(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    read(shared, method, uri, headers, Some(name)).await
}

/// From the merged view when it holds the counter and every write this
/// gateway acknowledged on it (waiting up to `read_wait` for those);
/// otherwise from a node, like before.
async fn read(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    name: Option<String>,
) -> Response {
    if uri.query().is_none() {
        let counter = name.as_deref().unwrap_or(DEFAULT_COUNTER);
        let value = match local_value(&shared, counter).await {
            Some(Some(value)) => Some(value),
            // The default counter reads 0 when absent, as on a node.
            Some(None) if name.is_none() => Some(0),
            Some(None) => {
                return ApiError::not_found(format!(
                    "counter {counter:?} does not exist (never written, deleted, or expired)"
                ))
                .into_response()
            }
            None => None,
        };
        if let Some(value) = value {
            let answer = Answer {
                name: name.as_deref(),
                value,
                node: LOCAL_NODE,
                replicas: None,
            };
            return Json(answer).into_response();
        }
    }
    proxy::forward(State(shared), method, uri, headers, Ok(Bytes::new())).await
}

/// The counter's value from the merged view (`Some(None)`: deleted or
/// expired there), `None` when a node must answer.
async fn local_value(shared: &Shared, counter: &str) -> Option<Option<i128>> {
    // Invalid names are the node's to refuse (400), as before.
    CounterName::new(counter).ok()?;
    // Nodes that check tokens while this gateway has none to check: only
    // a node may decide who reads.
    let unchecked = shared.config.api_tokens.is_none()
        && shared
            .nodes_check_tokens
            .load(std::sync::atomic::Ordering::Relaxed);
    if unchecked {
        return None;
    }
    // With no node in the rotation the gateway answers reads 503 as
    // before, whatever streams it still follows (a node not ready yet may
    // stream a state it has not finished catching up).
    if shared.balancer().healthy_count() == 0 {
        return None;
    }
    let deadline = tokio::time::Instant::now() + shared.config.read_wait;
    let mut changes = shared.view_changed.subscribe();
    loop {
        // Marked seen before reading the view: a change after this read wakes us.
        changes.borrow_and_update();
        match shared.replicas().read(counter) {
            LocalRead::Value(value) => return Some(Some(value)),
            LocalRead::Absent => return Some(None),
            LocalRead::Unknown => return None,
            LocalRead::Behind => {}
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the view stopped changing for good): ask a node.
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{write_query, WriteQuery};

    #[test]
    fn only_a_lone_plain_w_is_combined() {
        let combine = |level: Option<&str>| WriteQuery::Combine(level.map(str::to_owned));
        assert_eq!(write_query(None), combine(None));
        assert_eq!(write_query(Some("w=1")), combine(None));
        assert_eq!(write_query(Some("w=majority")), combine(Some("majority")));
        assert_eq!(write_query(Some("w=3")), combine(Some("3")));
        assert_eq!(write_query(Some("w=abc")), combine(Some("abc")));
        for proxied in [
            "r=2",
            "w=2&r=2",
            "w=",
            "w=a%20b",
            "x=1",
            "w=12345678901234567",
        ] {
            assert_eq!(write_query(Some(proxied)), WriteQuery::Proxy, "{proxied}");
        }
    }
}
