//! Keyed writes on one node: a retry that arrives while the first attempt
//! with its key is still on its way to disk waits for it, and then gets
//! the first attempt's answer from the replica (the writer replays it).
//!
//! The exactly-once rules themselves live in the CRDT
//! ([`crdt_core::keyed`]) and the writer; this module only orders attempts
//! of one key *on this node*, which no lattice can do.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crdt_core::IdempotencyKey;
use tokio::sync::OwnedMutexGuard;

/// How long a retry waits for the attempt in flight before it gets a 409.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// The environment variable of the crash test hook: a node started with
/// `TALLY_TEST_CRASH_AFTER_DURABLE=<key>` aborts right after the write
/// carrying that key is durable, before answering — what a `kill -9` at
/// the worst moment does. Tests use it; nothing else should.
pub const CRASH_HOOK_VAR: &str = "TALLY_TEST_CRASH_AFTER_DURABLE";

/// The keys being written on this node now.
#[derive(Debug, Default)]
pub struct InFlightKeys {
    keys: Mutex<HashMap<IdempotencyKey, Arc<tokio::sync::Mutex<()>>>>,
    crash_after_durable: Option<String>,
}

/// Held while a key's attempt runs; the next attempt of the key waits for it.
pub struct KeyTurn {
    keys: Arc<InFlightKeys>,
    key: IdempotencyKey,
    _turn: OwnedMutexGuard<()>,
}

/// Another attempt of the key ran longer than [`IN_FLIGHT_WAIT`].
#[derive(Debug, thiserror::Error)]
#[error("a write with idempotency key {0:?} is still in progress; retry later with the same key")]
pub struct StillInFlight(pub String);

impl InFlightKeys {
    /// Reads the crash hook from the environment.
    pub fn from_env() -> Self {
        InFlightKeys {
            keys: Mutex::default(),
            crash_after_durable: std::env::var(CRASH_HOOK_VAR).ok(),
        }
    }

    /// Waits for this node's turn with `key` (at once when no attempt of it runs).
    pub async fn turn(
        self: &Arc<Self>,
        key: &IdempotencyKey,
        patience: Duration,
    ) -> Result<KeyTurn, StillInFlight> {
        let slot = Arc::clone(
            self.keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_default(),
        );
        let turn = tokio::time::timeout(patience, slot.lock_owned())
            .await
            .map_err(|_| StillInFlight(key.to_string()))?;
        Ok(KeyTurn {
            keys: Arc::clone(self),
            key: key.clone(),
            _turn: turn,
        })
    }

    /// The test hook: aborts if `key` is the one to crash after.
    pub fn crash_if_hooked(&self, key: &IdempotencyKey) {
        if self.crash_after_durable.as_deref() == Some(key.as_str()) {
            eprintln!("{CRASH_HOOK_VAR}: aborting after the durable write of {key:?}");
            std::process::abort();
        }
    }

    /// Number of keys with an attempt running or waiting.
    pub fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no keyed attempt runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyTurn {
    fn drop(&mut self) {
        let mut keys = self
            .keys
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two references: the map's and this turn's guard. More means
        // someone waits and will drop the slot after its own turn.
        if keys
            .get(&self.key)
            .is_some_and(|slot| Arc::strong_count(slot) <= 2)
        {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_attempt_waits_for_the_first_then_the_slot_goes() {
        let keys = Arc::new(InFlightKeys::default());
        let key = IdempotencyKey::new("k").unwrap();
        let first = keys.turn(&key, IN_FLIGHT_WAIT).await.unwrap();
        let refused = keys.turn(&key, Duration::from_millis(20)).await;
        assert!(refused.is_err(), "the first still holds the key");
        let waiter = {
            let keys = Arc::clone(&keys);
            let key = key.clone();
            tokio::spawn(async move { keys.turn(&key, IN_FLIGHT_WAIT).await.is_ok() })
        };
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.unwrap(), "the second gets its turn");
        assert!(keys.is_empty(), "no slot is left behind");
    }
}
