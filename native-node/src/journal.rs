//! What the node writes into its WAL, and how it rebuilds the replica.
//!
//! Every record holds *resulting entries* (an actor's totals after the
//! change), never amounts, so replaying is merging: idempotent and
//! order-insensitive. A record replayed twice, or a snapshot that already
//! contains part of the tail, changes nothing.
//!
//! | kind | payload (postcard)                          | written for                      |
//! |------|---------------------------------------------|----------------------------------|
//! | 5    | `(CounterName, ActorId, Entry)`             | one local operation              |
//! | 10   | `Change` (entry + registrations + lifecycle) | a keyed write, a delete, reset, expiry or takeover |
//! | 11   | `(CounterMap, Option<Watermarks>)`          | news from a peer (+ watermarks)  |
//! | snap | `tag ‖ Watermarks ‖ chunk… ‖ []` ([`snapshot`]) | the whole replica, a chunk of counters at a time |
//!
//! Written by earlier versions and still read: kinds 8 and 9, as 10 and 11
//! before registrations carried their window (read with the default
//! window, 24 h); 6 and 7, before takeovers; (entries without a run, which
//! reads as 0) kinds 1, 3 and 4, as 5, 10 and 11 before lifecycle;
//! kind 2, news in the map format of before keyed writes (entries only);
//! snapshots whose chunks hold no lifecycle, or entries only, and whole-map
//! snapshots `(CounterMap, Watermarks)`.
//!
//! News larger than a record may hold (a catch-up chunk can be as large as a
//! gossip frame) is split into several kind-7 records ([`merge_records`]); only
//! the last carries the watermarks, so replay adopts them after every entry.
use crdt_core::legacy::{
    current_registrations, with_runs, ChangeWithoutTakeovers, ChangeWithoutWindows, EntriesOnly,
    EntryWithoutRun, KeyedOnly, LegacyChange, LegacyRegistration, LifecycleWithoutTakeovers,
    WithoutTakeovers, WithoutWindows,
};
use crdt_core::{
    ActorId, Change, CounterMap, CounterName, Entry, Lifecycle, Registration, Watermarks,
};

use crate::replica::{Replica, ReplicaState};
use crate::wal::{RecoveredRecord, WalError};

/// A local operation's resulting entry.
pub const KIND_LOCAL: u8 = 5;
/// A local change with registrations or a lifecycle: a keyed write, a
/// delete, a reset, an expiry, a takeover.
pub const KIND_LOCAL_CHANGE: u8 = 10;
/// Changes merged from a peer.
pub const KIND_MERGE: u8 = 11;
/// [`KIND_LOCAL_CHANGE`] of before registrations carried their window (read only).
const KIND_LOCAL_CHANGE_WITHOUT_WINDOWS: u8 = 8;
/// [`KIND_MERGE`] of before registrations carried their window (read only).
const KIND_MERGE_WITHOUT_WINDOWS: u8 = 9;
/// [`KIND_LOCAL_CHANGE`] of before takeovers (read only).
const KIND_LOCAL_CHANGE_WITHOUT_TAKEOVERS: u8 = 6;
/// [`KIND_MERGE`] of before takeovers (read only).
const KIND_MERGE_WITHOUT_TAKEOVERS: u8 = 7;
/// [`KIND_LOCAL`] of before runs (read only).
const KIND_LOCAL_WITHOUT_RUNS: u8 = 1;
/// Changes merged from a peer, in the map format of before keyed writes (read only).
const KIND_MERGE_ENTRIES_ONLY: u8 = 2;
/// [`KIND_LOCAL_CHANGE`] of before lifecycle (read only).
const KIND_LOCAL_CHANGE_WITHOUT_LIFECYCLE: u8 = 3;
/// [`KIND_MERGE`] of before lifecycle (read only).
const KIND_MERGE_WITHOUT_LIFECYCLE: u8 = 4;

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

/// Payload of a [`KIND_LOCAL_CHANGE`] record.
pub fn local_change_record(change: &Change) -> Vec<u8> {
    crdt_core::wire::encode(change)
}

/// Payload of a [`KIND_MERGE`] record.
pub fn merge_record(news: &CounterMap, watermarks: Option<&Watermarks>) -> Vec<u8> {
    crdt_core::wire::encode(&(news, watermarks))
}

