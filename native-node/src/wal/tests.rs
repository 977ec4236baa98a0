use std::fs;
use std::path::Path;

use proptest::prelude::*;
use tempfile::TempDir;

use super::record::{self, Decoded};
use super::segment::{list_dir, segment_path, snapshot_path, snapshot_temp_path};
use super::*;

#[derive(Debug, Default)]
struct Replay {
    snapshot: Option<Vec<u8>>,
    entries: Vec<(u8, Vec<u8>)>,
}

fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Replay), WalError> {
    let mut replay = Replay::default();
    let wal = Wal::open(dir, options, |record| {
        match record {
            RecoveredRecord::Snapshot(payload) => replay.snapshot = Some(payload.to_vec()),
            RecoveredRecord::Entry { kind, payload } => {
                replay.entries.push((kind, payload.to_vec()))
            }
        }
        Ok::<_, WalError>(())
    })?;
    Ok((wal, replay))
}

const SMALL: WalOptions = WalOptions { segment_bytes: 200 };

fn entry(i: usize) -> (u8, Vec<u8>) {
    (
        (i % 5) as u8,
        format!("entry-{i};").repeat(i % 4).into_bytes(),
    )
}

/// Appends `entries`, syncing every `batch` records and at the end.
fn write_all(wal: &mut Wal, entries: &[(u8, Vec<u8>)], batch: usize) {
    for chunk in entries.chunks(batch) {
        for (kind, payload) in chunk {
            wal.append(*kind, payload).unwrap();
        }
        wal.sync().unwrap();
    }
}

fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = vec![];
    let mut offset = 0;
    while let Decoded::Record { payload, .. } = record::decode(&bytes[offset..], MAX_RECORD_PAYLOAD)
    {
        offsets.push(offset);
        offset += RECORD_HEADER_LEN + payload.len();
    }
    offsets
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn assert_corrupt(result: Result<(Wal, Replay), WalError>, file: &Path, offset: usize) {
    match result {
        Err(WalError::Corrupt {
            file: f, offset: o, ..
        }) => assert_eq!((f.as_path(), o), (file, offset as u64)),
        other => panic!(
            "expected Corrupt at {}:{offset}, got {:?}",
            file.display(),
            other.map(|(_, r)| r)
        ),
    }
}

#[test]
fn round_trip_across_rotations() {
    let dir = TempDir::new().unwrap();
    let entries: Vec<_> = (0..300).map(entry).collect();
    let (mut wal, replay) = open(dir.path(), SMALL).unwrap();
    assert!(replay.entries.is_empty() && replay.snapshot.is_none());
    write_all(&mut wal, &entries, 7);
    let framed: usize = entries
        .iter()
        .map(|(_, p)| RECORD_HEADER_LEN + p.len())
        .sum();
    assert_eq!(wal.stats().bytes_written, framed as u64);
    assert_eq!(wal.bytes_since_snapshot(), framed as u64);
    drop(wal);
    assert!(list_dir(dir.path()).unwrap().segments.len() > 5);
    let (_, replay) = open(dir.path(), SMALL).unwrap();
    assert_eq!(replay.entries, entries);
}

#[test]
fn snapshot_deletes_covered_files_and_reopen_replays_only_the_tail() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    let mut tail = vec![];
    for round in 0..2 {
        write_all(&mut wal, &(0..60).map(entry).collect::<Vec<_>>(), 5);
        let ticket = wal.begin_snapshot().unwrap();
        tail = (100..110).map(entry).collect();
        write_all(&mut wal, &tail, 3); // appends go on while the snapshot is written
        let writer = std::thread::spawn(move || {
            ticket
                .write(format!("state {round}").as_bytes())
                .map(|()| ticket)
        });
        let ticket = writer.join().unwrap().unwrap();
        let covered = ticket.index();
        wal.finish_snapshot(ticket).unwrap();
        let listing = list_dir(dir.path()).unwrap();
        assert_eq!(
            listing.snapshots.into_iter().collect::<Vec<_>>(),
            vec![covered]
        );
        assert_eq!(listing.segments.first(), Some(&covered));
    }
    let tail_bytes: usize = tail.iter().map(|(_, p)| RECORD_HEADER_LEN + p.len()).sum();
    assert_eq!(wal.bytes_since_snapshot(), tail_bytes as u64);
    drop(wal);
    let (_, replay) = open(dir.path(), SMALL).unwrap();
    assert_eq!(replay.snapshot.as_deref(), Some(&b"state 1"[..]));
    assert_eq!(replay.entries, tail);
}

