//! Per-request consistency: `?w=` on writes, `?r=` on reads.
//!
//! By default a node answers a write once its own WAL holds it (`w=1`) and
//! a read from its own replica (`r=1`). A client may ask for more:
//!
//! * **`w=N|majority|all`**: after the local commit, the node sends the
//!   written counters' state to every other member as `Replicate { id,
//!   changes }`; a member answers `Stored { id }` only after the fsync that
//!   holds them. The write is answered once `N` replicas (this one
//!   included) hold it, with `"replicas": n`; not within `--write-timeout`
//!   → 504: the write is durable here and will spread, but whether `N`
//!   replicas hold it is unknown, so the outcome is unknown to the client
//!   (retrying with the same `Idempotency-Key` is safe).
//! * **`r=N|majority|all`**: the node asks every other member for the
//!   counter's state (`Fetch` → `Fetched`), merges each answer into its own
//!   replica (a CRDT merge; the answer is journaled like any peer news) and
//!   answers from its replica once `N` replicas' states (its own included)
//!   are in. Not within the timeout → 504.
//!
//! **Who counts.** The cluster is this node plus every member in its table
//! whatever its status (alive, suspect or dead), until a dead member is
//! forgotten (`--forget-dead-after`). Dead members count because a quorum
//! that shrank with failures would let both sides of a partition call
//! themselves a majority. `majority` is ⌊size/2⌋+1, `all` the size. A
//! number larger than the cluster is refused at once (503): waiting could
//! not help. Every write and read here carries whole counters, so any
//! `w + r > size` makes a read, from any node, see every write acknowledged
//! with `w` (the two sets of replicas share one).
//!
//! The rules (parsing, quorum arithmetic, counting answers) are pure
//! functions; the messages go through [`Replicas`], which gossip implements.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crdt_core::{CounterMap, CounterName};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::protocol::Message;

/// `--write-timeout`'s default: how long a `w`/`r` above 1 waits for replicas.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most counters one `Fetch` asks for (a read asks for one).
pub const MAX_FETCH_NAMES: usize = 64;

/// Largest number accepted in `w=N` / `r=N`.
const MAX_LEVEL: usize = 1 << 16;

/// How many replicas a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Exactly this many (1 = this node alone, today's behaviour).
    Count(usize),
    /// More than half of the cluster.
    Majority,
    /// Every member of the cluster.
    All,
}

impl Default for Level {
    fn default() -> Self {
        Level::Count(1)
    }
}

/// A `w` or `r` that is neither a positive number, `majority` nor `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param} must be a number from 1 to {MAX_LEVEL}, \"majority\" or \"all\", not {value:?}")]
pub struct LevelError {
    /// `w` or `r`.
    pub param: &'static str,
    /// What was given.
    pub value: String,
}

/// Why a quorum was not reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// More replicas were asked for than the cluster has.
    #[error(
        "{param}={wanted} asks for {wanted} replicas but this node knows {size} (itself included)"
    )]
    TooFew {
        /// `w` or `r`.
        param: &'static str,
        /// What was asked for.
        wanted: usize,
        /// The cluster as this node knows it.
        size: usize,
    },
    /// Fewer replicas answered than wanted within the timeout.
    #[error("{reached} of the {wanted} replicas wanted answered within {timeout:?}")]
    TimedOut {
        /// Replicas that held the write (or sent their state), this one included.
        reached: usize,
        /// Replicas wanted.
        wanted: usize,
        /// How long the node waited.
        timeout: Duration,
    },
}

impl Level {
    /// Parses `?w=` / `?r=` (`param` names it in the error). `r=node`, the
    /// gateway's documented way to send a read to a node before levels
    /// existed, still means this node alone.
    pub fn parse(param: &'static str, value: &str) -> Result<Level, LevelError> {
        let level = match value {
            "node" if param == "r" => Some(Level::Count(1)),
            "majority" => Some(Level::Majority),
            "all" => Some(Level::All),
            digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                (digits.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_LEVEL).contains(n))
                    .map(Level::Count)
            }
            _ => None,
        };
        level.ok_or_else(|| LevelError {
            param,
            value: value.chars().take(64).collect(),
        })
    }

    /// Parses an optional `?w=` / `?r=`; absent is 1.
    pub fn parse_optional(param: &'static str, value: Option<&str>) -> Result<Level, LevelError> {
        value.map_or(Ok(Level::default()), |value| Level::parse(param, value))
    }

    /// True for `1` (nothing to ask of other replicas, whatever the cluster).
    pub fn is_local(self) -> bool {
        self == Level::Count(1)
    }

    /// Replicas needed (this one included) in a cluster of `size`
    /// (this node included, so at least 1).
    pub fn required(self, param: &'static str, size: usize) -> Result<usize, QuorumError> {
        let size = size.max(1);
        match self {
            Level::Majority => Ok(size / 2 + 1),
            Level::All => Ok(size),
            Level::Count(wanted) if wanted <= size => Ok(wanted),
            Level::Count(wanted) => Err(QuorumError::TooFew {
                param,
                wanted,
                size,
            }),
        }
    }

    /// The form used on the wire to the gateway's batches and in answers.
    pub fn as_query(self) -> String {
        match self {
            Level::Count(n) => n.to_string(),
            Level::Majority => "majority".to_owned(),
            Level::All => "all".to_owned(),
        }
    }
}

