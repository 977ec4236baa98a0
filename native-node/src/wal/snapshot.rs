//! Snapshot files: one framed record (kind 0) holding the caller's full state.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::record::{self, Decoded, RECORD_HEADER_LEN};
use super::segment::{create_file, snapshot_path, snapshot_temp_path, LogDir};
use super::stats::Counters;
use super::{io_error, WalError};

const SNAPSHOT_KIND: u8 = 0;
/// A snapshot is one record, so only the u32 length field bounds it.
const MAX_SNAPSHOT_PAYLOAD: usize = u32::MAX as usize;

/// Permission to write the snapshot that covers every segment before [`Self::index`].
///
/// It holds no borrow of the [`super::Wal`], so a background thread can write the
/// snapshot while the log keeps taking appends; hand it back to
/// [`super::Wal::finish_snapshot`] afterwards.
#[derive(Debug)]
pub struct SnapshotTicket {
    dir: Arc<LogDir>,
    index: u64,
    written: AtomicBool,
    counters: Arc<Counters>,
}

impl SnapshotTicket {
    pub(crate) fn new(dir: Arc<LogDir>, index: u64, counters: Arc<Counters>) -> Self {
        Self {
            dir,
            index,
            written: AtomicBool::new(false),
            counters,
        }
    }

    /// The first segment the snapshot does not cover.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub(crate) fn is_written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }

    /// Durably writes `snapshot-<index>.snap`: temp file, fsync, rename, directory fsync,
    /// so a crash leaves either no snapshot or a complete one.
    ///
    /// No failure here harms the log: until the snapshot is written its segments stay.
    /// The temp file of a failed attempt is removed (recovery removes any left over).
    pub fn write(&self, payload: &[u8]) -> Result<(), WalError> {
        let header = record::header(SNAPSHOT_KIND, payload, MAX_SNAPSHOT_PAYLOAD)?;
        let temp = snapshot_temp_path(&self.dir.path, self.index);
        let mut file = create_file(&temp, false, &self.counters)?;
        let written = file
            .write_all(&header)
            .and_then(|()| file.write_all(payload))
            .and_then(|()| file.sync_data());
        drop(file);
        let failed = |source| {
            let _ = fs::remove_file(&temp);
            WalError::SnapshotFailed {
                path: temp.clone(),
                source,
            }
        };
        written.map_err(failed)?;
        self.counters
            .add_written((header.len() + payload.len()) as u64);
        self.counters.add_fsync();
        let target = snapshot_path(&self.dir.path, self.index);
        fs::rename(&temp, &target).map_err(failed)?;
        self.dir.sync(&self.counters).map_err(|error| match error {
            WalError::Io { path, source } => WalError::SnapshotFailed { path, source },
            other => other,
        })?;
        self.written.store(true, Ordering::Release);
        Ok(())
    }
}

/// Reads and checks a snapshot file; returns its payload.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, WalError> {
    let mut bytes = fs::read(path).map_err(io_error(path))?;
    let corrupt = |reason: String| WalError::Corrupt {
        file: path.to_owned(),
        offset: 0,
        reason,
    };
    let payload_len = match record::decode(&bytes, MAX_SNAPSHOT_PAYLOAD) {
        Decoded::Record {
            kind: SNAPSHOT_KIND,
            payload,
        } => payload.len(),
        Decoded::Record { kind, .. } => {
            return Err(corrupt(format!(
                "snapshot record has kind {kind}, expected 0"
            )))
        }
        Decoded::End => return Err(corrupt("empty snapshot file".into())),
        Decoded::Bad { reason, .. } => return Err(corrupt(reason.to_string())),
    };
    if bytes.len() != RECORD_HEADER_LEN + payload_len {
        return Err(corrupt("trailing bytes after the snapshot record".into()));
    }
    bytes.drain(..RECORD_HEADER_LEN);
    Ok(bytes)
}
