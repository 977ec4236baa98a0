//! Anti-entropy and eager push over persistent peer connections.
//!
//! - **Rounds**: every `interval`, raise our heartbeat, re-check members,
//!   and send a `Pull` to `fanout` random live peers (every
//!   `full_sync_every` rounds one of them gets a `Pull` with no watermarks,
//!   a full-state backstop; it still costs nothing when digests agree).
//! - **Eager push**: every change to the replica (a durable local write, or
//!   news from a peer) goes out at once as a `Delta` to `fanout` peers
//!   other than the one it came from; since only news is forwarded, the
//!   spread stops by itself once everyone has it.
//! - **Links**: one outbound connection per peer address, opened on first
//!   use and kept; a task per link redials with exponential backoff.
//!   Outbound queues are bounded and drop when full: anti-entropy repairs
//!   anything a dropped message would have carried.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crdt_core::{CounterMap, Summary};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::protocol::{MemberRecord, Message};
use crate::replica::Replica;
use crate::transport::{self, Connection, Network, PeerIdentity, TransportError};

/// Messages queued per outbound link before new ones are dropped.
const LINK_QUEUE: usize = 256;
/// Deltas larger than this are left to anti-entropy rather than pushed eagerly.
const MAX_EAGER_ENTRIES: usize = 4096;
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
}

/// Where news learned from peers goes to be made durable.
pub trait RemoteSink: Send + Sync + 'static {
    /// Persists `news` (and the watermarks of a completed pull).
    fn persist(&self, news: CounterMap, watermarks: Option<Summary>);
}

