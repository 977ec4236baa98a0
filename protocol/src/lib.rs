//! # tally-protocol
//!
//! The cluster's own vocabulary, shared by the node, discovery, the gateway
//! and the browser page — everything the CRDT itself need not know:
//!
//! - [`events`]: the live state stream, node `/ws` → gateway → browser `/ws`;
//! - [`node_id`]: what a node id may look like (one rule for every process);
//! - [`http_error`] (feature `http`): the JSON error body and request body
//!   limit every HTTP server of the cluster answers with.
//!
//! Gossip's own messages are not here: only nodes speak them, so they live
//! with the node (`tally_node::protocol`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod events;
#[cfg(feature = "http")]
pub mod http_error;
pub mod node_id;

pub use node_id::{validate_node_id, InvalidNodeId};
