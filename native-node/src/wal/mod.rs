//! Write-ahead log: checksummed opaque byte records, made durable in batches (group
//! commit), with snapshots so the disk stays bounded.
//!
//! # On-disk layout
//!
//! One directory holds (`<N>` is a `u64` as 20 zero-padded decimal digits):
//!
//! - `wal-<N>.log`: segments, numbered contiguously from the newest snapshot's `N`
//!   (from 0 without a snapshot). Only the highest-numbered (*last*) segment takes appends.
//!   A new segment starts when a sync finds the last one at `segment_bytes` or more
//!   (so it may overshoot by one sync batch, or by more while a new file cannot be
//!   created), and when a snapshot begins.
//! - `snapshot-<N>.snap`: the caller's full state, covering every record of the segments `< N`.
//! - `snapshot-<N>.snap.tmp`: a snapshot being written; deleted on open.
//!
//! A segment is a concatenation of records; a snapshot file is exactly one record of kind 0.
//! A record is:
//!
//! ```text
//! offset 0  len      u32 LE  payload length: ≤ 16 MiB in segments, ≤ u32::MAX in snapshots
//! offset 4  crc32c   u32 LE  CRC-32C (Castagnoli) over the kind byte, then the payload
//! offset 8  kind     u8      chosen by the caller
//! offset 9  payload  len bytes
//! ```
//!
//! # Durability
//!
//! [`Wal::append`] only buffers; [`Wal::sync`] writes the buffer to the last segment and
//! calls fdatasync once, so only synced records survive a crash. Creating a segment fsyncs
//! the directory (through a handle opened with the log, so it needs no new descriptor).
//! A snapshot goes to the temp file, is fdatasync'd, renamed into place, then the directory
//! is fsync'd.
//!
//! # Which failures are fatal ([`WalError::is_fatal`])
//!
//! - Fatal: a failed write or fsync of a segment or of the directory (the page cache can
//!   no longer be trusted), corruption. The [`Wal`] is poisoned: every later call fails with
//!   [`WalError::Poisoned`] and the caller must reopen, which recovers from what is on disk.
//! - Not fatal, nothing durable changed: a new file that cannot be created
//!   ([`WalError::CannotCreate`]: `EMFILE`, `ENFILE`, `ENOSPC`, …). A sync that finds the
//!   segment full and cannot start the next one keeps appending to the current one
//!   (segments are a soft size) and tries again at the next sync; [`Wal::begin_snapshot`]
//!   fails and is retried later. A snapshot that cannot be written
//!   ([`WalError::SnapshotFailed`]) leaves its segments in place; removing covered files
//!   that fails ([`WalError::Cleanup`]) is finished by the next snapshot or recovery; a
//!   record over the limit ([`WalError::RecordTooLarge`]) is refused with its batch
//!   ([`Wal::append_batch`] buffers all of it or nothing).
//!
//! # Recovery rules ([`Wal::open`])
//!
//! 1. Temp snapshot files are deleted; a missing directory is created.
//! 2. The newest snapshot is read and handed over first. If it is corrupt (bad framing, CRC
//!    mismatch, kind ≠ 0, trailing bytes) open fails with [`WalError::Corrupt`]: an older
//!    snapshot is no fallback, since the segments it would need may be deleted.
//! 3. The segments from the snapshot's `N` on are replayed in order; a gap is `Corrupt`.
//! 4. A bad record (short header, short payload, length over the limit or past the end of
//!    the file, CRC mismatch) is
//!    - `Corrupt` in any segment but the last: those were synced in full before the next
//!      segment was created;
//!    - `Corrupt` in the last segment when its header is complete and a valid record starts
//!      right where the bad one claims to end: that is damage inside acknowledged data;
//!    - otherwise a torn tail from an interrupted sync: the last segment is truncated at the
//!      bad record's offset (with a warning naming file and offset) and appends go on there.
//!      A damaged length field in the last segment cannot be told from a torn write, so it
//!      is truncated too — never silently, always with the warning, and
//!      [`Wal::truncated_tail`] tells the caller.
//! 5. Segments and snapshots older than the newest snapshot are deleted (this finishes a
//!    [`Wal::finish_snapshot`] that a crash interrupted).

mod record;
mod recovery;
mod segment;
mod snapshot;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use record::{MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN};
pub use snapshot::SnapshotTicket;
#[cfg(test)]
pub(crate) use stats::Faults;
pub use stats::{SyncStats, WalStats};