#[test]
fn open_finishes_an_interrupted_snapshot_and_removes_temp_files() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    write_all(&mut wal, &(0..40).map(entry).collect::<Vec<_>>(), 4);
    let ticket = wal.begin_snapshot().unwrap();
    wal.append(9, b"after").unwrap();
    wal.sync().unwrap();
    ticket.write(b"state").unwrap();
    fs::write(snapshot_temp_path(dir.path(), ticket.index() + 1), b"half").unwrap();
    drop(wal); // crash before finish_snapshot
    let (_, replay) = open(dir.path(), SMALL).unwrap();
    assert_eq!(
        (replay.snapshot.as_deref(), replay.entries),
        (Some(&b"state"[..]), vec![(9, b"after".to_vec())])
    );
    let listing = list_dir(dir.path()).unwrap();
    assert_eq!(listing.segments.first(), Some(&ticket.index()));
    assert!(listing.temp_files.is_empty());
}

#[test]
fn finish_without_a_written_snapshot_keeps_the_segments() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    write_all(&mut wal, &(0..40).map(entry).collect::<Vec<_>>(), 4);
    let ticket = wal.begin_snapshot().unwrap();
    assert!(matches!(
        wal.finish_snapshot(ticket),
        Err(WalError::SnapshotNotWritten { .. })
    ));
    assert_eq!(open(dir.path(), SMALL).unwrap().1.entries.len(), 40);
}

#[test]
fn oversized_record_is_refused_and_the_log_stays_usable() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), WalOptions::default()).unwrap();
    let err = wal.append(1, &vec![0; MAX_RECORD_PAYLOAD + 1]).unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { .. }));
    wal.append(1, b"ok").unwrap();
    assert_eq!(
        wal.sync().unwrap(),
        SyncStats {
            records: 1,
            bytes: 11,
            fsyncs: 1
        }
    );
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record_is_truncated() {
    let entries: Vec<_> = (2..7).map(entry).collect();
    let last_len = RECORD_HEADER_LEN + entries[4].1.len();
    for cut in 0..last_len {
        let dir = TempDir::new().unwrap();
        write_all(&mut open(dir.path(), SMALL).unwrap().0, &entries, 1);
        let segment = segment_path(dir.path(), 0);
        let full = fs::metadata(&segment).unwrap().len() as usize;
        fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len((full - last_len + cut) as u64)
            .unwrap();

        let (mut wal, replay) = open(dir.path(), SMALL).unwrap();
        assert_eq!(replay.entries, entries[..4], "cut at {cut}");
        wal.append(7, b"new").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let mut expected = entries[..4].to_vec();
        expected.push((7, b"new".to_vec()));
        assert_eq!(
            open(dir.path(), SMALL).unwrap().1.entries,
            expected,
            "cut at {cut}"
        );
    }
}

#[test]
fn checksum_mismatch_in_the_last_record_is_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    let entries: Vec<_> = (0..5).map(entry).collect();
    write_all(&mut open(dir.path(), SMALL).unwrap().0, &entries, 5);
    let segment = segment_path(dir.path(), 0);
    flip_byte(&segment, fs::metadata(&segment).unwrap().len() as usize - 1);
    assert_eq!(open(dir.path(), SMALL).unwrap().1.entries, entries[..4]);
}

#[test]
fn damage_in_a_sealed_segment_is_corrupt() {
    let dir = TempDir::new().unwrap();
    write_all(
        &mut open(dir.path(), SMALL).unwrap().0,
        &(0..100).map(entry).collect::<Vec<_>>(),
        3,
    );
    let middle = segment_path(dir.path(), 2);
    let last_record = *record_offsets(&fs::read(&middle).unwrap()).last().unwrap();
    flip_byte(&middle, last_record + RECORD_HEADER_LEN - 1); // the kind byte
    assert_corrupt(open(dir.path(), SMALL), &middle, last_record);
}

