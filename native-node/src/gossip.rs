//! Probes, repair and broadcast over persistent peer connections.
//!
//! - **Rounds**: every `interval`, re-check members (unanswered probes →
//!   suspect → dead), close links nobody needs, and `Ping` one member
//!   (round-robin, see `membership`). Ping and answer carry both sides'
//!   state and member digests and a few membership updates: idle, a round
//!   costs two small frames per node, whatever the cluster or keyspace size.
//! - **Repair** (anti-entropy), only where a probe showed digests differ:
//!   a `Pull` with our watermarks (at most `fanout` started per round; every
//!   `full_sync_every`-th one asks for everything), answered chunk by chunk
//!   as the connection drains it; a member-digest difference sends the
//!   whole member table. Since every node probes one member per round and
//!   both ends of a probe compare, a difference is found within a round or
//!   two and spreads like an epidemic.
//! - **Broadcast**: a durable local write goes out at once as one `Delta` to
//!   every member not dead; receivers merge it and do not forward it, so
//!   each member receives each change once, one hop after the write. A lost
//!   delta (a full queue, a cut link) shows up as a digest difference at the
//!   next probe and is pulled.
//! - **Links**: one outbound connection per peer address, opened on first
//!   use and kept; a task per link redials with exponential backoff.
//!   Outbound queues are bounded and drop when full: anti-entropy repairs
//!   anything a dropped message would have carried. Links to addresses no
//!   member has any more are closed every round.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use std::iter::Peekable;

use crdt_core::{Change, CounterMap, LinkedChange, Watermarks};
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tally_protocol::request_auth::unix_now_ms;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::consistency::{self, Replicas, Requests};
use crate::membership::{Membership, Source, Timing};
use crate::metrics::Metrics;
use crate::protocol::{MemberRecord, MemberUpdate, Message, Report};
use crate::replica::{ChangeEvent, Replica};
use crate::transport::{self, Connection, Network, PeerIdentity, TransportError};

/// Messages queued per outbound link before new ones are dropped.
const LINK_QUEUE: usize = 256;
/// Encoded bytes queued per outbound link before new messages are dropped:
/// a slow peer costs at most this much memory, whatever the message sizes.
const LINK_QUEUE_BYTES: usize = 8 << 20;
/// Replies buffered per connection: small, so a long answer is produced
/// only as fast as the peer reads it.
const REPLY_QUEUE: usize = 4;
/// Deltas larger than this are left to anti-entropy rather than pushed eagerly.
const MAX_EAGER_ENTRIES: usize = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An outbound link whose pull goes unanswered for this many rounds (but
/// at least [`MIN_REPLY_TIMEOUT`]) is presumed broken and redialled.
const REPLY_TIMEOUT_ROUNDS: u32 = 10;
const MIN_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Member records per `Members` chunk: a record is an id and two addresses
/// (≤ ~600 bytes even with long names), so a chunk stays far under a frame.
const MEMBERS_PER_CHUNK: usize = 256;
/// A connection is given up after carrying nothing for this many rounds
/// per member (when that is longer than the transport's idle timeout). Idle,
/// a link carries only the probes of one member by another, one per pass
/// over the table: n rounds apart, up to 2n as each pass is reshuffled. A
/// fixed timeout shorter than that closed idle links between probes, and a
/// ping sent as the other side was closing was lost: a false suspicion.
const IDLE_ROUNDS_PER_MEMBER: u32 = 4;

/// Tuning of the gossip layer.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Time between anti-entropy rounds.
    pub interval: Duration,
    /// Most pulls started per round (each where a probe showed a difference).
    pub fanout: usize,
    /// Every this many pulls, one asks for the full state.
    pub full_sync_every: u64,
    /// Most inbound gossip connections at once; more are closed and counted.
    pub max_inbound: usize,
    /// A member dead this long leaves the table (tombstoned, see `membership`).
    pub forget_dead_after: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            fanout: 3,
            full_sync_every: 150,
            max_inbound: 1024,
            forget_dead_after: Duration::from_secs(600),
        }
    }
}

/// Handshakes in progress at once: each costs key agreement, and one that
/// never completes holds its slot for the handshake timeout.
const MAX_HANDSHAKES: usize = 64;

/// Where news learned from peers goes to be made durable.
pub trait RemoteSink: Send + Sync + 'static {
    /// Persists `news` (and the watermarks of a completed pull). Resolves
    /// once the sink has taken it: a sink that is behind makes the caller
    /// (the connection's reader) wait, which slows the peer through TCP
    /// instead of queueing without bound.
    fn persist(&self, news: CounterMap, watermarks: Option<Watermarks>) -> BoxFuture<'_, ()>;

    /// Persists `changes` (all of them, news or not) and syncs them like a
    /// local write. Resolves once the sink has taken them, to a receiver
    /// told whether the fsync that holds them succeeded (a `Replicate`
    /// is answered only then; see `consistency.rs`).
    fn persist_synced(&self, changes: CounterMap) -> BoxFuture<'_, Synced>;
}

/// Says whether the fsync holding news handed over with
/// [`RemoteSink::persist_synced`] succeeded.
#[derive(Debug)]
pub struct Synced(oneshot::Receiver<bool>);

impl Synced {
    /// Told `true` through the sender once the news is synced.
    pub fn channel() -> (oneshot::Sender<bool>, Synced) {
        let (tx, rx) = oneshot::channel();
        (tx, Synced(rx))
    }