/// What a `Replicate` of `writes` carries: each written counter's entries
/// (every actor's: a few), and for a keyed write the registrations of its
/// key — not the counter's other keys, of which a hot counter holds a
/// window's worth.
pub fn writes_in(
    map: &CounterMap,
    writes: &[(CounterName, Option<crdt_core::IdempotencyKey>)],
) -> CounterMap {
    let mut out = CounterMap::new();
    for (name, key) in writes {
        let Some(counter) = map.get(name.as_str()) else {
            continue;
        };
        for registration in key
            .iter()
            .flat_map(|key| counter.registrations_of(key.as_str()))
        {
            out.merge_registration(name, registration);
        }
        // The entries' removals go with them, or a replica that has not
        // heard of a delete would count what it removed.
        if let Some(lifecycle) = counter.lifecycle() {
            out.merge_lifecycle(name, lifecycle);
        }
        for (actor, entry) in counter.entries() {
            out.merge_entry(name, actor, *entry);
        }
    }
    out
}

/// The named counters of `map`, whole (every actor's entry and every
/// registration, so the reader's value is exact): what a `Fetched`
/// carries. Unknown names are skipped.
pub fn counters_named<'a>(
    map: &CounterMap,
    names: impl IntoIterator<Item = &'a str>,
) -> CounterMap {
    let mut out = CounterMap::new();
    for name in names {
        let (Some(counter), Ok(name)) = (map.get(name), CounterName::new(name)) else {
            continue;
        };
        for registration in counter.registrations() {
            out.merge_registration(&name, registration);
        }
        if let Some(lifecycle) = counter.lifecycle() {
            out.merge_lifecycle(&name, lifecycle);
        }
        for (actor, entry) in counter.entries() {
            out.merge_entry(&name, actor, *entry);
        }
    }
    out
}

/// One answer to a request: from which member, and (for `Fetch`) its state.
#[derive(Debug)]
struct Answer {
    from: String,
    state: Option<CounterMap>,
}

/// Requests sent to peers and waiting for answers, by id.
#[derive(Debug, Default)]
pub struct Requests {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
}

/// A registered request; dropping it forgets the id (late answers are ignored).
struct Registered<'a> {
    requests: &'a Requests,
    id: u64,
    answers: mpsc::UnboundedReceiver<Answer>,
}

impl Registered<'_> {
    /// Waits until `wanted` replicas (this node included) answered, or
    /// `timeout`; `first` handles each member's first answer. Returns how
    /// many replicas were reached.
    async fn quorum<F: std::future::Future<Output = ()>>(
        &mut self,
        wanted: usize,
        timeout: Duration,
        mut first: impl FnMut(Answer) -> F,
    ) -> Result<usize, QuorumError> {
        let mut tally = Tally::new();
        let waited = tokio::time::timeout(timeout, async {
            while tally.reached() < wanted {
                let Some(answer) = self.answers.recv().await else {
                    return;
                };
                if tally.add(&answer.from) {
                    first(answer).await;
                }
            }
        })
        .await;
        match waited {
            Ok(()) if tally.reached() >= wanted => Ok(tally.reached()),
            _ => Err(QuorumError::TimedOut {
                reached: tally.reached(),
                wanted,
                timeout,
            }),
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Answer>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self) -> Registered<'_> {
        let id = self.next_id.fetch_add(1, Relaxed);
        // Unbounded, yet bounded in practice: each member answers one
        // message at most once, and answers for a forgotten id are dropped.
        let (tx, answers) = mpsc::unbounded_channel();
        self.lock().insert(id, tx);
        Registered {
            requests: self,
            id,
            answers,
        }
    }

    /// `peer` answered `Stored { id }`.
    pub fn stored(&self, peer: &str, id: u64) {
        self.answer(id, peer, None);
    }

    /// `peer` answered `Fetched { id, state }`.
    pub fn fetched(&self, peer: &str, id: u64, state: CounterMap) {
        self.answer(id, peer, Some(state));
    }

    fn answer(&self, id: u64, from: &str, state: Option<CounterMap>) {
        if let Some(waiter) = self.lock().get(&id) {
            let _ = waiter.send(Answer {
                from: from.to_owned(),
                state,
            });
        }
    }

    /// Requests waiting (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }
}

