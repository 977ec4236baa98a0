//! The gossip protocol: what peers say to each other once a connection is
//! authenticated. Every frame carries one [`Message`] encoded with postcard.
//!
//! Three exchanges, each cheap when there is nothing to say:
//! 1. **Probe** (every round, to one member, SWIM style):
//!    `Ping { probe, digest, members, updates }` → `PingAck { probe, digest,
//!    members, updates }`. An answered ping proves the member is up; both
//!    carry the sender's state digest and membership digest, so each side
//!    learns whether the other holds something it lacks, and a few recent
//!    membership changes ride along (`updates`). Idle, that is two small
//!    frames per round whatever the cluster or keyspace size.
//! 2. **Repair**, only when the digests of a probe disagreed:
//!    - state: `Pull { digest, known }` → `Ack` (digests agree by now) or
//!      `Push` chunks, the last one carrying the responder's watermarks;
//!    - membership: `Members` chunks of the whole member table.
//!    - membership news also goes, while there is any, as `News` to a few
//!      members each round.
//! 3. **Broadcast**: a durable local write goes at once as one `Delta` to
//!    every live member (receivers do not forward it), so each member
//!    receives each change once, one hop after the write.
//! 4. **Quorum requests** (`?w=` / `?r=`, see `consistency.rs`), each with
//!    a request id the answer echoes: `Replicate { id, changes }` →
//!    `Stored { id }` once the receiver's WAL fsync holds `changes`;
//!    `Fetch { id, names }` → `Fetched { id, state }` with those counters.
//!    A receiver that cannot store answers nothing: the asker times out.
use crdt_core::{CounterMap, LinkedChange, Watermarks};

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Message`] or the handshake.
/// 2: probes (`Ping`/`PingAck`), membership as versioned updates and digests
/// (`Members`), no member lists on `Pull`/`Ack`/`Push`.
/// 3: maps carry the registrations of keyed writes beside the entries;
/// quorum requests (`Replicate`/`Stored`, `Fetch`/`Fetched`).
/// 4: entries carry their run (`since`); changes and maps carry counters'
/// lifecycles (delete, reset, expiry).
/// 5: lifecycles carry takeovers (retired actors folded into survivors).
/// 6: registrations carry their window and are never cancelled; `Pull`
/// carries the sender's clock and the members it forgot; `Hello` carries
/// when the data directory was created and the members the sender forgot;
/// `Delta` carries linked changes.
pub const PROTOCOL_VERSION: u16 = 6;

/// What a member's `Pull`s said of it: the watermarks it held everything
/// up to, and its clock when it said so (the latest of each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Actor → highest seq the member held everything up to.
    pub watermarks: Watermarks,
    /// The member's clock (ms since the Unix epoch) at its latest report.
    pub clock_ms: u64,
    /// The members it had forgotten then (left its table, not yet back).
    pub forgotten: Vec<String>,
}

/// A member as gossiped: its addresses and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node id.
    pub id: String,
    /// Where it accepts gossip connections.
    pub gossip_addr: String,
    /// Where it serves HTTP.
    pub http_addr: String,
    /// Its version (SWIM's incarnation): the boot time in ms, so it grows
    /// across restarts, raised by one each time the member refutes a
    /// suspicion about itself. Only the member itself raises it.
    pub heartbeat: u64,
}

/// A member the cluster collected without, as a `Hello` or a `Pull` lists
/// it ([`crate::forgotten`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenNode {
    /// The node id.
    pub id: String,
    /// When it was first collected without (ms since the epoch).
    pub at_ms: u64,
}

/// How a member seems: gossiped with a record, and the status a node shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Answers probes (or nobody has reason to doubt it).
    Alive,
    /// A probe went unanswered; dead unless it refutes in time.
    Suspect,
    /// Suspected for too long: not probed (but now and then), not sent to.
    Dead,
}

impl Status {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Dead => "dead",
        }
    }
}

/// One piece of membership news: a member's record and its status at that
/// version. At the same version, suspect beats alive and dead beats both; a
/// higher version beats any status (only the member raises it, to refute).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// The member.
    pub record: MemberRecord,
    /// Its status at `record.heartbeat`.
    pub status: Status,
}

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Ask for what the sender lacks (sent when a probe showed digests differ).
    Pull {
        /// Digest of the sender's whole state.
        digest: u64,
        /// Actor → highest seq the sender has everything up to.
        known: Watermarks,
        /// The sender's clock when it sent this (ms since the Unix epoch):
        /// it held `known` at that time ([`Report`]).
        clock_ms: u64,
        /// The members the sender forgot recently (its membership
        /// tombstones): collection waits until every member lists them.
        forgotten: Vec<String>,
        /// The newest members the cluster collected without, refused until
        /// wiped ([`crate::forgotten`]).
        refused: Vec<ForgottenNode>,
    },
    /// Answer to a `Pull` whose digest matched: nothing to send.
    Ack,
    /// Part of the answer to a `Pull`: entries the puller lacks.
    Push {
        /// The entries.
        changes: CounterMap,
        /// Set on the last chunk: the responder's watermarks.
        done: Option<Watermarks>,
    },
    /// Fresh local changes, sent once to every live member by their
    /// origin, in the order they were made; each is merged only on top of
    /// the entry it follows ([`crdt_core::LinkedChange`]).
    Delta {
        /// The changes.
        changes: Vec<LinkedChange>,
    },
    /// A failure-detector probe, also comparing states and member tables.
    Ping {
        /// Echoed in the answer.
        probe: u64,
        /// Digest of the sender's whole state.
        digest: u64,
        /// Digest of the sender's member table (see `Membership::digest`).
        members: u64,
        /// A few recent membership changes.
        updates: Vec<MemberUpdate>,
    },
    /// The answer to a `Ping`.
    PingAck {
        /// The probe answered.
        probe: u64,
        /// Digest of the responder's whole state.
        digest: u64,
        /// Digest of the responder's member table.
        members: u64,
        /// A few recent membership changes.
        updates: Vec<MemberUpdate>,
    },
    /// Membership news, sent each round to a few members while there is any
    /// (piggybacking alone would spread it only as fast as probes go).
    News {
        /// Recent membership changes.
        updates: Vec<MemberUpdate>,
    },
    /// A chunk of the sender's whole member table, sent when a probe showed
    /// the member digests differ.
    Members {
        /// Every member the sender knows (itself included), with status.
        records: Vec<MemberUpdate>,
    },
    /// A write acknowledged with `?w=` above 1: store these entries
    /// durably, then answer `Stored` with the same id.
    Replicate {
        /// Echoed in `Stored`.
        id: u64,
        /// The written counters' state (a delta: merging it is harmless).
        changes: CounterMap,
    },
    /// The answer to `Replicate`: `changes` are merged and fsynced.
    Stored {
        /// The `Replicate` answered.
        id: u64,
    },
    /// A read with `?r=` above 1: send these counters' state.
    Fetch {
        /// Echoed in `Fetched`.
        id: u64,
        /// The counters wanted (at most `consistency::MAX_FETCH_NAMES`).
        names: Vec<String>,
    },
    /// The answer to `Fetch`: the named counters the responder holds.
    Fetched {
        /// The `Fetch` answered.
        id: u64,
        /// Those counters (missing ones are absent).
        state: CounterMap,
    },
}

impl Message {
    /// A short name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Pull { .. } => "pull",
            Message::Ack => "ack",
            Message::Push { .. } => "push",
            Message::Delta { .. } => "delta",
            Message::Ping { .. } => "ping",
            Message::PingAck { .. } => "ping_ack",
            Message::Members { .. } => "members",
            Message::News { .. } => "news",
            Message::Replicate { .. } => "replicate",
            Message::Stored { .. } => "stored",
            Message::Fetch { .. } => "fetch",
            Message::Fetched { .. } => "fetched",
        }
    }
}
