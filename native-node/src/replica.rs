//! The node's replica: the counter map, the anti-entropy watermarks, and
//! the stream of changes everyone else (gossip, WebSocket, WAL) follows.
//!
//! Only the [writer](crate::writer) applies local operations, and only
//! after they are durable; gossip merges remote changes directly.
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crdt_core::{ActorId, CounterMap, CounterName, LinkedChange, Watermarks};
use tokio::sync::broadcast;

/// How many change events a slow follower may fall behind before it must
/// resynchronise from a snapshot.
const CHANGE_BACKLOG: usize = 4096;

/// How many garbage rounds' worth of dropped names a follower may fall
/// behind; one that falls further keeps stale deleted copies (harmless:
/// they read as absent) until it resynchronises.
const COLLECTION_BACKLOG: usize = 64;

/// A set of entries that changed, and how.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// The changed entries (their new values).
    pub delta: CounterMap,
    /// The peer it came from, `None` for local writes.
    pub from_peer: Option<String>,
    /// For local writes, the same changes in the order they were made,
    /// each with the seq its entry had before: what eager pushes carry.
    pub linked: Vec<LinkedChange>,
}

/// What the lock protects: the map and the watermarks must be read together,
/// or a pull answer could claim watermarks its chunks do not cover.
#[derive(Debug, Default)]
pub struct ReplicaState {
    /// Every counter.
    pub map: CounterMap,
    /// Advanced by local writes and by completed pulls, never by eager deltas.
    pub watermarks: Watermarks,
}

/// The shared replica of one node.
pub struct Replica {
    /// Changes only when the writer moves to a new incarnation.
    actor: RwLock<ActorId>,
    state: RwLock<ReplicaState>,
    changes: broadcast::Sender<Arc<ChangeEvent>>,
    /// Deleted counters garbage collection dropped, for followers' copies.
    collections: broadcast::Sender<Arc<Vec<CounterName>>>,
}

impl Replica {
    /// A replica acting as `actor`, starting from recovered `state`.
    pub fn new(actor: ActorId, state: ReplicaState) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BACKLOG);
        let (collections, _) = broadcast::channel(COLLECTION_BACKLOG);
        Self {
            actor: RwLock::new(actor),
            state: RwLock::new(state),
            changes,
            collections,
        }
    }

    /// The actor this node writes as now.
    pub fn actor(&self) -> ActorId {
        self.actor
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Moves to a new actor (a new incarnation). Only the writer calls it,
    /// after the new incarnation is durable and before it stamps anything with it.
    pub(crate) fn set_actor(&self, actor: ActorId) {
        *self
            .actor
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = actor;
    }

    /// Shared access. A poisoned lock means a panic elsewhere already broke
    /// the process's invariants; carrying on with the data is still correct
    /// for a CRDT (every state is a valid state), so we take it.
    pub fn read(&self) -> RwLockReadGuard<'_, ReplicaState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Exclusive access.
    pub fn write(&self) -> RwLockWriteGuard<'_, ReplicaState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Follows every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.changes.subscribe()
    }

    /// Follows the deleted counters garbage collection drops from now on.
    pub fn subscribe_collections(&self) -> broadcast::Receiver<Arc<Vec<CounterName>>> {
        self.collections.subscribe()
    }

    /// Tells followers that garbage collection dropped these deleted counters.
    pub fn publish_collected(&self, names: Vec<CounterName>) {
        if !names.is_empty() {
            // An error only means nobody is listening.
            let _ = self.collections.send(Arc::new(names));
        }
    }

    /// Tells followers about a change (no-op for an empty delta).
    pub fn publish(&self, delta: CounterMap, from_peer: Option<String>) {
        self.publish_event(ChangeEvent {
            delta,
            from_peer,
            linked: Vec::new(),
        });
    }

    /// Tells followers about local changes made in this order.
    pub fn publish_local(&self, delta: CounterMap, linked: Vec<LinkedChange>) {
        self.publish_event(ChangeEvent {
            delta,
            from_peer: None,
            linked,
        });
    }

    fn publish_event(&self, event: ChangeEvent) {
        if !event.delta.is_empty() {
            // An error only means nobody is listening yet.
            let _ = self.changes.send(Arc::new(event));
        }
    }

    /// Merges eager changes from `peer` in order, each only on top of the
    /// entry it follows; returns the news and whether some were skipped
    /// (an earlier change of theirs is missing: a pull brings it).
    pub fn merge_linked(&self, linked: Vec<LinkedChange>) -> (CounterMap, bool) {
        let mut state = self.write();
        let ReplicaState { map, watermarks } = &mut *state;
        map.merge_linked(linked, watermarks)
    }

    /// Merges changes learned from `peer`; returns what was news here.
    /// With `done`, a completed pull also raises the watermarks.
    ///
    /// A change of an entry this replica does not hold, at a seq its
    /// watermarks cover, is of a counter dropped as garbage: it is skipped.
    pub fn merge_remote(&self, changes: &CounterMap, done: Option<&Watermarks>) -> CounterMap {
        let mut state = self.write();
        let ReplicaState { map, watermarks } = &mut *state;
        let news = map.merge_news(changes.all_changes(), watermarks);
        if let Some(watermarks) = done {
            state.watermarks.raise_all(watermarks);
        }
        news
    }
}

/// `/watch` reads values straight from the replica, one short lock per call.
impl tally_protocol::watch::CounterSource for Replica {
    fn values(&self, names: &[String]) -> Vec<(String, i128)> {
        let state = self.read();
        (names.iter())
            .filter_map(|name| Some((name.clone(), crate::api::present_value(&state.map, name)?)))
            .collect()
    }

    fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, i128)> {
        let state = self.read();
        let now = tally_protocol::clock::now_ms();
        (state.map.page(prefix, after))
            .filter(|(_, counter)| counter.expiry().is_none_or(|at| at > now))
            .take(limit)
            .map(|(name, counter)| (name.as_str().to_owned(), counter.value()))
            .collect()
    }
}

/// Feeds `hub` with the names of every counter that changes, until the
/// replica goes away. A feed that falls behind resets the hub, so every
/// `/watch` client starts over from a snapshot instead of missing a change.
pub fn feed_watch(replica: &Replica, hub: Arc<tally_protocol::watch::WatchHub>) {
    let mut changes = replica.subscribe();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => hub.changed(change.delta.counters().map(|(name, _)| name.as_str())),
                Err(broadcast::error::RecvError::Lagged(_)) => hub.reset(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