use segment::{list_dir, remove_covered, ActiveSegment, LogDir};
use stats::Counters;

/// Why a WAL operation failed; [`WalError::is_fatal`] tells whether the log can go on.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A read, write or fsync failed: fatal for the log.
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt WAL file {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("WAL record of {len} bytes exceeds the {max}-byte limit")]
    RecordTooLarge { len: usize, max: usize },
    #[error("the WAL failed an earlier write or fsync; reopen it to recover")]
    Poisoned,
    #[error("snapshot {index} was not written; its segments stay")]
    SnapshotNotWritten { index: u64 },
    /// A new file could not be created; nothing durable changed.
    #[error("cannot create {}: {source}; nothing was changed, it is retried later", path.display())]
    CannotCreate { path: PathBuf, source: io::Error },
    /// Writing a snapshot failed; the segments it would cover stay.
    #[error("snapshot {} not written: {source}; the log keeps its segments", path.display())]
    SnapshotFailed { path: PathBuf, source: io::Error },
    /// Removing files a snapshot covers failed; the next snapshot or recovery removes them.
    #[error("cannot remove WAL files a snapshot covers ({}): {source}", path.display())]
    Cleanup { path: PathBuf, source: io::Error },
}

impl WalError {
    /// True when the log can no longer be trusted (a failed write or fsync,
    /// corruption): the caller must stop acknowledging writes. Anything else
    /// failed one operation only, changed nothing durable, and may be retried.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Corrupt { .. } | Self::Poisoned => true,
            Self::RecordTooLarge { .. }
            | Self::SnapshotNotWritten { .. }
            | Self::CannotCreate { .. }
            | Self::SnapshotFailed { .. }
            | Self::Cleanup { .. } => false,
        }
    }
}

