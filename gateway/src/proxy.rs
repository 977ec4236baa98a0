//! Forwarding the counter API to a healthy node, with failover.
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::Shared;

/// The handler behind every counter route: the request goes to a node
/// unchanged (method, path, query, body) and its answer comes back unchanged.
pub async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // An oversized body is refused here (413), before any node sees it.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::new(rejection.status(), rejection.body_text()).into_response()
        }
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = NodeRequest {
        method,
        path,
        content_type: headers.get(CONTENT_TYPE),
        body,
    };
    match request.send_to_any(&shared).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

struct NodeRequest<'a> {
    method: Method,
    path: &'a str,
    content_type: Option<&'a axum::http::HeaderValue>,
    body: Bytes,
}

/// How a node failed to answer.
enum Failure {
    /// The connection failed before the request left: nothing was applied.
    NotSent(reqwest::Error),
    /// The request left, then the answer did not come in time.
    TimedOut(reqwest::Error),
    /// The request left, then the connection or the answer broke.
    Broken(reqwest::Error),
}

impl Failure {
    fn classify(error: reqwest::Error) -> Self {
        if error.is_connect() {
            Failure::NotSent(error)
        } else if error.is_timeout() {
            Failure::TimedOut(error)
        } else {
            Failure::Broken(error)
        }
    }

    fn into_api_error(self, addr: &str) -> ApiError {
        match self {
            Failure::TimedOut(error) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("node {addr} did not answer in time: {error}"),
            ),
            Failure::NotSent(error) | Failure::Broken(error) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("node {addr} failed: {error}"),
            ),
        }
    }
}

impl NodeRequest<'_> {
    /// Tries healthy nodes in round-robin order. A node that fails leaves
    /// the rotation at once.
    ///
    /// A write moves on to the next node only when the request never left
    /// (connection refused or reset while connecting). Once a write may have
    /// reached a node it is never resent: a counter cannot tell a retried
    /// increment from a new one, so resending after a timeout could count the
    /// same click twice. The client gets 504/502 and decides itself.
    /// Reads change nothing, so any failure moves on.
    async fn send_to_any(&self, shared: &Arc<Shared>) -> Result<Response, ApiError> {
        let is_write = self.method != Method::GET && self.method != Method::HEAD;
        let order = shared.balancer().rotation();
        let mut last_error = ApiError::no_healthy_node();
        for addr in order {
            let failure = match self.send(shared, &addr).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            tracing::warn!(node = %addr, "proxied request failed; node leaves the rotation");
            shared.mark_unhealthy(&addr);
            let may_have_applied = !matches!(failure, Failure::NotSent(_));
            last_error = failure.into_api_error(&addr);
            if is_write && may_have_applied {
                break;
            }
        }
        Err(last_error)
    }

    async fn send(&self, shared: &Shared, addr: &str) -> Result<Response, Failure> {
        let url = format!("http://{addr}{}", self.path);
        let mut request = shared.http.request(self.method.clone(), url);
        if let Some(content_type) = self.content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if !self.body.is_empty() {
            request = request.body(self.body.clone());
        }
        let response = request.send().await.map_err(Failure::classify)?;
        relay(response).await.map_err(Failure::classify)
    }
}

/// A node's answer as the gateway's: same status, content type and body.
pub async fn relay(response: reqwest::Response) -> Result<Response, reqwest::Error> {
    let status = response.status();
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let body = response.bytes().await?;
    let mut answer = Response::new(Body::from(body));
    *answer.status_mut() = status;
    if let Some(content_type) = content_type {
        answer.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    Ok(answer)
}