/// What a node offers the quorum logic: its members and its links.
pub trait Replicas: Send + Sync {
    /// This node plus every member it knows (see the module docs).
    fn cluster_size(&self) -> usize;
    /// Queues `message` to every member; returns how many it was queued for.
    fn send_to_members(&self, message: &Message) -> usize;
    /// The requests waiting for answers.
    fn requests(&self) -> &Requests;
    /// Merges a peer's state into the local replica (and journals the news).
    fn merge_from(&self, peer: &str, state: CounterMap) -> BoxFuture<'_, ()>;
}

/// Counts distinct members answering; `reached` includes this node.
#[derive(Debug)]
struct Tally {
    answered: HashSet<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            answered: HashSet::new(),
        }
    }

    /// Records `from`; true the first time it answers.
    fn add(&mut self, from: &str) -> bool {
        self.answered.insert(from.to_owned())
    }

    fn reached(&self) -> usize {
        self.answered.len() + 1
    }
}

/// `?w=`: waits until `wanted` replicas (this one, which already holds
/// `changes` durably, included) hold `changes`; returns how many did.
/// (`wanted` comes from [`Level::required`], checked before the write.)
pub async fn replicate<R: Replicas + ?Sized>(
    replicas: &R,
    changes: CounterMap,
    wanted: usize,
    timeout: Duration,
) -> Result<usize, QuorumError> {
    if wanted <= 1 {
        return Ok(1);
    }
    let mut request = replicas.requests().register();
    replicas.send_to_members(&Message::Replicate {
        id: request.id,
        changes,
    });
    request.quorum(wanted, timeout, |_| async {}).await
}

