//! Opening a log directory: replay the newest snapshot, then the segments it does not cover.

use std::collections::BTreeMap;
use std::fs;

use super::segment::{
    self, list_dir, remove_covered, segment_path, snapshot_path, ActiveSegment, LogDir,
};
use super::stats::Counters;
use super::{io_error, snapshot, RecoveredRecord, TornTail, WalError};

pub(crate) struct Recovered {
    pub active: ActiveSegment,
    /// Sizes of the replayed segments before the active one.
    pub sealed_bytes: BTreeMap<u64, u64>,
    /// What was cut off the last segment, if anything.
    pub torn: Option<TornTail>,
}

pub(crate) fn recover<E: From<WalError>>(
    log_dir: &LogDir,
    counters: &Counters,
    on_record: &mut impl FnMut(RecoveredRecord<'_>) -> Result<(), E>,
) -> Result<Recovered, E> {
    let dir = log_dir.path.as_path();
    let listing = list_dir(dir)?;
    for temp in &listing.temp_files {
        fs::remove_file(temp).map_err(io_error(temp))?;
    }
    let base = match listing.snapshots.last() {
        Some(&index) => {
            let payload = snapshot::read(&snapshot_path(dir, index))?;
            on_record(RecoveredRecord::Snapshot(&payload))?;
            index
        }
        None => 0,
    };
    let live: Vec<u64> = listing.segments.range(base..).copied().collect();
    for (expected, &found) in (base..).zip(&live) {
        if expected != found {
            let reason = format!("segment is missing (found {found} next)");
            return Err(WalError::Corrupt {
                file: segment_path(dir, expected),
                offset: 0,
                reason,
            }
            .into());
        }
    }

    let mut sealed_bytes = BTreeMap::new();
    let mut active = None;
    let mut torn = None;
    for (position, &index) in live.iter().enumerate() {
        let path = segment_path(dir, index);
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let is_last = position + 1 == live.len();
        let replayed = segment::replay(&path, &bytes, is_last, on_record)?;
        if !is_last {
            sealed_bytes.insert(index, bytes.len() as u64);
            continue;
        }
        if let Some(reason) = &replayed.torn {
            let dropped_bytes = bytes.len() - replayed.valid_len;
            tracing::warn!(file = %path.display(), offset = replayed.valid_len, dropped_bytes, %reason,
                "truncating the torn tail of the last WAL segment");
            torn = Some(TornTail {
                file: path.clone(),
                offset: replayed.valid_len as u64,
                dropped_bytes: dropped_bytes as u64,
            });
        }
        active = Some(ActiveSegment::open(
            log_dir,
            index,
            replayed.valid_len as u64,
            counters,
        )?);
    }
    let active = match active {
        Some(active) => active,
        None => ActiveSegment::create(log_dir, base, counters)?,
    };
    // Finishes a snapshot whose clean-up a crash interrupted.
    remove_covered(dir, &listing, base)?;
    Ok(Recovered {
        active,
        sealed_bytes,
        torn,
    })
}
