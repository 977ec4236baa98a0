//! Anti-entropy and eager push over persistent peer connections.
//!
//! - **Rounds**: every `interval`, raise our heartbeat, re-check members,
//!   and send a `Pull` to `fanout` random live peers — never a second one
//!   to a peer whose answer is still coming (every `full_sync_every` rounds
//!   one of them gets a `Pull` with no watermarks, a full-state backstop; it
//!   still costs nothing when digests agree).
//! - **Answers** are built chunk by chunk as the connection drains them,
//!   each chunk under the frame budget and under the read lock only while it
//!   is collected, so a peer far behind costs bounded memory and never
//!   stalls writers.
//! - **Eager push**: every change to the replica (a durable local write, or
//!   news from a peer) goes out at once as a `Delta` to `fanout` peers
//!   other than the one it came from; since only news is forwarded, the
//!   spread stops by itself once everyone has it.
//! - **Links**: one outbound connection per peer address, opened on first
//!   use and kept; a task per link redials with exponential backoff.
//!   Outbound queues are bounded and drop when full: anti-entropy repairs
//!   anything a dropped message would have carried.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use std::iter::Peekable;

use crdt_core::{ActorId, Change, CounterMap, CounterName, Watermarks};
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tally_protocol::request_auth::unix_now_ms;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::membership::{Membership, Source};
use crate::metrics::Metrics;
use crate::protocol::{MemberRecord, Message};
use crate::replica::Replica;
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
/// Encoded bytes of one entry beyond its name and actor id: two u128 and
/// one u64 varint (at most 19 + 19 + 10) and the sequence lengths; typical
/// entries take ~20.
const ENTRY_OVERHEAD: usize = 56;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An outbound link whose pull goes unanswered for this many rounds (but
/// at least [`MIN_REPLY_TIMEOUT`]) is presumed broken and redialled.
const REPLY_TIMEOUT_ROUNDS: u32 = 10;
const MIN_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Tuning of the gossip layer.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Time between anti-entropy rounds.
    pub interval: Duration,
    /// Peers contacted per round and per eager push.
    pub fanout: usize,
    /// Every this many rounds, one pull asks for the full state.
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
    awaiting: Awaiting,
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
    members: Vec<MemberRecord>,
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
            return Some(Message::Ack {
                members: std::mem::take(&mut self.members),
            });
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
                members: std::mem::take(&mut self.members),
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
            members: vec![],
        })
    }
}

fn entry_size(name: &CounterName, actor: &ActorId) -> usize {
    name.as_str().len() + actor.as_str().len() + ENTRY_OVERHEAD
}

/// Takes changes into one map of at most `budget` estimated bytes (at
/// least one entry); what does not fit stays in the iterator.
fn take_chunk<I: Iterator<Item = Change>>(changes: &mut Peekable<I>, budget: usize) -> CounterMap {
    let mut chunk = CounterMap::new();
    let mut bytes = 0;
    loop {
        let (room, first) = (budget.saturating_sub(bytes), chunk.is_empty());
        let Some((name, actor, entry)) =
            changes.next_if(|(name, actor, _)| first || entry_size(name, actor) <= room)
        else {
            return chunk;
        };
        bytes += entry_size(&name, &actor);
        chunk.merge_entry(&name, &actor, entry);
    }
}