/// Room kept in every chunk for the map's and the tuple's own framing.
const CHUNK_SLACK: usize = 1024;

/// Payloads of the [`KIND_MERGE`] records for `news`: one when it fits in
/// `max` bytes, else several, each at most `max`. The watermarks go with the
/// last one (or in a last record of their own when they do not fit beside
/// it): replay is merge, and watermarks may only be adopted once every entry
/// they vouch for is in. Fails only when the watermarks alone exceed `max`.
pub fn merge_records(
    news: &CounterMap,
    watermarks: Option<&Watermarks>,
    max: usize,
) -> Result<Vec<Vec<u8>>, WalError> {
    let whole = merge_record(news, watermarks);
    if whole.len() <= max {
        return Ok(vec![whole]);
    }
    let budget = max.saturating_sub(CHUNK_SLACK).max(1);
    let mut records = Vec::new();
    let mut chunk = CounterMap::new();
    let mut chunk_bytes = 0;
    for change in news.all_changes() {
        let size = change.size_hint();
        if !chunk.is_empty() && chunk_bytes + size > budget {
            records.push(fitting(merge_record(&chunk, None), max)?);
            chunk = CounterMap::new();
            chunk_bytes = 0;
        }
        chunk.merge_change(&change);
        chunk_bytes += size;
    }
    let last = merge_record(&chunk, watermarks);
    if last.len() <= max {
        records.push(last);
    } else {
        records.push(fitting(merge_record(&chunk, None), max)?);
        records.push(fitting(merge_record(&CounterMap::new(), watermarks), max)?);
    }
    Ok(records)
}

fn fitting(payload: Vec<u8>, max: usize) -> Result<Vec<u8>, WalError> {
    if payload.len() > max {
        return Err(WalError::RecordTooLarge {
            len: payload.len(),
            max,
        });
    }
    Ok(payload)
}

/// First value of a chunked snapshot whose chunks hold entries only (the
/// format of before keyed writes, still read). A whole-map snapshot (older
/// still) starts with its number of counters, which can never be this.
const CHUNKED_SNAPSHOT_TAG: u64 = u64::MAX - 1;
/// First value of a chunked snapshot whose chunks hold registrations too
/// (entries without runs, no lifecycle; still read).
const KEYED_SNAPSHOT_TAG: u64 = u64::MAX - 2;
/// First value of a chunked snapshot whose chunks hold lifecycles too, of
/// before takeovers (still read).
const LIFECYCLE_SNAPSHOT_TAG: u64 = u64::MAX - 3;
/// First value of a chunked snapshot whose lifecycles hold takeovers too,
/// of before registrations carried their window (still read).
const TAKEOVER_SNAPSHOT_TAG: u64 = u64::MAX - 4;
/// First value of a chunked snapshot whose registrations carry their window.
const WINDOW_SNAPSHOT_TAG: u64 = u64::MAX - 5;
/// A snapshot chunk: counters with their entries, registrations and lifecycle.
type Chunk = Vec<(
    CounterName,
    Vec<(ActorId, Entry)>,
    Vec<Registration>,
    Option<Lifecycle>,
)>;
/// A [`Chunk`] as it is encoded, borrowing from the replica.
type ChunkRef<'a> = Vec<(
    &'a CounterName,
    Vec<(&'a ActorId, &'a Entry)>,
    Vec<&'a Registration>,
    Option<&'a Lifecycle>,
)>;
/// Counters encoded per read-lock hold while a snapshot is taken.
pub const SNAPSHOT_CHUNK_COUNTERS: usize = 4096;