/// The gossip engine of one node.
pub struct Gossip<N: Network> {
    net: N,
    me: PeerIdentity,
    config: GossipConfig,
    replica: Arc<Replica>,
    members: Mutex<Membership>,
    links: Mutex<HashMap<String, mpsc::Sender<Message>>>,
    partitioned: RwLock<HashSet<String>>,
    seeds: Vec<String>,
    sink: Option<Arc<dyn RemoteSink>>,
    metrics: Arc<Metrics>,
    member_changes: watch::Sender<u64>,
    /// Picks gossip partners; seedable so simulations are reproducible.
    rng: Mutex<StdRng>,
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
        let members = Mutex::new(Membership::new(me.member.clone(), config.interval));
        Arc::new(Self {
            net,
            me,
            config,
            replica,
            members,
            links: Mutex::default(),
            partitioned: RwLock::default(),
            seeds,
            sink,
            metrics,
            member_changes: watch::channel(0).0,
            rng: Mutex::new(StdRng::from_entropy()),
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

    /// Learns members from outside gossip (discovery, seeds with known ids).
    pub fn add_members(&self, records: &[MemberRecord]) {
        let changed = self.members().merge(records, Instant::now());
        if changed {
            self.member_changes.send_modify(|v| *v += 1);
        }
    }

    /// Drops all gossip to and from these peers (fault injection); empty heals.
    pub fn set_partition(&self, peers: HashSet<String>) {
        tracing::warn!(?peers, "partition set");
        *self.partitioned.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Peers currently cut off.
    pub fn partition(&self) -> HashSet<String> {
        self.partitioned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
                    let gossip = Arc::clone(&self);
                    tokio::spawn(async move {
                        match transport::accept(stream, &gossip.me).await {
                            Ok((connection, hello)) => {
                                gossip.add_members(std::slice::from_ref(&hello.member));
                                let result = gossip.drive(connection, &hello.member.id, None).await;
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
        mut outbox: Option<&mut mpsc::Receiver<Message>>,
    ) -> Result<(), TransportError> {
        let Connection {
            mut reader,
            mut writer,
        } = connection;
        let (reply_tx, mut reply_rx) = mpsc::channel::<Message>(LINK_QUEUE);
        let outbound = outbox.is_some();
        // Since when a pull we sent on this link waits for its answer.
        let awaiting_reply: Mutex<Option<Instant>> = Mutex::new(None);
        let awaiting = || awaiting_reply.lock().unwrap_or_else(|p| p.into_inner());
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
                for reply in self.handle(peer, message) {
                    if reply_tx.send(reply).await.is_err() {
                        return Ok(());
                    }
                }
            }
        };
        let writing = async {
            loop {
                // `biased`: answers first, and a fixed polling order keeps
                // simulations reproducible (tokio picks at random otherwise).
                let message = tokio::select! {
                    biased;
                    Some(reply) = reply_rx.recv() => reply,
                    queued = next_queued(&mut outbox) => match queued {
                        Some(message) => message,
                        None => return Ok(()),
                    },
                };
                if self.is_partitioned(peer) {
                    continue;
                }
                let size = writer.send(&message).await?;
                if matches!(message, Message::Pull { .. }) {
                    awaiting().get_or_insert_with(Instant::now);
                }
                self.metrics.gossip_out.record(message.kind(), size);
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

    /// Handles one message from `peer`; returns the replies.
    pub fn handle(&self, peer: &str, message: Message) -> Vec<Message> {
        match message {
            Message::Pull {
                digest,
                known,
                members,
            } => {
                self.add_members(&members);
                self.answer_pull(digest, &known)
            }
            Message::Ack { members } => {
                self.add_members(&members);
                vec![]
            }
            Message::Push {
                changes,
                done,
                members,
            } => {
                self.add_members(&members);
                self.absorb(peer, &changes, done);
                vec![]
            }
            Message::Delta { changes } => {
                self.absorb(peer, &changes, None);
                vec![]
            }
        }
    }

    fn absorb(&self, peer: &str, changes: &CounterMap, done: Option<Summary>) {
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
            sink.persist(news, done);
        }
    }

    /// `Ack` when digests agree; otherwise what the puller lacks, in chunks
    /// that each fit a frame, the last one carrying our watermarks.
    fn answer_pull(&self, digest: u64, known: &Summary) -> Vec<Message> {
        let members = self.members().records();
        let state = self.replica.read();
        if state.map.digest() == digest {
            return vec![Message::Ack { members }];
        }
        let budget = self.me.max_frame / 2;
        let mut chunks = Vec::new();
        let mut chunk = CounterMap::new();
        let mut chunk_bytes = 0;
        for (name, actor, entry) in state.map.changes_since(known) {
            // Conservative size estimate: names, actor id, three varints, framing.
            let size = name.as_str().len() + actor.as_str().len() + 40;
            if chunk_bytes + size > budget && !chunk.is_empty() {
                chunks.push(std::mem::take(&mut chunk));
                chunk_bytes = 0;
            }
            chunk.merge_entry(&name, &actor, entry);
            chunk_bytes += size;
        }
        let watermarks = state.watermarks.clone();
        drop(state);
        let mut replies: Vec<Message> = chunks
            .into_iter()
            .map(|changes| Message::Push {
                changes,
                done: None,
                members: vec![],
            })
            .collect();
        replies.push(Message::Push {
            changes: chunk,
            done: Some(watermarks),
            members,
        });
        replies
    }

    fn pull(&self, full: bool) -> Message {
        let members = self.members().records();
        let state = self.replica.read();
        let known = if full {
            Summary::new()
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
            let targets = self.round_targets();
            let full_sync_target = (round % self.config.full_sync_every.max(1) == 0).then_some(0);
            for (index, addr) in targets.iter().enumerate() {
                self.send(addr, self.pull(full_sync_target == Some(index)));
            }
        }
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
            let others: Vec<&String> = self
                .seeds
                .iter()
                .filter(|s| **s != self.me.member.gossip_addr)
                .collect();
            targets.extend(others.choose(&mut *rng).map(|s| (*s).clone()));
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
            let message = Message::Delta { changes: delta };
            targets
                .into_iter()
                .filter(|m| !sources.contains(&Some(m.id.clone())) && !self.is_partitioned(&m.id))
                .take(self.config.fanout)
                .for_each(|m| self.send(&m.gossip_addr, message.clone()));
        }
    }

    /// Queues `message` for the peer at `addr`, opening its link if needed.
    fn send(self: &Arc<Self>, addr: &str, message: Message) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.entry(addr.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let gossip = Arc::clone(self);
            let addr = addr.to_owned();
            tokio::spawn(async move { gossip.run_link(addr, rx).await });
            tx
        });
        if link.try_send(message).is_err() {
            self.metrics
                .dropped_messages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Keeps one outbound connection to `addr` up while there is anything to send.
    async fn run_link(self: Arc<Self>, addr: String, mut outbox: mpsc::Receiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = match self.net.connect(&addr).await {
                Ok(stream) => transport::dial(stream, &self.me).await,
                Err(error) => Err(error.into()),
            };
            match result {
                Ok((connection, hello)) => {
                    backoff = Duration::from_millis(50);
                    self.add_members(std::slice::from_ref(&hello.member));
                    let result = self
                        .drive(connection, &hello.member.id, Some(&mut outbox))
                        .await;
                    self.log_end(&hello.member.id, result);
                }
                Err(error) => {
                    tracing::debug!(%addr, %error, "dial failed");
                    if matches!(
                        error,
                        TransportError::Unauthenticated(_) | TransportError::Incompatible(_)
                    ) {
                        self.reject(&addr, &error);
                    }
                    // Messages queued for a peer we cannot reach are stale by
                    // the time it is back; anti-entropy resends what matters.
                    while outbox.try_recv().is_ok() {}
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if outbox.is_closed() {
                return;
            }
        }
    }
}

async fn next_queued(outbox: &mut Option<&mut mpsc::Receiver<Message>>) -> Option<Message> {
    match outbox {
        Some(outbox) => outbox.recv().await,
        None => std::future::pending().await,
    }
}
