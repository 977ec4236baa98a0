//! The gateway's `/ws` for browsers: the cluster's state on connect, then
//! every change as it happens, published once for all of them.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use crdt_core::wire;
use tally_protocol::events::{ClusterEvent, NodeHealth, SnapshotChunker};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::state::Shared;

/// A browser that cannot take one frame in this long is dropped, so a
/// stalled socket never holds its task (and slot) forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(not_ws) => return ApiError::new(not_ws.status(), not_ws.body_text()).into_response(),
    };
    // The peer is unknown only when served by another loop than ours.
    let ip_slot = match peer {
        Some(Extension(ConnectInfo(peer))) => match shared.browsers_per_ip.try_acquire(peer.ip()) {
            Some(slot) => Some(slot),
            None => {
                let most = shared.browsers_per_ip.max();
                let message = format!("too many live viewers from {} (at most {most})", peer.ip());
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
            }
        },
        None => None,
    };
    let Ok(slot) = Arc::clone(&shared.browser_slots).try_acquire_owned() else {
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many live viewers");
        return error.into_response();
    };
    // Browsers only listen; anything they send is tiny or a mistake.
    upgrade
        .max_message_size(4 * 1024)
        .on_upgrade(move |socket| async move {
            let _slot: OwnedSemaphorePermit = slot;
            let _ip_slot = ip_slot;
            if let Err(error) = session(socket, &shared).await {
                tracing::debug!(%error, "browser stream ended");
            }
        })
}

async fn session(mut socket: WebSocket, shared: &Shared) -> Result<(), axum::Error> {
    // Subscribe before taking the snapshot, so nothing falls between the
    // two; anything seen twice is harmless (merges are idempotent).
    let mut events = shared.events.subscribe();
    catch_up(&mut socket, shared).await?;
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
                Err(RecvError::Lagged(_)) => catch_up(&mut socket, shared).await?,
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

/// `Nodes`, then each node's state as `NodeState` chunks of at most
/// `stream_chunk_bytes` encoded. Each chunk is taken under a short lock and
/// sent before the next is taken: a browser never holds a copy of a whole
/// replica, and no frame grows with the keyspace.
async fn catch_up(socket: &mut WebSocket, shared: &Shared) -> Result<(), axum::Error> {
    send(socket, Bytes::from(wire::encode(&nodes_event(shared)))).await?;
    let max_bytes = shared.config.stream_chunk_bytes;
    let addrs = shared.replicas().addrs();
    for addr in addrs {
        let mut chunker = SnapshotChunker::new();
        let mut first = true;
        while !chunker.is_done() {
            let chunk = shared
                .replicas()
                .state_chunk(&addr, &mut chunker, max_bytes);
            // The node left the table meanwhile; a `Nodes` event tells the browser.
            let Some((node, state, last)) = chunk else {
                break;
            };
            let event = ClusterEvent::NodeState {
                node,
                state,
                first,
                last,
            };
            send(socket, Bytes::from(wire::encode(&event))).await?;
            first = false;
        }
    }
    Ok(())
}

async fn send(socket: &mut WebSocket, frame: Bytes) -> Result<(), axum::Error> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Binary(frame))).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new("browser too slow: send timed out")),
    }
}
