//! The Tally node. See ARCHITECTURE.md for the map.
pub mod api;
pub mod data_dir;
pub mod dns_seeds;
pub mod gossip;
pub mod identity;
pub mod journal;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod readiness;
pub mod registration;
pub mod replica;
pub mod shutdown;
pub mod transport;
pub mod wal;
pub mod writer;