#[test]
fn damage_before_valid_records_in_the_last_segment_is_corrupt() {
    let dir = TempDir::new().unwrap();
    write_all(
        &mut open(dir.path(), SMALL).unwrap().0,
        &(1..6).map(entry).collect::<Vec<_>>(),
        5,
    );
    let segment = segment_path(dir.path(), 0);
    let second = record_offsets(&fs::read(&segment).unwrap())[1];
    flip_byte(&segment, second + RECORD_HEADER_LEN);
    assert_corrupt(open(dir.path(), SMALL), &segment, second);
}

#[test]
fn corrupt_snapshot_and_missing_segment_are_corrupt() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    write_all(&mut wal, &(0..100).map(entry).collect::<Vec<_>>(), 3);
    let ticket = wal.begin_snapshot().unwrap();
    ticket.write(b"state").unwrap();
    write_all(&mut wal, &(0..100).map(entry).collect::<Vec<_>>(), 3);
    drop(wal);
    let missing = segment_path(dir.path(), ticket.index() + 1);
    fs::rename(&missing, dir.path().join("aside")).unwrap();
    assert_corrupt(open(dir.path(), SMALL), &missing, 0);
    let snapshot = snapshot_path(dir.path(), ticket.index());
    flip_byte(&snapshot, RECORD_HEADER_LEN);
    assert_corrupt(open(dir.path(), SMALL), &snapshot, 0);
}

const EMFILE: i32 = 24;

fn segment_count(dir: &Path) -> usize {
    list_dir(dir).unwrap().segments.len()
}

#[test]
fn a_segment_that_cannot_be_created_leaves_appends_in_the_current_one() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    let entries: Vec<_> = (0..120).map(entry).collect();
    wal.faults().fail_creates(u32::MAX, EMFILE);
    write_all(&mut wal, &entries[..60], 3);
    assert_eq!(segment_count(dir.path()), 1, "no segment could be created");
    assert!(fs::metadata(segment_path(dir.path(), 0)).unwrap().len() > SMALL.segment_bytes);
    // Descriptors are back: the next sync rotates.
    wal.faults().fail_creates(0, EMFILE);
    write_all(&mut wal, &entries[60..], 3);
    assert!(segment_count(dir.path()) > 1);
    drop(wal);
    assert_eq!(open(dir.path(), SMALL).unwrap().1.entries, entries);
}

#[test]
fn a_snapshot_without_file_descriptors_is_retried_and_poisons_nothing() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    write_all(&mut wal, &(0..10).map(entry).collect::<Vec<_>>(), 10);
    // The new segment of the snapshot cannot be created.
    wal.faults().fail_creates(1, EMFILE);
    let error = wal.begin_snapshot().unwrap_err();
    assert!(
        matches!(error, WalError::CannotCreate { .. }) && !error.is_fatal(),
        "{error}"
    );
    assert!(error.to_string().contains("Too many open files"), "{error}");
    wal.append(1, b"still fine").unwrap();
    wal.sync().unwrap();
    // The snapshot file cannot be created.
    let ticket = wal.begin_snapshot().unwrap();
    wal.faults().fail_creates(1, EMFILE);
    let error = ticket.write(b"state").unwrap_err();
    assert!(!error.is_fatal(), "{error}");
    assert!(matches!(
        wal.finish_snapshot(ticket),
        Err(WalError::SnapshotNotWritten { .. })
    ));
    // A later attempt succeeds and nothing was lost.
    wal.append(2, b"later").unwrap();
    let ticket = wal.begin_snapshot().unwrap();
    ticket.write(b"state").unwrap();
    wal.finish_snapshot(ticket).unwrap();
    wal.append(3, b"after").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, replay) = open(dir.path(), SMALL).unwrap();
    assert_eq!(replay.snapshot.as_deref(), Some(&b"state"[..]));
    assert_eq!(replay.entries, vec![(3, b"after".to_vec())]);
}

