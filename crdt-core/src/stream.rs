//! The live state stream: what a node sends to the gateway on its `/ws`,
//! and what the gateway sends to browsers on its own `/ws`.
//!
//! Every WebSocket message is one binary frame holding one event encoded
//! with [`crate::wire`]. States travel once, on connect; after that only
//! deltas (the entries that changed) flow, so a large keyspace never
//! crosses the wire per change.
use alloc::{string::String, vec::Vec};

use crate::CounterMap;

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
