//! The gateway's `/ws` for browsers: the cluster's state on connect, then
//! every change as it happens, published once for all of them.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use crdt_core::wire;
use serde::Deserialize;
use tally_protocol::events::{ClusterEvent, NodeHealth, SnapshotChunker};
use tally_protocol::http_server::IpSlot;
use tally_protocol::watch::{self, CounterSource, WatchQuery};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::live;
use crate::state::Shared;

/// A browser that cannot take one frame in this long is dropped, so a
/// stalled socket never holds its task (and slot) forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The slots a live viewer (`/ws`, `/watch`) holds while connected: one of
/// `max_browsers` and one of its address's; 503 or 429 when none is left.
fn viewer_slots(
    shared: &Shared,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<(OwnedSemaphorePermit, Option<IpSlot>), ApiError> {
    // The peer is unknown only when served by another loop than ours.
    let ip_slot = match peer {
        Some(Extension(ConnectInfo(peer))) => {
            let slot = shared
                .browsers_per_ip
                .try_acquire(peer.ip())
                .ok_or_else(|| {
                    let most = shared.browsers_per_ip.max();
                    let message =
                        format!("too many live viewers from {} (at most {most})", peer.ip());
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
                })?;
            Some(slot)
        }
        None => None,
    };
    let slot = Arc::clone(&shared.browser_slots)
        .try_acquire_owned()
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many live viewers"))?;
    Ok((slot, ip_slot))
}

/// `GET /watch?prefix=P`: the merged view's counter values as
/// Server-Sent Events (see `tally_protocol::watch`).
pub async fn watch(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
) -> Response {
    let slots = match viewer_slots(&shared, peer) {
        Ok(slots) => slots,
        Err(refused) => return refused.into_response(),
    };
    let last_event_id = watch::last_event_id(&headers);
    let source: Arc<dyn CounterSource> = shared.clone();
    (shared.watch).stream(source, query.prefix, last_event_id, slots)
}

/// `/ws`'s query: which counters the browser follows (empty: all), and at
/// most how many of them: with a limit, the browser follows the first
/// `limit` matching counters by name, and any new one that sorts among them.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

/// `GET /ws?prefix=P`: the node table, node summaries, the busiest
/// counters, then the merged view's counters starting with `P` in chunks,
/// then their changes.
pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(not_ws) => return ApiError::new(not_ws.status(), not_ws.body_text()).into_response(),
    };
    let (prefix, limit) = match query {
        // No counter name is longer, so no longer prefix matches anything.
        Ok(Query(query)) if query.prefix.len() <= crdt_core::MAX_NAME_LEN => {
            (query.prefix, query.limit)
        }
        Ok(_) => {
            let message = format!("prefix longer than {} bytes", crdt_core::MAX_NAME_LEN);
            return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
        }
        Err(bad) => return ApiError::new(bad.status(), bad.body_text()).into_response(),
    };
    let (slot, ip_slot) = match viewer_slots(&shared, peer) {
        Ok(slots) => slots,
        Err(refused) => return refused.into_response(),
    };
    // Browsers only listen; anything they send is tiny or a mistake.
    upgrade
        .max_message_size(4 * 1024)
        .on_upgrade(move |socket| async move {
            let _slot: OwnedSemaphorePermit = slot;
            let _ip_slot = ip_slot;
            if let Err(error) = session(socket, &shared, &prefix, limit).await {
                tracing::debug!(%error, "browser stream ended");
            }
        })
}

async fn session(
    mut socket: WebSocket,
    shared: &Shared,
    prefix: &str,
    limit: Option<usize>,
) -> Result<(), axum::Error> {
    // Subscribe before taking the snapshot, so nothing falls between the
    // two; anything seen twice is harmless (merges are idempotent).
    let mut events = shared.events.subscribe();
    let mut deltas = shared.deltas.subscribe();
    let mut window_end = catch_up(&mut socket, shared, prefix, limit).await?;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                Ok(frame) => send(&mut socket, frame).await?,
                // Too slow to keep up: the missed events are gone, so resend
                // the whole state instead; the queue never grows per browser.
                Err(RecvError::Lagged(_)) => {
                    window_end = catch_up(&mut socket, shared, prefix, limit).await?;
                }
                Err(RecvError::Closed) => break,
            },
            news = deltas.recv() => match news {
                // Only the counters this browser follows; none, no frame.
                Ok(news) => {
                    if let Some(frame) = news.for_window(prefix, window_end.as_deref()) {
                        send(&mut socket, frame).await?;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    window_end = catch_up(&mut socket, shared, prefix, limit).await?;
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    // Best effort: the browser may already be gone.
    let _ = socket.send(Message::Close(None)).await;
    Ok(())
}

/// The node table as browsers see it.
pub fn nodes_event(shared: &Shared) -> ClusterEvent {
    let nodes = (shared.balancer().nodes().iter())
        .map(|node| NodeHealth {
            id: node.name().to_owned(),
            http_addr: node.http_addr.clone(),
            healthy: node.healthy,
            partitioned: node.partitioned,
        })
        .collect();
    ClusterEvent::Nodes {
        nodes,
        controls: shared.controls.is_some(),
    }
}

/// Sends `event` to every connected browser, encoded once for all of them.
pub fn publish(shared: &Shared, event: &ClusterEvent) {
    // Nothing to encode for nobody: under write load every change passes here.
    if shared.events.receiver_count() == 0 {
        return;
    }
    // No browser listening is not an error.
    let _ = shared.events.send(Bytes::from(wire::encode(event)));
}

/// `Nodes`, `Summary` and `Busiest`, then the merged view's counters under
/// `prefix` as `Counters` chunks of at most `stream_chunk_bytes` encoded.
/// Each chunk is taken under a short lock and sent before the next is
/// taken: a browser never holds a copy of the view, no frame grows with the
/// keyspace, and a browser gets one copy of what it follows, not one per node.
/// Returns where the browser's window ends when the limit left counters out.
async fn catch_up(
    socket: &mut WebSocket,
    shared: &Shared,
    prefix: &str,
    limit: Option<usize>,
) -> Result<Option<String>, axum::Error> {
    for event in [
        nodes_event(shared),
        live::summary_event(shared),
        live::busiest_event(shared),
    ] {
        send(socket, Bytes::from(wire::encode(&event))).await?;
    }
    let max_bytes = shared.config.stream_chunk_bytes;
    let mut chunker = SnapshotChunker::with_prefix(prefix);
    if let Some(limit) = limit {
        chunker = chunker.limit(limit);
    }
    let mut first = true;
    while !chunker.is_done() {
        let (state, last) = shared.replicas().merged_chunk(&mut chunker, max_bytes);
        let event = ClusterEvent::Counters {
            prefix: prefix.to_owned(),
            state,
            first,
            last,
        };
        send(socket, Bytes::from(wire::encode(&event))).await?;
        first = false;
    }
    Ok(chunker.window_end().map(|name| name.as_str().to_owned()))
}

async fn send(socket: &mut WebSocket, frame: Bytes) -> Result<(), axum::Error> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Binary(frame))).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new("browser too slow: send timed out")),
    }
}
