//! # tally-protocol
//!
//! The cluster's own vocabulary, shared by the node, discovery, the gateway
//! and the browser page — everything the CRDT itself need not know:
//!
//! - [`batch`]: the batch write route the gateway combines writes into;
//! - [`events`]: the live state stream, node `/ws` → gateway → browser `/ws`;
//! - [`address`]: `host:port` as processes advertise and dial it (names
//!   kept, resolved at each dial);
//! - [`probes`]: `/health`, `/ready` and the draining header;
//! - [`clock`]: the one wall clock, and the skew nodes must stay within;
//! - [`node_id`]: what a node id may look like (one rule for every process);
//! - [`cluster_key`] and [`request_auth`] (feature `auth`): the cluster
//!   secret, the keys derived from it, and signed requests between processes;
//! - [`http_error`] (feature `http`): the JSON error body and request body
//!   limit every HTTP server of the cluster answers with;
//! - [`access`] (feature `http`): API tokens with roles, and the same-origin
//!   rule, applied alike by nodes and gateways;
//! - [`watch`] (feature `http`): `GET /watch`, counter values as
//!   Server-Sent Events with resume, for nodes and gateways;
//! - [`http_server`] (feature `http`): the one HTTP server loop they all
//!   run, with its connection cap, header/body/idle timeouts and per-address
//!   limits.
//!
//! Gossip's own messages are not here: only nodes speak them, so they live
//! with the node (`tally_node::protocol`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "http")]
pub mod access;
pub mod address;
pub mod batch;
pub mod clock;
#[cfg(feature = "auth")]
pub mod cluster_key;
pub mod events;
#[cfg(feature = "auth")]
pub mod health_proof;
#[cfg(feature = "auth")]
mod hex;
#[cfg(feature = "http")]
pub mod http_error;
#[cfg(feature = "http")]
pub mod http_server;
pub mod idempotency;
pub mod node_id;
pub mod probes;
#[cfg(feature = "auth")]
pub mod request_auth;
pub mod ttl;
#[cfg(feature = "http")]
pub mod watch;

pub use address::{HostPort, InvalidAddress};
pub use node_id::{validate_node_id, InvalidNodeId};