#[test]
fn a_failed_segment_write_is_fatal_and_poisons_the_log() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    wal.append(1, b"x").unwrap();
    wal.faults().fail_writes(1);
    let error = wal.sync().unwrap_err();
    assert!(
        matches!(error, WalError::Io { .. }) && error.is_fatal(),
        "{error}"
    );
    assert!(matches!(wal.append(1, b"y"), Err(WalError::Poisoned)));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
}

#[test]
fn a_refused_batch_leaves_nothing_buffered() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), SMALL).unwrap();
    let big = vec![0; MAX_RECORD_PAYLOAD + 1];
    let error = wal
        .append_batch([(1, &b"first"[..]), (2, &big[..])])
        .unwrap_err();
    assert!(matches!(error, WalError::RecordTooLarge { .. }) && !error.is_fatal());
    assert_eq!(wal.bytes_since_snapshot(), 0);
    wal.append_batch([(1, &b"a"[..]), (2, &b"b"[..])]).unwrap();
    assert_eq!(wal.sync().unwrap().records, 2);
}

#[test]
fn recovery_reports_what_it_truncated() {
    let dir = TempDir::new().unwrap();
    write_all(
        &mut open(dir.path(), SMALL).unwrap().0,
        &(0..3).map(entry).collect::<Vec<_>>(),
        3,
    );
    assert_eq!(open(dir.path(), SMALL).unwrap().0.truncated_tail(), None);
    let segment = segment_path(dir.path(), 0);
    let full = fs::metadata(&segment).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(full - 2)
        .unwrap();
    let (wal, _) = open(dir.path(), SMALL).unwrap();
    let torn = wal.truncated_tail().expect("a truncated tail");
    assert_eq!(
        (torn.file.as_path(), torn.dropped_bytes),
        (segment.as_path(), full - 2 - torn.offset)
    );
    drop(wal);
    // Truncated once: the next recovery finds a clean end.
    assert_eq!(open(dir.path(), SMALL).unwrap().0.truncated_tail(), None);
}

proptest! {
    #[test]
    fn any_segment_bytes_give_a_prefix_or_an_error(
        entries in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..6),
        garbage in prop::collection::vec(any::<u8>(), 0..300),
        sealed in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let dir = TempDir::new().unwrap();
        let mut bytes = vec![];
        for (kind, payload) in &entries {
            bytes.extend(record::header(*kind, payload, MAX_RECORD_PAYLOAD).unwrap());
            bytes.extend(payload);
        }
        bytes.extend(&garbage);
        for (at, value) in &flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = *value;
            }
        }
        fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
        if sealed {
            fs::write(segment_path(dir.path(), 1), b"").unwrap();
        }
        match open(dir.path(), SMALL) {
            Ok((_, replay)) => {
                prop_assert!(entries.starts_with(&replay.entries));
                prop_assert!(!sealed || replay.entries.len() == entries.len());
                prop_assert_eq!(open(dir.path(), SMALL).unwrap().1.entries, replay.entries);
            }
            Err(err) => prop_assert!(matches!(err, WalError::Corrupt { .. }), "{err}"),
        }
    }
}

/// Quick throughput look: `cargo test -p tally --release wal::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_group_commit() {
    let dir = TempDir::new().unwrap();
    let (mut wal, _) = open(dir.path(), WalOptions::default()).unwrap();
    let (records, batch, payload) = (20_000, 100, [7u8; 64]);
    let start = std::time::Instant::now();
    for i in 0..records {
        wal.append(1, &payload).unwrap();
        if (i + 1) % batch == 0 {
            wal.sync().unwrap();
        }
    }
    let elapsed = start.elapsed();
    let replay_start = std::time::Instant::now();
    drop(wal);
    let replayed = open(dir.path(), WalOptions::default())
        .unwrap()
        .1
        .entries
        .len();
    println!(
        "{records} x {}B records, {batch}/sync: {:.0} records/s, {:.2} ms/sync; replayed {replayed} in {:?}",
        payload.len(),
        records as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / (records / batch) as f64,
        replay_start.elapsed()
    );
}