/// Payload of a snapshot of `replica`, encoded a chunk of counters at a
/// time so the replica's lock is never held for long (writers and merges go
/// on between chunks):
///
/// ```text
/// tag u64 ‖ Watermarks ‖ chunk … ‖ empty chunk      (each a postcard value;
/// chunk = [(CounterName, [(ActorId, Entry)], [Registration], Lifecycle?)],
/// in name order, disjoint; deleted counters too)
/// ```
///
/// Sound although the replica changes meanwhile: the watermarks are read
/// first and entries only grow, so they never claim more than the chunks
/// hold; every record before the log rotation is already in the replica,
/// so every chunk covers it; and what a chunk holds beyond it is replayed
/// again from later segments, harmlessly (replay is merge).
pub fn snapshot(replica: &Replica) -> Vec<u8> {
    let mut payload = crdt_core::wire::encode(&WINDOW_SNAPSHOT_TAG);
    payload.extend(crdt_core::wire::encode(&replica.read().watermarks));
    let mut after: Option<CounterName> = None;
    loop {
        let state = replica.read();
        let chunk: ChunkRef<'_> = state
            .map
            .all_from("", after.as_ref().map(CounterName::as_str))
            .take(SNAPSHOT_CHUNK_COUNTERS)
            .map(|(name, counter)| {
                (
                    name,
                    counter.entries().collect(),
                    counter.registrations().collect(),
                    counter.lifecycle(),
                )
            })
            .collect();
        payload.extend(crdt_core::wire::encode(&chunk));
        let Some((last, _, _, _)) = chunk.last() else {
            return payload;
        };
        after = Some((*last).clone());
    }
}

/// Merges a snapshot payload (either format) into `state`.
fn replay_snapshot(state: &mut ReplicaState, payload: &[u8]) -> Result<(), crdt_core::CrdtError> {
    let (tag, rest) = crdt_core::wire::take::<u64>(payload)?;
    if ![
        CHUNKED_SNAPSHOT_TAG,
        KEYED_SNAPSHOT_TAG,
        LIFECYCLE_SNAPSHOT_TAG,
        TAKEOVER_SNAPSHOT_TAG,
        WINDOW_SNAPSHOT_TAG,
    ]
    .contains(&tag)
    {
        let (EntriesOnly(map), watermarks): (EntriesOnly, Watermarks) =
            crdt_core::wire::decode(payload)?;
        // The snapshot comes first, into an empty replica: take it as
        // decoded rather than merging a million entries a second time.
        if state.map.is_empty() {
            state.map = map;
        } else {
            state.map.merge(&map);
        }
        state.watermarks.raise_all(&watermarks);
        return Ok(());
    }
    let (watermarks, mut rest) = crdt_core::wire::take::<Watermarks>(rest)?;
    loop {
        let chunk: Chunk = match tag {
            WINDOW_SNAPSHOT_TAG => {
                let (chunk, after) = crdt_core::wire::take::<Chunk>(rest)?;
                rest = after;
                chunk
            }
            TAKEOVER_SNAPSHOT_TAG => {
                type TakeoverChunk = Vec<(
                    CounterName,
                    Vec<(ActorId, Entry)>,
                    Vec<LegacyRegistration>,
                    Option<Lifecycle>,
                )>;
                let (chunk, after) = crdt_core::wire::take::<TakeoverChunk>(rest)?;
                rest = after;
                (chunk.into_iter())
                    .map(|(name, entries, registrations, lifecycle)| {
                        (
                            name,
                            entries,
                            current_registrations(registrations),
                            lifecycle,
                        )
                    })
                    .collect()
            }
            LIFECYCLE_SNAPSHOT_TAG => {
                type LifecycleChunk = Vec<(
                    CounterName,
                    Vec<(ActorId, Entry)>,
                    Vec<LegacyRegistration>,
                    Option<LifecycleWithoutTakeovers>,
                )>;
                let (chunk, after) = crdt_core::wire::take::<LifecycleChunk>(rest)?;
                rest = after;
                (chunk.into_iter())
                    .map(|(name, entries, registrations, lifecycle)| {
                        let registrations = current_registrations(registrations);
                        (name, entries, registrations, lifecycle.map(Lifecycle::from))
                    })
                    .collect()
            }
            KEYED_SNAPSHOT_TAG => {
                type KeyedChunk = Vec<(
                    CounterName,
                    Vec<(ActorId, EntryWithoutRun)>,
                    Vec<LegacyRegistration>,
                )>;
                let (chunk, after) = crdt_core::wire::take::<KeyedChunk>(rest)?;
                rest = after;
                (chunk.into_iter())
                    .map(|(name, entries, registrations)| {
                        let registrations = current_registrations(registrations);
                        (name, with_runs(entries), registrations, None)
                    })
                    .collect()
            }
            _ => {
                type EntriesChunk = Vec<(CounterName, Vec<(ActorId, EntryWithoutRun)>)>;
                let (chunk, after) = crdt_core::wire::take::<EntriesChunk>(rest)?;
                rest = after;
                (chunk.into_iter())
                    .map(|(name, entries)| (name, with_runs(entries), Vec::new(), None))
                    .collect()
            }
        };
        if chunk.is_empty() {
            break;
        }
        for (name, entries, registrations, lifecycle) in chunk {
            (state.map).merge_counter(&name, entries, &registrations, lifecycle.as_ref());
        }
    }
    if !rest.is_empty() {
        return Err(crdt_core::CrdtError::Decode("trailing bytes"));
    }
    state.watermarks.raise_all(&watermarks);
    Ok(())
}

