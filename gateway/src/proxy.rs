//! Forwarding the counter API to a healthy node, with failover (the rule
//! for when to move on is in `failover`).
//!
//! The request line is forwarded as it came (method, path, query, body)
//! over the pooled client of `node_clients`, and the node's answer comes
//! back unchanged.
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, Limited};
use tally_protocol::probes;

use crate::counters::IDEMPOTENCY_KEY;
use crate::error::{self, ApiError};
use crate::failover::{self, Failure, Next, RequestKind};
use crate::node_clients::NodeClient;
use crate::node_table;
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
    let request = NodeRequest {
        method,
        path: uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        content_type: headers.get(CONTENT_TYPE).cloned(),
        // Nodes with their own tokens file check the client's token too.
        authorization: headers.get(AUTHORIZATION).cloned(),
        // Its meaning is the node's: a write carrying it goes through here
        // alone (never combined, see `counters`) and keeps it.
        idempotency_key: headers.get(IDEMPOTENCY_KEY).cloned(),
        body,
    };
    match request.send_to_any(&shared).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

struct NodeRequest {
    method: Method,
    path: PathAndQuery,
    content_type: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    idempotency_key: Option<HeaderValue>,
    body: Bytes,
}

impl NodeRequest {
    /// Tries healthy nodes in round-robin order. A node that fails leaves
    /// the rotation at once; whether the request moves on to the next node
    /// is `failover`'s call.
    async fn send_to_any(&self, shared: &Arc<Shared>) -> Result<Response, ApiError> {
        let kind = RequestKind::of(&self.method);
        let order = shared.balancer().rotation();
        let mut answer = error::no_healthy_node();
        for addr in order {
            let failure = match self.send(shared, &addr).await {
                Ok((response, draining)) => {
                    if draining {
                        tracing::info!(node = %addr, "node is draining before it stops; it leaves the rotation");
                        node_table::mark_unhealthy(shared, &addr);
                    }
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            tracing::warn!(node = %addr, "proxied request failed; node leaves the rotation");
            node_table::mark_unhealthy(shared, &addr);
            let next = failover::after_failure(kind, &failure);
            answer = failure.into_api_error(&addr, shared.config.request_timeout);
            if next == Next::Stop {
                break;
            }
        }
        Err(answer)
    }

    /// The node's answer, and whether it said it is draining.
    async fn send(&self, shared: &Shared, addr: &str) -> Result<(Response, bool), Failure> {
        let request = self.to_node(addr)?;
        tokio::time::timeout(
            shared.config.request_timeout,
            exchange(&shared.proxy, request, shared.config.max_node_answer),
        )
        .await
        .map_err(|_elapsed| Failure::TimedOut)?
    }

    /// The same request, addressed to the node at `addr`.
    fn to_node(&self, addr: &str) -> Result<Request<Full<Bytes>>, Failure> {
        // A bad address in the node table means the request cannot leave.
        let not_sent = |error: axum::http::Error| Failure::NotSent(error.to_string());
        let authority = Authority::try_from(addr).map_err(|e| not_sent(e.into()))?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(self.path.clone())
            .build()
            .map_err(not_sent)?;
        let mut request = Request::builder().method(self.method.clone()).uri(uri);
        if let Some(content_type) = &self.content_type {
            request = request.header(CONTENT_TYPE, content_type.clone());
        }
        if let Some(key) = &self.idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key.clone());
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request.body(Full::new(self.body.clone())).map_err(not_sent)
    }
}

/// Sends `request` and reads the whole answer, at most `limit` bytes of it
/// (node answers are small; a node that sends more is not trusted to).
async fn exchange(
    client: &NodeClient,
    request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<(Response, bool), Failure> {
    let answer = client.request(request).await.map_err(classify)?;
    let (head, body) = answer.into_parts();
    let draining = head.headers.contains_key(probes::DRAINING_HEADER);
    let body = Limited::new(body, limit).collect().await;
    let body = body.map_err(|error| Failure::Broken(error.to_string()))?;
    let answer = as_gateway_answer(head.status, head.headers, body.to_bytes());
    Ok((answer, draining))
}

/// Only a failure to connect proves the request never left; anything later
/// may have reached the node.
pub fn classify(error: hyper_util::client::legacy::Error) -> Failure {
    match error.is_connect() {
        true => Failure::NotSent(error.to_string()),
        false => Failure::Broken(error.to_string()),
    }
}

/// A node's answer as the gateway's: same status, content type and body.
fn as_gateway_answer(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut answer = Response::new(Body::from(body));
    *answer.status_mut() = status;
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        answer
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    answer
}

/// A node's answer fetched with reqwest (the demo's admin calls) as the gateway's.
pub async fn relay(response: reqwest::Response) -> Result<Response, reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Ok(as_gateway_answer(status, headers, body))
}
