//! The live state stream: what a node sends to the gateway on its `/ws`,
//! and what the gateway sends to browsers on its own `/ws`.
//!
//! Every WebSocket message is one binary frame holding one event encoded
//! with [`crdt_core::wire`]. States travel once, on connect; after that only
//! deltas (the entries that changed) flow, so a large keyspace never
//! crosses the wire per change.

use crdt_core::CounterMap;

/// A member as a node or the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The node's id (`--id`).
    pub id: String,
    /// Where it gossips.
    pub gossip_addr: String,
    /// Where it serves HTTP.
    pub http_addr: String,
    /// `alive`, `suspect` or `dead` (as the reporting node sees it).
    pub status: String,
}

/// Events on a node's `/ws`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum NodeEvent {
    /// First message: the node's whole replica.
    Snapshot {
        /// The node's id.
        node: String,
        /// Its full state.
        state: CounterMap,
    },
    /// Entries that changed at the node, by a local write or by gossip.
    Delta {
        /// The node's id.
        node: String,
        /// The changed entries.
        delta: CounterMap,
        /// True when the change came from a peer (gossip), false for a local write.
        via_gossip: bool,
    },
    /// The node's membership view, sent on connect and when it changes.
    Members {
        /// The node's id.
        node: String,
        /// Every member it knows, itself included.
        members: Vec<MemberInfo>,
    },
}

/// Health of a node as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeHealth {
    /// The node's id (or its HTTP address until the id is known).
    pub id: String,
    /// Its HTTP address.
    pub http_addr: String,
    /// Whether it is in the gateway's rotation.
    pub healthy: bool,
    /// Whether the demo partitioned it from its peers.
    pub partitioned: bool,
}

/// Events on the gateway's `/ws`, for browsers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ClusterEvent {
    /// A node's whole replica (on browser connect, and when a node reconnects).
    NodeState {
        /// Which node.
        node: String,
        /// Its full state.
        state: CounterMap,
    },
    /// Entries that changed at one node.
    NodeDelta {
        /// Which node.
        node: String,
        /// The changed entries.
        delta: CounterMap,
        /// True when the node learned them by gossip.
        via_gossip: bool,
    },
    /// The set of nodes and their health (on connect and on every change).
    Nodes {
        /// Every node the gateway knows.
        nodes: Vec<NodeHealth>,
        /// True when the gateway can crash/restart/partition nodes (demo mode).
        controls: bool,
    },
}

#[cfg(test)]
mod tests {
    use crdt_core::{wire, ActorId, CounterName, Op};
    use proptest::prelude::*;

    use super::*;

    fn a_map(writes: &[(u8, u8, u32)]) -> CounterMap {
        let mut map = CounterMap::new();
        for &(actor, name, amount) in writes {
            let actor = ActorId::new(&format!("node-{actor}~x")).unwrap();
            let name = CounterName::new(&format!("c{name}")).unwrap();
            let _ = map.apply(&actor, &name, Op::Increment(u64::from(amount)));
        }
        map
    }

    fn every_event(map: &CounterMap) -> (Vec<NodeEvent>, Vec<ClusterEvent>) {
        let node = "node-1".to_owned();
        let node_events = vec![
            NodeEvent::Snapshot {
                node: node.clone(),
                state: map.clone(),
            },
            NodeEvent::Delta {
                node: node.clone(),
                delta: map.clone(),
                via_gossip: true,
            },
            NodeEvent::Members {
                node: node.clone(),
                members: vec![MemberInfo {
                    id: node.clone(),
                    gossip_addr: "127.0.0.1:7000".into(),
                    http_addr: "127.0.0.1:8000".into(),
                    status: "alive".into(),
                }],
            },
        ];
        let cluster_events = vec![
            ClusterEvent::NodeState {
                node: node.clone(),
                state: map.clone(),
            },
            ClusterEvent::NodeDelta {
                node: node.clone(),
                delta: map.clone(),
                via_gossip: false,
            },
            ClusterEvent::Nodes {
                nodes: vec![NodeHealth {
                    id: node,
                    http_addr: "127.0.0.1:8000".into(),
                    healthy: true,
                    partitioned: false,
                }],
                controls: true,
            },
        ];
        (node_events, cluster_events)
    }

    proptest! {
        #[test]
        fn every_event_survives_the_wire(writes in prop::collection::vec(any::<(u8, u8, u32)>(), 0..20)) {
            let (node_events, cluster_events) = every_event(&a_map(&writes));
            for event in &node_events {
                let decoded: NodeEvent = wire::decode(&wire::encode(event)).unwrap();
                prop_assert_eq!(&decoded, event);
            }
            for event in &cluster_events {
                let decoded: ClusterEvent = wire::decode(&wire::encode(event)).unwrap();
                prop_assert_eq!(&decoded, event);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = wire::decode::<NodeEvent>(&bytes);
            let _ = wire::decode::<ClusterEvent>(&bytes);
        }
    }
}
