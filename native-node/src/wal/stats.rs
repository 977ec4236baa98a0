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
    /// Errors tests make the next file creations and segment writes fail with.
    #[cfg(test)]
    pub faults: std::sync::Arc<Faults>,
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

    /// A fault a test injected for the next file creation, if any.
    pub fn injected_create_error(&self) -> Option<std::io::Error> {
        #[cfg(test)]
        if let Some(error) = self.faults.take_create() {
            return Some(error);
        }
        None
    }

    /// A fault a test injected for the next segment write, if any.
    pub fn injected_write_error(&self) -> Option<std::io::Error> {
        #[cfg(test)]
        if let Some(error) = self.faults.take_write() {
            return Some(error);
        }
        None
    }
}

/// Test hook: makes the WAL's next file creations or segment writes fail
/// with a chosen OS error, deterministically and for one log only.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    creates: std::sync::atomic::AtomicU32,
    create_errno: std::sync::atomic::AtomicI32,
    writes: std::sync::atomic::AtomicU32,
}

#[cfg(test)]
impl Faults {
    /// The next `count` file creations fail with OS error `errno`.
    pub fn fail_creates(&self, count: u32, errno: i32) {
        self.create_errno.store(errno, Ordering::SeqCst);
        self.creates.store(count, Ordering::SeqCst);
    }

    /// File creations still to fail.
    pub fn pending_creates(&self) -> u32 {
        self.creates.load(Ordering::SeqCst)
    }

    /// The next `count` segment writes fail with EIO.
    pub fn fail_writes(&self, count: u32) {
        self.writes.store(count, Ordering::SeqCst);
    }

    fn take_create(&self) -> Option<std::io::Error> {
        take_one(&self.creates)
            .then(|| std::io::Error::from_raw_os_error(self.create_errno.load(Ordering::SeqCst)))
    }

    fn take_write(&self) -> Option<std::io::Error> {
        const EIO: i32 = 5;
        take_one(&self.writes).then(|| std::io::Error::from_raw_os_error(EIO))
    }
}

#[cfg(test)]
fn take_one(count: &std::sync::atomic::AtomicU32) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
