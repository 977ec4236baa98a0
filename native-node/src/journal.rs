//! What the node writes into its WAL, and how it rebuilds the replica.
//!
//! Every record holds *resulting entries* (an actor's totals after the
//! change), never amounts, so replaying is merging: idempotent and
//! order-insensitive. A record replayed twice, or a snapshot that already
//! contains part of the tail, changes nothing.
//!
//! | kind | payload (postcard)                          | written for                      |
//! |------|---------------------------------------------|----------------------------------|
//! | 1    | `(CounterName, ActorId, Entry)`             | one local operation              |
//! | 2    | `(CounterMap, Option<Watermarks>)`          | news from a peer (+ watermarks)  |
//! | snap | `(CounterMap, Watermarks)`                  | the whole replica                |
use crdt_core::{ActorId, CounterMap, CounterName, Entry, Watermarks};

use crate::replica::ReplicaState;
use crate::wal::{RecoveredRecord, WalError};

/// A local operation's resulting entry.
pub const KIND_LOCAL: u8 = 1;
/// Changes merged from a peer.
pub const KIND_MERGE: u8 = 2;

/// Why the journal could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The log itself is unreadable.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A record passed its CRC but does not decode: written by another version, or a bug.
    #[error("WAL record of kind {kind} does not decode: {reason}")]
    Undecodable {
        /// Record kind.
        kind: String,
        /// Decoder message.
        reason: String,
    },
}

/// Payload of a [`KIND_LOCAL`] record.
pub fn local_record(name: &CounterName, actor: &ActorId, entry: Entry) -> Vec<u8> {
    crdt_core::wire::encode(&(name, actor, entry))
}

/// Payload of a [`KIND_MERGE`] record.
pub fn merge_record(news: &CounterMap, watermarks: Option<&Watermarks>) -> Vec<u8> {
    crdt_core::wire::encode(&(news, watermarks))
}

/// Payload of a snapshot.
pub fn snapshot(state: &ReplicaState) -> Vec<u8> {
    crdt_core::wire::encode(&(&state.map, &state.watermarks))
}

/// Applies one recovered record to `state`.
pub fn replay(state: &mut ReplicaState, record: RecoveredRecord<'_>) -> Result<(), JournalError> {
    let undecodable = |kind: &str, e: crdt_core::CrdtError| JournalError::Undecodable {
        kind: kind.to_owned(),
        reason: e.to_string(),
    };
    match record {
        RecoveredRecord::Snapshot(payload) => {
            let (map, watermarks): (CounterMap, Watermarks) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("snapshot", e))?;
            // The snapshot comes first, into an empty replica: take it as
            // decoded rather than merging a million entries a second time.
            if state.map.is_empty() {
                state.map = map;
            } else {
                state.map.merge(&map);
            }
            state.watermarks.raise_all(&watermarks);
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL,
            payload,
        } => {
            let (name, actor, entry): (CounterName, ActorId, Entry) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local", e))?;
            state.map.merge_entry(&name, &actor, entry);
            state.watermarks.raise(&actor, entry.seq);
        }
        RecoveredRecord::Entry {
            kind: KIND_MERGE,
            payload,
        } => {
            let (news, watermarks): (CounterMap, Option<Watermarks>) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("merge", e))?;
            state.map.merge(&news);
            if let Some(watermarks) = watermarks {
                state.watermarks.raise_all(&watermarks);
            }
        }
        RecoveredRecord::Entry { kind, .. } => {
            return Err(JournalError::Undecodable {
                kind: kind.to_string(),
                reason: "unknown record kind".into(),
            })
        }
    }
    Ok(())
}
