//! The gossip protocol: what peers say to each other once a connection is
//! authenticated. Every frame carries one [`Message`] encoded with postcard.
//!
//! An exchange (anti-entropy round):
//! 1. `Pull { digest, known, members }` — "this is my state's digest and,
//!    per actor, the highest operation number I hold *everything* up to".
//! 2. Equal digest → `Ack { members }`. Otherwise → one or more
//!    `Push { changes, done: None }` chunks (each under the frame limit)
//!    and a final `Push { done: Some(known) }` carrying the responder's own
//!    watermarks, which the puller adopts only now that it has every chunk.
//! 3. Any state change is also sent at once as `Delta` to `fanout` peers
//!    (eager push); a node that learns something new from a `Delta` passes
//!    it on the same way, so a write reaches the cluster in a few hops.
use crdt_core::{CounterMap, Watermarks};
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Message`] or the handshake.
pub const PROTOCOL_VERSION: u16 = 1;

/// A member as gossiped: its addresses and its heartbeat, which it raises
/// every gossip round. A higher heartbeat is newer news about that member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node id.
    pub id: String,
    /// Where it accepts gossip connections.
    pub gossip_addr: String,
    /// Where it serves HTTP.
    pub http_addr: String,
    /// Its heartbeat counter (starts at its boot time in ms, so it grows across restarts).
    pub heartbeat: u64,
}

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Ask for what the sender lacks.
    Pull {
        /// Digest of the sender's whole state.
        digest: u64,
        /// Actor → highest seq the sender has everything up to.
        known: Watermarks,
        /// The sender's membership view.
        members: Vec<MemberRecord>,
    },
    /// Answer to a `Pull` whose digest matched: nothing to send.
    Ack {
        /// The responder's membership view.
        members: Vec<MemberRecord>,
    },
    /// Part of the answer to a `Pull`: entries the puller lacks.
    Push {
        /// The entries.
        changes: CounterMap,
        /// Set on the last chunk: the responder's watermarks.
        done: Option<Watermarks>,
        /// The responder's membership view (last chunk only).
        members: Vec<MemberRecord>,
    },
    /// Eager push of fresh changes.
    Delta {
        /// The entries that changed.
        changes: CounterMap,
    },
}

impl Message {
    /// A short name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Pull { .. } => "pull",
            Message::Ack { .. } => "ack",
            Message::Push { .. } => "push",
            Message::Delta { .. } => "delta",
        }
    }
}
