//! Members the cluster collected without, kept out until wiped.
//!
//! Garbage collection and key folding wait for every member's report; a
//! member dead for `--forget-dead-after` leaves the table and stops holding
//! them back. From then on the cluster may collect what that member's data
//! still holds (a deleted counter, a folded key): if it came back with its
//! old data, it would bring deleted amounts back (its entries continue runs
//! the others collected) and never receive the removals. So, as Cassandra
//! refuses a node down longer than `gc_grace`:
//!
//! - Collection proceeds without `M` only once every member reporting to
//!   this node lists `M` as forgotten too ([`crate::garbage`]): by then no
//!   live member admits `M`'s old data.
//! - A node whose round then collects or folds anything records `(M,
//!   when)` here, durably (`forgotten.json`), and lists the newest of these
//!   in every `Hello` and every `Pull` (so they spread to every member). A
//!   member forgotten while nothing was collected may come back as it is.
//! - In the handshake ([`Forgotten::judge`]), a peer with `M`'s id whose
//!   data directory was created before `M` was forgotten is refused with
//!   the reason, and a node that finds itself in a peer's list stops
//!   itself; either way it says in one line to wipe its data directory. A
//!   wiped `M` has a data directory created after it was forgotten and
//!   joins as a new actor.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use crate::protocol::ForgottenNode;
use crate::retirement::Refusal;

/// The file in the data directory that keeps the forgotten set.
const FILE: &str = "forgotten.json";

/// Forgotten members a `Hello` or a `Pull` carries (the newest).
pub const LISTED_LIMIT: usize = 200;

/// What a peer said of itself and of the members it forgot.
#[derive(Debug, Clone, Copy)]
pub struct PeerData<'a> {
    /// Its node id.
    pub id: &'a str,
    /// When its data directory was created (ms since the epoch; 0 when
    /// not known, as for directories of before).
    pub created_ms: u64,
    /// The members it forgot.
    pub forgotten: &'a [ForgottenNode],
}

/// This node's forgotten set, and the check that keeps forgotten data out.
#[derive(Debug)]
pub struct Forgotten {
    /// `None`: kept in memory only (tests).
    file: Option<PathBuf>,
    /// This node's id, and when its data directory was created.
    me: (String, u64),
    set: Mutex<BTreeMap<String, u64>>,
}

impl Forgotten {
    /// Loads the set kept in `data_dir` for node `id`, whose data directory
    /// was created at `created_ms`.
    pub fn load(data_dir: &Path, id: &str, created_ms: u64) -> std::io::Result<Self> {
        let file = data_dir.join(FILE);
        let set = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a valid forgotten set: {error}", file.display()),
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error),
        };
        Ok(Self {
            file: Some(file),
            me: (id.to_owned(), created_ms),
            set: Mutex::new(set),
        })
    }

    /// A set kept in memory only (simulations and tests).
    pub fn in_memory(id: &str, created_ms: u64) -> Self {
        Self {
            file: None,
            me: (id.to_owned(), created_ms),
            set: Mutex::new(BTreeMap::new()),
        }
    }

    fn set(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When this node's data directory was created.
    pub fn created_ms(&self) -> u64 {
        self.me.1
    }

    /// Records forgotten members (keeping the earliest time of each) and
    /// keeps the set on disk. This node's own id is never recorded.
    pub fn learn(&self, learnt: impl IntoIterator<Item = (String, u64)>) {
        let mut set = self.set();
        let mut changed = false;
        for (id, at) in learnt {
            if id == self.me.0 {
                continue;
            }
            let known = set.entry(id).or_insert_with(|| {
                changed = true;
                at
            });
            if at < *known {
                *known = at;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        if let Some(file) = &self.file {
            let bytes = serde_json::to_vec(&*set).unwrap_or_default();
            if let Err(error) = crate::identity::write_durably(file, &bytes) {
                tracing::warn!(file = %file.display(), %error, "the forgotten set could not be saved");
            }
        }
    }

    /// Whether member `id` was forgotten (a wiped one that joined again
    /// stays listed: only data created before the time is refused).
    pub fn is_forgotten(&self, id: &str) -> bool {
        self.set().contains_key(id)
    }

    /// The newest forgotten members, for a `Hello` or a `Pull`.
    pub fn listed(&self) -> Vec<ForgottenNode> {
        let mut newest: Vec<ForgottenNode> = (self.set().iter())
            .map(|(id, at_ms)| ForgottenNode {
                id: id.clone(),
                at_ms: *at_ms,
            })
            .collect();
        newest.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then_with(|| a.id.cmp(&b.id)));
        newest.truncate(LISTED_LIMIT);
        newest
    }

    /// Judges a peer before any data flows: learns the members it forgot,
    /// refuses it if it is a forgotten member's old data, and refuses this
    /// node if the peer forgot it.
    pub fn judge(&self, peer: PeerData<'_>) -> Result<(), Refusal> {
        self.learn((peer.forgotten.iter()).map(|f| (f.id.clone(), f.at_ms)));
        if let Some(at) = self.set().get(peer.id).copied() {
            if peer.created_ms < at {
                return Err(Refusal::Peer(format!(
                    "node {} was forgotten at {at} ms since the epoch after being dead longer than --forget-dead-after, and the cluster may have collected what its data holds; wipe that node's data directory to rejoin",
                    peer.id
                )));
            }
        }
        let (me, created) = (&self.me.0, self.me.1);
        match peer.forgotten.iter().find(|f| &f.id == me) {
            Some(f) if created < f.at_ms => Err(Refusal::Us(format!(
                "node {} forgot this node at {} ms since the epoch (it was dead longer than --forget-dead-after), and the cluster may have collected what this data directory holds; wipe the data directory to rejoin",
                peer.id, f.at_ms
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, at_ms: u64) -> ForgottenNode {
        ForgottenNode {
            id: id.into(),
            at_ms,
        }
    }

    #[test]
    fn a_forgotten_members_old_data_is_refused_and_a_wiped_one_is_not() {
        let set = Forgotten::in_memory("n1", 10);
        set.learn([("n3".to_owned(), 1_000)]);
        let old = PeerData {
            id: "n3",
            created_ms: 500,
            forgotten: &[],
        };
        assert!(matches!(set.judge(old), Err(Refusal::Peer(_))));
        let wiped = PeerData {
            created_ms: 2_000,
            ..old
        };
        assert_eq!(set.judge(wiped), Ok(()));
        let other = PeerData { id: "n2", ..old };
        assert_eq!(set.judge(other), Ok(()));
    }

    #[test]
    fn a_node_that_finds_itself_forgotten_stops_and_peers_teach_the_set() {
        let set = Forgotten::in_memory("n3", 500);
        let forgot_me = [node("n3", 1_000), node("n4", 900)];
        let peer = PeerData {
            id: "n1",
            created_ms: 1,
            forgotten: &forgot_me,
        };
        assert!(matches!(set.judge(peer), Err(Refusal::Us(_))));
        assert!(set.is_forgotten("n4"), "learnt from the peer");
        assert!(!set.is_forgotten("n3"), "never itself");
    }
}
