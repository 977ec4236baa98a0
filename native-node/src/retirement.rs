//! Retiring departed actors: which actors are retired, and keeping their
//! old copies out.
//!
//! Every replaced pod (a wiped data directory) and every unclean restart
//! starts a new actor, and each leaves an entry in every counter it wrote.
//! `POST /admin/retire/{node}` ([`crate::api`]) folds the departed actors
//! of a node into this node's actor ([`crate::writer::WriterHandle::retire`],
//! the lattice half in `crdt_core`'s `Takeover`), so per-counter state stops
//! growing with replacements.
//!
//! A fold is safe while its takeover record travels with the counter: a
//! stale copy of the departed entry then counts nothing. Garbage collection
//! drops the departed entry and the record once every member holds the
//! fold, which waits for an away member until it is forgotten
//! (`--forget-dead-after`: the record's lifetime). After that, two kinds of
//! replica could bring the old entries back, and both are kept out in the
//! gossip handshake, before any data flows ([`Retirement::judge`]):
//!
//! - **A copy of the retired actor itself** (an old disk of a replaced pod):
//!   its `Hello` names a retired actor, and the peer refuses it with the
//!   reason; the refused node logs it and stops.
//! - **A replica that missed the fold**: each `Hello` lists the retired
//!   actors the sender knows, each marked *gone* when the sender holds no
//!   entry of it any more (collected). A node that holds an entry of such
//!   an actor, not folded though it could be, missed a fold whose record is
//!   gone: merging the survivor's entry would count the departed writes
//!   twice. It stops before it sends anything. (Until the peer's entries
//!   are collected, the records are still there and the node heals by
//!   merging them.)
//!
//! Either way the node says so in one line and is refused until its data
//! directory is wiped (it then joins as a new actor). Retirements are also
//! learnt from takeovers in merged news, and kept in `retired.json`.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crdt_core::{ActorId, CounterMap};

use crate::replica::Replica;
use tally_protocol::clock::now_ms;

/// The file in the data directory that keeps the retired set.
const FILE: &str = "retired.json";

/// Retired actors a `Hello` carries (the newest): a Noise handshake message
/// holds at most 64 KiB, and an actor takes up to ~90 bytes.
pub const HELLO_RETIRED_LIMIT: usize = 400;

/// Retired actors with when this node learnt of each (ms since the epoch).
pub type RetiredSet = BTreeMap<String, u64>;

/// Why a retirement could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetireError {
    /// A reachable member did not answer a pull in time.
    #[error("member {0} did not answer a pull in time, so this node may lack writes it holds; try again")]
    Unanswered(String),
    /// A dead member (not forgotten yet) may hold writes of the departed
    /// actors that no reachable member holds.
    #[error("member {0} is dead but not forgotten: it may hold writes of the departed actors that no reachable member holds; retry once it is back, or once it is forgotten (--forget-dead-after: a forgotten member is refused until its data directory is wiped)")]
    DeadMember(String),
    /// The node is alive and we do not know which actor it writes as.
    #[error("node {0} is a live member but has not introduced itself to this node yet; try again in a few seconds")]
    UnknownActor(String),
}

/// The departed actors of node `node` among `actors`: all of its actors
/// but the one it writes as now (`current`, when it is alive), and any
/// newer than that one (an incarnation it moved to since it said hello).
pub fn departed_actors<'a>(
    node: &str,
    actors: impl IntoIterator<Item = &'a ActorId>,
    current: Option<&str>,
) -> Vec<ActorId> {
    let incarnation = |actor: &str| actor.split_once('~').map(|(_, i)| i.to_owned());
    // Incarnations start with the creation time in base 36: longer is
    // newer, then the text orders them.
    let key = |actor: &str| {
        let incarnation = incarnation(actor).unwrap_or_default();
        (incarnation.len(), incarnation)
    };
    let newest_kept = current.map(key);
    (actors.into_iter())
        .filter(|actor| actor.as_str().split_once('~').map(|(id, _)| id) == Some(node))
        .filter(|actor| match &newest_kept {
            Some(kept) => key(actor.as_str()) < *kept,
            None => true,
        })
        .cloned()
        .collect()
}

