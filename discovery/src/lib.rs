//! Discovery service for Tally: a small HTTP registry where nodes announce
//! themselves (`POST /register`), stay alive (`POST /heartbeat`) and find each
//! other (`GET /peers`). Members silent for longer than the TTL disappear.
//!
//! * [`registry`] — the member table and its expiry rules (pure, no I/O).
//! * [`api`] — the axum routes, JSON errors and [`serve`].
//! * [`client`] — [`DiscoveryClient`], which fails over across several servers.
//!
//! Discovery servers are independent (not replicated): a node that heartbeats a
//! server which does not know it gets [`HeartbeatOutcome::Unknown`] and simply
//! registers again.

pub mod api;
pub mod client;
pub mod registry;

use serde::{Deserialize, Serialize};
pub use tally_protocol::HostPort;

pub use api::{router, serve, serve_with, DiscoveryError, DiscoveryState};
pub use client::{ClientError, DiscoveryClient, HeartbeatOutcome};
pub use registry::{Registry, RegistryError, DEFAULT_CAPACITY};

/// What a node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Where peers dial its gossip (a name or an IP, with the port).
    pub gossip_addr: HostPort,
    /// Where gateways and clients reach its HTTP API.
    pub http_addr: HostPort,
}

/// A live member as listed by `GET /peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub gossip_addr: HostPort,
    pub http_addr: HostPort,
    pub last_seen_ms_ago: u64,
}