/// A local change: this node's own operation, so its seq is held.
fn replay_change(state: &mut ReplicaState, change: Change) {
    state.map.merge_change(&change);
    state.watermarks.raise(&change.actor, change.entry.seq);
}

/// News from a peer, and the watermarks of the pull it completed.
fn replay_news(state: &mut ReplicaState, news: &CounterMap, watermarks: Option<Watermarks>) {
    state.map.merge(news);
    if let Some(watermarks) = watermarks {
        state.watermarks.raise_all(&watermarks);
    }
}

/// Applies one recovered record to `state`.
pub fn replay(state: &mut ReplicaState, record: RecoveredRecord<'_>) -> Result<(), JournalError> {
    let undecodable = |kind: &str, e: crdt_core::CrdtError| JournalError::Undecodable {
        kind: kind.to_owned(),
        reason: e.to_string(),
    };
    match record {
        RecoveredRecord::Snapshot(payload) => {
            replay_snapshot(state, payload).map_err(|e| undecodable("snapshot", e))?;
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL,
            payload,
        } => {
            let (name, actor, entry): (CounterName, ActorId, Entry) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local", e))?;
            replay_change(state, Change::entry(name, actor, entry));
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL_WITHOUT_RUNS,
            payload,
        } => {
            let (name, actor, entry): (CounterName, ActorId, EntryWithoutRun) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local", e))?;
            replay_change(state, Change::entry(name, actor, entry.into()));
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL_CHANGE,
            payload,
        } => {
            let change: Change =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local change", e))?;
            replay_change(state, change);
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL_CHANGE_WITHOUT_WINDOWS,
            payload,
        } => {
            let ChangeWithoutWindows(change) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local change", e))?;
            replay_change(state, change);
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL_CHANGE_WITHOUT_TAKEOVERS,
            payload,
        } => {
            let ChangeWithoutTakeovers(change) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local change", e))?;
            replay_change(state, change);
        }
        RecoveredRecord::Entry {
            kind: KIND_LOCAL_CHANGE_WITHOUT_LIFECYCLE,
            payload,
        } => {
            let LegacyChange(change) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("local change", e))?;
            replay_change(state, change);
        }
        RecoveredRecord::Entry {
            kind: KIND_MERGE,
            payload,
        } => {
            let (news, watermarks): (CounterMap, Option<Watermarks>) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("merge", e))?;
            replay_news(state, &news, watermarks);
        }
        RecoveredRecord::Entry {
            kind: KIND_MERGE_WITHOUT_WINDOWS,
            payload,
        } => {
            let (WithoutWindows(news), watermarks): (WithoutWindows, Option<Watermarks>) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("merge", e))?;
            replay_news(state, &news, watermarks);
        }
        RecoveredRecord::Entry {
            kind: KIND_MERGE_WITHOUT_TAKEOVERS,
            payload,
        } => {
            let (WithoutTakeovers(news), watermarks): (WithoutTakeovers, Option<Watermarks>) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("merge", e))?;
            replay_news(state, &news, watermarks);
        }
        RecoveredRecord::Entry {
            kind: KIND_MERGE_WITHOUT_LIFECYCLE,
            payload,
        } => {
            let (KeyedOnly(news), watermarks): (KeyedOnly, Option<Watermarks>) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("merge", e))?;
            replay_news(state, &news, watermarks);
        }
        RecoveredRecord::Entry {
            kind: KIND_MERGE_ENTRIES_ONLY,
            payload,
        } => {
            let (EntriesOnly(news), watermarks): (EntriesOnly, Option<Watermarks>) =
                crdt_core::wire::decode(payload).map_err(|e| undecodable("merge", e))?;
            replay_news(state, &news, watermarks);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn news(counters: usize, actors: usize) -> CounterMap {
        let mut map = CounterMap::new();
        for c in 0..counters {
            let name =
                CounterName::new(&format!("counter-{c:05}-{}", "x".repeat(c % 100))).unwrap();
            for a in 0..actors {
                let actor = ActorId::new(&format!("node-{a}~inc")).unwrap();
                let n = (c * actors + a) as u64;
                let entry = Entry {
                    inc: u128::from(n) * 1_000_003,
                    dec: u128::from(n % 7),
                    seq: n + 1,
                    since: 0,
                };
                map.merge_entry(&name, &actor, entry);
            }
        }
        map
    }

    fn watermarks(actors: usize) -> Watermarks {
        let mut watermarks = Watermarks::new();
        for a in 0..actors {
            watermarks.raise(
                &ActorId::new(&format!("node-{a}~inc")).unwrap(),
                1000 + a as u64,
            );
        }
        watermarks
    }

    /// Replays `records` into an empty state, checking what is adopted when.
    fn replayed(records: &[Vec<u8>]) -> ReplicaState {
        let mut state = ReplicaState::default();
        for (i, payload) in records.iter().enumerate() {
            replay(
                &mut state,
                RecoveredRecord::Entry {
                    kind: KIND_MERGE,
                    payload,
                },
            )
            .unwrap();
            if i + 1 < records.len() {
                assert!(
                    state.watermarks.is_empty(),
                    "watermarks adopted before the last record"
                );
            }
        }
        state
    }

    #[test]
    fn small_news_is_one_record() {
        let news = news(10, 2);
        let records = merge_records(&news, Some(&watermarks(2)), MAX).unwrap();
        assert_eq!(records, vec![merge_record(&news, Some(&watermarks(2)))]);
    }

    const MAX: usize = crate::wal::MAX_RECORD_PAYLOAD;

    #[test]
    fn big_news_is_split_under_the_limit_with_the_watermarks_last() {
        let news = news(3000, 3);
        let max = 16 << 10;
        let records = merge_records(&news, Some(&watermarks(3)), max).unwrap();
        assert!(records.len() > 10, "{} records", records.len());
        assert!(records.iter().all(|r| r.len() <= max));
        let state = replayed(&records);
        assert_eq!(state.map, news);
        assert_eq!(state.watermarks, watermarks(3));
    }

    #[test]
    fn watermarks_that_do_not_fit_beside_the_last_chunk_get_their_own_record() {
        let news = news(400, 1);
        let wide = watermarks(300);
        let max = merge_record(&CounterMap::new(), Some(&wide)).len() + 64;
        let records = merge_records(&news, Some(&wide), max).unwrap();
        assert!(records.iter().all(|r| r.len() <= max));
        let (map, last): (CounterMap, Option<Watermarks>) =
            crdt_core::wire::decode(records.last().unwrap()).unwrap();
        assert!(map.is_empty() && last == Some(wide.clone()));
        let state = replayed(&records);
        assert_eq!((state.map, state.watermarks), (news, wide));
    }

    #[test]
    fn watermarks_over_the_limit_alone_are_refused_not_fatal() {
        let wide = watermarks(300);
        let error = merge_records(&news(400, 1), Some(&wide), 1024).unwrap_err();
        assert!(matches!(error, WalError::RecordTooLarge { .. }));
        assert!(!error.is_fatal());
    }

    fn replica_of(map: CounterMap) -> Replica {
        let actor = ActorId::new("node-0~inc").unwrap();
        let mut watermarks = Watermarks::new();
        watermarks.raise(&actor, 7);
        Replica::new(actor, ReplicaState { map, watermarks })
    }

    fn from_snapshot(payload: &[u8]) -> ReplicaState {
        let mut state = ReplicaState::default();
        replay(&mut state, RecoveredRecord::Snapshot(payload)).unwrap();
        state
    }

    #[test]
    fn a_chunked_snapshot_replays_to_the_same_replica() {
        let map = news(3 * SNAPSHOT_CHUNK_COUNTERS + 17, 2);
        let replica = replica_of(map.clone());
        let state = from_snapshot(&snapshot(&replica));
        assert_eq!(state.map, map);
        assert_eq!(state.map.digest(), map.digest());
        assert_eq!(state.watermarks, replica.read().watermarks);
        let empty = from_snapshot(&snapshot(&replica_of(CounterMap::new())));
        assert!(empty.map.is_empty());
    }

    #[test]
    fn a_snapshot_of_the_earlier_format_is_still_read() {
        let map = news(50, 3);
        let mut watermarks = Watermarks::new();
        watermarks.raise(&ActorId::new("node-1~inc").unwrap(), 9);
        let old = crdt_core::wire::encode(&(entries_only(&map), &watermarks));
        let state = from_snapshot(&old);
        assert_eq!((state.map, state.watermarks), (map, watermarks));
    }

    /// An entry as encoded before runs: `(inc, dec, seq)`.
    type EntryWithoutRunRef = (u128, u128, u64);

    fn without_run(entry: &Entry) -> EntryWithoutRunRef {
        (entry.inc, entry.dec, entry.seq)
    }

    /// `map` in the format of before keyed writes: `[(name, [(actor, entry)])]`.
    fn entries_only(map: &CounterMap) -> Vec<(&CounterName, Vec<(&ActorId, EntryWithoutRunRef)>)> {
        map.counters()
            .map(|(name, counter)| {
                let entries = counter.entries().map(|(a, e)| (a, without_run(e)));
                (name, entries.collect())
            })
            .collect()
    }

    /// [`news`] plus one keyed write (key `order-1`) of `amount` on `name`.
    fn news_and_a_keyed_write(
        name: &str,
        amount: u64,
        at_ms: u64,
    ) -> (CounterMap, ActorId, crdt_core::KeyedWrite) {
        let actor = ActorId::new("node-0~inc").unwrap();
        let key = crdt_core::IdempotencyKey::new("order-1").unwrap();
        let mut map = news(20, 1);
        let name = CounterName::new(name).unwrap();
        let op = crdt_core::Op::Increment(amount);
        let keyed = map
            .apply_keyed(
                &actor,
                &name,
                op,
                &key,
                at_ms,
                crdt_core::DEFAULT_KEY_WINDOW_MS,
            )
            .unwrap();
        (map, actor, keyed)
    }

    /// `registration` as versions 3–5 encoded it: without its window.
    fn without_window(registration: &Registration) -> impl serde::Serialize + '_ {
        (
            &registration.key,
            &registration.origin,
            registration.op,
            registration.at_ms,
            registration.seq,
            registration.value,
            registration.cancelled_seq,
        )
    }

    fn without_windows(registrations: &[Registration]) -> Vec<impl serde::Serialize + '_> {
        registrations.iter().map(without_window).collect()
    }

    #[test]
    fn records_and_snapshots_of_registrations_without_windows_are_still_read() {
        let (map, actor, keyed) = news_and_a_keyed_write("k", 4, 1);
        let old_format: Vec<_> = (map.counters())
            .map(|(name, counter)| {
                let entries: Vec<_> = counter.entries().collect();
                let registrations: Vec<_> = counter.registrations().map(without_window).collect();
                (name, entries, registrations, counter.lifecycle())
            })
            .collect();
        let watermarks = watermarks(1);
        let payload = &crdt_core::wire::encode(&(&old_format, Some(&watermarks)));
        let mut state = ReplicaState::default();
        let kind = KIND_MERGE_WITHOUT_WINDOWS;
        replay(&mut state, RecoveredRecord::Entry { kind, payload }).unwrap();
        assert_eq!(state.map, map, "read with the default window");

        let mut snapshot = crdt_core::wire::encode(&TAKEOVER_SNAPSHOT_TAG);
        snapshot.extend(crdt_core::wire::encode(&watermarks));
        snapshot.extend(crdt_core::wire::encode(&old_format));
        snapshot.extend(crdt_core::wire::encode(&Vec::<u8>::new()));
        assert_eq!(from_snapshot(&snapshot).map, map);

        let change = keyed.delta.all_changes().next().unwrap();
        let old_change = (
            &change.name,
            &change.actor,
            change.entry,
            without_windows(&change.registrations),
            &change.lifecycle,
        );
        let payload = &crdt_core::wire::encode(&old_change);
        let mut state = ReplicaState::default();
        let kind = KIND_LOCAL_CHANGE_WITHOUT_WINDOWS;
        replay(&mut state, RecoveredRecord::Entry { kind, payload }).unwrap();
        assert_eq!(state.map.value("k"), Some(4));
        assert_eq!(state.watermarks.get(actor.as_str()), change.entry.seq);
    }

    #[test]
    fn records_and_snapshots_of_keyed_writes_before_lifecycle_are_still_read() {
        let (map, actor, keyed) = news_and_a_keyed_write("k", 4, 1);
        // Written before runs: every entry's run reads 0.
        let mut expected = CounterMap::new();
        for (name, counter) in map.counters() {
            let entries = counter
                .entries()
                .map(|(a, e)| (a.clone(), Entry { since: 0, ..*e }));
            let registrations: Vec<Registration> = counter.registrations().cloned().collect();
            expected.merge_counter(name, entries, &registrations, None);
        }
        let keyed_format: Vec<_> = map
            .counters()
            .map(|(name, counter)| {
                let entries: Vec<_> = counter
                    .entries()
                    .map(|(a, e)| (a, without_run(e)))
                    .collect();
                let registrations: Vec<_> = counter.registrations().map(without_window).collect();
                (name, entries, registrations)
            })
            .collect();
        let watermarks = watermarks(1);
        let record = crdt_core::wire::encode(&(&keyed_format, Some(&watermarks)));
        let mut state = ReplicaState::default();
        let payload = &record;
        replay(
            &mut state,
            RecoveredRecord::Entry {
                kind: KIND_MERGE_WITHOUT_LIFECYCLE,
                payload,
            },
        )
        .unwrap();
        assert_eq!(state.map, expected);

        let mut snapshot = crdt_core::wire::encode(&KEYED_SNAPSHOT_TAG);
        snapshot.extend(crdt_core::wire::encode(&watermarks));
        snapshot.extend(crdt_core::wire::encode(&keyed_format));
        snapshot.extend(crdt_core::wire::encode(&Vec::<u8>::new()));
        assert_eq!(from_snapshot(&snapshot).map, expected);

        let change = keyed.delta.all_changes().next().unwrap();
        let legacy_change = (
            &change.name,
            &change.actor,
            without_run(&change.entry),
            without_windows(&change.registrations),
        );
        let payload = &crdt_core::wire::encode(&legacy_change);
        let mut state = ReplicaState::default();
        let kind = KIND_LOCAL_CHANGE_WITHOUT_LIFECYCLE;
        replay(&mut state, RecoveredRecord::Entry { kind, payload }).unwrap();
        assert_eq!(state.map.value("k"), Some(4));
        assert_eq!(state.watermarks.get(actor.as_str()), change.entry.seq);
    }

    /// `lifecycle` as encoded before takeovers.
    fn without_takeovers(lifecycle: &Lifecycle) -> impl serde::Serialize + '_ {
        (
            &lifecycle.removed,
            &lifecycle.stamps,
            &lifecycle.mark,
            lifecycle.expires_at_ms,
            lifecycle.spent_expiry_ms,
        )
    }

    #[test]
    fn records_and_snapshots_of_lifecycles_before_takeovers_are_still_read() {
        let mut map = news(30, 2);
        let actor = ActorId::new("node-0~inc").unwrap();
        let name = CounterName::new("counter-00003-xxx").unwrap();
        let kind = crdt_core::RemovalKind::Delete;
        let removal = map.remove(&actor, &name, kind, 5).unwrap().unwrap();
        let old_format: Vec<_> = (map.counters())
            .map(|(name, counter)| {
                let entries: Vec<_> = counter.entries().collect();
                let registrations: Vec<_> = counter.registrations().map(without_window).collect();
                (
                    name,
                    entries,
                    registrations,
                    counter.lifecycle().map(without_takeovers),
                )
            })
            .collect();
        let watermarks = watermarks(2);
        let payload = &crdt_core::wire::encode(&(&old_format, Some(&watermarks)));
        let mut state = ReplicaState::default();
        let kind = KIND_MERGE_WITHOUT_TAKEOVERS;
        replay(&mut state, RecoveredRecord::Entry { kind, payload }).unwrap();
        assert_eq!(state.map, map);
        assert_eq!(state.map.value(name.as_str()), None, "the delete holds");

        let mut snapshot = crdt_core::wire::encode(&LIFECYCLE_SNAPSHOT_TAG);
        snapshot.extend(crdt_core::wire::encode(&watermarks));
        snapshot.extend(crdt_core::wire::encode(&old_format));
        snapshot.extend(crdt_core::wire::encode(&Vec::<u8>::new()));
        assert_eq!(from_snapshot(&snapshot).map, map);

        let change = removal.all_changes().next().unwrap();
        let lifecycle = change.lifecycle.as_ref().map(without_takeovers);
        let old_change = (
            &change.name,
            &change.actor,
            change.entry,
            without_windows(&change.registrations),
            lifecycle,
        );
        let payload = &crdt_core::wire::encode(&old_change);
        let mut state = ReplicaState::default();
        let kind = KIND_LOCAL_CHANGE_WITHOUT_TAKEOVERS;
        replay(&mut state, RecoveredRecord::Entry { kind, payload }).unwrap();
        assert_eq!(state.map, removal);
    }

    #[test]
    fn records_and_chunked_snapshots_of_the_entries_only_format_are_still_read() {
        let map = news(50, 3);
        let mut watermarks = Watermarks::new();
        watermarks.raise(&ActorId::new("node-1~inc").unwrap(), 9);
        let record = crdt_core::wire::encode(&(entries_only(&map), Some(&watermarks)));
        let mut state = ReplicaState::default();
        let kind = KIND_MERGE_ENTRIES_ONLY;
        replay(
            &mut state,
            RecoveredRecord::Entry {
                kind,
                payload: &record,
            },
        )
        .unwrap();
        assert_eq!((&state.map, &state.watermarks), (&map, &watermarks));

        let mut snapshot = crdt_core::wire::encode(&CHUNKED_SNAPSHOT_TAG);
        snapshot.extend(crdt_core::wire::encode(&watermarks));
        snapshot.extend(crdt_core::wire::encode(&entries_only(&map)));
        snapshot.extend(crdt_core::wire::encode(&Vec::<u8>::new()));
        let state = from_snapshot(&snapshot);
        assert_eq!((state.map, state.watermarks), (map, watermarks));
    }

    #[test]
    fn registrations_survive_snapshots_and_local_change_records() {
        let (map, _, keyed) = news_and_a_keyed_write("z", 3, 7);
        let state = from_snapshot(&snapshot(&replica_of(map.clone())));
        assert_eq!(state.map, map, "entries and registrations");
        assert_eq!(state.map.key_count(), 1);

        let change = keyed.delta.all_changes().next().unwrap();
        let mut replayed = ReplicaState::default();
        let payload = local_change_record(&change);
        let kind = KIND_LOCAL_CHANGE;
        replay(
            &mut replayed,
            RecoveredRecord::Entry {
                kind,
                payload: &payload,
            },
        )
        .unwrap();
        assert_eq!(replayed.map, keyed.delta);
        assert_eq!(replayed.watermarks.get("node-0~inc"), change.entry.seq);
    }

    #[test]
    fn a_snapshot_taken_while_writes_go_on_holds_everything_from_before() {
        let replica = std::sync::Arc::new(replica_of(news(4 * SNAPSHOT_CHUNK_COUNTERS, 1)));
        let before = replica.read().map.clone();
        let writing = {
            let replica = std::sync::Arc::clone(&replica);
            std::thread::spawn(move || {
                let actor = ActorId::new("node-9~late").unwrap();
                for i in 0..2_000 {
                    let name =
                        CounterName::new(&format!("counter-{:05}", (i * 7) % 20_000)).unwrap();
                    let _ = replica
                        .write()
                        .map
                        .apply(&actor, &name, crdt_core::Op::Increment(1));
                }
            })
        };
        let payload = snapshot(&replica);
        writing.join().unwrap();
        let mut state = from_snapshot(&payload);
        // Everything from before is there; merging what came later again changes nothing of it.
        let mut with_before = state.map.clone();
        with_before.merge(&before);
        assert_eq!(
            with_before, state.map,
            "the snapshot lost entries it started with"
        );
        state.map.merge(&replica.read().map);
        assert_eq!(state.map, replica.read().map);
    }

    #[test]
    fn garbage_snapshots_are_errors_not_panics() {
        let mut bad = crdt_core::wire::encode(&CHUNKED_SNAPSHOT_TAG);
        bad.extend([1, 2, 3]);
        for payload in [&bad[..], &[0xff; 3][..], &[][..]] {
            let mut state = ReplicaState::default();
            assert!(replay(&mut state, RecoveredRecord::Snapshot(payload)).is_err());
        }
    }
}