/// Checks that no member is dead: the fold claims this node holds every
/// write of the departed actors (up to the highest seq it has seen of
/// each), and only a pull from every member that may hold one proves it.
pub fn none_dead(members: &[(String, bool)]) -> Result<(), RetireError> {
    match members.iter().find(|(_, dead)| *dead) {
        Some((member, _)) => Err(RetireError::DeadMember(member.clone())),
        None => Ok(()),
    }
}

/// Checks that a pull from every reachable member completed (`pulled`, from
/// [`crate::gossip::Gossip::pulled_since`]): this node then holds every
/// write of the departed actors any of them held, and the fold leaves none
/// out. (Dead members are not waited for: while they are remembered the
/// fold's records stay, and what they add on return still counts.)
pub fn pulled_from_all(pulled: &[(String, bool)]) -> Result<(), RetireError> {
    match pulled.iter().find(|(_, done)| !done) {
        Some((member, _)) => Err(RetireError::Unanswered(member.clone())),
        None => Ok(()),
    }
}

/// How many members' `reports` (what each holds everything up to) hold
/// `actor`'s writes through `seq`.
pub fn holding(
    actor: &ActorId,
    seq: u64,
    reports: &[(String, Option<crdt_core::Watermarks>)],
) -> usize {
    (reports.iter())
        .filter(|(_, report)| {
            report
                .as_ref()
                .is_some_and(|r| r.get(actor.as_str()) >= seq)
        })
        .count()
}

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is the old copy of a retired actor: tell it why.
    Peer(String),
    /// This node holds entries the cluster folded away: it must stop.
    Us(String),
}

/// A retired actor as a `Hello` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetiredActor {
    /// The actor.
    pub actor: String,
    /// When the sender learnt of its retirement (ms since the epoch).
    pub at_ms: u64,
    /// The sender holds no entry of it any more: its fold records may be
    /// gone too.
    pub gone: bool,
}

/// What the peer said about itself in its `Hello`.
#[derive(Debug, Clone, Copy)]
pub struct PeerWord<'a> {
    /// Its node id.
    pub id: &'a str,
    /// The actor it writes as.
    pub actor: &'a str,
    /// The retired actors it knows of.
    pub retired: &'a [RetiredActor],
}

/// This node's retired set, the actors its peers said they write as, and
/// the check that keeps old copies out.
pub struct Retirement {
    /// `None`: kept in memory only (tests).
    file: Option<PathBuf>,
    retired: Mutex<RetiredSet>,
    peer_actors: Mutex<HashMap<String, String>>,
    replica: Arc<Replica>,
}

impl std::fmt::Debug for Retirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retirement")
            .field("retired", &self.retired().len())
            .finish_non_exhaustive()
    }
}