/// `?r=`: merges the state of `names` from `wanted` replicas (this one
/// included) into the local replica; returns how many replicas that was.
pub async fn gather<R: Replicas + ?Sized>(
    replicas: &R,
    names: &[CounterName],
    wanted: usize,
    timeout: Duration,
) -> Result<usize, QuorumError> {
    if wanted <= 1 {
        return Ok(1);
    }
    let mut request = replicas.requests().register();
    let names: Vec<String> = (names.iter().take(MAX_FETCH_NAMES))
        .map(|name| name.as_str().to_owned())
        .collect();
    replicas.send_to_members(&Message::Fetch {
        id: request.id,
        names,
    });
    (request)
        .quorum(wanted, timeout, |Answer { from, state }| async move {
            if let Some(state) = state {
                replicas.merge_from(&from, state).await;
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt_core::ActorId;

    #[test]
    fn levels_parse_numbers_majority_and_all() {
        assert_eq!(Level::parse("w", "1"), Ok(Level::Count(1)));
        assert_eq!(Level::parse("w", "3"), Ok(Level::Count(3)));
        assert_eq!(Level::parse("r", "majority"), Ok(Level::Majority));
        assert_eq!(Level::parse("r", "all"), Ok(Level::All));
        assert_eq!(Level::parse_optional("w", None), Ok(Level::Count(1)));
        assert!(Level::parse_optional("w", None).unwrap().is_local());
    }

    #[test]
    fn bad_levels_are_refused_with_the_parameter_named() {
        for bad in [
            "0",
            "abc",
            "",
            "-1",
            "+2",
            " 1",
            "1.0",
            "Majority",
            "99999999999999999999999",
        ] {
            let error = Level::parse("w", bad).unwrap_err();
            assert_eq!(error.param, "w", "{bad:?}");
            assert!(error.to_string().starts_with("w must be"), "{error}");
        }
        assert!(Level::parse("r", "65537").is_err());
        assert_eq!(Level::parse("r", "node"), Ok(Level::Count(1)));
        assert!(Level::parse("w", "node").is_err());
    }

    #[test]
    fn majority_is_more_than_half_and_all_is_everyone() {
        let cases = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)];
        for (size, majority) in cases {
            assert_eq!(
                Level::Majority.required("w", size),
                Ok(majority),
                "size {size}"
            );
            assert_eq!(Level::All.required("w", size), Ok(size), "size {size}");
        }
        // A node always counts itself.
        assert_eq!(Level::Majority.required("w", 0), Ok(1));
    }

    #[test]
    fn majorities_of_writes_and_reads_always_overlap() {
        for size in 1..=9 {
            let w = Level::Majority.required("w", size).unwrap();
            let r = Level::Majority.required("r", size).unwrap();
            assert!(w + r > size, "size {size}: w {w} + r {r}");
        }
    }

    #[test]
    fn more_replicas_than_the_cluster_has_is_refused_at_once() {
        assert_eq!(Level::Count(3).required("w", 3), Ok(3));
        assert_eq!(
            Level::Count(4).required("r", 3),
            Err(QuorumError::TooFew {
                param: "r",
                wanted: 4,
                size: 3
            })
        );
    }

    #[test]
    fn counters_named_carries_whole_counters_and_skips_the_rest() {
        let mut map = CounterMap::new();
        let name = |n: &str| CounterName::new(n).unwrap();
        for actor in ["a~1", "b~1"] {
            let actor = ActorId::new(actor).unwrap();
            map.apply(&actor, &name("x"), crdt_core::Op::Increment(2))
                .unwrap();
            map.apply(&actor, &name("y"), crdt_core::Op::Increment(5))
                .unwrap();
        }
        let picked = counters_named(&map, ["x", "missing", "not\u{0}valid"]);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked.value("x"), Some(4));
        assert_eq!(picked.entry_count(), 2);
    }

    /// A cluster whose members answer (or not) as told.
    struct FakeCluster {
        size: usize,
        answering: Vec<&'static str>,
        requests: Requests,
        merged: Mutex<Vec<String>>,
    }

    impl Replicas for FakeCluster {
        fn cluster_size(&self) -> usize {
            self.size
        }
        fn send_to_members(&self, message: &Message) -> usize {
            for member in &self.answering {
                match message {
                    Message::Replicate { id, .. } => {
                        // A duplicate answer must not count twice.
                        self.requests.stored(member, *id);
                        self.requests.stored(member, *id);
                    }
                    Message::Fetch { id, .. } => {
                        self.requests.fetched(member, *id, CounterMap::new())
                    }
                    _ => {}
                }
            }
            self.size - 1
        }
        fn requests(&self) -> &Requests {
            &self.requests
        }
        fn merge_from(&self, peer: &str, _state: CounterMap) -> BoxFuture<'_, ()> {
            self.merged.lock().unwrap().push(peer.to_owned());
            Box::pin(async {})
        }
    }

    fn cluster(size: usize, answering: Vec<&'static str>) -> FakeCluster {
        FakeCluster {
            size,
            answering,
            requests: Requests::default(),
            merged: Mutex::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_answered_once_enough_replicas_stored_it() {
        let nodes = cluster(5, vec!["b", "c", "d", "e"]);
        let wanted = Level::Majority.required("w", 5).unwrap();
        let reached = replicate(&nodes, CounterMap::new(), wanted, Duration::from_secs(5)).await;
        assert_eq!(reached, Ok(3));
        assert_eq!(
            nodes.requests.waiting(),
            0,
            "the request outlived its answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_times_out_when_too_few_replicas_answer() {
        let nodes = cluster(3, vec![]);
        let timeout = Duration::from_secs(5);
        let reached = replicate(&nodes, CounterMap::new(), 2, timeout).await;
        assert_eq!(
            reached,
            Err(QuorumError::TimedOut {
                reached: 1,
                wanted: 2,
                timeout
            })
        );
        assert_eq!(nodes.requests.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_answers_count_once() {
        let nodes = cluster(3, vec!["b"]);
        let reached = replicate(&nodes, CounterMap::new(), 3, Duration::from_secs(1)).await;
        assert!(
            matches!(reached, Err(QuorumError::TimedOut { reached: 2, .. })),
            "{reached:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_merges_every_answer_it_waits_for() {
        let nodes = cluster(3, vec!["b", "c"]);
        let name = CounterName::new("x").unwrap();
        let reached = gather(&nodes, &[name], 3, Duration::from_secs(1)).await;
        assert_eq!(reached, Ok(3));
        assert_eq!(*nodes.merged.lock().unwrap(), ["b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_replica_asks_nobody() {
        let nodes = cluster(3, vec![]);
        assert_eq!(
            replicate(&nodes, CounterMap::new(), 1, Duration::ZERO).await,
            Ok(1)
        );
        let name = CounterName::new("x").unwrap();
        assert_eq!(gather(&nodes, &[name], 1, Duration::ZERO).await, Ok(1));
    }
}
