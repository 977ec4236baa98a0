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
use tokio::task::JoinHandle;
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
    snapshot: Option<JoinHandle<Result<SnapshotTicket, WalError>>>,
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
            if self.commit(batch).await {
                unsynced_since.get_or_insert_with(Instant::now);
            } else {
                unsynced_since = None;
            }
        }
        self.sync_only().await;
        if let Some(task) = self.snapshot.take() {
            self.finish_snapshot(task).await;
        }
    }

    /// Commits one batch; returns true when remote records await a sync
    /// (false: everything appended so far is synced, or the log failed).
    async fn commit(&mut self, batch: Vec<Request>) -> bool {
        let (pending, records) = self.prepare(batch);
        if pending.is_empty() {
            let any = !records.is_empty();
            let appended = self.with_wal(move |wal| append_all(wal, &records)).await;
            return any && appended.is_ok();
        }
        let synced = self
            .with_wal(move |wal| {
                append_all(wal, &records)?;
                wal.sync().map(|_| ())
            })
            .await;
        match synced {
            Ok(()) => {
                self.apply(pending);
                self.maybe_snapshot().await;
            }
            Err(error) => {
                for p in pending {
                    let _ = p.reply.send(Err(WriteError::Storage(error.clone())));
                }
            }
        }
        false
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

    /// Finishes a snapshot that is done, or starts one when the log has grown enough.
    ///
    /// `begin_snapshot` rotates the log; everything appended before it is
    /// already in the replica (local writes are applied before this runs,
    /// peer news is merged before it is queued here), so a snapshot encoded
    /// later covers it. Replay is merging, so covering more is harmless.
    async fn maybe_snapshot(&mut self) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|task| task.is_finished())
        {
            if let Some(task) = self.snapshot.take() {
                self.finish_snapshot(task).await;
            }
        }
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

    async fn finish_snapshot(&mut self, task: JoinHandle<Result<SnapshotTicket, WalError>>) {
        let written = match task.await {
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