impl Retirement {
    /// Loads the retired set kept in `data_dir` (empty when there is none).
    pub fn load(data_dir: &std::path::Path, replica: Arc<Replica>) -> std::io::Result<Self> {
        let file = data_dir.join(FILE);
        let retired = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a valid retired set: {error}", file.display()),
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => RetiredSet::new(),
            Err(error) => return Err(error),
        };
        let mut retirement = Self::in_memory(replica);
        retirement.file = Some(file);
        retirement.retired = Mutex::new(retired);
        Ok(retirement)
    }

    /// A retired set that is not kept on disk (simulations and tests).
    pub fn in_memory(replica: Arc<Replica>) -> Self {
        Self {
            file: None,
            retired: Mutex::new(RetiredSet::new()),
            peer_actors: Mutex::new(HashMap::new()),
            replica,
        }
    }

    /// Retirement for a node with no replica of its own to guard (the
    /// handshake's tests, simulations and benchmarks): writes as `actor`,
    /// knows no retirement until told.
    pub fn for_actor(actor: &str) -> Arc<Self> {
        let actor =
            ActorId::new(actor).unwrap_or_else(|_| ActorId::new("node").expect("a valid actor"));
        let replica = Arc::new(Replica::new(actor, Default::default()));
        Arc::new(Self::in_memory(replica))
    }

    fn retired(&self) -> MutexGuard<'_, RetiredSet> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor this node writes as now.
    pub fn actor(&self) -> String {
        self.replica.actor().to_string()
    }

    /// The newest retirements, for a `Hello`.
    pub fn for_hello(&self) -> Vec<RetiredActor> {
        let mut newest: Vec<(String, u64)> = (self.retired().iter())
            .map(|(a, at)| (a.clone(), *at))
            .collect();
        newest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        newest.truncate(HELLO_RETIRED_LIMIT);
        let state = self.replica.read();
        (newest.into_iter())
            .map(|(actor, at_ms)| {
                let gone = ActorId::new(&actor).is_ok_and(|id| !state.map.holds_entries_of(&id));
                RetiredActor { actor, at_ms, gone }
            })
            .collect()
    }

    /// Whether `actor` is retired.
    pub fn is_retired(&self, actor: &str) -> bool {
        self.retired().contains_key(actor)
    }

    /// The actor node `id` said it writes as, in its last `Hello`.
    pub fn actor_of(&self, id: &str) -> Option<String> {
        let actors = self.peer_actors.lock().unwrap_or_else(|p| p.into_inner());
        actors.get(id).cloned()
    }

    /// Adds retirements (keeping the earliest time of each) and keeps the
    /// set on disk. A failed write is logged: the set is learnt again from
    /// peers, and what it guards is also guarded by every peer.
    pub fn learn(&self, learnt: impl IntoIterator<Item = (String, u64)>) {
        let mut retired = self.retired();
        let mut changed = false;
        for (actor, at) in learnt {
            let known = retired.entry(actor).or_insert_with(|| {
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
            let bytes = serde_json::to_vec(&*retired).unwrap_or_default();
            if let Err(error) = crate::identity::write_durably(file, &bytes) {
                tracing::warn!(file = %file.display(), %error, "the retired set could not be saved");
            }
        }
    }

    /// Learns the actors that takeovers in merged `news` retired.
    pub fn learn_from_news(&self, news: &CounterMap) {
        let now = now_ms();
        let mut learnt = Vec::new();
        for (_, counter) in news.all_from("", None) {
            if let Some(lifecycle) = counter.lifecycle() {
                learnt.extend(
                    lifecycle
                        .takeovers
                        .iter()
                        .map(|((from, _), _)| from.to_string()),
                );
            }
        }
        if !learnt.is_empty() {
            self.learn(learnt.into_iter().map(|actor| (actor, now)));
        }
    }

    /// Judges a peer's `Hello` before any data flows: remembers the actor
    /// it writes as, learns its retirements, and refuses a retired actor's
    /// copy, or this node itself when it turns out to be stale.
    pub fn judge(&self, peer: PeerWord<'_>) -> Result<(), Refusal> {
        if let Some(at) = self.retired().get(peer.actor) {
            return Err(Refusal::Peer(format!(
                "actor {} of node {} was retired at {} ms since the epoch; wipe that node's data directory to rejoin as a new actor",
                peer.actor, peer.id, at
            )));
        }
        (self.peer_actors.lock().unwrap_or_else(|p| p.into_inner()))
            .insert(peer.id.to_owned(), peer.actor.to_owned());
        self.learn((peer.retired.iter()).map(|r| (r.actor.clone(), r.at_ms)));
        let mut gone = peer.retired.iter().filter(|r| r.gone);
        match gone.find_map(|r| self.unfolded(&r.actor)) {
            Some((name, actor)) => Err(Refusal::Us(format!(
                "this node's data is older than the cluster's: counter {name:?} holds writes of retired actor {actor}, which node {} has folded away; wipe the data directory to rejoin as a new actor",
                peer.id
            ))),
            None => Ok(()),
        }
    }

    /// A counter holding an entry of `actor` that could be folded and is
    /// not (counters where the actor still owes a key's cancellation are
    /// unfolded everywhere, so they say nothing).
    fn unfolded(&self, actor: &str) -> Option<(String, String)> {
        let id = ActorId::new(actor).ok()?;
        let state = self.replica.read();
        let name = (state.map.counters_of(&id).into_iter()).find(|name| {
            (state.map.get(name.as_str()))
                .is_some_and(|counter| counter.takeover_ready(&id) == Some(true))
        })?;
        Some((name.to_string(), actor.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(text: &str) -> ActorId {
        ActorId::new(text).unwrap()
    }

    #[test]
    fn departed_actors_are_the_nodes_older_incarnations() {
        let actors = [
            actor("n3~lz1aaaaa0001"),
            actor("n3~lz1bbbbb0002"),
            actor("n3~lz1ccccc0003"),
            actor("n30~lz1aaaaa0001"),
            actor("n1~lz1aaaaa0001"),
        ];
        let alive = departed_actors("n3", &actors, Some("n3~lz1bbbbb0002"));
        assert_eq!(alive, vec![actor("n3~lz1aaaaa0001")]);
        let gone = departed_actors("n3", &actors, None);
        assert_eq!(gone.len(), 3);
        assert!(departed_actors("n4", &actors, None).is_empty());
    }

    /// Finding 7 of issue #30: retiring raised this node's watermarks for
    /// the departed actors to the highest seq it had seen, while a dead
    /// member could hold a write of theirs below it, which was then taken
    /// for a collected change and skipped for good.
    #[test]
    fn retiring_is_refused_while_a_member_is_dead() {
        assert_eq!(none_dead(&[("n2".into(), false)]), Ok(()));
        assert_eq!(
            none_dead(&[("n2".into(), false), ("n4".into(), true)]),
            Err(RetireError::DeadMember("n4".into()))
        );
    }

    #[test]
    fn retiring_waits_for_a_pull_from_every_reachable_member() {
        assert_eq!(pulled_from_all(&[("n2".into(), true)]), Ok(()));
        assert_eq!(
            pulled_from_all(&[("n2".into(), true), ("n4".into(), false)]),
            Err(RetireError::Unanswered("n4".into()))
        );
    }

    #[test]
    fn holding_counts_the_members_whose_reports_reach_the_seq() {
        let me = actor("n1~now");
        let at = |seq| Some([(me.clone(), seq)].into_iter().collect());
        let reports = [
            ("n2".into(), at(7)),
            ("n3".into(), at(6)),
            ("n4".into(), None),
        ];
        assert_eq!(holding(&me, 7, &reports), 1);
        assert_eq!(holding(&me, 6, &reports), 2);
    }

    fn replica() -> Arc<Replica> {
        Arc::new(Replica::new(actor("n1~now"), Default::default()))
    }

    fn retired(actor: &str, gone: bool) -> RetiredActor {
        RetiredActor {
            actor: actor.into(),
            at_ms: 10,
            gone,
        }
    }

    #[test]
    fn a_retired_actor_is_refused_and_retirements_are_learnt_from_peers() {
        let retirement = Retirement::in_memory(replica());
        retirement.learn([("n3~old".to_owned(), 10)]);
        let refused = retirement.judge(PeerWord {
            id: "n3",
            actor: "n3~old",
            retired: &[],
        });
        assert!(matches!(refused, Err(Refusal::Peer(reason)) if reason.contains("n3~old")));
        let welcomed = retirement.judge(PeerWord {
            id: "n2",
            actor: "n2~now",
            retired: &[retired("n4~old", false)],
        });
        assert_eq!(welcomed, Ok(()));
        assert!(retirement.is_retired("n4~old"));
        assert_eq!(retirement.actor_of("n2").as_deref(), Some("n2~now"));
        // What this node holds no entry of is listed as gone.
        assert_eq!(retirement.for_hello()[0], retired("n3~old", true));
    }

    #[test]
    fn a_node_holding_an_unfolded_entry_of_an_actor_gone_elsewhere_is_stale() {
        let replica = replica();
        let name = crdt_core::CounterName::new("c").unwrap();
        (replica.write().map)
            .apply(&actor("n3~old"), &name, crdt_core::Op::Increment(2))
            .unwrap();
        let retirement = Retirement::in_memory(replica);
        let (held, gone) = ([retired("n3~old", false)], [retired("n3~old", true)]);
        let peer = |retired| PeerWord {
            id: "n2",
            actor: "n2~now",
            retired,
        };
        // The peer still holds the entry, so its fold records too: they heal.
        assert_eq!(retirement.judge(peer(&held)), Ok(()));
        let Err(Refusal::Us(reason)) = retirement.judge(peer(&gone)) else {
            panic!("a stale node judged itself healthy");
        };
        assert!(reason.contains("wipe the data directory"), "{reason}");
        // Listed by us as not gone: we still hold it.
        assert!(!retirement.for_hello()[0].gone);
    }
}