/// Splits a delta into maps of at most `budget` estimated bytes each.
fn split(delta: &CounterMap, budget: usize) -> Vec<CounterMap> {
    let mut chunks = Vec::new();
    let mut changes = delta.all_changes().peekable();
    while changes.peek().is_some() {
        chunks.push(take_chunk(&mut changes, budget));
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
    /// Picks gossip partners; seedable so simulations are reproducible.
    rng: Mutex<StdRng>,
    /// One permit per open inbound connection.
    inbound: Arc<Semaphore>,
    /// One permit per inbound handshake under way.
    handshakes: Arc<Semaphore>,
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
            config.interval,
            config.forget_dead_after,
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
            rng: Mutex::new(StdRng::from_entropy()),
            inbound,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        })
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

    /// Learns members: from a peer's authenticated session, or from outside
    /// gossip (discovery, seeds). See [`Membership::merge`] for what each may say.
    pub fn add_members(&self, records: &[MemberRecord], source: Source<'_>) {
        let changed = self
            .members()
            .merge(records, source, Instant::now(), unix_now_ms());
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
                                gossip.add_members(
                                    std::slice::from_ref(&hello.member),
                                    Source::Peer(&hello.member.id),
                                );
                                let result = gossip
                                    .drive(connection, &hello.member.id, None, &Awaiting::default())
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

    fn reject(&self, from: &str, error: &TransportError) {
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
        &self,
        connection: Connection<N::Stream>,
        peer: &str,
        mut outbox: Option<Outbox<'_>>,
        awaiting_reply: &Awaiting,
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
                        Message::Ack { .. } | Message::Push { done: Some(_), .. } => None,
                        _ => awaiting.map(|_| Instant::now()),
                    };
                }
                self.metrics.gossip_in.record(message.kind(), size);
                if let Message::Pull {
                    digest,
                    known,
                    members,
                } = message
                {
                    self.add_members(&members, Source::Peer(peer));
                    let mut answer = self.answer_pull(digest, known);
                    while let Some(reply) = answer.next_message(&self.replica) {
                        if reply_tx.send(reply).await.is_err() {
                            return Ok(());
                        }
                    }
                } else {
                    self.handle(peer, message).await;
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
            }
        };
        tokio::select! {
            biased;
            result = reading => result,
            result = writing => result,
            result = watchdog => result,
        }
    }

    /// Handles one message from `peer` that needs no answer (pulls are
    /// answered by [`Gossip::answer_pull`], chunk by chunk).
    pub async fn handle(&self, peer: &str, message: Message) {
        match message {
            Message::Pull { members, .. } | Message::Ack { members } => {
                self.add_members(&members, Source::Peer(peer))
            }
            Message::Push {
                changes,
                done,
                members,
            } => {
                self.add_members(&members, Source::Peer(peer));
                self.absorb(peer, &changes, done).await;
            }
            Message::Delta { changes } => self.absorb(peer, &changes, None).await,
        }
    }

    async fn absorb(&self, peer: &str, changes: &CounterMap, done: Option<Watermarks>) {
        let news = self.replica.merge_remote(changes, done.as_ref());
        if news.is_empty() && done.is_none() {
            return;
        }
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

    /// `Ack` when digests agree; otherwise what the puller lacks, in chunks
    /// that each fit a frame, the last one carrying our watermarks.
    pub fn answer_pull(&self, digest: u64, known: Watermarks) -> PullAnswer {
        let members = self.members().records();
        let state = self.replica.read();
        let agreed = state.map.digest() == digest;
        let watermarks = state.watermarks.clone();
        drop(state);
        PullAnswer {
            cursor: known,
            watermarks: (!agreed).then_some(watermarks),
            members,
            budget: self.me.max_frame / 2,
            ack: agreed,
        }
    }

    fn pull(&self, full: bool) -> Message {
        let members = self.members().records();
        let state = self.replica.read();
        let known = if full {
            Watermarks::new()
        } else {
            state.watermarks.clone()
        };
        Message::Pull {
            digest: state.map.digest(),
            known,
            members,
        }
    }

    async fn round_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        loop {
            ticker.tick().await;
            round += 1;
            if self.members().tick(Instant::now()) {
                self.member_changes.send_modify(|v| *v += 1);
            }
            self.reap_links();
            let targets = self.round_targets();
            let full_sync_target = (round % self.config.full_sync_every.max(1) == 0).then_some(0);
            for (index, addr) in targets.iter().enumerate() {
                self.send_pull(addr, full_sync_target == Some(index));
            }
        }
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

    /// Open outbound links (for tests and metrics).
    pub fn link_count(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Gossip partners for a round; seeds while we know no live member.
    fn round_targets(&self) -> Vec<String> {
        let mut rng = self.rng();
        let members = self.members();
        let mut targets: Vec<String> = members
            .gossip_targets(self.config.fanout, &mut *rng)
            .into_iter()
            .filter(|m| !self.is_partitioned(&m.id))
            .map(|m| m.gossip_addr)
            .collect();
        if members.alive() == 0 {
            targets.extend(self.all_seeds().choose(&mut *rng).cloned());
        }
        targets
    }

    async fn eager_push_loop(self: Arc<Self>) {
        let mut changes = self.replica.subscribe();
        loop {
            let event = match changes.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let mut delta = event.delta.clone();
            let mut sources: HashSet<Option<String>> = HashSet::from([event.from_peer.clone()]);
            while let Ok(more) = changes.try_recv() {
                delta.merge(&more.delta);
                sources.insert(more.from_peer.clone());
            }
            if delta.entry_count() > MAX_EAGER_ENTRIES {
                continue;
            }
            let targets = {
                let mut rng = self.rng();
                self.members()
                    .gossip_targets(self.config.fanout + 1, &mut *rng)
            };
            let messages: Vec<Outgoing> = split(&delta, self.me.max_frame / 2)
                .into_iter()
                .map(|changes| Outgoing::encode(&Message::Delta { changes }))
                .collect();
            targets
                .into_iter()
                .filter(|m| !sources.contains(&Some(m.id.clone())) && !self.is_partitioned(&m.id))
                .take(self.config.fanout)
                .for_each(|m| {
                    messages
                        .iter()
                        .for_each(|message| self.send(&m.gossip_addr, message.clone()))
                });
        }
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

    /// Runs `enqueue` on the link to `addr` (opening it first if needed);
    /// counts a drop when it returns false.
    fn with_link(self: &Arc<Self>, addr: &str, enqueue: impl FnOnce(&Link) -> bool) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.entry(addr.to_owned()).or_insert_with(|| {
            let (queue, rx) = mpsc::channel(LINK_QUEUE);
            let awaiting = Awaiting::default();
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            let gossip = Arc::clone(self);
            let (addr, link_awaiting, link_bytes) = (
                addr.to_owned(),
                Arc::clone(&awaiting),
                Arc::clone(&queued_bytes),
            );
            tokio::spawn(async move { gossip.run_link(addr, rx, link_bytes, link_awaiting).await });
            Link {
                queue,
                queued_bytes,
                awaiting,
            }
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
        queued_bytes: Arc<AtomicUsize>,
        awaiting: Awaiting,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = match self.net.connect(&addr).await {
                Ok(stream) => transport::dial(stream, &self.me).await,
                Err(error) => Err(error.into()),
            };
            match result {
                Ok((connection, hello)) => {
                    backoff = Duration::from_millis(50);
                    self.add_members(
                        std::slice::from_ref(&hello.member),
                        Source::Peer(&hello.member.id),
                    );
                    let outbox = Outbox {
                        queue: &mut queue,
                        queued_bytes: &queued_bytes,
                    };
                    let result = self
                        .drive(connection, &hello.member.id, Some(outbox), &awaiting)
                        .await;
                    // Whatever was pending died with the connection.
                    *lock_awaiting(&awaiting) = None;
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
                    tokio::time::sleep(backoff).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (Link, mpsc::Receiver<Outgoing>) {
        let (queue, rx) = mpsc::channel(LINK_QUEUE);
        let link = Link {
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            awaiting: Awaiting::default(),
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
