//! Counters for metrics, shared with snapshot tickets (which may run on other threads).

use std::sync::atomic::{AtomicU64, Ordering};

/// Totals since the [`super::Wal`] was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// fdatasync/fsync calls on segments, snapshots and the directory.
    pub fsyncs: u64,
    /// Bytes written to segments and snapshots, framing included.
    pub bytes_written: u64,
}

/// What one [`super::Wal::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub records: usize,
    pub bytes: u64,
    /// 1, or 2 when the sync had to start a new segment (directory fsync).
    pub fsyncs: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
}

impl Counters {
    pub fn add_fsync(&self) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_written(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn totals(&self) -> WalStats {
        WalStats {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}
