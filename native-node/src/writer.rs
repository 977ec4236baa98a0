//! The write path: group commit.
//!
//! One task owns the WAL. It takes every request waiting in its queue as a
//! batch, stamps each local operation with the actor's next seq, appends
//! the resulting entries, fsyncs **once** for the whole batch, and only
//! then applies them to the replica, publishes them (gossip, WebSocket) and
//! answers the callers. So an acknowledged write is always on disk, a
//! write is never gossiped before it is durable (a peer can never hold a
//! seq this node could lose and reuse), and concurrent clients share the
//! cost of one fsync.
//!
//! News from peers is appended too, but not waited for: it is synced by the
//! next batch or within [`FLUSH_DELAY`], whichever comes first. News larger
//! than a WAL record is split into several ([`journal::merge_records`]).
//!
//! A fatal WAL failure (a failed write or fsync: [`WalError::is_fatal`])
//! disables writes for good and [`WriterHandle::refusal`] says why (`/health`
//! answers 503 with it); any other failure fails only the operation that met
//! it. Peers showing this node's actor further along than its own log (a
//! rolled-back data directory) move the node to a new incarnation before it
//! stamps anything else. A [clean shutdown](WriterHandle::shutdown) syncs and
//! records the clean-stop marker that lets the next start keep the actor.
//!
//! Keyed writes ([`crdt_core::keyed`]) are checked against the replica
//! here, where stamping happens: a key already held is answered from its
//! registration (a replay) and applies nothing. A registration of this
//! actor that lost to another of its key is cancelled by the next batch, as
//! soon as the news that shows it (or the write that made it) is in.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crdt_core::{
    ActorId, Change, CounterMap, CounterName, CrdtError, IdempotencyKey, KeyCheck, LinkedChange,
    Op, PnCounter, Registration, RemovalKind, Watermarks,
};
use futures_util::future::BoxFuture;
use tally_protocol::clock::now_ms;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::gossip::{RemoteSink, Synced};
use crate::identity::IdentityFile;
use crate::journal;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::wal::{SnapshotTicket, Wal, WalError, MAX_RECORD_PAYLOAD};

/// Entries of peers' news waiting for the writer before gossip readers wait
/// too (back-pressure): bounds the writer's memory for news, whatever peers send.
const REMOTE_BACKLOG_ENTRIES: usize = 1 << 20;

/// Longest a peer's news waits in memory before it is synced.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// Most requests folded into one fsync.
const MAX_BATCH: usize = 8192;
/// Requests waiting for the writer before callers are pushed back.
const QUEUE: usize = 65_536;
/// After a snapshot could not be started or written, the next attempt waits this long.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operation is invalid (zero amount, overflow).
    #[error(transparent)]
    Invalid(#[from] CrdtError),
    /// The write was not made durable: either writes are disabled (a WAL
    /// failure, see [`WriterHandle::refusal`]) or this batch alone failed.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The idempotency key was used for another write.
    #[error("idempotency key {key:?} was used for another write ({op} on counter {counter:?})")]
    KeyReused {
        /// The key.
        key: String,
        /// The counter it was used on.
        counter: String,
        /// The write it named, e.g. "increment by 5".
        op: String,
    },
    /// The same key twice in one batch: the second waits for no one.
    #[error("idempotency key {0:?} is already being written")]
    KeyInFlight(String),
}

/// A durable local write: the counter's value after the commit that holds
/// it, and the `(actor, seq)` that stamped it (what a reader of a merged
/// view waits for to see this write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The counter's value after the commit (for a keyed write, the value
    /// its first answer gave).
    pub value: i128,
    /// The actor that stamped the write.
    pub actor: ActorId,
    /// Its seq.
    pub seq: u64,
    /// True when a keyed write was applied before (here or on a peer) and
    /// this answer repeats the first one; nothing was applied now.
    pub replayed: bool,
    /// The counter's expiry in force after the commit (ms since the Unix
    /// epoch), if it has one.
    pub expires_at_ms: Option<u64>,
}

/// One local write as the API asks for it.
#[derive(Debug, Clone)]
pub struct LocalWrite {
    /// The counter.
    pub name: CounterName,
    /// The operation.
    pub op: Op,
    /// The client's idempotency key, if it gave one.
    pub key: Option<IdempotencyKey>,
    /// `?ttl=`: the counter expires this long after the write (the same commit).
    pub ttl: Option<Duration>,
}

impl LocalWrite {
    /// A write without a key or a ttl.
    pub fn plain(name: CounterName, op: Op) -> Self {
        LocalWrite {
            name,
            op,
            key: None,
            ttl: None,
        }
    }
}

/// A change of a counter's lifecycle as the API asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleOp {
    /// Delete or reset what this node holds of the counter (observed-remove).
    Remove(RemovalKind),
    /// The counter expires this long from now.
    ExpireIn(Duration),
}

/// A durable lifecycle change: the counter as the commit left it, and the
/// `(actor, seq)` that stamped the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleChanged {
    /// The value after the commit, `None` once deleted.
    pub value: Option<i128>,
    /// The expiry in force after the commit, if any.
    pub expires_at_ms: Option<u64>,
    /// The actor that stamped the change.
    pub actor: ActorId,
    /// Its seq.
    pub seq: u64,
}

/// How an operation is named in errors ("increment by 5").
pub fn describe_op(op: Op) -> String {
    match op {
        Op::Increment(amount) => format!("increment by {amount}"),
        Op::Decrement(amount) => format!("decrement by {amount}"),
    }
}

type Reply = oneshot::Sender<Result<Written, WriteError>>;
/// `None`: the counter does not read as present here (never written,
/// deleted, or expired).
type LifecycleReply = oneshot::Sender<Result<Option<LifecycleChanged>, WriteError>>;
type RetireReply = oneshot::Sender<Result<Retired, WriteError>>;

/// What retiring an actor did on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// Counters whose entry of the actor this node took over.
    pub taken_over: usize,
    /// Counters left for later: the actor owes a key's cancellation there,
    /// or took over another actor whose record is still needed.
    pub left: usize,
}

enum Request {
    Local {
        write: LocalWrite,
        reply: Reply,
    },
    /// Several local writes that must share one commit (`POST /batch`):
    /// one message, so the writer cannot split them between batches.
    Locals(Vec<Request>),
    /// A delete, reset or new expiry of one counter.
    Lifecycle {
        name: CounterName,
        op: LifecycleOp,
        reply: LifecycleReply,
    },
    /// Retire departed actor `from`: take over its entry in every counter
    /// that holds one and is ready ([`crdt_core::PnCounter::takeover_ready`]).
    Retire {
        from: ActorId,
        reply: RetireReply,
    },
    /// Counters the expiry sweep found past their expiry: each still past
    /// it when stamped is deleted.
    Expire {
        names: Vec<CounterName>,
        done: oneshot::Sender<()>,
    },
    Remote {
        news: CounterMap,
        watermarks: Option<Watermarks>,
        /// Holds this news's share of [`REMOTE_BACKLOG_ENTRIES`] until appended.
        _backlog: OwnedSemaphorePermit,
        /// Told whether the fsync that holds this news succeeded (a peer's
        /// `Replicate`, see `consistency.rs`); `None`: synced lazily.
        synced: Option<oneshot::Sender<bool>>,
    },
    /// Sync, finish, record the clean stop, then answer.
    Stop {
        done: oneshot::Sender<()>,
    },
}