    /// True once the news is durable; false if the sync failed or the sink stopped.
    pub async fn wait(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}

/// Since when a pull sent on a link waits for its answer (`None`: nothing pending).
type Awaiting = Arc<Mutex<Option<Instant>>>;

fn lock_awaiting(awaiting: &Awaiting) -> std::sync::MutexGuard<'_, Option<Instant>> {
    awaiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message encoded once, however many links it is queued on.
#[derive(Clone)]
struct Outgoing {
    kind: &'static str,
    body: bytes::Bytes,
}

impl Outgoing {
    fn encode(message: &Message) -> Self {
        Self {
            kind: message.kind(),
            body: crdt_core::wire::encode(message).into(),
        }
    }
}

/// The sending side of one outbound link.
struct Link {
    queue: mpsc::Sender<Outgoing>,
    /// Encoded bytes waiting in `queue`.
    queued_bytes: Arc<AtomicUsize>,
    /// The pull sent and not yet answered in full.
    awaiting: Awaiting,
    /// The oldest ping sent and not answered (a link that answers none is redialled).
    ping_awaiting: Awaiting,
    /// Cuts short a redial backoff: a probe is waiting to go.
    redial_now: Arc<Notify>,
}

impl Link {
    /// Queues `message` unless the link's count or byte budget is spent.
    fn offer(&self, message: Outgoing) -> bool {
        let size = message.body.len();
        if self.queued_bytes.load(Relaxed) + size > LINK_QUEUE_BYTES {
            return false;
        }
        let queued = self.queue.try_send(message).is_ok();
        if queued {
            self.queued_bytes.fetch_add(size, Relaxed);
        }
        queued
    }
}

/// What a link's task shares with its [`Link`].
struct LinkWaits {
    queued_bytes: Arc<AtomicUsize>,
    awaiting: Awaiting,
    ping_awaiting: Awaiting,
    redial_now: Arc<Notify>,
}

/// Member-table chunks for the digest repair, each well under a frame.
fn table_messages(members: &Membership) -> Vec<Message> {
    (members.table().chunks(MEMBERS_PER_CHUNK))
        .map(|records| Message::Members {
            records: records.to_vec(),
        })
        .collect()
}

/// The receiving end of a link's queue, as the connection's writer drains it.
struct Outbox<'a> {
    queue: &'a mut mpsc::Receiver<Outgoing>,
    queued_bytes: &'a AtomicUsize,
}

/// An answer to a pull, produced one chunk at a time.
pub struct PullAnswer {
    /// Actor → last seq already sent (starts as the puller's watermarks).
    cursor: Watermarks,
    /// Our watermarks when the answer began; sent with the last chunk.
    watermarks: Option<Watermarks>,
    budget: usize,
    /// The digests agreed: the whole answer is one `Ack`.
    ack: bool,
}

impl PullAnswer {
    /// The next message of the answer, `None` once the last one went out.
    ///
    /// The cursor advances per actor in seq order, so entries changed while
    /// the answer is under way (they get new, higher seqs) are still sent;
    /// the watermarks were taken first, so they never claim more than the
    /// chunks carry.
    pub fn next_message(&mut self, replica: &Replica) -> Option<Message> {
        if std::mem::take(&mut self.ack) {
            return Some(Message::Ack);
        }
        self.watermarks.as_ref()?;
        let chunk = {
            let state = replica.read();
            let mut changes = state.map.changes_since(&self.cursor).peekable();
            take_chunk(&mut changes, self.budget)
        };
        if chunk.is_empty() {
            return Some(Message::Push {
                changes: chunk,
                done: self.watermarks.take(),
            });
        }
        // Chunks follow each actor's seq order, so everything up to the
        // chunk's highest seq per actor has now been sent.
        for (actor, seq) in chunk.summary() {
            self.cursor.raise(&actor, seq);
        }
        Some(Message::Push {
            changes: chunk,
            done: None,
        })
    }
}

/// Takes changes into one map of at most `budget` estimated bytes (at
/// least one entry); what does not fit stays in the iterator.
fn take_chunk<I: Iterator<Item = Change>>(changes: &mut Peekable<I>, budget: usize) -> CounterMap {
    let mut chunk = CounterMap::new();
    let mut bytes = 0;
    loop {
        let (room, first) = (budget.saturating_sub(bytes), chunk.is_empty());
        let Some(change) = changes.next_if(|change| first || change.size_hint() <= room) else {
            return chunk;
        };
        bytes += change.size_hint();
        chunk.merge_change(&change);
    }
}

/// Splits a delta into maps of at most `budget` estimated bytes each.
/// The changes an event of the change stream has for eager pushes: a
/// local one's linked changes (a local event without them, as simulations
/// publish, goes unlinked: merged wherever it lands).
fn local_changes(event: &ChangeEvent) -> Vec<LinkedChange> {
    if event.from_peer.is_some() {
        return Vec::new();
    }
    if !event.linked.is_empty() {
        return event.linked.clone();
    }
    (event.delta.all_changes())
        .map(|change| LinkedChange {
            prev_seq: 0,
            change,
        })
        .collect()
}