/// What recovery cut off the end of the last segment: bytes of a write that
/// was interrupted, or damage that cannot be told from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub file: PathBuf,
    /// Where the valid records end (the new length).
    pub offset: u64,
    /// How many bytes were dropped.
    pub dropped_bytes: u64,
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A sync starting with the last segment at least this big starts a new segment first.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// What [`Wal::open`] streams to its callback: the snapshot (if any), then every entry after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredRecord<'a> {
    Snapshot(&'a [u8]),
    Entry { kind: u8, payload: &'a [u8] },
}

pub struct Wal {
    dir: Arc<LogDir>,
    options: WalOptions,
    active: ActiveSegment,
    /// Sizes of the segments before the active one that are still on disk.
    sealed_bytes: BTreeMap<u64, u64>,
    buffer: Vec<u8>,
    buffered_records: usize,
    counters: Arc<Counters>,
    poisoned: bool,
    /// A full segment could not be followed by a new one (warned once per streak).
    rotation_failing: bool,
    torn: Option<TornTail>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, streaming the recovered state to `on_record`
    /// (see the module docs for the rules). An error from `on_record` aborts the open.
    pub fn open<E: From<WalError>>(
        dir: &Path,
        options: WalOptions,
        mut on_record: impl FnMut(RecoveredRecord<'_>) -> Result<(), E>,
    ) -> Result<Self, E> {
        let counters = Arc::new(Counters::default());
        let log_dir = LogDir::open(dir)?;
        let recovered = recovery::recover(&log_dir, &counters, &mut on_record)?;
        Ok(Self {
            dir: Arc::new(log_dir),
            options,
            active: recovered.active,
            sealed_bytes: recovered.sealed_bytes,
            buffer: Vec::new(),
            buffered_records: 0,
            counters,
            poisoned: false,
            rotation_failing: false,
            torn: recovered.torn,
        })
    }

    /// What recovery truncated off the last segment, if anything.
    pub fn truncated_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Buffers a record; it is durable only once a later [`Wal::sync`] returns Ok.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<(), WalError> {
        self.append_batch([(kind, payload)])
    }

    /// Buffers every record, or none of them when one is refused (too large), so a
    /// refused batch never leaves part of itself to be synced by the next one.
    pub fn append_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u8, &'a [u8])>,
    ) -> Result<(), WalError> {
        self.check_healthy()?;
        let (buffered, count) = (self.buffer.len(), self.buffered_records);
        for (kind, payload) in records {
            let header = match record::header(kind, payload, MAX_RECORD_PAYLOAD) {
                Ok(header) => header,
                Err(error) => {
                    self.buffer.truncate(buffered);
                    self.buffered_records = count;
                    return Err(error);
                }
            };
            self.buffer.extend_from_slice(&header);
            self.buffer.extend_from_slice(payload);
            self.buffered_records += 1;
        }
        Ok(())
    }

    /// Writes every buffered record and fdatasyncs once (nothing to do: no fsync).
    ///
    /// A full segment is followed by a new one first; when that file cannot be
    /// created, the records go to the current segment and the next sync tries again.
    pub fn sync(&mut self) -> Result<SyncStats, WalError> {
        self.check_healthy()?;
        if self.buffer.is_empty() {
            return Ok(SyncStats::default());
        }
        let mut rotated = false;
        if self.active.len > 0 && self.active.len >= self.options.segment_bytes {
            match self.rotate() {
                Ok(()) => {
                    rotated = true;
                    if std::mem::take(&mut self.rotation_failing) {
                        tracing::info!(
                            segment = self.active.index,
                            "WAL segment rotation works again"
                        );
                    }
                }
                Err(error) if !error.is_fatal() => {
                    if !std::mem::replace(&mut self.rotation_failing, true) {
                        tracing::warn!(%error, "cannot start a new WAL segment; appending to the current one until it can");
                    }
                }
                Err(error) => return Err(self.poison(error)),
            }
        }
        let written = self.active.write_and_sync(&self.buffer, &self.counters);
        self.poison_if_err(written)?;
        let stats = SyncStats {
            records: self.buffered_records,
            bytes: self.buffer.len() as u64,
            fsyncs: 1 + u64::from(rotated),
        };
        self.buffer.clear();
        self.buffered_records = 0;
        Ok(stats)
    }

    /// Syncs, then starts a new segment unless the active one is empty; the snapshot the
    /// ticket writes must hold every record appended before this call. When the new
    /// segment cannot be created ([`WalError::CannotCreate`]) nothing changed: try later.
    pub fn begin_snapshot(&mut self) -> Result<SnapshotTicket, WalError> {
        self.sync()?;
        if self.active.len > 0 {
            match self.rotate() {
                Ok(()) => {}
                Err(error) if !error.is_fatal() => return Err(error),
                Err(error) => return Err(self.poison(error)),
            }
        }
        Ok(SnapshotTicket::new(
            Arc::clone(&self.dir),
            self.active.index,
            Arc::clone(&self.counters),
        ))
    }

    /// Deletes the segments and older snapshots that the ticket's written snapshot covers.
    /// A failure is [`WalError::Cleanup`]: what is left is removed by a later snapshot
    /// or by recovery, and the log goes on.
    pub fn finish_snapshot(&mut self, ticket: SnapshotTicket) -> Result<(), WalError> {
        if !ticket.is_written() {
            return Err(WalError::SnapshotNotWritten {
                index: ticket.index(),
            });
        }
        // Never the active segment, whatever ticket this is.
        let covered = ticket.index().min(self.active.index);
        let removed = list_dir(&self.dir.path)
            .and_then(|listing| remove_covered(&self.dir.path, &listing, covered));
        removed.map_err(|error| match error {
            WalError::Io { path, source } => WalError::Cleanup { path, source },
            other => other,
        })?;
        self.sealed_bytes = self.sealed_bytes.split_off(&covered);
        Ok(())
    }

    /// Log bytes a recovery would replay now, plus the unsynced buffer: the caller's cue
    /// to snapshot. Covered segments count until [`Wal::finish_snapshot`] deletes them.
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.sealed_bytes.values().sum::<u64>() + self.active.len + self.buffer.len() as u64
    }

    pub fn stats(&self) -> WalStats {
        self.counters.totals()
    }

    /// Seals the active segment (already synced) and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        let next = ActiveSegment::create(&self.dir, self.active.index + 1, &self.counters)?;
        let sealed = std::mem::replace(&mut self.active, next);
        self.sealed_bytes.insert(sealed.index, sealed.len);
        Ok(())
    }

    fn check_healthy(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    fn poison_if_err<T>(&mut self, result: Result<T, WalError>) -> Result<T, WalError> {
        result.map_err(|error| self.poison(error))
    }

    fn poison(&mut self, error: WalError) -> WalError {
        self.poisoned = true;
        error
    }

    /// Test hook: makes this log's next file creations or writes fail.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> Arc<Faults> {
        Arc::clone(&self.counters.faults)
    }
}