/// Tuning of the write path.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Snapshot once the log holds this many bytes since the last one.
    pub snapshot_bytes: u64,
    /// How long a retry stamped after a keyed write still joins it
    /// (`--idempotency-window`), recorded in each registration.
    pub key_window: Duration,
}

/// Why writes are refused right now; shared by the writer and its handles.
#[derive(Debug, Default)]
struct Refusal(Mutex<Option<String>>);

impl Refusal {
    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, reason: Option<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
    }
}

/// Sends writes to the writer task.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<Request>,
    /// Unbounded as a channel; bounded by `remote_backlog`'s permits.
    remote: mpsc::UnboundedSender<Request>,
    remote_backlog: Arc<Semaphore>,
    refusal: Arc<Refusal>,
}

impl WriterHandle {
    /// Applies `op` to counter `name` once it is durable; returns the counter's new value.
    pub async fn write(&self, name: CounterName, op: Op) -> Result<i128, WriteError> {
        Ok(self.submit(LocalWrite::plain(name, op)).await?.value)
    }

    /// Applies one write (keyed or not) once it is durable, or answers a
    /// keyed write already applied from its registration.
    pub async fn submit(&self, write: LocalWrite) -> Result<Written, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Local { write, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Applies every write of `writes` in one commit (one fsync), in order;
    /// returns each one's outcome. An invalid write (overflow) is refused
    /// alone; a storage failure refuses them all.
    pub async fn write_all(&self, writes: Vec<LocalWrite>) -> Vec<Result<Written, WriteError>> {
        let mut answers = Vec::with_capacity(writes.len());
        let mut requests = Vec::with_capacity(writes.len());
        for write in writes {
            let (reply, answer) = oneshot::channel();
            requests.push(Request::Local { write, reply });
            answers.push(answer);
        }
        let sent = self.queue.send(Request::Locals(requests)).await;
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            let outcome = match sent {
                Ok(()) => answer.await.unwrap_or(Err(WriteError::ShuttingDown)),
                Err(_) => Err(WriteError::ShuttingDown),
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Deletes, resets or sets the expiry of counter `name` once the change
    /// is durable; `Ok(None)` when the counter does not read as present
    /// here (never written, deleted, or past its expiry).
    pub async fn change_lifecycle(
        &self,
        name: CounterName,
        op: LifecycleOp,
    ) -> Result<Option<LifecycleChanged>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Lifecycle { name, op, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Retires departed actor `from` into this node's actor once the
    /// takeovers are durable (see [`Retired`]). The caller checks `from` is
    /// departed and that this node holds everything it wrote.
    pub async fn retire(&self, from: ActorId) -> Result<Retired, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Retire { from, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Deletes each of `names` still past its expiry when the writer
    /// stamps it ([`crate::expiry`]); returns once the commit is done.
    pub async fn expire(&self, names: Vec<CounterName>) {
        let (done, finished) = oneshot::channel();
        if self
            .queue
            .send(Request::Expire { names, done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
    }

    /// Why the writer refuses writes now (a WAL failure, an incarnation that
    /// could not be renewed), `None` while it accepts them.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.get()
    }

    /// Stops the writer: commits what is queued, syncs, finishes a running
    /// snapshot and, when the log is healthy, records a clean stop (so the
    /// next start keeps this incarnation). Later writes get
    /// [`WriteError::ShuttingDown`]; later peer news is dropped.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.queue.send(Request::Stop { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

impl WriterHandle {
    /// Queues peer news for the writer, after waiting while it holds too
    /// much unwritten news: the gossip reader stops reading, and TCP slows
    /// the peer.
    async fn queue_remote(
        &self,
        news: CounterMap,
        watermarks: Option<Watermarks>,
        synced: Option<oneshot::Sender<bool>>,
    ) {
        let entries = news.entry_count().clamp(1, REMOTE_BACKLOG_ENTRIES) as u32;
        let Ok(backlog) = Arc::clone(&self.remote_backlog)
            .acquire_many_owned(entries)
            .await
        else {
            return;
        };
        let request = Request::Remote {
            news,
            watermarks,
            _backlog: backlog,
            synced,
        };
        // An error only means the writer has stopped (`synced` is dropped: "no").
        let _ = self.remote.send(request);
    }
}

impl RemoteSink for WriterHandle {
    fn persist(&self, news: CounterMap, watermarks: Option<Watermarks>) -> BoxFuture<'_, ()> {
        Box::pin(self.queue_remote(news, watermarks, None))
    }

    fn persist_synced(&self, changes: CounterMap) -> BoxFuture<'_, Synced> {
        Box::pin(async move {
            let (synced, answer) = Synced::channel();
            self.queue_remote(changes, None, Some(synced)).await;
            answer
        })
    }
}

/// Starts the writer task over an opened `wal`, writing as the actor of
/// `identity` (which must be the replica's).
pub fn start(
    wal: Wal,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    config: WriterConfig,
    identity: IdentityFile,
) -> WriterHandle {
    let (queue, local_rx) = mpsc::channel(QUEUE);
    let (remote, remote_rx) = mpsc::unbounded_channel();
    let refusal = Arc::new(Refusal::default());
    record_wal_stats(&metrics, &wal);
    let own_seq = replica.read().map.last_seq(replica.actor().as_str());
    let writer = Writer {
        wal: Some(wal),
        replica,
        metrics,
        config,
        failed: None,
        renewal_failing: None,
        refusal: Arc::clone(&refusal),
        snapshot: None,
        snapshot_retry_at: None,
        identity,
        own_seq,
        last_stamp_ms: 0,
    };
    tokio::spawn(writer.run(local_rx, remote_rx));
    WriterHandle {
        queue,
        remote,
        remote_backlog: Arc::new(Semaphore::new(REMOTE_BACKLOG_ENTRIES)),
        refusal,
    }
}

struct Writer {
    wal: Option<Wal>,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    config: WriterConfig,
    /// Set by a fatal WAL failure: writes are refused for good.
    failed: Option<String>,
    /// Set while a needed new incarnation could not be written: local writes
    /// are refused until it can.
    renewal_failing: Option<String>,
    /// What handles see of the two above.
    refusal: Arc<Refusal>,
    /// A snapshot being encoded and written off this task, so batches keep
    /// committing meanwhile.
    snapshot: Option<JoinHandle<SnapshotResult>>,
    /// No snapshot is started before this (after one failed).
    snapshot_retry_at: Option<Instant>,
    identity: IdentityFile,
    /// The highest seq this node stamped, durably, as its current actor.
    /// The replica holding a higher one for that actor proves a rollback.
    own_seq: u64,
    /// The latest clock reading a batch stamped: keyed writes are stamped
    /// with a clock that never goes back within a run of the process.
    last_stamp_ms: u64,
}

/// What the snapshot task hands back: the ticket to finish it with.
type SnapshotResult = Result<SnapshotTicket, WalError>;

/// What a committed batch left for the flush deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsynced {
    /// Peer news was appended and waits for a sync.
    Appended,
    /// Everything appended so far is synced (or the log is disabled).
    AllSynced,
    /// Nothing was appended: whatever waited before still waits.
    Unchanged,
}

/// A local change that passed validation and waits for its fsync, and
/// what is due once it is durable.
struct Pending {
    change: Change,
    answer: Answer,
}

/// Who a pending change answers, and how it counts.
enum Answer {
    /// A client's write (its op counts in the metrics).
    Write { op: Op, reply: Reply },
    /// A client's delete, reset or expiry.
    Lifecycle(LifecycleReply),
    /// The deletion of a counter past its expiry (no caller; counted).
    Expiry,
    /// The expiry a write's `?ttl=` set (answered with the write).
    WriteTtl,
    /// A takeover of a retired actor's entry; the last of a request
    /// carries its answer.
    Takeover(Option<(RetireReply, Retired)>),
}

impl Writer {
    async fn run(
        mut self,
        mut local: mpsc::Receiver<Request>,
        mut remote: mpsc::UnboundedReceiver<Request>,
    ) {
        // When the oldest unsynced news from a peer was appended. A deadline,
        // not a sleep restarted on every request: a steady trickle of news
        // would otherwise postpone its sync forever.
        let mut unsynced_since: Option<Instant> = None;
        loop {
            let flush_at = unsynced_since.map(|since| since + FLUSH_DELAY);
            let first = tokio::select! {
                biased;
                // First, or a flood of requests would starve it.
                () = sleep_until(flush_at) => {
                    self.sync_only().await;
                    unsynced_since = None;
                    continue;
                }
                // A finished snapshot removes the segments it covers now,
                // not whenever the next write happens to come.
                written = snapshot_done(&mut self.snapshot) => {
                    self.snapshot = None;
                    self.finish_snapshot(written).await;
                    continue;
                }
                request = local.recv() => match request { Some(r) => r, None => break },
                Some(request) = remote.recv() => request,
            };
            let mut batch = Vec::new();
            let mut stop = None;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Stop { done } => stop = Some(done),
                    Request::Locals(requests) => batch.extend(requests),
                    request => batch.push(request),
                }
                if stop.is_none() && batch.len() < MAX_BATCH {
                    next = local.try_recv().or_else(|_| remote.try_recv()).ok();
                }
            }
            if !batch.is_empty() {
                match self.commit(batch).await {
                    Unsynced::Appended => {
                        unsynced_since.get_or_insert_with(Instant::now);
                    }
                    Unsynced::AllSynced => unsynced_since = None,
                    // A batch of refused writes touches nothing: news appended
                    // earlier keeps its deadline.
                    Unsynced::Unchanged => {}
                }
                // Any node, not only one taking local writes, keeps its log
                // bounded: a follower's log grows by peers' news alone.
                self.maybe_snapshot().await;
            }
            if let Some(done) = stop {
                self.stop().await;
                let _ = done.send(());
                return;
            }
        }
        self.stop().await;
    }

    /// The last work: sync, finish the snapshot, record a clean stop if the
    /// log vouches for everything this actor wrote.
    async fn stop(&mut self) {
        let synced = self.with_wal(|wal| wal.sync().map(|_| ())).await;
        if let Some(task) = self.snapshot.take() {
            self.finish_snapshot(task.await).await;
        }
        if let Err(reason) = synced {
            tracing::warn!(%reason, "no clean stop recorded: the next start takes a new incarnation");
            return;
        }
        if self.rolled_back() {
            tracing::warn!(
                "no clean stop recorded: peers hold this actor further along than its log"
            );
            return;
        }
        let (identity, last_seq) = (self.identity.clone(), self.own_seq);
        let marked = tokio::task::spawn_blocking(move || identity.mark_clean_stop(last_seq)).await;
        match marked {
            Ok(Ok(())) => tracing::info!(last_seq, "clean stop recorded"),
            Ok(Err(error)) => tracing::warn!(%error, "no clean stop recorded"),
            Err(panic) => tracing::warn!(%panic, "no clean stop recorded"),
        }
    }

    /// Commits one batch: appends its records and, when it holds local
    /// writes, syncs and acknowledges them.
    async fn commit(&mut self, mut batch: Vec<Request>) -> Unsynced {
        if self.rolled_back() {
            self.renew_incarnation().await;
        }
        // Peers' news that a `Replicate` waits on must be synced like a local write.
        let mut synced_waiters = Vec::new();
        for request in &mut batch {
            if let Request::Remote { synced, .. } = request {
                synced_waiters.extend(synced.take());
            }
        }
        let (pending, records) = self.prepare(batch);
        if pending.is_empty() && synced_waiters.is_empty() {
            if records.is_empty() {
                return Unsynced::Unchanged;
            }
            let appended = self
                .with_wal(move |wal| wal.append_batch(as_slices(&records)))
                .await;
            return match appended {
                Ok(()) => Unsynced::Appended,
                // The log is disabled: there is nothing left to flush.
                Err(_) if self.failed.is_some() => Unsynced::AllSynced,
                Err(_) => Unsynced::Unchanged,
            };
        }
        let synced = self
            .with_wal(move |wal| {
                wal.append_batch(as_slices(&records))?;
                wal.sync().map(|_| ())
            })
            .await;
        for waiter in synced_waiters {
            let _ = waiter.send(synced.is_ok());
        }
        match synced {
            Ok(()) => {
                if !pending.is_empty() {
                    self.apply(pending);
                }
                Unsynced::AllSynced
            }
            Err(error) => {
                for p in pending {
                    match p.answer {
                        Answer::Write { reply, .. } => {
                            let _ = reply.send(Err(WriteError::Storage(error.clone())));
                        }
                        Answer::Lifecycle(reply) => {
                            let _ = reply.send(Err(WriteError::Storage(error.clone())));
                        }
                        // The next sweep finds the counter again.
                        Answer::Expiry | Answer::WriteTtl => {}
                        Answer::Takeover(answer) => {
                            if let Some((reply, _)) = answer {
                                let _ = reply.send(Err(WriteError::Storage(error.clone())));
                            }
                        }
                    }
                }
                // Refused whole (nothing of it buffered): earlier news waits on.
                if self.failed.is_some() {
                    Unsynced::AllSynced
                } else {
                    Unsynced::Unchanged
                }
            }
        }
    }

    /// True when the replica holds the current actor at a seq this node never
    /// wrote: the data directory was rolled back (restored from a copy) and
    /// peers hold what it lost. Writing on as that actor would reuse seqs
    /// whose higher totals peers already hold, hiding the new writes.
    fn rolled_back(&self) -> bool {
        let actor = self.replica.actor();
        self.replica.read().map.last_seq(actor.as_str()) > self.own_seq
    }

    /// Moves to a new incarnation, durable before anything is stamped with it.
    async fn renew_incarnation(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let old = self.replica.actor();
        let seen = self.replica.read().map.last_seq(old.as_str());
        let mut identity = self.identity.clone();
        let renewed =
            tokio::task::spawn_blocking(move || identity.renew().map(|actor| (identity, actor)))
                .await;
        match renewed {
            Ok(Ok((identity, new))) => {
                tracing::warn!(%old, %new, own_seq = self.own_seq, seen,
                    "peers hold this actor beyond this node's log (a rolled-back data directory): moved to a new incarnation");
                self.identity = identity;
                self.replica.set_actor(new);
                // A new incarnation has written nothing yet.
                self.own_seq = 0;
                self.renewal_failing = None;
            }
            Ok(Err(error)) => self.renewal_failed(error.to_string()),
            Err(panic) => self.renewal_failed(panic.to_string()),
        }
        self.refusal
            .set(self.failed.clone().or_else(|| self.renewal_failing.clone()));
    }

    fn renewal_failed(&mut self, error: String) {
        tracing::error!(%error, "cannot start a new incarnation; local writes wait until it can");
        self.renewal_failing = Some(format!(
            "writes are held: this node's log was rolled back and a new incarnation cannot be written: {error}"
        ));
    }

    /// Validates and stamps local operations against the replica plus this
    /// batch's earlier operations; encodes every record.
    fn prepare(&mut self, batch: Vec<Request>) -> (Vec<Pending>, Vec<(u8, Vec<u8>)>) {
        let actor = self.replica.actor();
        let state = self.replica.read();
        // Checked again under the lock that stamping reads: gossip may have
        // merged proof of a rollback since `commit` looked.
        let refused = self.failed.clone().or_else(|| {
            (state.map.last_seq(actor.as_str()) > self.own_seq).then(|| {
                self.renewal_failing.clone().unwrap_or_else(|| {
                    "this node's log was rolled back; retry once it moved to a new incarnation"
                        .to_owned()
                })
            })
        });
        let mut seq = self.own_seq;
        // One clock reading per batch: what "past its expiry" means here,
        // and the stamp of its keyed writes (never below an earlier batch's).
        let now = now_ms().max(self.last_stamp_ms);
        self.last_stamp_ms = now;
        let key_window_ms = duration_ms(self.config.key_window);
        let mut expiry_done = Vec::new();
        let mut touched: HashMap<CounterName, PnCounter> = HashMap::new();
        let mut keys_in_batch: HashSet<IdempotencyKey> = HashSet::new();
        let mut pending = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        for request in batch {
            match request {
                Request::Local { write, reply } => {
                    if let Some(reason) = &refused {
                        let _ = reply.send(Err(WriteError::Storage(reason.clone())));
                        continue;
                    }
                    if let Some(key) = &write.key {
                        let check = state.map.check_key(key, &write.name, write.op, now);
                        let answered = match check {
                            KeyCheck::New if !keys_in_batch.insert(key.clone()) => {
                                Some(Err(WriteError::KeyInFlight(key.to_string())))
                            }
                            KeyCheck::New => None,
                            KeyCheck::Replay(registration) => Some(Ok(replay(registration))),
                            KeyCheck::Mismatch { counter, op } => {
                                Some(Err(WriteError::KeyReused {
                                    key: key.to_string(),
                                    counter,
                                    op: describe_op(op),
                                }))
                            }
                        };
                        if let Some(answer) = answered {
                            let _ = reply.send(answer);
                            continue;
                        }
                    }
                    let name = write.name.clone();
                    let counter = copy_in(&mut touched, &state.map, &name);
                    // A write to a counter past its expiry starts it again
                    // from zero: it is deleted first, in the same commit.
                    let due = Due {
                        name: &name,
                        actor: &actor,
                        now,
                    };
                    due.delete(counter, &mut seq, &mut records, &mut pending);
                    match counter.prepare(actor.as_str(), write.op, seq + 1) {
                        Ok(entry) => {
                            seq += 1;
                            let mut change = Change::entry(name.clone(), actor.clone(), entry);
                            match &write.key {
                                None => records.push((
                                    journal::KIND_LOCAL,
                                    journal::local_record(&change.name, &actor, entry),
                                )),
                                Some(key) => {
                                    change.registrations.push(Registration {
                                        key: key.clone(),
                                        origin: actor.clone(),
                                        op: write.op,
                                        at_ms: now,
                                        seq: entry.seq,
                                        value: counter.value().saturating_add(write.op.signed()),
                                        cancelled_seq: 0,
                                        window_ms: key_window_ms.max(1),
                                    });
                                    records.push((
                                        journal::KIND_LOCAL_CHANGE,
                                        journal::local_change_record(&change),
                                    ));
                                }
                            }
                            counter.merge_entry(&actor, entry);
                            pending.push(Pending {
                                change,
                                answer: Answer::Write {
                                    op: write.op,
                                    reply,
                                },
                            });
                            if let Some(ttl) = write.ttl {
                                seq += 1;
                                let at = now.saturating_add(duration_ms(ttl));
                                let expiry = Change::expiring(counter, &name, &actor, at, seq);
                                stage(
                                    counter,
                                    expiry,
                                    Answer::WriteTtl,
                                    &mut records,
                                    &mut pending,
                                );
                            }
                        }
                        Err(error) => {
                            self.metrics.rejected_ops.fetch_add(1, Relaxed);
                            let _ = reply.send(Err(error.into()));
                        }
                    }
                }
                Request::Lifecycle { name, op, reply } => {
                    if let Some(reason) = &refused {
                        let _ = reply.send(Err(WriteError::Storage(reason.clone())));
                        continue;
                    }
                    let counter = copy_in(&mut touched, &state.map, &name);
                    let due = Due {
                        name: &name,
                        actor: &actor,
                        now,
                    };
                    if due.delete(counter, &mut seq, &mut records, &mut pending) {
                        // Gone already: deleted as the sweep would, and absent.
                        let _ = reply.send(Ok(None));
                        continue;
                    }
                    if !counter.is_visible() {
                        let _ = reply.send(Ok(None));
                        continue;
                    }
                    seq += 1;
                    let change = match op {
                        LifecycleOp::Remove(kind) => {
                            Change::removing(counter, &name, &actor, kind, now, seq)
                        }
                        LifecycleOp::ExpireIn(ttl) => {
                            let at = now.saturating_add(duration_ms(ttl));
                            Change::expiring(counter, &name, &actor, at, seq)
                        }
                    };
                    let answer = Answer::Lifecycle(reply);
                    stage(counter, change, answer, &mut records, &mut pending);
                }
                Request::Retire { from, reply } => {
                    if let Some(reason) = &refused {
                        let _ = reply.send(Err(WriteError::Storage(reason.clone())));
                        continue;
                    }
                    let mut retired = Retired {
                        taken_over: 0,
                        left: 0,
                    };
                    let mut staged = Vec::new();
                    for name in state.map.counters_of(&from) {
                        let counter = copy_in(&mut touched, &state.map, &name);
                        match counter.takeover_ready(&from) {
                            None => continue,
                            Some(false) => {
                                retired.left += 1;
                                continue;
                            }
                            Some(true) => {}
                        }
                        let Ok(change) =
                            Change::taking_over(counter, &name, &from, &actor, seq + 1)
                        else {
                            retired.left += 1;
                            continue;
                        };
                        seq += 1;
                        retired.taken_over += 1;
                        staged.push((name, change));
                    }
                    let count = staged.len();
                    let mut reply = Some(reply);
                    for (i, (name, change)) in staged.into_iter().enumerate() {
                        let counter = copy_in(&mut touched, &state.map, &name);
                        let last = (i + 1 == count).then(|| reply.take()).flatten();
                        let answer = Answer::Takeover(last.map(|reply| (reply, retired)));
                        stage(counter, change, answer, &mut records, &mut pending);
                    }
                    if let Some(reply) = reply {
                        // Nothing taken over: nothing to make durable.
                        let _ = reply.send(Ok(retired));
                    }
                }
                Request::Expire { names, done } => {
                    expiry_done.push(done);
                    if refused.is_some() {
                        continue;
                    }
                    for name in names {
                        let Some(held) = state.map.get(name.as_str()) else {
                            continue;
                        };
                        let counter = touched
                            .entry(name.clone())
                            .or_insert_with(|| working_copy(Some(held)));
                        if is_due(counter, now) {
                            seq += 1;
                            let removal = Change::removing(
                                counter,
                                &name,
                                &actor,
                                RemovalKind::Delete,
                                now,
                                seq,
                            );
                            stage(counter, removal, Answer::Expiry, &mut records, &mut pending);
                        }
                    }
                }
                Request::Remote {
                    news, watermarks, ..
                } => {
                    match journal::merge_records(&news, watermarks.as_ref(), MAX_RECORD_PAYLOAD) {
                        Ok(payloads) => {
                            records.extend(payloads.into_iter().map(|p| (journal::KIND_MERGE, p)))
                        }
                        // Only watermarks wider than a record: the news stays in
                        // memory, and a restart fetches it again by anti-entropy.
                        Err(error) => tracing::warn!(%error, "peer news not journaled"),
                    }
                }
                // Flattened into the batch by `run`; nothing else sends these.
                Request::Locals(_) | Request::Stop { .. } => {}
            }
        }
        // The sweep waits only for its turn, not for the fsync: it comes
        // back for anything still past its expiry.
        for done in expiry_done {
            let _ = done.send(());
        }
        (pending, records)
    }

    /// Makes durable local operations visible, publishes them, answers callers.
    fn apply(&mut self, pending: Vec<Pending>) {
        let actor = self.replica.actor();
        let mut delta = CounterMap::new();
        let mut values = Vec::with_capacity(pending.len());
        if let Some(last) = pending.last() {
            self.own_seq = self.own_seq.max(last.change.entry.seq);
        }
        let mut linked = Vec::with_capacity(pending.len());
        {
            let mut state = self.replica.write();
            for p in &pending {
                let name = p.change.name.as_str();
                let prev_seq = state.map.entry_seq(name, p.change.actor.as_str());
                state.map.merge_change(&p.change);
                delta.merge_change(&p.change);
                linked.push(LinkedChange {
                    prev_seq,
                    change: p.change.clone(),
                });
            }
            // Every one of this actor's changes up to here is in the map.
            state.watermarks.raise(&actor, self.own_seq);
            for p in &pending {
                let counter = state.map.get(p.change.name.as_str());
                values.push((
                    state.map.value(p.change.name.as_str()),
                    counter.and_then(PnCounter::expiry),
                ));
            }
        }
        self.replica.publish_local(delta, linked);
        for (p, (value, expires_at_ms)) in pending.into_iter().zip(values) {
            let (op, reply) = match p.answer {
                Answer::Write { op, reply } => (op, reply),
                Answer::Lifecycle(reply) => {
                    let changed = LifecycleChanged {
                        value,
                        expires_at_ms,
                        actor: actor.clone(),
                        seq: p.change.entry.seq,
                    };
                    let _ = reply.send(Ok(Some(changed)));
                    continue;
                }
                Answer::Expiry => {
                    self.metrics.expired.fetch_add(1, Relaxed);
                    continue;
                }
                Answer::Takeover(answer) => {
                    if let Some((reply, retired)) = answer {
                        let _ = reply.send(Ok(retired));
                    }
                    continue;
                }
                Answer::WriteTtl => continue,
            };
            let counter = match op {
                Op::Increment(_) => &self.metrics.increments,
                Op::Decrement(_) => &self.metrics.decrements,
            };
            counter.fetch_add(1, Relaxed);
            // A keyed write answers what its registration holds, the same
            // answer every replay gives.
            let value = (p.change.registrations.first()).map_or(value.unwrap_or(0), |r| r.value);
            let written = Written {
                value,
                actor: actor.clone(),
                seq: p.change.entry.seq,
                replayed: false,
                expires_at_ms,
            };
            let _ = reply.send(Ok(written));
        }
    }

    async fn sync_only(&mut self) {
        let _ = self.with_wal(|wal| wal.sync().map(|_| ())).await;
    }

    /// Starts a snapshot when the log has grown enough and none is running.
    ///
    /// `begin_snapshot` rotates the log; everything appended before it is
    /// already in the replica (local writes are applied before this runs,
    /// peer news is merged before it is queued here), so a snapshot encoded
    /// later covers it. Replay is merging, so covering more is harmless.
    async fn maybe_snapshot(&mut self) {
        let due = self.snapshot.is_none()
            && self.snapshot_retry_at.is_none_or(|at| Instant::now() >= at)
            && self
                .wal
                .as_ref()
                .is_some_and(|wal| wal.bytes_since_snapshot() >= self.config.snapshot_bytes);
        if !due {
            return;
        }
        let ticket = match self.with_wal(|wal| wal.begin_snapshot()).await {
            Ok(ticket) => ticket,
            Err(reason) => {
                self.snapshot_failed(reason);
                return;
            }
        };
        let replica = Arc::clone(&self.replica);
        self.snapshot = Some(tokio::task::spawn_blocking(move || {
            let payload = journal::snapshot(&replica);
            ticket.write(&payload)?;
            Ok(ticket)
        }));
    }

    async fn finish_snapshot(&mut self, written: Result<SnapshotResult, JoinError>) {
        let written = match written {
            Ok(written) => written.map_err(|error| error.to_string()),
            Err(panic) => Err(panic.to_string()),
        };
        let finished = match written {
            Ok(ticket) => self.with_wal(move |wal| wal.finish_snapshot(ticket)).await,
            Err(error) => Err(error),
        };
        match finished {
            Ok(()) => {
                self.snapshot_retry_at = None;
                self.metrics.snapshots.fetch_add(1, Relaxed);
                tracing::info!("snapshot written, covered log segments removed");
            }
            Err(reason) => self.snapshot_failed(reason),
        }
    }

    fn snapshot_failed(&mut self, reason: String) {
        if self.failed.is_none() {
            tracing::warn!(%reason, "snapshot failed; the log keeps its segments and it is retried");
            self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
        }
    }

    /// Runs blocking WAL work off the async threads. A fatal failure
    /// ([`WalError::is_fatal`]) disables writes for good: after a failed
    /// fsync the kernel may have dropped the dirty pages, so nothing written
    /// since can be trusted as durable. Any other failure fails this work only.
    async fn with_wal<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Wal) -> Result<T, WalError> + Send + 'static,
    ) -> Result<T, String> {
        if let Some(reason) = &self.failed {
            return Err(reason.clone());
        }
        let Some(mut wal) = self.wal.take() else {
            return Err("log unavailable".into());
        };
        let joined = tokio::task::spawn_blocking(move || {
            let result = work(&mut wal);
            (wal, result)
        })
        .await;
        match joined {
            Ok((wal, result)) => {
                record_wal_stats(&self.metrics, &wal);
                self.wal = Some(wal);
                result.map_err(|error| {
                    if error.is_fatal() {
                        self.fail(error.to_string())
                    } else {
                        error.to_string()
                    }
                })
            }
            Err(panic) => Err(self.fail(format!("WAL task failed: {panic}"))),
        }
    }

