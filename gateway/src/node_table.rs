//! Changing the node table (the `Balancer` in `Shared`): every visible
//! change goes through here, so stream followers and browsers always hear
//! about it.
use std::sync::Arc;
use std::time::Instant;

use crate::balancer::Balancer;
use crate::state::Shared;
use crate::{browser, followers};

/// Changes the node table; when `change` reports a visible change,
/// browsers get a fresh `Nodes` event and new nodes get a stream follower.
pub fn update(shared: &Arc<Shared>, change: impl FnOnce(&mut Balancer) -> bool) {
    let changed = change(&mut shared.balancer());
    if changed {
        followers::reconcile(shared);
        browser::publish(shared, &browser::nodes_event(shared));
    }
}

/// Takes a node out of the rotation at once (a proxied request to it failed,
/// or the demo crashed it), without waiting for its next health check.
pub fn mark_unhealthy(shared: &Arc<Shared>, key: &str) {
    update(shared, |balancer| {
        balancer.set_healthy(key, false, Instant::now())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use crdt_core::wire;
    use tally_protocol::events::ClusterEvent;
    use tokio::sync::broadcast::error::TryRecvError;

    #[tokio::test]
    async fn a_failed_request_takes_the_node_out_at_once_and_browsers_hear_once() {
        let config = GatewayConfig {
            nodes: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            ..GatewayConfig::default()
        };
        let shared = Shared::new(config, None).unwrap();
        // Followers started by the change end at once: this test is about the table.
        shared.shutdown.cancel();
        let now = Instant::now();
        for addr in ["127.0.0.1:1", "127.0.0.1:2"] {
            shared.balancer().set_healthy(addr, true, now);
        }
        let mut browser = shared.events.subscribe();

        mark_unhealthy(&shared, "127.0.0.1:1");
        assert_eq!(shared.balancer().rotation(), ["127.0.0.1:2"]);
        let frame = browser.try_recv().unwrap();
        let Ok(ClusterEvent::Nodes { nodes, .. }) = wire::decode(&frame) else {
            panic!("expected a Nodes event");
        };
        let healthy: Vec<_> = nodes.iter().map(|n| (n.id.as_str(), n.healthy)).collect();
        assert_eq!(healthy, [("127.0.0.1:1", false), ("127.0.0.1:2", true)]);
        assert!(shared.followers().contains_key("127.0.0.1:1"));

        mark_unhealthy(&shared, "127.0.0.1:1");
        assert_eq!(
            browser.try_recv(),
            Err(TryRecvError::Empty),
            "no change, no event"
        );
    }
}
