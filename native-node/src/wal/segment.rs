//! Segment files: naming, directory listing, the active (appendable) segment and replay.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::record::{self, BadRecord, Decoded, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN};
use super::stats::Counters;
use super::{io_error, RecoveredRecord, WalError};

pub(crate) fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("wal-{index:020}.log"))
}

pub(crate) fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("snapshot-{index:020}.snap"))
}

pub(crate) fn snapshot_temp_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("snapshot-{index:020}.snap.tmp"))
}

/// The WAL's files found in a directory; anything else there is ignored.
#[derive(Debug, Default)]
pub(crate) struct DirListing {
    pub segments: BTreeSet<u64>,
    pub snapshots: BTreeSet<u64>,
    pub temp_files: Vec<PathBuf>,
}

pub(crate) fn list_dir(dir: &Path) -> Result<DirListing, WalError> {
    let mut listing = DirListing::default();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(index) = parse_index(&name, "wal-", ".log") {
            listing.segments.insert(index);
        } else if let Some(index) = parse_index(&name, "snapshot-", ".snap") {
            listing.snapshots.insert(index);
        } else if parse_index(&name, "snapshot-", ".snap.tmp").is_some() {
            listing.temp_files.push(entry.path());
        }
    }
    Ok(listing)
}

fn parse_index(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let well_formed = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| digits.parse().ok()).flatten()
}

/// The log's directory, held open for as long as the log is: making a new entry
/// durable then never needs a new file descriptor (which may not be available).
#[derive(Debug)]
pub(crate) struct LogDir {
    pub path: PathBuf,
    handle: File,
}

impl LogDir {
    /// Creates the directory if needed and opens it.
    pub fn open(path: &Path) -> Result<Self, WalError> {
        fs::create_dir_all(path).map_err(io_error(path))?;
        let handle = File::open(path).map_err(io_error(path))?;
        Ok(Self {
            path: path.to_owned(),
            handle,
        })
    }

    /// Makes creations, renames and removals of directory entries durable.
    pub fn sync(&self, counters: &Counters) -> Result<(), WalError> {
        self.handle.sync_all().map_err(io_error(&self.path))?;
        counters.add_fsync();
        Ok(())
    }
}

/// Creates a file for appending: a new one when `exclusive`, else truncating any
/// leftover. A failure (too many open files, no space, …) leaves nothing durable
/// changed, so it is [`WalError::CannotCreate`]: retryable.
pub(crate) fn create_file(
    path: &Path,
    exclusive: bool,
    counters: &Counters,
) -> Result<File, WalError> {
    let mut options = OpenOptions::new();
    if exclusive {
        options.append(true).create_new(true);
    } else {
        options.write(true).create(true).truncate(true);
    }
    let created = match counters.injected_create_error() {
        Some(error) => Err(error),
        None => options.open(path),
    };
    created.map_err(|source| WalError::CannotCreate {
        path: path.to_owned(),
        source,
    })
}

/// The segment that receives appends.
pub(crate) struct ActiveSegment {
    pub index: u64,
    pub len: u64,
    path: PathBuf,
    file: File,
}

impl ActiveSegment {
    /// Creates segment `index`. Fails with [`WalError::CannotCreate`] (nothing changed,
    /// retryable) when the file cannot be made, and with a fatal error when the
    /// directory fsync fails.
    pub fn create(dir: &LogDir, index: u64, counters: &Counters) -> Result<Self, WalError> {
        let path = segment_path(&dir.path, index);
        let file = create_file(&path, true, counters)?;
        dir.sync(counters)?;
        Ok(Self {
            index,
            len: 0,
            path,
            file,
        })
    }

    /// Opens an existing segment, cutting it back to `valid_len` (its torn tail goes).
    pub fn open(
        dir: &LogDir,
        index: u64,
        valid_len: u64,
        counters: &Counters,
    ) -> Result<Self, WalError> {
        let path = segment_path(&dir.path, index);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let on_disk = file.metadata().map_err(io_error(&path))?.len();
        if on_disk > valid_len {
            file.set_len(valid_len)
                .and_then(|()| file.sync_data())
                .map_err(io_error(&path))?;
            counters.add_fsync();
        }
        Ok(Self {
            index,
            len: valid_len,
            path,
            file,
        })
    }

    /// Appends `bytes` and makes them durable with one fdatasync.
    pub fn write_and_sync(&mut self, bytes: &[u8], counters: &Counters) -> Result<(), WalError> {
        if let Some(error) = counters.injected_write_error() {
            return Err(io_error(&self.path)(error));
        }
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(io_error(&self.path))?;
        self.len += bytes.len() as u64;
        counters.add_written(bytes.len() as u64);
        counters.add_fsync();
        Ok(())
    }
}

/// Where replaying a segment stopped.
pub(crate) struct Replayed {
    pub valid_len: usize,
    /// Set when a torn tail follows `valid_len` (only ever for the last segment).
    pub torn: Option<BadRecord>,
}

/// Streams the records of one segment's bytes to `on_record`.
///
/// A bad record is a torn tail only in the last segment and only when no valid record
/// directly follows it; anything else is corruption.
pub(crate) fn replay<E: From<WalError>>(
    path: &Path,
    bytes: &[u8],
    is_last: bool,
    on_record: &mut impl FnMut(RecoveredRecord<'_>) -> Result<(), E>,
) -> Result<Replayed, E> {
    let mut offset = 0;
    loop {
        let rest = bytes.get(offset..).unwrap_or_default();
        match record::decode(rest, MAX_RECORD_PAYLOAD) {
            Decoded::End => {
                return Ok(Replayed {
                    valid_len: offset,
                    torn: None,
                })
            }
            Decoded::Record { kind, payload } => {
                on_record(RecoveredRecord::Entry { kind, payload })?;
                offset += RECORD_HEADER_LEN + payload.len();
            }
            Decoded::Bad { reason, framed_len } => {
                let corrupt = |reason: String| WalError::Corrupt {
                    file: path.to_owned(),
                    offset: offset as u64,
                    reason,
                };
                if !is_last {
                    return Err(corrupt(format!("{reason} in a sealed segment")).into());
                }
                if followed_by_valid_record(rest, framed_len) {
                    return Err(corrupt(format!("{reason}, followed by a valid record")).into());
                }
                return Ok(Replayed {
                    valid_len: offset,
                    torn: Some(reason),
                });
            }
        }
    }
}

fn followed_by_valid_record(rest: &[u8], framed_len: Option<usize>) -> bool {
    let after = framed_len
        .and_then(|len| rest.get(len..))
        .unwrap_or_default();
    matches!(
        record::decode(after, MAX_RECORD_PAYLOAD),
        Decoded::Record { .. }
    )
}

/// Deletes the segments and snapshots older than `covered` (already in snapshot `covered`).
pub(crate) fn remove_covered(
    dir: &Path,
    listing: &DirListing,
    covered: u64,
) -> Result<(), WalError> {
    let segments = listing
        .segments
        .range(..covered)
        .map(|&index| segment_path(dir, index));
    let snapshots = listing
        .snapshots
        .range(..covered)
        .map(|&index| snapshot_path(dir, index));
    for path in segments.chain(snapshots) {
        fs::remove_file(&path).map_err(io_error(&path))?;
    }
    Ok(())
}