    fn fail(&mut self, error: String) -> String {
        tracing::error!(%error, "WAL failure: refusing further writes");
        let reason = format!("writes are disabled after a WAL failure: {error}");
        self.failed = Some(reason.clone());
        self.refusal.set(Some(reason.clone()));
        reason
    }
}

/// The answer to a keyed write already applied: its first answer.
fn replay(registration: Registration) -> Written {
    Written {
        value: registration.value,
        actor: registration.origin,
        seq: registration.seq,
        replayed: true,
        expires_at_ms: None,
    }
}

/// The counter as the batch stamps it: its entries and value, without its
/// registrations (a copy per batch must not copy a day of keys).
fn working_copy(counter: Option<&PnCounter>) -> PnCounter {
    counter
        .map(PnCounter::without_registrations)
        .unwrap_or_default()
}

/// The batch's working copy of `name`, taken from `map` the first time.
fn copy_in<'a>(
    touched: &'a mut HashMap<CounterName, PnCounter>,
    map: &CounterMap,
    name: &CounterName,
) -> &'a mut PnCounter {
    (touched.entry(name.clone())).or_insert_with(|| working_copy(map.get(name.as_str())))
}

/// True when `counter` has an expiry in force at or before `now_ms`.
fn is_due(counter: &PnCounter, now_ms: u64) -> bool {
    counter.expiry().is_some_and(|at| at <= now_ms)
}

