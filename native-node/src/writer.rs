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
//! next batch or within [`FLUSH_DELAY`], whichever comes first.
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crdt_core::{CounterMap, CounterName, CrdtError, Entry, Op, PnCounter, Watermarks};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::gossip::RemoteSink;
use crate::journal;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::wal::{SnapshotTicket, Wal, WalError};

/// Longest a peer's news waits in memory before it is synced.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// Most requests folded into one fsync.
const MAX_BATCH: usize = 8192;
/// Requests waiting for the writer before callers are pushed back.
const QUEUE: usize = 65_536;

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operation is invalid (zero amount, overflow).
    #[error(transparent)]
    Invalid(#[from] CrdtError),
    /// The WAL failed; the node refuses writes rather than acknowledge what it cannot keep.
    #[error("storage failure, writes are disabled: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

enum Request {
    Local {
        name: CounterName,
        op: Op,
        reply: oneshot::Sender<Result<i128, WriteError>>,
    },
    Remote {
        news: CounterMap,
        watermarks: Option<Watermarks>,
    },
}

/// Tuning of the write path.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Snapshot once the log holds this many bytes since the last one.
    pub snapshot_bytes: u64,
}

/// Sends writes to the writer task.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<Request>,
    remote: mpsc::UnboundedSender<Request>,
}

impl WriterHandle {
    /// Applies `op` to counter `name` once it is durable; returns the counter's new value.
    pub async fn write(&self, name: CounterName, op: Op) -> Result<i128, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Local { name, op, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }
}

impl RemoteSink for WriterHandle {
    fn persist(&self, news: CounterMap, watermarks: Option<Watermarks>) {
        // Unbounded because gossip handling must not block on disk; the
        // volume is bounded by what peers can send through frame limits.
        let _ = self.remote.send(Request::Remote { news, watermarks });
    }
}

/// Starts the writer task over an opened `wal`.
pub fn start(
    wal: Wal,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    config: WriterConfig,
) -> WriterHandle {
    let (queue, local_rx) = mpsc::channel(QUEUE);
    let (remote, remote_rx) = mpsc::unbounded_channel();
    record_wal_stats(&metrics, &wal);
    let writer = Writer {
        wal: Some(wal),
        replica,
        metrics,
        config,
        failed: None,
        snapshot: None,
    };
    tokio::spawn(writer.run(local_rx, remote_rx));
    WriterHandle { queue, remote }
}

struct Writer {
    wal: Option<Wal>,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    config: WriterConfig,
    failed: Option<String>,
    /// A snapshot being encoded and written off this task, so batches keep
    /// committing meanwhile.
    snapshot: Option<JoinHandle<SnapshotResult>>,
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

/// A local operation that passed validation and waits for its fsync.
struct Pending {
    name: CounterName,
    entry: Entry,
    op: Op,
    reply: oneshot::Sender<Result<i128, WriteError>>,
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
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match local.try_recv().or_else(|_| remote.try_recv()) {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
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
        self.sync_only().await;
        if let Some(task) = self.snapshot.take() {
            self.finish_snapshot(task.await).await;
        }
    }

    /// Commits one batch: appends its records and, when it holds local
    /// writes, syncs and acknowledges them.
    async fn commit(&mut self, batch: Vec<Request>) -> Unsynced {
        let (pending, records) = self.prepare(batch);
        if pending.is_empty() {
            if records.is_empty() {
                return Unsynced::Unchanged;
            }
            let appended = self.with_wal(move |wal| append_all(wal, &records)).await;
            return match appended {
                Ok(()) => Unsynced::Appended,
                // The log is disabled: there is nothing left to flush.
                Err(_) => Unsynced::AllSynced,
            };
        }
        let synced = self
            .with_wal(move |wal| {
                append_all(wal, &records)?;
                wal.sync().map(|_| ())
            })
            .await;
        match synced {
            Ok(()) => self.apply(pending),
            Err(error) => {
                for p in pending {
                    let _ = p.reply.send(Err(WriteError::Storage(error.clone())));
                }
            }
        }
        Unsynced::AllSynced
    }

    /// Validates and stamps local operations against the replica plus this
    /// batch's earlier operations; encodes every record.
    fn prepare(&self, batch: Vec<Request>) -> (Vec<Pending>, Vec<(u8, Vec<u8>)>) {
        let actor = self.replica.actor().clone();
        let state = self.replica.read();
        let mut seq = state.map.last_seq(actor.as_str());
        let mut touched: HashMap<CounterName, PnCounter> = HashMap::new();
        let mut pending = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        for request in batch {
            match request {
                Request::Local { name, op, reply } => {
                    if let Some(reason) = &self.failed {
                        let _ = reply.send(Err(WriteError::Storage(reason.clone())));
                        continue;
                    }
                    let counter = touched.entry(name.clone()).or_insert_with(|| {
                        state.map.get(name.as_str()).cloned().unwrap_or_default()
                    });
                    match counter.prepare(actor.as_str(), op, seq + 1) {
                        Ok(entry) => {
                            seq += 1;
                            counter.merge_entry(&actor, entry);
                            records.push((
                                journal::KIND_LOCAL,
                                journal::local_record(&name, &actor, entry),
                            ));
                            pending.push(Pending {
                                name,
                                entry,
                                op,
                                reply,
                            });
                        }
                        Err(error) => {
                            self.metrics.rejected_ops.fetch_add(1, Relaxed);
                            let _ = reply.send(Err(error.into()));
                        }
                    }
                }
                Request::Remote { news, watermarks } => {
                    records.push((
                        journal::KIND_MERGE,
                        journal::merge_record(&news, watermarks.as_ref()),
                    ));
                }
            }
        }
        (pending, records)
    }

