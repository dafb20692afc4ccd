//! Damage on disk: detected, reported with its offset, never served; torn tails repaired.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use common::*;
use runnel_storage::dump::{DumpOptions, dump_partition};
use runnel_storage::{FsyncPolicy, Log, LogError};

fn seg(dir: &Path, base: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}.{suffix}"))
}

/// Writes 60 single-record batches of ~300 bytes into small segments; returns segment bases.
fn write_log(dir: &Path) -> Vec<u64> {
    let log = Log::open(dir, small_config(FsyncPolicy::Always)).unwrap();
    for i in 0..60 {
        log.append(&mut batch_of(&[&format!("{i:0>300}")], i), 2).unwrap();
    }
    log.close().unwrap();
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    bases.sort();
    assert!(bases.len() >= 4, "{bases:?}");
    bases
}

fn flip_byte(path: &Path, pos: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[pos as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn dump(dir: &Path) -> (runnel_storage::dump::DumpSummary, String) {
    let mut out = Vec::new();
    let s = dump_partition(dir, &DumpOptions { records: true, ..Default::default() }, &mut out).unwrap();
    (s, String::from_utf8(out).unwrap())
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_reported_and_never_served() {
    let d = tempfile::tempdir().unwrap();
    let bases = write_log(d.path());
    let (first, second) = (bases[0], bases[1]);
    // A byte inside the value of the second batch of the first segment.
    let batch_len = {
        let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
        log.read(0, 1).unwrap().0.len() as u64
    };
    flip_byte(&seg(d.path(), first, "log"), batch_len + 100);

    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    match log.read(1, 1) {
        Err(LogError::Corrupt { offset: 1, position, segment, .. }) => {
            assert_eq!(position, batch_len);
            assert_eq!(segment, seg(d.path(), first, "log"));
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // A read starting before it stops short of it rather than serving it.
    let err = log.read(0, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("CRC mismatch"), "{err}");
    assert_eq!(values(&log.read(0, 1).unwrap().0), vec![(0, format!("{:0>300}", 0))]);
    // Everything in other segments is served as usual.
    let (buf, _) = log.read(second, 1 << 20).unwrap();
    assert_eq!(values(&buf)[0].0, second);

    let (summary, text) = dump(d.path());
    assert_eq!(summary.problems.len(), 1, "{text}");
    assert_eq!(summary.problems[0].offset, 1);
    assert_eq!(summary.problems[0].position, batch_len);
    assert!(text.contains("CORRUPT"), "{text}");
    // The dump steps over the bad batch and still lists the rest.
    assert_eq!(summary.batches, 59, "{text}");
}

#[test]
fn truncated_tail_is_repaired_at_the_last_valid_batch() {
    let d = tempfile::tempdir().unwrap();
    let bases = write_log(d.path());
    let tail = seg(d.path(), *bases.last().unwrap(), "log");
    let len = fs::metadata(&tail).unwrap().len();
    OpenOptions::new().write(true).open(&tail).unwrap().set_len(len - 7).unwrap();

    let log = Log::open(d.path(), small_config(FsyncPolicy::Always)).unwrap();
    let report = log.recovery_report();
    assert_eq!(report.truncations.len(), 1, "{report:?}");
    assert!(report.corruptions.is_empty());
    assert_eq!(log.log_end(), 59, "the torn last batch is gone");
    let all = read_all(&log);
    assert_eq!(all.len(), 59);
    assert!(all.iter().enumerate().all(|(i, (o, v))| *o == i as u64 && *v == format!("{i:0>300}")));
    log.append(&mut batch_of(&["after repair"], 0), 3).unwrap();
    assert_eq!(read_all(&log)[59], (59, "after repair".into()));
    log.close().unwrap();
    assert!(dump(d.path()).0.is_clean());
}

#[test]
fn zeroed_or_garbage_tail_is_cut_off() {
    for garbage in [vec![0u8; 4096], b"\x00\x00\x00\x00\x00\x00\x00\x3c\xff\xff\xff\xff\x02rubbish".to_vec()]
    {
        let d = tempfile::tempdir().unwrap();
        let bases = write_log(d.path());
        let tail = seg(d.path(), *bases.last().unwrap(), "log");
        let mut bytes = fs::read(&tail).unwrap();
        bytes.extend_from_slice(&garbage);
        fs::write(&tail, bytes).unwrap();
        assert!(!dump(d.path()).0.is_clean());

        let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
        assert_eq!(log.recovery_report().truncations[0].bytes_removed, garbage.len() as u64);
        assert_eq!(log.log_end(), 60);
        assert_eq!(read_all(&log).len(), 60);
        drop(log);
        assert!(dump(d.path()).0.is_clean());
    }
}

#[test]
fn corrupt_batch_in_the_tail_segment_is_truncated_on_recovery() {
    let d = tempfile::tempdir().unwrap();
    let bases = write_log(d.path());
    let tail_base = *bases.last().unwrap();
    let tail = seg(d.path(), tail_base, "log");
    let len = fs::metadata(&tail).unwrap().len();
    flip_byte(&tail, len - 10);
    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert_eq!(log.log_end(), 59);
    assert!(log.recovery_report().truncations[0].reason.contains("CRC"));
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let bases = write_log(d.path());
    fs::remove_file(seg(d.path(), bases[0], "index")).unwrap();
    fs::remove_file(seg(d.path(), bases[1], "timeindex")).unwrap();
    // Right size, wrong content.
    let idx = seg(d.path(), bases[2], "index");
    let n = fs::metadata(&idx).unwrap().len().max(16) as usize;
    fs::write(&idx, vec![0xEE; n]).unwrap();
    // Torn: not a whole number of entries.
    fs::write(seg(d.path(), bases[3], "index"), [1u8, 2, 3]).unwrap();

    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert!(log.recovery_report().truncations.is_empty());
    assert!(log.recovery_report().corruptions.is_empty());
    for o in 0..60 {
        let (buf, _) = log.read(o, 1).unwrap();
        assert_eq!(values(&buf), vec![(o, format!("{o:0>300}"))]);
    }
    assert_eq!(log.offset_for_timestamp(30).unwrap(), Some((30, 30)));
    drop(log);
    // The rebuilt indexes were written out: they load as consistent next time.
    for b in &bases[..4] {
        assert!(fs::metadata(seg(d.path(), *b, "index")).unwrap().len() > 0, "index of {b}");
        assert!(fs::metadata(seg(d.path(), *b, "timeindex")).unwrap().len() > 0, "timeindex of {b}");
    }
}

#[test]
fn damaged_sealed_segment_without_index_is_reported_not_truncated() {
    let d = tempfile::tempdir().unwrap();
    let bases = write_log(d.path());
    let first = seg(d.path(), bases[0], "log");
    let before = fs::metadata(&first).unwrap().len();
    flip_byte(&first, 200);
    fs::remove_file(seg(d.path(), bases[0], "index")).unwrap();

    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert_eq!(log.recovery_report().corruptions.len(), 1, "{:?}", log.recovery_report());
    assert!(log.recovery_report().truncations.is_empty());
    assert_eq!(fs::metadata(&first).unwrap().len(), before, "a sealed segment is never cut");
    let r = log.read(0, 1);
    assert!(matches!(r, Err(LogError::Corrupt { offset: 0, .. })), "{r:?}");
    // Only the damaged batch is refused; its neighbour's header still leads the way.
    assert_eq!(values(&log.read(1, 1).unwrap().0), vec![(1, format!("{:0>300}", 1))]);
    let (buf, _) = log.read(bases[1], 1).unwrap();
    assert_eq!(values(&buf)[0].0, bases[1]);
    assert_eq!(log.log_end(), 60);
}

#[test]
fn damaged_epoch_checkpoint_is_rebuilt_from_the_log() {
    let d = tempfile::tempdir().unwrap();
    {
        let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
        for e in [1, 1, 4, 4, 9] {
            log.append(&mut batch_of(&["e"], 0), e).unwrap();
        }
    }
    fs::write(d.path().join("leader-epoch-checkpoint"), b"runnel-leader-epoch-checkpoint 1\n1\n5 0\n")
        .unwrap();
    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert!(log.recovery_report().epoch_cache_rebuilt);
    let got: Vec<(i32, u64)> = log.epochs().iter().map(|e| (e.epoch, e.start_offset)).collect();
    assert_eq!(got, vec![(1, 0), (4, 2), (9, 4)]);
    drop(log);
    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert!(!log.recovery_report().epoch_cache_rebuilt, "the rebuilt checkpoint was persisted");
}

#[test]
fn dump_of_a_directory_without_segments_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let err = dump_partition(d.path(), &DumpOptions::default(), &mut out).unwrap_err();
    assert!(err.to_string().contains("not a partition directory"), "{err}");
}