/// A counter of the batch that may be past its expiry at `now`.
struct Due<'a> {
    name: &'a CounterName,
    actor: &'a ActorId,
    now: u64,
}

impl Due<'_> {
    /// Deletes the counter into the batch, as the sweep would, when it is
    /// past its expiry; true when it did.
    fn delete(
        &self,
        counter: &mut PnCounter,
        seq: &mut u64,
        records: &mut Vec<(u8, Vec<u8>)>,
        pending: &mut Vec<Pending>,
    ) -> bool {
        if !is_due(counter, self.now) {
            return false;
        }
        *seq += 1;
        let kind = RemovalKind::Delete;
        let removal = Change::removing(counter, self.name, self.actor, kind, self.now, *seq);
        stage(counter, removal, Answer::Expiry, records, pending);
        true
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Stamps a lifecycle change into the batch: onto the working copy (so
/// later operations of the batch see it), into the log, and pending.
fn stage(
    counter: &mut PnCounter,
    change: Change,
    answer: Answer,
    records: &mut Vec<(u8, Vec<u8>)>,
    pending: &mut Vec<Pending>,
) {
    if let Some(lifecycle) = &change.lifecycle {
        counter.merge_lifecycle(lifecycle);
    }
    counter.merge_entry(&change.actor, change.entry);
    records.push((
        journal::KIND_LOCAL_CHANGE,
        journal::local_change_record(&change),
    ));
    pending.push(Pending { change, answer });
}

/// Copies the WAL's own totals into the metrics: every fsync counts, those
/// of recovery, rotations and snapshots included.
fn record_wal_stats(metrics: &Metrics, wal: &Wal) {
    let stats = wal.stats();
    metrics.wal_fsyncs.store(stats.fsyncs, Relaxed);
    metrics.wal_bytes.store(stats.bytes_written, Relaxed);
}

/// The running snapshot task's result; never ready when none runs.
async fn snapshot_done(
    task: &mut Option<JoinHandle<SnapshotResult>>,
) -> Result<SnapshotResult, JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn as_slices(records: &[(u8, Vec<u8>)]) -> impl Iterator<Item = (u8, &[u8])> {
    records
        .iter()
        .map(|(kind, payload)| (*kind, payload.as_slice()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crdt_core::{ActorId, Entry};

    use super::*;
    use crate::identity::{CleanStop, Identity, CLEAN_STOP_FILE};
    use crate::replica::ReplicaState;
    use crate::wal::{Faults, WalOptions};

    struct Started {
        writer: WriterHandle,
        metrics: Arc<Metrics>,
        replica: Arc<Replica>,
        faults: Arc<Faults>,
    }

    /// A writer over a new data directory `dir` (identity + `wal/`).
    fn started(dir: &Path, snapshot_bytes: u64, segment_bytes: u64) -> Started {
        let identity = Identity::load_or_create(dir, Some("node-1")).unwrap();
        let options = WalOptions { segment_bytes };
        let mut state = ReplicaState::default();
        let wal = Wal::open(&dir.join("wal"), options, |record| {
            journal::replay(&mut state, record).map_err(|e| WalError::Corrupt {
                file: dir.into(),
                offset: 0,
                reason: e.to_string(),
            })
        })
        .unwrap();
        let faults = wal.faults();
        let metrics = Arc::new(Metrics::default());
        let config = WriterConfig {
            snapshot_bytes,
            key_window: Duration::from_millis(crdt_core::DEFAULT_KEY_WINDOW_MS),
        };
        // As a node starts: settle the incarnation (removing the marker) first.
        let mut identity = IdentityFile::new(dir.to_owned(), identity);
        identity.settle(&state.map, wal.truncated_tail()).unwrap();
        let replica = Arc::new(Replica::new(identity.identity().actor(), state));
        let writer = start(
            wal,
            Arc::clone(&replica),
            Arc::clone(&metrics),
            config,
            identity,
        );
        Started {
            writer,
            metrics,
            replica,
            faults,
        }
    }

    /// What the log in `dir` replays to.
    fn recovered(dir: &Path) -> ReplicaState {
        let mut state = ReplicaState::default();
        Wal::open(&dir.join("wal"), WalOptions::default(), |record| {
            journal::replay(&mut state, record).map_err(|e| WalError::Corrupt {
                file: dir.into(),
                offset: 0,
                reason: e.to_string(),
            })
        })
        .unwrap();
        state
    }

    fn name(text: &str) -> CounterName {
        CounterName::new(text).unwrap()
    }

    /// One entry of peer news, as gossip would hand it over.
    fn news(index: u64) -> CounterMap {
        let name = CounterName::new(&format!("counter-{index}")).unwrap();
        let peer = ActorId::new("node-2~peer").unwrap();
        let entry = Entry {
            inc: u128::from(index + 1),
            dec: 0,
            seq: index + 1,
            since: 0,
        };
        CounterMap::single(&name, &peer, entry)
    }

    async fn eventually(mut holds: impl FnMut() -> bool) -> bool {
        for _ in 0..300 {
            if holds() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn retiring_a_departed_actor_moves_its_entries_durably_and_keeps_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        // As gossip does: merged into the replica, then journaled.
        for index in 0..5 {
            replica.write().map.merge(&news(index));
            writer.persist(news(index), None).await;
        }
        writer
            .write(name("counter-0"), Op::Increment(10))
            .await
            .unwrap();
        let gone = ActorId::new("node-2~peer").unwrap();
        assert_eq!(replica.read().map.counters_of(&gone).len(), 5);
        let before: Vec<_> = (0..5)
            .map(|i| replica.read().map.value(&format!("counter-{i}")))
            .collect();
        let retired = writer.retire(gone.clone()).await.unwrap();
        assert_eq!((retired.taken_over, retired.left), (5, 0));
        let after: Vec<_> = (0..5)
            .map(|i| replica.read().map.value(&format!("counter-{i}")))
            .collect();
        assert_eq!(after, before, "a takeover moves no value");
        let again = writer.retire(gone.clone()).await.unwrap();
        assert_eq!(again.taken_over, 0, "an actor is taken over once");
        writer.shutdown().await;
        let replayed = recovered(dir.path());
        let values: Vec<_> = (0..5)
            .map(|i| replayed.map.value(&format!("counter-{i}")))
            .collect();
        assert_eq!(values, before, "the takeovers replay from the log");
        let counter = replayed.map.get("counter-3").unwrap();
        let survivor = replica.actor();
        assert_eq!(counter.entry(survivor.as_str()).map(|e| e.inc), Some(4));
    }

    #[tokio::test]
    async fn peer_news_is_synced_within_the_flush_delay_even_after_a_refused_write() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, metrics, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        let fsyncs_before = metrics.wal_fsyncs.load(Relaxed);
        writer.persist(news(0), None).await;
        // Let the writer append the news in a batch of its own.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let refused = writer.write(name("c"), Op::Increment(0)).await;
        assert!(
            matches!(refused, Err(WriteError::Invalid(_))),
            "{refused:?}"
        );
        let synced = eventually(|| metrics.wal_fsyncs.load(Relaxed) > fsyncs_before).await;
        assert!(synced, "peer news was never synced after a refused write");
    }

    #[tokio::test]
    async fn news_persisted_synced_is_answered_after_its_fsync_and_not_after_a_failed_one() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer,
            metrics,
            faults,
            ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        let fsyncs_before = metrics.wal_fsyncs.load(Relaxed);
        let synced = writer.persist_synced(news(0)).await;
        assert!(synced.wait().await, "the news was not synced");
        // Answered by its own fsync, long before the lazy flush deadline.
        assert!(metrics.wal_fsyncs.load(Relaxed) > fsyncs_before);

        faults.fail_writes(1);
        let failed = writer.persist_synced(news(1)).await;
        assert!(
            !failed.wait().await,
            "a failed log must not say the news is durable"
        );
        writer.shutdown().await;
        assert_eq!(recovered(dir.path()).map.value("counter-0"), Some(1));
    }

    #[tokio::test]
    async fn a_node_that_only_receives_peer_news_still_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, metrics, ..
        } = started(dir.path(), 4096, 64 << 20);
        for index in 0..400 {
            writer.persist(news(index), None).await;
        }
        let snapshotted = eventually(|| metrics.snapshots.load(Relaxed) > 0).await;
        assert!(
            snapshotted,
            "a follower's log grew past --snapshot-bytes without a snapshot"
        );
    }

    /// News larger than a WAL record (a catch-up chunk under a 64 MiB
    /// `--max-frame`) used to disable writes for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_news_over_the_record_limit_is_split_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        let peer = ActorId::new("node-2~peer").unwrap();
        let mut big = CounterMap::new();
        let mut index: u64 = 0;
        while crdt_core::wire::encode(&(&big, None::<Watermarks>)).len() <= MAX_RECORD_PAYLOAD {
            for _ in 0..20_000 {
                index += 1;
                let long = format!("{index:0>120}");
                let entry = Entry {
                    inc: u128::from(index),
                    dec: 0,
                    seq: index,
                    since: 0,
                };
                big.merge_entry(&name(&long), &peer, entry);
            }
        }
        let mut watermarks = Watermarks::new();
        watermarks.raise(&peer, index);
        replica.merge_remote(&big, Some(&watermarks));
        writer.persist(big.clone(), Some(watermarks.clone())).await;
        assert_eq!(writer.write(name("c"), Op::Increment(2)).await.unwrap(), 2);
        assert_eq!(writer.refusal(), None);
        writer.shutdown().await;
        let state = recovered(dir.path());
        assert_eq!(state.map.entry_count(), big.entry_count() + 1);
        assert_eq!(state.map.value("c"), Some(2));
        assert_eq!(state.watermarks.get(peer.as_str()), index);
    }

    const EMFILE: i32 = 24;

    /// Running out of file descriptors while the log rotates or snapshots
    /// fails nothing durable: no write is refused, and the log goes on.
    #[tokio::test]
    async fn too_many_open_files_while_rotating_or_snapshotting_refuses_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer,
            metrics,
            faults,
            ..
        } = started(dir.path(), 2048, 256);
        // Every segment rotation, snapshot file and retry for a while.
        faults.fail_creates(40, EMFILE);
        for i in 1..=200 {
            let value = writer.write(name("c"), Op::Increment(1)).await;
            assert_eq!(value.unwrap(), i, "write {i}");
        }
        assert_eq!(writer.refusal(), None);
        assert_eq!(
            faults.pending_creates(),
            0,
            "the log never tried to create a file"
        );
        // Once files can be created again, snapshots resume (after their retry delay).
        let mut i = 200;
        for _ in 0..300 {
            if metrics.snapshots.load(Relaxed) > 0 {
                break;
            }
            i += 1;
            assert_eq!(writer.write(name("c"), Op::Increment(1)).await.unwrap(), i);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            metrics.snapshots.load(Relaxed) > 0,
            "no snapshot after the fault cleared"
        );
        writer.shutdown().await;
        assert_eq!(recovered(dir.path()).map.value("c"), Some(i));
    }

    #[tokio::test]
    async fn a_failed_write_refuses_writes_for_good_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let Started { writer, faults, .. } = started(dir.path(), u64::MAX, 64 << 20);
        assert_eq!(writer.write(name("c"), Op::Increment(1)).await.unwrap(), 1);
        faults.fail_writes(1);
        let failed = writer.write(name("c"), Op::Increment(1)).await;
        assert!(matches!(failed, Err(WriteError::Storage(_))), "{failed:?}");
        let reason = writer.refusal().expect("a refusal reason");
        assert!(reason.contains("writes are disabled"), "{reason}");
        let later = writer.write(name("c"), Op::Increment(1)).await;
        assert!(matches!(later, Err(WriteError::Storage(_))), "{later:?}");
        // No clean stop is recorded for a log that failed.
        writer.shutdown().await;
        assert!(!dir.path().join(CLEAN_STOP_FILE).exists());
    }

    #[tokio::test]
    async fn a_clean_shutdown_records_the_incarnation_and_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        for _ in 0..3 {
            writer.write(name("c"), Op::Increment(1)).await.unwrap();
        }
        writer.shutdown().await;
        let marker: CleanStop =
            serde_json::from_slice(&std::fs::read(dir.path().join(CLEAN_STOP_FILE)).unwrap())
                .unwrap();
        let actor = replica.actor();
        assert_eq!(
            marker,
            CleanStop {
                incarnation: actor.as_str().split('~').nth(1).unwrap().to_owned(),
                last_seq: 3
            }
        );
        let after = writer.write(name("c"), Op::Increment(1)).await;
        assert!(matches!(after, Err(WriteError::ShuttingDown)), "{after:?}");
    }

    /// A peer holding this actor at a seq the node never wrote (its data
    /// directory was restored from an older copy) moves the node to a new
    /// incarnation before it acknowledges anything else.
    #[tokio::test]
    async fn peers_holding_this_actor_further_along_start_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        let old = replica.actor();
        for _ in 0..2 {
            writer.write(name("c"), Op::Increment(1)).await.unwrap();
        }
        // The lost timeline: this actor went on to seq 10 (10 increments).
        let lost = CounterMap::single(
            &name("c"),
            &old,
            Entry {
                inc: 10,
                dec: 0,
                seq: 10,
                since: 1,
            },
        );
        let news = replica.merge_remote(&lost, None);
        writer.persist(news, None).await;
        assert_eq!(writer.write(name("c"), Op::Increment(5)).await.unwrap(), 15);
        let new = replica.actor();
        assert_ne!(new, old);
        let counter = replica.read().map.get("c").cloned().unwrap();
        assert_eq!(
            counter.entry(new.as_str()).map(|e| (e.inc, e.seq)),
            Some((5, 1))
        );
        assert_eq!(counter.entry(old.as_str()).map(|e| e.inc), Some(10));
        // The new incarnation is durable: a restart writes as it.
        let stored = Identity::load_or_create(dir.path(), None).unwrap();
        assert_eq!(stored.actor(), new);
        writer.shutdown().await;
        let marker: CleanStop =
            serde_json::from_slice(&std::fs::read(dir.path().join(CLEAN_STOP_FILE)).unwrap())
                .unwrap();
        assert_eq!(marker.incarnation, stored.incarnation);
        assert_eq!(marker.last_seq, 1);
        let state = recovered(dir.path());
        assert_eq!(state.map.value("c"), Some(15));
    }

    #[tokio::test]
    async fn peer_news_beyond_the_backlog_waits_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let writer = started(dir.path(), u64::MAX, 64 << 20).writer;
        // Hold every permit but one entry's worth: the next persist of two
        // entries must wait until the writer frees some.
        let held = Arc::clone(&writer.remote_backlog)
            .acquire_many_owned((REMOTE_BACKLOG_ENTRIES - 1) as u32)
            .await
            .unwrap();
        let mut two = news(0);
        two.merge(&news(1));
        let waiting = writer.persist(two, None);
        tokio::pin!(waiting);
        let early = tokio::time::timeout(Duration::from_millis(100), &mut waiting).await;
        assert!(early.is_err(), "news beyond the backlog was taken at once");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the news was taken once the backlog emptied");
    }

    #[tokio::test]
    async fn a_batch_shares_one_fsync_and_answers_each_write_with_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer,
            metrics,
            replica,
            ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        writer.write(name("a"), Op::Increment(1)).await.unwrap();
        let fsyncs_before = metrics.wal_fsyncs.load(Relaxed);
        let writes = vec![
            (name("a"), Op::Increment(2)),
            (name("b"), Op::Decrement(3)),
            // Refused alone: the value would leave i64.
            (name("a"), Op::Increment(u64::MAX)),
            (name("a"), Op::Increment(4)),
        ];
        let writes = writes
            .into_iter()
            .map(|(name, op)| LocalWrite::plain(name, op))
            .collect();
        let outcomes = writer.write_all(writes).await;
        assert_eq!(metrics.wal_fsyncs.load(Relaxed), fsyncs_before + 1);
        let actor = replica.actor();
        let applied: Vec<Option<(i128, u64)>> = outcomes
            .iter()
            .map(|outcome| {
                let written = outcome.as_ref().ok()?;
                assert_eq!(written.actor, actor);
                Some((written.value, written.seq))
            })
            .collect();
        // Values are after the whole commit; seqs follow the order.
        assert_eq!(applied, [Some((7, 2)), Some((-3, 3)), None, Some((7, 4))]);
        assert!(matches!(outcomes[2], Err(WriteError::Invalid(_))));
        writer.shutdown().await;
        assert_eq!(recovered(dir.path()).map.value("a"), Some(7));
    }

    #[tokio::test]
    async fn delete_reset_and_ttl_are_durable_and_a_write_after_expiry_starts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, metrics, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        writer.write(name("d"), Op::Increment(5)).await.unwrap();
        writer.write(name("r"), Op::Increment(7)).await.unwrap();
        let delete = LifecycleOp::Remove(RemovalKind::Delete);
        let deleted = writer.change_lifecycle(name("d"), delete).await.unwrap();
        assert_eq!(deleted.map(|d| d.value), Some(None));
        let again = writer.change_lifecycle(name("d"), delete).await.unwrap();
        assert_eq!(again, None, "a deleted counter is absent");
        let reset = LifecycleOp::Remove(RemovalKind::Reset);
        let reset = writer.change_lifecycle(name("r"), reset).await.unwrap();
        assert_eq!(reset.map(|r| r.value), Some(Some(0)));
        assert_eq!(writer.write(name("d"), Op::Increment(2)).await.unwrap(), 2);

        let with_ttl = LocalWrite {
            ttl: Some(Duration::from_millis(1)),
            ..LocalWrite::plain(name("t"), Op::Increment(3))
        };
        let written = writer.submit(with_ttl).await.unwrap();
        assert!(written.expires_at_ms.is_some(), "{written:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let after = writer.submit(LocalWrite::plain(name("t"), Op::Increment(1)));
        let after = after.await.unwrap();
        assert_eq!((after.value, after.expires_at_ms), (1, None));
        assert_eq!(metrics.expired.load(Relaxed), 1);
        writer.shutdown().await;
        let state = recovered(dir.path());
        assert_eq!(
            [
                state.map.value("d"),
                state.map.value("r"),
                state.map.value("t")
            ],
            [Some(2), Some(0), Some(1)]
        );
    }

    #[tokio::test]
    async fn the_sweep_deletes_only_what_is_past_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        writer.write(name("a"), Op::Increment(1)).await.unwrap();
        writer.write(name("b"), Op::Increment(1)).await.unwrap();
        let soon = LifecycleOp::ExpireIn(Duration::from_millis(1));
        let later = LifecycleOp::ExpireIn(Duration::from_secs(3600));
        writer.change_lifecycle(name("a"), soon).await.unwrap();
        writer.change_lifecycle(name("b"), later).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        writer.expire(vec![name("a"), name("b")]).await;
        assert!(wait_for(|| replica.read().map.value("a").is_none()).await);
        assert_eq!(replica.read().map.value("b"), Some(1));
    }

    fn keyed(counter: &str, op: Op, key: &str) -> LocalWrite {
        LocalWrite {
            name: name(counter),
            op,
            key: Some(IdempotencyKey::new(key).unwrap()),
            ttl: None,
        }
    }

    #[tokio::test]
    async fn a_retried_key_is_answered_as_the_first_time_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let Started { writer, .. } = started(dir.path(), u64::MAX, 64 << 20);
        writer.write(name("c"), Op::Increment(10)).await.unwrap();
        let first = writer
            .submit(keyed("c", Op::Increment(5), "k1"))
            .await
            .unwrap();
        assert_eq!((first.value, first.replayed), (15, false));
        writer.write(name("c"), Op::Increment(1)).await.unwrap();
        let again = writer
            .submit(keyed("c", Op::Increment(5), "k1"))
            .await
            .unwrap();
        assert_eq!(
            (again.value, again.replayed),
            (15, true),
            "the first answer"
        );
        assert_eq!(again.seq, first.seq);
        let other_body = writer.submit(keyed("c", Op::Increment(6), "k1")).await;
        assert!(
            matches!(other_body, Err(WriteError::KeyReused { .. })),
            "{other_body:?}"
        );
        let other_counter = writer.submit(keyed("d", Op::Increment(5), "k1")).await;
        assert!(matches!(other_counter, Err(WriteError::KeyReused { .. })));
        writer.shutdown().await;

        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        assert_eq!(replica.read().map.value("c"), Some(16), "applied once");
        let after_restart = writer
            .submit(keyed("c", Op::Increment(5), "k1"))
            .await
            .unwrap();
        assert_eq!((after_restart.value, after_restart.replayed), (15, true));
        assert_eq!(replica.read().map.value("c"), Some(16));
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn a_key_a_peer_applied_first_counts_once_with_nothing_to_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            writer, replica, ..
        } = started(dir.path(), u64::MAX, 64 << 20);
        let mine = writer
            .submit(keyed("c", Op::Increment(5), "k"))
            .await
            .unwrap();
        assert!(!mine.replayed);
        // A peer applied the same write a moment earlier (its clock says
        // so) and was not heard from until now: the retry reached this node.
        let peer = ActorId::new("node-2~x").unwrap();
        let mut theirs = CounterMap::new();
        theirs
            .apply_keyed(
                &peer,
                &name("c"),
                Op::Increment(5),
                &IdempotencyKey::new("k").unwrap(),
                now_ms() - 1_000,
                crdt_core::DEFAULT_KEY_WINDOW_MS,
            )
            .unwrap();
        let seq_before = replica.read().map.last_seq(replica.actor().as_str());
        let news = replica.merge_remote(&theirs, None);
        assert_eq!(
            replica.read().map.value("c"),
            Some(5),
            "counted once on merge"
        );
        writer.persist(news, None).await;
        assert_eq!(
            replica.read().map.last_seq(replica.actor().as_str()),
            seq_before,
            "this node stamps nothing in answer: the lattice counts the key once"
        );
        writer.shutdown().await;
        assert_eq!(
            recovered(dir.path()).map.value("c"),
            Some(5),
            "and durably so"
        );
    }

    /// Polls `check` for up to 5 s.
    async fn wait_for(check: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}