    /// Makes durable local operations visible, publishes them, answers callers.
    fn apply(&self, pending: Vec<Pending>) {
        let actor = self.replica.actor().clone();
        let mut delta = CounterMap::new();
        let mut values = Vec::with_capacity(pending.len());
        {
            let mut state = self.replica.write();
            for p in &pending {
                state.map.merge_entry(&p.name, &actor, p.entry);
                delta.merge_entry(&p.name, &actor, p.entry);
            }
            let last = state.map.last_seq(actor.as_str());
            state.watermarks.raise(&actor, last);
            for p in &pending {
                values.push(state.map.value(p.name.as_str()).unwrap_or(0));
            }
        }
        self.replica.publish(delta, None);
        for (p, value) in pending.into_iter().zip(values) {
            let counter = match p.op {
                Op::Increment(_) => &self.metrics.increments,
                Op::Decrement(_) => &self.metrics.decrements,
            };
            counter.fetch_add(1, Relaxed);
            let _ = p.reply.send(Ok(value));
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
            && self
                .wal
                .as_ref()
                .is_some_and(|wal| wal.bytes_since_snapshot() >= self.config.snapshot_bytes);
        if !due {
            return;
        }
        let Ok(ticket) = self.with_wal(|wal| wal.begin_snapshot()).await else {
            return;
        };
        let replica = Arc::clone(&self.replica);
        self.snapshot = Some(tokio::task::spawn_blocking(move || {
            let payload = journal::snapshot(&replica.read());
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
                self.metrics.snapshots.fetch_add(1, Relaxed);
                tracing::info!("snapshot written, covered log segments removed");
            }
            Err(error) => {
                tracing::error!(%error, "snapshot failed; the log keeps growing until one succeeds")
            }
        }
    }

    /// Runs blocking WAL work off the async threads. A failure disables
    /// writes for good: after a failed fsync the kernel may have dropped
    /// the dirty pages, so nothing written since can be trusted as durable.
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
                result.map_err(|error| self.fail(error.to_string()))
            }
            Err(panic) => Err(self.fail(format!("WAL task failed: {panic}"))),
        }
    }

    fn fail(&mut self, reason: String) -> String {
        tracing::error!(%reason, "WAL failure: refusing further writes");
        self.failed = Some(reason.clone());
        reason
    }
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

fn append_all(wal: &mut Wal, records: &[(u8, Vec<u8>)]) -> Result<(), WalError> {
    records
        .iter()
        .try_for_each(|(kind, payload)| wal.append(*kind, payload))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crdt_core::{ActorId, Entry};

    use super::*;
    use crate::replica::ReplicaState;
    use crate::wal::WalOptions;

    fn started(dir: &Path, snapshot_bytes: u64) -> (WriterHandle, Arc<Metrics>) {
        let wal = Wal::open(dir, WalOptions::default(), |_| Ok::<(), WalError>(())).unwrap();
        let actor = ActorId::new("node-1~test").unwrap();
        let replica = Arc::new(Replica::new(actor, ReplicaState::default()));
        let metrics = Arc::new(Metrics::default());
        let config = WriterConfig { snapshot_bytes };
        let handle = start(wal, replica, Arc::clone(&metrics), config);
        (handle, metrics)
    }

    /// One entry of peer news, as gossip would hand it over.
    fn news(index: u64) -> CounterMap {
        let name = CounterName::new(&format!("counter-{index}")).unwrap();
        let peer = ActorId::new("node-2~peer").unwrap();
        let entry = Entry {
            inc: u128::from(index + 1),
            dec: 0,
            seq: index + 1,
        };
        CounterMap::single(&name, &peer, entry)
    }

    async fn eventually(mut holds: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if holds() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn peer_news_is_synced_within_the_flush_delay_even_after_a_refused_write() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, metrics) = started(dir.path(), u64::MAX);
        let fsyncs_before = metrics.wal_fsyncs.load(Relaxed);
        writer.persist(news(0), None);
        // Let the writer append the news in a batch of its own.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let refused = writer
            .write(CounterName::new("c").unwrap(), Op::Increment(0))
            .await;
        assert!(
            matches!(refused, Err(WriteError::Invalid(_))),
            "{refused:?}"
        );
        let synced = eventually(|| metrics.wal_fsyncs.load(Relaxed) > fsyncs_before).await;
        assert!(synced, "peer news was never synced after a refused write");
    }

    #[tokio::test]
    async fn a_node_that_only_receives_peer_news_still_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, metrics) = started(dir.path(), 4096);
        for index in 0..400 {
            writer.persist(news(index), None);
        }
        let snapshotted = eventually(|| metrics.snapshots.load(Relaxed) > 0).await;
        assert!(
            snapshotted,
            "a follower's log grew past --snapshot-bytes without a snapshot"
        );
    }
}
