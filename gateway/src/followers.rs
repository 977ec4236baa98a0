//! Following every node's live stream: one task per node in the table,
//! reconnecting with backoff, feeding what the node says into the replicas
//! and on to browsers.
use std::sync::Arc;
use std::time::Duration;

use crdt_core::wire;
use futures_util::StreamExt;
use tally_protocol::events::NodeEvent;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::browser;
use crate::live::News;
use crate::node_clients;
use crate::state::Shared;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts a follower for every node in the table that has none, and stops
/// those of nodes no longer in it (forgetting their replicas).
pub fn reconcile(shared: &Arc<Shared>) {
    let addrs: Vec<String> = (shared.balancer().nodes().iter())
        .map(|node| node.http_addr.clone())
        .collect();
    let mut followers = shared.followers();
    followers.retain(|addr, task| {
        let keep = addrs.contains(addr);
        if !keep {
            task.abort();
            shared.replicas().remove(addr);
        }
        keep
    });
    for addr in addrs {
        followers.entry(addr.clone()).or_insert_with(|| {
            let task = follow_node(Arc::clone(shared), addr);
            let shutdown = shared.shutdown.clone();
            tokio::spawn(async move { shutdown.run_until_cancelled(task).await }).abort_handle()
        });
    }
}

/// Follows the node's `/ws` until the task is aborted: a node that is down
/// is retried with exponential backoff, reset once a connection succeeds.
async fn follow_node(shared: Arc<Shared>, http_addr: String) {
    let mut retry_in = FIRST_RETRY;
    loop {
        match subscribe(&shared, &http_addr).await {
            Ok(()) => retry_in = FIRST_RETRY,
            Err(error) => tracing::debug!(node = %http_addr, %error, "node stream unavailable"),
        }
        // Until a whole state arrives again, this node feeds no local reads.
        shared.replicas().mark_offline(&http_addr);
        tokio::time::sleep(retry_in).await;
        retry_in = (retry_in * 2).min(LONGEST_RETRY);
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error(transparent)]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("bad event: {0}")]
    Decode(#[from] crdt_core::CrdtError),
}

/// One connection's life; `Ok` means it connected (and later closed).
async fn subscribe(shared: &Shared, http_addr: &str) -> Result<(), StreamError> {
    let mut request = format!("ws://{http_addr}/ws").into_client_request()?;
    if let Some(keys) = &shared.config.cluster_keys {
        for (name, value) in node_clients::signed_read(keys, "/ws") {
            // Digits and hex: always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&value) {
                request.headers_mut().insert(name, value);
            }
        }
    }
    let connecting = tokio_tungstenite::connect_async(request);
    let (mut socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| StreamError::ConnectTimeout)??;
    tracing::info!(node = %http_addr, "following node stream");
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Binary(bytes)) => {
                on_node_event(shared, http_addr, wire::decode::<NodeEvent>(&bytes)?);
            }
            Ok(Message::Close(_)) => break,
            // Pings are answered by tungstenite; text frames are not part of the protocol.
            Ok(_) => {}
            // A broken stream after connecting is an ordinary reconnect, not an error to report.
            Err(error) => {
                tracing::debug!(node = %http_addr, %error, "node stream broke");
                break;
            }
        }
    }
    Ok(())
}

fn on_node_event(shared: &Shared, http_addr: &str, event: NodeEvent) {
    let (id, gossip_addr) = identity(&event);
    // Learning who a node is never adds or removes one, so no follower
    // starts or stops here: browsers only need the new names.
    let renamed = shared.balancer().learn_identity(http_addr, id, gossip_addr);
    if renamed {
        browser::publish(shared, &browser::nodes_event(shared));
    }
    if let NodeEvent::Members { node, members } = &event {
        shared.activity().members(node, members);
    }
    let (shown, changed, news) = {
        let mut replicas = shared.replicas();
        let shown = replicas.apply(http_addr, event);
        (shown, replicas.take_changed(), replicas.take_news())
    };
    // Reads waiting for an acknowledged write to show in the view wake up.
    shared
        .view_changed
        .send_modify(|version| *version = version.wrapping_add(1));
    shared.watch.changed(changed.iter().map(String::as_str));
    // Browsers get the merged view's news, not each node's: a write that
    // three nodes stream is sent once. The node's own delta only counts
    // towards its summary (local write or gossip).
    {
        let mut activity = shared.activity();
        if let Some(seen) = &shown {
            activity.node_changed(&seen.node, seen.via_gossip, seen.counters);
        }
        activity.merged_changed(&news);
    }
    if !news.is_empty() {
        // No browser listening is not an error.
        let _ = shared.deltas.send(Arc::new(News::new(news)));
    }
}

/// Who sent `event`: its id, and its gossip address when the event says.
fn identity(event: &NodeEvent) -> (&str, Option<&str>) {
    match event {
        NodeEvent::Snapshot { node, .. }
        | NodeEvent::Delta { node, .. }
        | NodeEvent::Collected { node, .. } => (node, None),
        NodeEvent::Members { node, members } => {
            let own = members.iter().find(|member| &member.id == node);
            (node, own.map(|member| member.gossip_addr.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::CounterMap;
    use tally_protocol::events::MemberInfo;

    fn member(id: &str) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            gossip_addr: format!("gossip-of-{id}"),
            http_addr: format!("http-of-{id}"),
            status: "alive".into(),
        }
    }

    #[test]
    fn a_node_names_its_gossip_address_only_in_its_own_member_record() {
        let members = NodeEvent::Members {
            node: "n1".into(),
            members: vec![member("n2"), member("n1")],
        };
        assert_eq!(identity(&members), ("n1", Some("gossip-of-n1")));
        let others_only = NodeEvent::Members {
            node: "n1".into(),
            members: vec![member("n2")],
        };
        assert_eq!(identity(&others_only), ("n1", None));
        let snapshot = NodeEvent::Snapshot {
            node: "n1".into(),
            state: CounterMap::new(),
            first: true,
            last: true,
        };
        assert_eq!(identity(&snapshot), ("n1", None));
    }
}