/// Cuts `linked` into runs of at most `budget` bytes (by size hint), in order.
fn split_linked(linked: Vec<LinkedChange>, budget: usize) -> Vec<Vec<LinkedChange>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for change in linked {
        let size = change.change.size_hint() + 10;
        if !chunk.is_empty() && bytes + size > budget {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(change);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// The gossip engine of one node.
pub struct Gossip<N: Network> {
    net: N,
    me: PeerIdentity,
    config: GossipConfig,
    replica: Arc<Replica>,
    members: Mutex<Membership>,
    links: Mutex<HashMap<String, Link>>,
    partitioned: RwLock<HashSet<String>>,
    seeds: Vec<String>,
    /// Seeds from `--seed-dns`, replaced at each resolution.
    dns_seeds: RwLock<Vec<String>>,
    sink: Option<Arc<dyn RemoteSink>>,
    metrics: Arc<Metrics>,
    member_changes: watch::Sender<u64>,
    /// Set once this node may not take part any more (`TransportError::RefusedUs`).
    refused: watch::Sender<Option<String>>,
    /// Picks gossip partners; seedable so simulations are reproducible.
    rng: Mutex<StdRng>,
    /// Pulls sent so far (every `full_sync_every`-th asks for everything).
    pulls: AtomicUsize,
    /// Pulls that may still start this round (`fanout` per round).
    pull_budget: AtomicUsize,
    /// One permit per open inbound connection.
    inbound: Arc<Semaphore>,
    /// One permit per inbound handshake under way.
    handshakes: Arc<Semaphore>,
    /// `Replicate`/`Fetch` requests waiting for answers (`consistency.rs`).
    requests: Requests,
    /// Per member, the highest watermarks its `Pull`s reported (what it
    /// holds everything up to): garbage collection's view of the cluster
    /// ([`crate::garbage`]).
    reports: Mutex<HashMap<String, Report>>,
    /// Per member, when its last answer to one of our pulls completed:
    /// from then on we held everything it held when it answered.
    answered: Mutex<HashMap<String, Instant>>,
}

impl<N: Network> Gossip<N> {
    /// A gossip engine; nothing runs until [`Gossip::start`].
    pub fn new(
        net: N,
        me: PeerIdentity,
        config: GossipConfig,
        replica: Arc<Replica>,
        seeds: Vec<String>,
        sink: Option<Arc<dyn RemoteSink>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let members = Mutex::new(Membership::new(
            me.member.clone(),
            Timing::for_interval(config.interval, config.forget_dead_after),
        ));
        let inbound = Arc::new(Semaphore::new(config.max_inbound.max(1)));
        Arc::new(Self {
            net,
            me,
            config,
            replica,
            members,
            links: Mutex::default(),
            partitioned: RwLock::default(),
            seeds,
            dns_seeds: RwLock::default(),
            sink,
            metrics,
            member_changes: watch::channel(0).0,
            refused: watch::channel(None).0,
            rng: Mutex::new(StdRng::from_entropy()),
            pulls: AtomicUsize::new(0),
            pull_budget: AtomicUsize::new(0),
            inbound,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            requests: Requests::default(),
            reports: Mutex::default(),
            answered: Mutex::default(),
        })
    }

    /// Records the watermarks `peer` reported in a `Pull` at its clock
    /// `clock_ms`. Joined with its earlier reports (what it held then it
    /// still holds): a full pull reports no watermarks, which says nothing.
    fn record_report(&self, peer: &str, known: &Watermarks, clock_ms: u64, forgotten: Vec<String>) {
        if known.is_empty() {
            return;
        }
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let held = reports.entry(peer.to_owned()).or_default();
        held.watermarks.raise_all(known);
        if clock_ms >= held.clock_ms {
            held.clock_ms = clock_ms;
            held.forgotten = forgotten;
        }
    }

    /// Every member in the table (whatever its status; forgotten ones are
    /// not) with the watermarks it reported, `None` before its first report.
    /// Reports of forgotten members are dropped here.
    pub fn member_reports(&self) -> Vec<(String, Option<Report>)> {
        let ids: Vec<String> = (self.members().peers().into_iter())
            .map(|(record, _)| record.id)
            .collect();
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.retain(|id, _| ids.contains(id));
        ids.into_iter()
            .map(|id| {
                let report = reports.get(&id).cloned();
                (id, report)
            })
            .collect()
    }

    /// Every reachable member (not dead), each with whether one of our
    /// pulls from it completed after `since` ([`Self::refresh_watermarks`]).
    pub fn pulled_since(&self, since: Instant) -> Vec<(String, bool)> {
        let ids: Vec<String> = (self.members().reachable().into_iter())
            .map(|record| record.id)
            .collect();
        let answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        ids.into_iter()
            .map(|id| {
                let done = answered.get(&id).is_some_and(|at| *at >= since);
                (id, done)
            })
            .collect()
    }

    /// Makes partner choice reproducible (deterministic simulation tests).
    pub fn seed_rng(&self, seed: u64) {
        *self.rng() = StdRng::seed_from_u64(seed);
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs the accept loop, the rounds and the eager pusher until the process ends.
    pub fn start(self: &Arc<Self>, listener: N::Listener) {
        let gossip = Arc::clone(self);
        tokio::spawn(async move { gossip.accept_loop(listener).await });
        let gossip = Arc::clone(self);
        tokio::spawn(async move { gossip.round_loop().await });
        let gossip = Arc::clone(self);
        tokio::spawn(async move { gossip.eager_push_loop().await });
    }

    /// The membership table (for the API).
    pub fn members(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bumps whenever membership changes (for the WebSocket stream).
    pub fn member_changes(&self) -> watch::Receiver<u64> {
        self.member_changes.subscribe()
    }

    /// Learns members from outside gossip (discovery, seeds): introductions
    /// of members taken as alive. See [`Membership::merge`] for what each may say.
    pub fn add_members(&self, records: &[MemberRecord], source: Source<'_>) {
        let updates: Vec<MemberUpdate> = (records.iter())
            .map(|record| MemberUpdate {
                record: record.clone(),
                status: crate::membership::Status::Alive,
            })
            .collect();
        self.merge_members(&updates, source, false);
    }

    /// Merges membership news (`bulk`: a whole table, see [`Membership::merge`]).
    fn merge_members(&self, updates: &[MemberUpdate], source: Source<'_>, bulk: bool) {
        if updates.is_empty() {
            return;
        }
        let changed = (self.members()).merge(updates, source, bulk, Instant::now(), unix_now_ms());
        if changed {
            self.member_changes.send_modify(|v| *v += 1);
        }
    }

    /// A peer's handshake: its own word about itself, and proof it is up.
    fn hello(&self, record: &MemberRecord) {
        let changed = self.members().hello(record, Instant::now(), unix_now_ms());
        if changed {
            self.member_changes.send_modify(|v| *v += 1);
        }
    }

    /// Replaces the seeds found by DNS (`--seed-dns`).
    pub fn set_dns_seeds(&self, seeds: Vec<String>) {
        *self.dns_seeds.write().unwrap_or_else(|p| p.into_inner()) = seeds;
    }

    /// Whether any other node is known: a seed, or a member in any state.
    pub fn knows_other_nodes(&self) -> bool {
        !self.all_seeds().is_empty() || !self.members().peers().is_empty()
    }

    /// Every seed address, static and from DNS, but our own.
    fn all_seeds(&self) -> Vec<String> {
        let dns = self.dns_seeds.read().unwrap_or_else(|p| p.into_inner());
        (self.seeds.iter().chain(dns.iter()))
            .filter(|seed| **seed != self.me.member.gossip_addr)
            .cloned()
            .collect()
    }

    /// Drops all gossip to and from these peers (fault injection); empty heals.
    pub fn set_partition(&self, peers: HashSet<String>) {
        tracing::warn!(?peers, "partition set");
        *self.partitioned.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    fn is_partitioned(&self, peer: &str) -> bool {
        self.partitioned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    async fn accept_loop(self: Arc<Self>, listener: N::Listener) {
        loop {
            match N::accept(&listener).await {
                Ok((stream, from)) => {
                    // Over either cap the stream is dropped here: closed at
                    // once, holding nothing.
                    let (Ok(connection_slot), Ok(handshake_slot)) = (
                        Arc::clone(&self.inbound).try_acquire_owned(),
                        Arc::clone(&self.handshakes).try_acquire_owned(),
                    ) else {
                        self.metrics.refused_connections.fetch_add(1, Relaxed);
                        tracing::debug!(%from, "gossip connection refused: over the cap");
                        continue;
                    };
                    let gossip = Arc::clone(&self);
                    tokio::spawn(async move {
                        let _connection_slot = connection_slot;
                        let accepted = transport::accept(stream, &gossip.me).await;
                        drop(handshake_slot);
                        match accepted {
                            Ok((connection, hello)) => {
                                gossip.hello(&hello.member);
                                let none = Awaiting::default();
                                let result = gossip
                                    .drive(connection, &hello.member.id, None, &none, &none)
                                    .await;
                                gossip.log_end(&hello.member.id, result);
                            }
                            Err(error) => gossip.reject(&from.to_string(), &error),
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Resolves once this node has been refused (the copy of a retired
    /// actor, or stale: [`crate::retirement`]), to the reason; the node stops.
    pub async fn refused(&self) -> String {
        let mut refused = self.refused.subscribe();
        loop {
            if let Some(reason) = refused.borrow_and_update().clone() {
                return reason;
            }
            if refused.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The retired set and the actors peers write as.
    pub fn retirement(&self) -> &Arc<crate::retirement::Retirement> {
        &self.me.retirement
    }

    /// The members this node forgot ([`crate::forgotten`]).
    pub fn forgotten(&self) -> &Arc<crate::forgotten::Forgotten> {
        &self.me.forgotten
    }

    fn reject(&self, from: &str, error: &TransportError) {
        if let TransportError::RefusedUs(reason) = error {
            let first = self.refused.send_if_modified(|refused| {
                let first = refused.is_none();
                refused.get_or_insert_with(|| reason.clone());
                first
            });
            if first {
                tracing::error!(%from, "{reason}");
            }
            return;
        }
        // Only what the peer sent counts as a rejection; a handshake that
        // times out or is reset is the network failing, not a bad peer.
        if matches!(
            error,
            TransportError::Malformed(_)
                | TransportError::Unauthenticated(_)
                | TransportError::Incompatible(_)
        ) {
            self.metrics
                .rejected_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%from, %error, "gossip connection rejected");
        } else {
            tracing::debug!(%from, %error, "gossip handshake failed");
        }
    }

    fn log_end(&self, peer: &str, result: Result<(), TransportError>) {
        match result {
            Ok(()) | Err(TransportError::Closed) => {
                tracing::debug!(%peer, "gossip connection closed")
            }
            Err(error @ (TransportError::Malformed(_) | TransportError::Unauthenticated(_))) => {
                self.reject(peer, &error)
            }
            Err(error) => tracing::debug!(%peer, %error, "gossip connection ended"),
        }
    }

    /// Serves one connection: handles what arrives, sends replies and (on
    /// outbound links) queued messages, until either side fails.
    async fn drive(
        self: &Arc<Self>,
        connection: Connection<N::Stream>,
        peer: &str,
        mut outbox: Option<Outbox<'_>>,
        awaiting_reply: &Awaiting,
        awaiting_ping: &Awaiting,
    ) -> Result<(), TransportError> {
        let Connection {
            mut reader,
            mut writer,
        } = connection;
        let (reply_tx, mut reply_rx) = mpsc::channel::<Message>(REPLY_QUEUE);
        let outbound = outbox.is_some();
        let awaiting = || lock_awaiting(awaiting_reply);
        let reading = async {
            loop {
                reader.set_idle_timeout(self.idle_timeout());
                let (message, size) = reader.recv().await?;
                if self.is_partitioned(peer) {
                    self.metrics
                        .dropped_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                {
                    let mut awaiting = awaiting();
                    *awaiting = match message {
                        Message::Ack | Message::Push { done: Some(_), .. } => None,
                        Message::Push { .. } => awaiting.map(|_| Instant::now()),
                        _ => *awaiting,
                    };
                }
                if let Message::PingAck { .. } = message {
                    *lock_awaiting(awaiting_ping) = None;
                }
                self.metrics.gossip_in.record(message.kind(), size);
                match message {
                    Message::Pull {
                        digest,
                        known,
                        clock_ms,
                        forgotten,
                        refused,
                    } => {
                        self.me
                            .forgotten
                            .learn(refused.iter().map(|f| (f.id.clone(), f.at_ms)));
                        self.record_report(peer, &known, clock_ms, forgotten);
                        let mut answer = self.answer_pull(digest, known);
                        while let Some(reply) = answer.next_message(&self.replica) {
                            if reply_tx.send(reply).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Message::Ping {
                        probe,
                        digest,
                        members,
                        updates,
                    } => {
                        self.merge_members(&updates, Source::Peer(peer), false);
                        for reply in self.answer_ping(peer, probe, members) {
                            if reply_tx.send(reply).await.is_err() {
                                return Ok(());
                            }
                        }
                        if digest != self.replica.read().map.digest() {
                            self.pull_from(peer);
                        }
                    }
                    Message::Replicate { id, changes } => {
                        if let Some(stored) = self.store_synced(peer, changes).await {
                            let reply_tx = reply_tx.clone();
                            // Awaited apart, so the fsync does not hold up this reader.
                            tokio::spawn(async move {
                                if stored.wait().await {
                                    let _ = reply_tx.send(Message::Stored { id }).await;
                                }
                            });
                        }
                    }
                    Message::Fetch { id, names } => {
                        let state = consistency::counters_named(
                            &self.replica.read().map,
                            names
                                .iter()
                                .take(consistency::MAX_FETCH_NAMES)
                                .map(String::as_str),
                        );
                        if reply_tx.send(Message::Fetched { id, state }).await.is_err() {
                            return Ok(());
                        }
                    }
                    message => self.handle(peer, message).await,
                }
            }
        };
        let writing = async {
            loop {
                // `biased`: answers first, and a fixed polling order keeps
                // simulations reproducible (tokio picks at random otherwise).
                let message = tokio::select! {
                    biased;
                    Some(reply) = reply_rx.recv() => Outgoing::encode(&reply),
                    queued = next_queued(&mut outbox) => match queued {
                        Some(message) => message,
                        None => return Ok(()),
                    },
                };
                if self.is_partitioned(peer) {
                    continue;
                }
                match writer.send_encoded(&message.body).await {
                    Ok(size) => self.metrics.gossip_out.record(message.kind, size),
                    // Our own bug, not the peer's: drop the message, keep the link.
                    Err(TransportError::TooLarge(size)) => {
                        tracing::warn!(%peer, size, kind = message.kind, "message over the frame limit dropped");
                        self.metrics
                            .dropped_messages
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        // A connection can stay open while nothing gets through (frames lost
        // in a partition, a peer that vanished without closing): writes
        // succeed, and the idle timeout takes far longer than a round. An
        // unanswered pull is the sign; dropping the link makes it redial.
        let watchdog = async {
            if !outbound {
                return std::future::pending().await;
            }
            let timeout = (self.config.interval * REPLY_TIMEOUT_ROUNDS).max(MIN_REPLY_TIMEOUT);
            loop {
                tokio::time::sleep(timeout / 4).await;
                let waited = awaiting().map(|since| since.elapsed());
                if waited.is_some_and(|waited| waited >= timeout) {
                    return Err(TransportError::Timeout("pull reply"));
                }
                let waited = lock_awaiting(awaiting_ping).map(|since| since.elapsed());
                if waited.is_some_and(|waited| waited >= timeout) {
                    return Err(TransportError::Timeout("ping reply"));
                }
            }
        };
        tokio::select! {
            biased;
            result = reading => result,
            result = writing => result,
            result = watchdog => result,
        }
    }

    /// How long a connection may stay silent before it is given up: the
    /// transport's idle timeout, or [`IDLE_ROUNDS_PER_MEMBER`] rounds per
    /// member when that is longer (see there).
    fn idle_timeout(&self) -> Duration {
        let members = self.members().known() as u32 + 1;
        let probe_cycles = self.config.interval * IDLE_ROUNDS_PER_MEMBER * members;
        self.me.idle_timeout.max(probe_cycles)
    }

    /// Handles one message from `peer` that needs no answer (pulls and
    /// pings are answered in `drive`).
    pub async fn handle(self: &Arc<Self>, peer: &str, message: Message) {
        match message {
            // Answered in `drive`.
            Message::Pull { .. }
            | Message::Ping { .. }
            | Message::Ack
            | Message::Replicate { .. }
            | Message::Fetch { .. } => {}
            Message::Stored { id } => self.requests.stored(peer, id),
            Message::Fetched { id, state } => self.requests.fetched(peer, id, state),
            Message::PingAck {
                probe,
                digest,
                members,
                updates,
            } => {
                self.merge_members(&updates, Source::Peer(peer), false);
                self.members().acked(peer, probe);
                if digest != self.replica.read().map.digest() {
                    self.pull_from(peer);
                }
                // The responder sent its table first if ours differed; if
                // they still differ, it lacks something we hold.
                let table = {
                    let ours = self.members();
                    (ours.digest() != members).then(|| table_messages(&ours))
                };
                if let (Some(table), Some(addr)) = (table, self.addr_of(peer)) {
                    (table.iter()).for_each(|m| self.send(&addr, Outgoing::encode(m)));
                }
            }
            Message::Members { records } => self.merge_members(&records, Source::Peer(peer), true),
            Message::News { updates } => self.merge_members(&updates, Source::Peer(peer), false),
            Message::Push { changes, done } => self.absorb(peer, &changes, done).await,
            Message::Delta { changes } => self.absorb_linked(peer, changes).await,
        }
    }

    /// The answer to a ping from `peer`: our whole member table first when
    /// its digest differs from ours, then the `PingAck`.
    fn answer_ping(&self, peer: &str, probe: u64, their_members: u64) -> Vec<Message> {
        let digest = self.replica.read().map.digest();
        let mut members = self.members();
        let mut replies: Vec<Message> = Vec::new();
        let ours = members.digest();
        if ours != their_members {
            replies.extend(table_messages(&members));
        }
        replies.push(Message::PingAck {
            probe,
            digest,
            members: ours,
            updates: members.piggyback(peer),
        });
        replies
    }

    /// The gossip address of member `id`.
    fn addr_of(&self, id: &str) -> Option<String> {
        self.members().get(id).map(|r| r.gossip_addr.clone())
    }

    /// Starts a pull from member `id` (a probe showed our states differ),
    /// unless this round's `fanout` pulls are spent.
    fn pull_from(self: &Arc<Self>, id: &str) {
        let spend = |left: usize| left.checked_sub(1);
        if self
            .pull_budget
            .fetch_update(Relaxed, Relaxed, spend)
            .is_err()
        {
            return;
        }
        if let Some(addr) = self.addr_of(id) {
            let every = self.config.full_sync_every.max(1) as usize;
            let full = (self.pulls.fetch_add(1, Relaxed) + 1) % every == 0;
            self.send_pull(&addr, full);
        }
    }

    async fn absorb(&self, peer: &str, changes: &CounterMap, done: Option<Watermarks>) {
        if done.is_some() {
            (self.answered.lock().unwrap_or_else(|p| p.into_inner()))
                .insert(peer.to_owned(), Instant::now());
        }
        let news = self.replica.merge_remote(changes, done.as_ref());
        if news.is_empty() && done.is_none() {
            return;
        }
        self.me.retirement.learn_from_news(&news);
        if !news.is_empty() {
            self.metrics
                .merges
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.replica.publish(news.clone(), Some(peer.to_owned()));
        }
        if let Some(sink) = &self.sink {
            sink.persist(news, done).await;
        }
    }

    /// A peer's eager changes: merged in order, each on top of the entry it
    /// follows; a change whose predecessor is missing here is skipped, and a
    /// pull from the peer brings it with everything after it.
    async fn absorb_linked(self: &Arc<Self>, peer: &str, changes: Vec<LinkedChange>) {
        let (news, skipped) = self.replica.merge_linked(changes);
        if skipped {
            if let Some(addr) = self.addr_of(peer) {
                self.send_pull(&addr, false);
            }
        }
        if news.is_empty() {
            return;
        }
        self.me.retirement.learn_from_news(&news);
        self.metrics.merges.fetch_add(1, Relaxed);
        self.replica.publish(news.clone(), Some(peer.to_owned()));
        if let Some(sink) = &self.sink {
            sink.persist(news, None).await;
        }
    }

    /// A peer's `Replicate`: merges `changes` and hands all of them to the
    /// sink to sync; resolves once handed over, to what says whether the
    /// fsync succeeded (`None`: no sink, and nothing to answer).
    async fn store_synced(&self, peer: &str, changes: CounterMap) -> Option<Synced> {
        let news = self.replica.merge_remote(&changes, None);
        self.me.retirement.learn_from_news(&news);
        if !news.is_empty() {
            self.metrics.merges.fetch_add(1, Relaxed);
            self.replica.publish(news, Some(peer.to_owned()));
        }
        // All of `changes`, not only the news: what was news to an earlier
        // message may not be synced yet, and replaying a merge is harmless.
        Some(self.sink.as_ref()?.persist_synced(changes).await)
    }

    /// `Ack` when digests agree; otherwise what the puller lacks, in chunks
    /// that each fit a frame, the last one carrying our watermarks.
    pub fn answer_pull(&self, digest: u64, known: Watermarks) -> PullAnswer {
        let state = self.replica.read();
        let agreed = state.map.digest() == digest;
        let watermarks = state.watermarks.clone();
        drop(state);
        PullAnswer {
            cursor: known,
            watermarks: (!agreed).then_some(watermarks),
            budget: self.me.max_frame / 2,
            ack: agreed,
        }
    }

    fn pull(&self, full: bool) -> Message {
        let state = self.replica.read();
        let known = if full {
            Watermarks::new()
        } else {
            state.watermarks.clone()
        };
        Message::Pull {
            digest: state.map.digest(),
            known,
            clock_ms: tally_protocol::clock::now_ms(),
            forgotten: self.members().forgotten_ids(),
            refused: self.me.forgotten.listed(),
        }
    }

    async fn round_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.members().tick(Instant::now()) {
                self.member_changes.send_modify(|v| *v += 1);
            }
            self.reap_links();
            self.pull_budget.store(self.config.fanout.max(1), Relaxed);
            // A probe unanswered once goes again over a fresh connection:
            // the old one may be stalled (after a partition, TCP can take
            // seconds to retransmit) while the member is up.
            let retries = self.members().take_retries();
            for (record, _) in &retries {
                self.drop_link(&record.gossip_addr);
            }
            for (addr, message) in self.round_pings(retries) {
                match message {
                    Message::Ping { .. } => self.send_ping(&addr, message),
                    news => self.send(&addr, Outgoing::encode(&news)),
                }
            }
        }
    }

    /// This round's pings: the `retries`, to the members
    /// `Membership::probe_targets` picks, or to a seed while we know no
    /// member that is not dead.
    fn round_pings(&self, retries: Vec<(MemberRecord, u64)>) -> Vec<(String, Message)> {
        let digest = self.replica.read().map.digest();
        let mut rng = self.rng();
        let mut members = self.members();
        let mut targets: Vec<(String, String, u64)> = (retries.into_iter())
            .chain(members.probe_targets(Instant::now(), &mut *rng))
            .map(|(record, probe)| (record.id, record.gossip_addr, probe))
            .collect();
        if members.reachable().is_empty() {
            if let Some(seed) = self.all_seeds().choose(&mut *rng) {
                targets.push((String::new(), seed.clone(), 0));
            }
        }
        let member_digest = members.digest();
        let mut messages: Vec<(String, Message)> = (targets.into_iter())
            .map(|(id, addr, probe)| {
                let ping = Message::Ping {
                    probe,
                    digest,
                    members: member_digest,
                    updates: members.piggyback(&id),
                };
                (addr, ping)
            })
            .collect();
        for target in members.news_targets(self.config.fanout, &mut *rng) {
            let updates = members.piggyback(&target.id);
            if !updates.is_empty() {
                messages.push((target.gossip_addr, Message::News { updates }));
            }
        }
        messages
    }

    /// Closes links to addresses no member (and no seed) has any more: a
    /// member that left for good, or moved, costs nothing after a round.
    fn reap_links(&self) {
        let wanted: HashSet<String> = {
            let members = self.members();
            (members.peers().into_iter())
                .map(|(record, _)| record.gossip_addr)
                .chain(self.all_seeds())
                .collect()
        };
        // Dropping a link closes its queue; its task ends with the connection.
        (self.links.lock().unwrap_or_else(|p| p.into_inner()))
            .retain(|addr, _| wanted.contains(addr));
    }

    /// Closes the link to `addr` (its task ends with its queue); the next
    /// message to `addr` dials afresh.
    fn drop_link(&self, addr: &str) {
        (self.links.lock().unwrap_or_else(|p| p.into_inner())).remove(addr);
    }

    /// Open outbound links (for tests and metrics).
    pub fn link_count(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends every durable local change, at once, to every member not dead
    /// (see the module docs). News merged from peers is not forwarded: its
    /// origin sent it to everyone, and anti-entropy covers what was lost.
    async fn eager_push_loop(self: Arc<Self>) {
        let mut changes = self.replica.subscribe();
        loop {
            let event = match changes.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Everything waiting goes as one delta (the writer's group
            // commit already batches; this batches what piled up since).
            let mut linked = local_changes(&event);
            while let Ok(more) = changes.try_recv() {
                linked.extend(local_changes(&more));
            }
            if linked.is_empty() || linked.len() > MAX_EAGER_ENTRIES {
                continue;
            }
            let targets = self.members().reachable();
            let messages: Vec<Outgoing> = split_linked(linked, self.me.max_frame / 2)
                .into_iter()
                .map(|changes| Outgoing::encode(&Message::Delta { changes }))
                .collect();
            for member in targets.iter().filter(|m| !self.is_partitioned(&m.id)) {
                for message in &messages {
                    self.send(&member.gossip_addr, message.clone());
                }
            }
        }
    }

    /// Queues a ping for the peer at `addr`; the link notes when the oldest
    /// unanswered ping left, so a link that answers none is redialled. A
    /// link waiting out a redial backoff dials at once: a probe that sat in
    /// the queue through the backoff (up to 5 s, after a partition) would
    /// time out and suspect a member that is up.
    fn send_ping(self: &Arc<Self>, addr: &str, ping: Message) {
        self.with_link(addr, |link| {
            let queued = link.offer(Outgoing::encode(&ping));
            if queued {
                lock_awaiting(&link.ping_awaiting).get_or_insert_with(Instant::now);
                link.redial_now.notify_one();
            }
            queued
        });
    }

    /// Queues `message` for the peer at `addr`, opening its link if needed.
    fn send(self: &Arc<Self>, addr: &str, message: Outgoing) {
        self.with_link(addr, |link| link.offer(message));
    }

    /// Queues a pull for the peer at `addr`, unless the answer to the last
    /// one is still coming: a peer far behind must not be sent the same
    /// large answer several times over.
    fn send_pull(self: &Arc<Self>, addr: &str, full: bool) {
        self.with_link(addr, |link| {
            let mut awaiting = lock_awaiting(&link.awaiting);
            if awaiting.is_some() {
                return true;
            }
            let queued = link.offer(Outgoing::encode(&self.pull(full)));
            if queued {
                *awaiting = Some(Instant::now());
            }
            queued
        });
    }

    /// Pulls from every reachable member, asking for an answer even when
    /// states agree (a digest that cannot match ours): the answer's last
    /// chunk carries the member's watermarks, which advance ours (eager
    /// deltas never do), and the pull reports ours to it. Garbage
    /// collection needs both ([`crate::garbage`]). Costs what changed
    /// since the last completed pull from each member.
    pub fn refresh_watermarks(self: &Arc<Self>) {
        let addrs: Vec<String> = (self.members().reachable().into_iter())
            .map(|record| record.gossip_addr)
            .collect();
        for addr in addrs {
            self.with_link(&addr, |link| {
                let mut awaiting = lock_awaiting(&link.awaiting);
                if awaiting.is_some() {
                    return true;
                }
                let pull = match self.pull(false) {
                    Message::Pull {
                        digest,
                        known,
                        clock_ms,
                        forgotten,
                        refused,
                    } => Message::Pull {
                        digest: !digest,
                        known,
                        clock_ms,
                        forgotten,
                        refused,
                    },
                    other => other,
                };
                let queued = link.offer(Outgoing::encode(&pull));
                if queued {
                    *awaiting = Some(Instant::now());
                }
                queued
            });
        }
    }

    /// Runs `enqueue` on the link to `addr` (opening it first if needed);
    /// counts a drop when it returns false.
    fn with_link(self: &Arc<Self>, addr: &str, enqueue: impl FnOnce(&Link) -> bool) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.entry(addr.to_owned()).or_insert_with(|| {
            let (queue, rx) = mpsc::channel(LINK_QUEUE);
            let link = Link {
                queue,
                queued_bytes: Arc::new(AtomicUsize::new(0)),
                awaiting: Awaiting::default(),
                ping_awaiting: Awaiting::default(),
                redial_now: Arc::default(),
            };
            let gossip = Arc::clone(self);
            let waits = LinkWaits {
                queued_bytes: Arc::clone(&link.queued_bytes),
                awaiting: Arc::clone(&link.awaiting),
                ping_awaiting: Arc::clone(&link.ping_awaiting),
                redial_now: Arc::clone(&link.redial_now),
            };
            let addr = addr.to_owned();
            tokio::spawn(async move { gossip.run_link(addr, rx, waits).await });
            link
        });
        if !enqueue(link) {
            self.metrics
                .dropped_messages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Keeps one outbound connection to `addr` up while there is anything to send.
    async fn run_link(
        self: Arc<Self>,
        addr: String,
        mut queue: mpsc::Receiver<Outgoing>,
        waits: LinkWaits,
    ) {
        let LinkWaits {
            queued_bytes,
            awaiting,
            ping_awaiting,
            redial_now,
        } = waits;
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = match self.net.connect(&addr).await {
                Ok(stream) => transport::dial(stream, &self.me).await,
                Err(error) => Err(error.into()),
            };
            match result {
                Ok((connection, hello)) => {
                    backoff = Duration::from_millis(50);
                    // What was queued while the link was down waits from
                    // now on: the watchdog must not take the time it spent
                    // queued for a silent peer.
                    for waits in [&awaiting, &ping_awaiting] {
                        if let Some(since) = lock_awaiting(waits).as_mut() {
                            *since = Instant::now();
                        }
                    }
                    self.hello(&hello.member);
                    let outbox = Outbox {
                        queue: &mut queue,
                        queued_bytes: &queued_bytes,
                    };
                    let result = self
                        .drive(
                            connection,
                            &hello.member.id,
                            Some(outbox),
                            &awaiting,
                            &ping_awaiting,
                        )
                        .await;
                    // Whatever was pending died with the connection.
                    *lock_awaiting(&awaiting) = None;
                    *lock_awaiting(&ping_awaiting) = None;
                    self.log_end(&hello.member.id, result);
                }
                Err(error) => {
                    tracing::debug!(%addr, %error, "dial failed");
                    // `reject` counts only what the peer sent wrong.
                    self.reject(&addr, &error);
                    // Messages queued for a peer we cannot reach are stale by
                    // the time it is back; anti-entropy resends what matters.
                    while let Ok(stale) = queue.try_recv() {
                        queued_bytes.fetch_sub(stale.body.len(), Relaxed);
                    }
                    *lock_awaiting(&awaiting) = None;
                    *lock_awaiting(&ping_awaiting) = None;
                    tokio::select! {
                        biased;
                        () = redial_now.notified() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if queue.is_closed() {
                return;
            }
        }
    }
}

/// The next queued message of an outbound link (never, on an inbound one).
async fn next_queued(outbox: &mut Option<Outbox<'_>>) -> Option<Outgoing> {
    match outbox {
        Some(outbox) => {
            let message = outbox.queue.recv().await?;
            outbox.queued_bytes.fetch_sub(message.body.len(), Relaxed);
            Some(message)
        }
        None => std::future::pending().await,
    }
}

/// The quorum logic's view of this node (see `consistency.rs`).
impl<N: Network> Replicas for Arc<Gossip<N>> {
    fn cluster_size(&self) -> usize {
        self.members().peers().len() + 1
    }

    fn send_to_members(&self, message: &Message) -> usize {
        let addrs: Vec<String> = (self.members().peers().into_iter())
            .filter(|(record, _)| !self.is_partitioned(&record.id))
            .map(|(record, _)| record.gossip_addr)
            .collect();
        let message = Outgoing::encode(message);
        for addr in &addrs {
            self.send(addr, message.clone());
        }
        addrs.len()
    }

    fn requests(&self) -> &Requests {
        &self.requests
    }

    fn merge_from(&self, peer: &str, state: CounterMap) -> BoxFuture<'_, ()> {
        let peer = peer.to_owned();
        Box::pin(async move { self.absorb(&peer, &state, None).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (Link, mpsc::Receiver<Outgoing>) {
        let (queue, rx) = mpsc::channel(LINK_QUEUE);
        let link = Link {
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            awaiting: Awaiting::default(),
            ping_awaiting: Awaiting::default(),
            redial_now: Arc::default(),
        };
        (link, rx)
    }

    fn message_of(bytes: usize) -> Outgoing {
        Outgoing {
            kind: "delta",
            body: bytes::Bytes::from(vec![0; bytes]),
        }
    }

    #[test]
    fn a_link_queues_no_more_than_its_byte_budget() {
        let (link, _rx) = link();
        let half = LINK_QUEUE_BYTES / 2;
        assert!(link.offer(message_of(half)));
        assert!(link.offer(message_of(half)));
        assert!(
            !link.offer(message_of(1)),
            "a byte over the budget was queued"
        );
        assert_eq!(link.queued_bytes.load(Relaxed), LINK_QUEUE_BYTES);
    }

    #[tokio::test]
    async fn draining_a_link_frees_its_budget() {
        let (link, mut rx) = link();
        assert!(link.offer(message_of(LINK_QUEUE_BYTES)));
        let mut outbox = Some(Outbox {
            queue: &mut rx,
            queued_bytes: &link.queued_bytes,
        });
        let drained = next_queued(&mut outbox).await.expect("a queued message");
        assert_eq!(drained.body.len(), LINK_QUEUE_BYTES);
        assert_eq!(link.queued_bytes.load(Relaxed), 0);
        assert!(link.offer(message_of(1)));
    }
}
