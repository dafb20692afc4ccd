//! Functional tests of the partition log through its public API.

mod common;

use std::time::Duration;

use common::*;
use runnel_storage::batch::{self, MAGIC_V2};
use runnel_storage::{BatchError, Compression, FsyncPolicy, Log, LogConfig, LogError};

fn open(dir: &std::path::Path, policy: FsyncPolicy) -> Log {
    Log::open(dir, small_config(policy)).unwrap()
}

#[test]
fn append_assigns_contiguous_offsets_and_reads_them_back() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    let mut b1 = batch_of(&["a", "b", "c"], 10);
    let mut b2 = batch_of(&["d"], 11);
    let i1 = log.append(&mut b1, 0).unwrap();
    let i2 = log.append(&mut b2, 0).unwrap();
    assert_eq!((i1.base_offset, i1.last_offset, i1.log_end), (0, 2, 3));
    assert_eq!((i2.base_offset, i2.last_offset, i2.log_end), (3, 3, 4));
    // The caller's buffer now carries the assigned offset and epoch.
    assert_eq!(batch::check_batch(&b2, 1 << 20).unwrap().base_offset, 3);

    let (buf, info) = log.read(0, 1 << 20).unwrap();
    assert_eq!(values(&buf), vec![(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into())]);
    assert_eq!((info.first_offset, info.next_offset), (Some(0), 4));

    // A read from the middle of a batch returns that whole batch.
    let (buf, info) = log.read(1, 1 << 20).unwrap();
    assert_eq!(info.first_offset, Some(0));
    assert_eq!(values(&buf).len(), 4);
    let (buf, _) = log.read(3, 1 << 20).unwrap();
    assert_eq!(values(&buf), vec![(3, "d".into())]);
}

#[test]
fn reads_honour_max_bytes_but_always_return_one_batch() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    let big = "x".repeat(1000);
    for _ in 0..3 {
        log.append(&mut batch_of(&[&big], 0), 0).unwrap();
    }
    let (buf, info) = log.read(0, 10).unwrap();
    assert_eq!(headers(&buf).len(), 1, "one batch even though it exceeds max_bytes");
    assert_eq!(info.next_offset, 1);
    let one = buf.len();
    let (buf, _) = log.read(0, 2 * one + 5).unwrap();
    assert_eq!(headers(&buf).len(), 2);
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn an_absurd_read_size_is_capped_not_allocated() {
    let d = tempfile::tempdir().unwrap();
    let cfg =
        LogConfig { segment_bytes: 256 << 20, max_batch_bytes: 2 << 20, ..small_config(FsyncPolicy::Never) };
    let log = Log::open(d.path(), cfg).unwrap();
    let mut batch = batch_of(&[&"m".repeat(1 << 20)], 0);
    let mb = (runnel_storage::READ_BYTES_MAX >> 20) + 4;
    for _ in 0..mb {
        log.append(&mut batch, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    let (buf, info) = log.read(0, usize::MAX).unwrap();
    assert!(buf.len() <= runnel_storage::READ_BYTES_MAX, "{}", buf.len());
    assert!(buf.capacity() <= runnel_storage::READ_BYTES_MAX);
    assert_eq!(info.next_offset as usize, headers(&buf).len());
    assert!(info.next_offset > 0 && (info.next_offset as usize) < mb);
}

#[test]
fn reads_outside_the_log_are_out_of_range_and_the_end_is_empty() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    log.append(&mut batch_of(&["a", "b"], 0), 0).unwrap();
    let (buf, info) = log.read(2, 100).unwrap();
    assert!(buf.is_empty());
    assert_eq!((info.first_offset, info.next_offset), (None, 2));
    match log.read(3, 100) {
        Err(LogError::OffsetOutOfRange { requested: 3, log_start: 0, log_end: 2 }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
}

#[test]
fn upper_bound_hides_batches_past_it() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    log.append(&mut batch_of(&["a", "b"], 0), 0).unwrap();
    log.append(&mut batch_of(&["c"], 0), 0).unwrap();
    let mut buf = Vec::new();
    let info = log.read_into(0, 1 << 20, Some(2), &mut buf).unwrap();
    assert_eq!(values(&buf).len(), 2);
    assert_eq!(info.next_offset, 2);
    let info = log.read_into(2, 1 << 20, Some(2), &mut buf).unwrap();
    assert!(buf.is_empty() && info.first_offset.is_none());
}

#[test]
fn invalid_batches_are_refused_and_leave_the_log_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    log.append(&mut batch_of(&["keep"], 0), 0).unwrap();
    let before = std::fs::read(d.path().join("00000000000000000000.log")).unwrap();

    let good = batch_of(&["v"], 0);
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 0xff;
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    let truncated = good[..good.len() - 3].to_vec();
    let mut trailing = good.clone();
    trailing.extend_from_slice(&good);
    let mut oversized = batch_of(&[&"x".repeat(70 * 1024)], 0);
    let mut empty = good[..batch::BATCH_HEADER_LEN].to_vec();
    empty[8..12].copy_from_slice(&batch::MIN_BATCH_LENGTH.to_be_bytes());
    empty[23..27].copy_from_slice(&0i32.to_be_bytes());
    empty[57..61].copy_from_slice(&0i32.to_be_bytes());
    batch::write_crc(&mut empty);
    let garbage = vec![0xAB; 100];
    assert_eq!(good[16] as i8, MAGIC_V2);

    type Case = (&'static str, Vec<u8>, fn(&LogError) -> bool);
    let cases: Vec<Case> = vec![
        ("bad crc", bad_crc, |e| matches!(e, LogError::InvalidBatch(BatchError::CrcMismatch { .. }))),
        ("bad magic", bad_magic, |e| {
            matches!(e, LogError::InvalidBatch(BatchError::UnsupportedMagic { magic: 1 }))
        }),
        ("truncated", truncated, |e| matches!(e, LogError::InvalidBatch(BatchError::Truncated { .. }))),
        ("trailing bytes", trailing, |e| matches!(e, LogError::InvalidBatch(BatchError::Malformed(_)))),
        ("oversized", std::mem::take(&mut oversized), |e| {
            matches!(e, LogError::InvalidBatch(BatchError::TooLarge { .. }))
        }),
        ("no records", empty, |e| matches!(e, LogError::InvalidBatch(BatchError::Malformed(_)))),
        ("garbage", garbage, |e| matches!(e, LogError::InvalidBatch(_))),
    ];
    for (name, mut bytes, expected) in cases {
        let err = log.append(&mut bytes, 0).unwrap_err();
        assert!(expected(&err), "{name}: unexpected error {err}");
        assert!(err.to_string().starts_with("invalid batch"), "{name}: {err}");
        assert_eq!(log.log_end(), 1, "{name} changed the log");
    }
    assert_eq!(std::fs::read(d.path().join("00000000000000000000.log")).unwrap(), before);
    assert_eq!(read_all(&log), vec![(0, "keep".into())]);
}

#[test]
fn segments_roll_by_size_and_everything_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let value = "y".repeat(300);
    {
        let log = open(d.path(), FsyncPolicy::Always);
        for i in 0..100 {
            log.append(&mut batch_of(&[&format!("{i}-{value}")], i), 1).unwrap();
        }
        assert!(log.segment_count() > 5, "{} segments", log.segment_count());
        log.close().unwrap();
    }
    let log = open(d.path(), FsyncPolicy::Always);
    assert!(log.recovery_report().truncations.is_empty());
    let all = read_all(&log);
    assert_eq!(all.len(), 100);
    for (i, (o, v)) in all.iter().enumerate() {
        assert_eq!(*o, i as u64);
        assert_eq!(*v, format!("{i}-{value}"));
    }
    // Random access at every offset goes through the sparse index.
    for o in (0..100).rev() {
        let (buf, _) = log.read(o, 1).unwrap();
        assert_eq!(values(&buf)[0].0, o);
    }
    log.append(&mut batch_of(&["after reopen"], 0), 1).unwrap();
    assert_eq!(read_all(&log).last().unwrap(), &(100, "after reopen".to_string()));
}

#[test]
fn segments_roll_by_age() {
    let d = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let cfg = LogConfig { segment_ms: Some(1000), ..small_config(FsyncPolicy::Never) };
    let log = Log::open_with_clock(d.path(), cfg, clock.clone()).unwrap();
    log.append(&mut batch_of(&["a"], 0), 0).unwrap();
    clock.advance(999);
    log.append(&mut batch_of(&["b"], 0), 0).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance(1);
    log.append(&mut batch_of(&["c"], 0), 0).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert!(d.path().join("00000000000000000002.log").exists());
}

#[test]
fn retention_by_time_deletes_whole_old_segments_and_advances_log_start() {
    let d = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100_000);
    let cfg = LogConfig { retention_ms: Some(10_000), ..small_config(FsyncPolicy::Never) };
    let log = Log::open_with_clock(d.path(), cfg, clock.clone()).unwrap();
    for ts in [50_000, 51_000] {
        log.append(&mut batch_of(&["old"], ts), 0).unwrap();
        log.force_roll().unwrap();
    }
    log.append(&mut batch_of(&["new"], 95_000), 0).unwrap();
    let out = log.enforce_retention().unwrap();
    assert_eq!((out.deleted_segments, out.log_start), (2, 2));
    assert_eq!(read_all(&log), vec![(2, "new".into())]);
    assert!(matches!(log.read(0, 10), Err(LogError::OffsetOutOfRange { log_start: 2, .. })));
    assert!(!d.path().join("00000000000000000000.log").exists());

    // Left idle past retention, the log empties: the active segment is rolled and deleted.
    clock.advance(100_000);
    let out = log.enforce_retention().unwrap();
    assert_eq!((out.deleted_segments, out.log_start), (1, 3));
    assert_eq!(log.offsets().log_end, 3);
    assert!(read_all(&log).is_empty());
    drop(log);
    let log = Log::open(d.path(), small_config(FsyncPolicy::Never)).unwrap();
    assert_eq!((log.log_start(), log.log_end()), (3, 3));
}

#[test]
fn settings_changed_on_an_open_log_apply_to_later_appends_rolls_and_retention() {
    let d = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100_000);
    let cfg = LogConfig { retention_ms: None, ..small_config(FsyncPolicy::Never) };
    let log = Log::open_with_clock(d.path(), cfg.clone(), clock.clone()).unwrap();
    log.append(&mut batch_of(&["old"], 50_000), 0).unwrap();
    log.force_roll().unwrap();
    log.append(&mut batch_of(&["new"], 95_000), 0).unwrap();
    assert_eq!(log.enforce_retention().unwrap().deleted_segments, 0, "kept forever");

    // retention.ms: the old segment is now past it.
    let shorter = LogConfig { retention_ms: Some(10_000), ..cfg.clone() };
    assert!(log.update_config(&shorter).unwrap());
    assert!(!log.update_config(&shorter).unwrap(), "the same settings change nothing");
    assert_eq!(log.config().retention_ms, Some(10_000));
    let out = log.enforce_retention().unwrap();
    assert_eq!((out.deleted_segments, out.log_start), (1, 1));

    // max.message.bytes, both ways.
    let big = "x".repeat(600);
    let mut batch = batch_of(&[&big], 95_000);
    let small = LogConfig { max_batch_bytes: batch.len() - 1, ..shorter.clone() };
    log.update_config(&small).unwrap();
    assert!(matches!(log.append(&mut batch.clone(), 0), Err(LogError::InvalidBatch(_))));
    log.update_config(&LogConfig { max_batch_bytes: batch.len(), ..shorter.clone() }).unwrap();
    log.append(&mut batch, 0).unwrap();

    // The fixed settings are ignored; invalid settings are refused and change nothing.
    let fsync = LogConfig { fsync: FsyncPolicy::Always, ..log.config() };
    assert!(!log.update_config(&fsync).unwrap());
    assert_eq!(log.config().fsync, FsyncPolicy::Never);
    let before = log.config();
    assert!(log.update_config(&LogConfig { segment_bytes: 10, ..before.clone() }).is_err());
    assert_eq!(log.config(), before);
}

#[test]
fn retention_by_size_keeps_the_newest_segments_within_the_limit() {
    let d = tempfile::tempdir().unwrap();
    let cfg = LogConfig { retention_bytes: Some(3000), ..small_config(FsyncPolicy::Never) };
    let log = Log::open(d.path(), cfg).unwrap();
    let v = "z".repeat(900);
    for _ in 0..10 {
        log.append(&mut batch_of(&[&v], 0), 0).unwrap();
        log.force_roll().unwrap();
    }
    let before = log.size_bytes();
    let out = log.enforce_retention().unwrap();
    assert!(out.deleted_segments > 0);
    assert!(log.size_bytes() >= 3000 - 1000 && log.size_bytes() < before);
    assert!(log.size_bytes() <= 3000 + 1000, "{}", log.size_bytes());
    let all = read_all(&log);
    assert_eq!(all.first().unwrap().0, out.log_start);
    assert_eq!(all.last().unwrap().0, 9);
}

#[test]
fn truncation_removes_whole_batches_and_fixes_the_epoch_cache() {
    let d = tempfile::tempdir().unwrap();
    let v = "w".repeat(500);
    {
        let log = open(d.path(), FsyncPolicy::Always);
        for i in 0..30u64 {
            let epoch = (i / 10) as i32; // epochs 0, 1, 2 starting at 0, 20, 40
            log.append(&mut batch_of(&[&v, &v], 0), epoch).unwrap();
        }
        assert_eq!(log.log_end(), 60);
        assert_eq!(log.end_offset_for_epoch(1), Some((1, 40)));
        // 45 falls inside the batch [44, 45]: that whole batch goes.
        assert_eq!(log.truncate_to(45).unwrap(), 44);
        assert_eq!(log.offsets().log_end, 44);
        assert!(log.durable_end() <= 44);
        assert_eq!(log.end_offset_for_epoch(2), Some((2, 44)));
        assert_eq!(log.truncate_to(40).unwrap(), 40);
        assert_eq!(log.latest_epoch(), Some(1));
        assert_eq!(log.end_offset_for_epoch(2), None);
        assert_eq!(log.truncate_to(1000).unwrap(), 40, "beyond the end is a no-op");
        log.append(&mut batch_of(&["new"], 0), 5).unwrap();
        log.wait_durable(41, Duration::from_secs(10)).unwrap();
    }
    let log = open(d.path(), FsyncPolicy::Always);
    let all = read_all(&log);
    assert_eq!(all.len(), 41);
    assert_eq!(all[40], (40, "new".into()));
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 40)));
    assert_eq!(log.end_offset_for_epoch(4), Some((1, 40)));
    assert_eq!(log.end_offset_for_epoch(5), Some((5, 41)));
}

#[test]
fn truncating_below_the_start_restarts_the_log_there() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    log.append(&mut batch_of(&["a", "b"], 0), 3).unwrap();
    log.truncate_fully_and_start_at(500).unwrap();
    assert_eq!((log.log_start(), log.log_end()), (500, 500));
    assert!(log.epochs().is_empty());
    log.append(&mut batch_of(&["c"], 0), 4).unwrap();
    assert_eq!(read_all(&log), vec![(500, "c".into())]);
    assert_eq!(log.truncate_to(0).unwrap(), 0);
    assert_eq!((log.log_start(), log.log_end()), (0, 0));
}

#[test]
fn replicated_batches_keep_their_offsets_and_epochs() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = open(leader_dir.path(), FsyncPolicy::Never);
    for e in [1, 1, 2] {
        leader.append(&mut batch_of(&["r1", "r2"], 0), e).unwrap();
    }
    let follower = open(follower_dir.path(), FsyncPolicy::Never);
    let (bytes, _) = leader.read(0, 1 << 20).unwrap();
    let info = follower.append_replicated(&bytes).unwrap().unwrap();
    assert_eq!((info.base_offset, info.last_offset, info.log_end), (0, 5, 6));
    assert_eq!(follower.epochs(), leader.epochs());
    assert_eq!(follower.read(0, 1 << 20).unwrap().0, bytes, "byte-for-byte copy");

    // Out of order, or not starting at the log end: refused, log unchanged.
    let err = follower.append_replicated(&bytes).unwrap_err();
    assert!(err.to_string().contains("start at offset 0 but the log ends at 6"), "{err}");
    let mut gap = batch_of(&["x"], 0);
    batch::set_base_offset(&mut gap, 7);
    assert!(follower.append_replicated(&gap).is_err());
    // A batch whose base offset would end it past i64::MAX, then another: refused whole,
    // without overflowing while checking that the second follows the first.
    let mut two = batch_of(&["x", "y", "z"], 0);
    batch::set_base_offset(&mut two, i64::MAX - 1);
    two.extend_from_slice(&batch_of(&["w"], 0));
    assert!(follower.append_replicated(&two).is_err());
    assert_eq!(follower.log_end(), 6);
    assert!(follower.append_replicated(&[]).unwrap().is_none());
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    // 200 batches of 3 records; record k has timestamp 1000 + 10k, across many segments.
    for b in 0..200i64 {
        let recs = (0..3).map(|j| (format!("{:>60}", b * 3 + j), 1000 + 10 * (b * 3 + j))).collect();
        log.append(&mut batch_with(recs, Compression::None), 0).unwrap();
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 1000)));
    assert_eq!(log.offset_for_timestamp(1000).unwrap(), Some((0, 1000)));
    assert_eq!(log.offset_for_timestamp(1001).unwrap(), Some((1, 1010)));
    for k in [2i64, 3, 77, 300, 598, 599] {
        assert_eq!(
            log.offset_for_timestamp(1000 + 10 * k - 5).unwrap(),
            Some((k as u64, 1000 + 10 * k)),
            "k={k}"
        );
    }
    assert_eq!(log.offset_for_timestamp(1000 + 10 * 599 + 1).unwrap(), None);
    drop(log);
    let log = open(d.path(), FsyncPolicy::Never);
    assert_eq!(log.offset_for_timestamp(1000 + 10 * 300).unwrap(), Some((300, 4000)));
}

#[test]
fn offset_for_timestamp_with_out_of_order_timestamps() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    let ts = [50, 10, 60, 20, 70, 70, 30, 80];
    for (i, t) in ts.iter().enumerate() {
        log.append(&mut batch_with(vec![(format!("{i:>200}"), *t)], Compression::None), 0).unwrap();
    }
    // Kafka's rule: the first offset whose timestamp is >= the target.
    for target in [0, 10, 11, 50, 51, 60, 65, 70, 75, 80] {
        let expect = ts.iter().position(|&t| t >= target).map(|i| (i as u64, ts[i]));
        assert_eq!(log.offset_for_timestamp(target).unwrap(), expect, "target {target}");
    }
    assert_eq!(log.offset_for_timestamp(81).unwrap(), None);
}

#[test]
fn group_commit_one_fsync_covers_every_batch_appended_meanwhile() {
    let d = tempfile::tempdir().unwrap();
    // A very long interval: nothing syncs until flush().
    let log = open(d.path(), FsyncPolicy::Interval(Duration::from_secs(3600)));
    let start = log.durable_end();
    for _ in 0..10 {
        log.append(&mut batch_of(&["g"], 0), 0).unwrap();
    }
    assert_eq!(log.durable_end(), start);
    let syncs = log.fsync_count();
    log.flush().unwrap();
    assert_eq!(log.fsync_count(), syncs + 1);
    assert_eq!(log.durable_end(), 10);
    log.wait_durable(10, Duration::from_millis(1)).unwrap();
}

/// Records each fsync it is told about.
#[derive(Debug, Default)]
struct Syncs(std::sync::Mutex<Vec<(Duration, u64)>>);

impl runnel_storage::SyncObserver for Syncs {
    fn synced(&self, took: Duration, records: u64) {
        self.0.lock().unwrap().push((took, records));
    }
}

#[test]
fn the_sync_observer_is_told_each_group_commit_and_how_many_records_it_covered() {
    let d = tempfile::tempdir().unwrap();
    let logs = runnel_storage::LogManager::open_lazily(
        d.path(),
        LogConfig { fsync: FsyncPolicy::Interval(Duration::from_secs(3600)), ..LogConfig::default() },
    )
    .unwrap();
    let syncs = std::sync::Arc::new(Syncs::default());
    logs.set_sync_observer(syncs.clone());
    let log = logs.get_or_create(&runnel_storage::TopicPartition::new("t", 0), None).unwrap();
    for _ in 0..7 {
        log.append(&mut batch_of(&["a", "b"], 0), 0).unwrap();
    }
    log.flush().unwrap();
    log.flush().unwrap(); // Nothing new: no fsync, nothing told.
    log.append(&mut batch_of(&["c"], 0), 0).unwrap();
    log.flush().unwrap();
    let told: Vec<u64> = syncs.0.lock().unwrap().iter().map(|&(_, records)| records).collect();
    assert_eq!(told, vec![14, 1], "one fsync per flush with new data, each with the records it covered");
}

#[test]
fn wait_durable_times_out_clearly_and_refuses_offsets_past_the_end() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Interval(Duration::from_secs(3600)));
    log.append(&mut batch_of(&["g"], 0), 0).unwrap();
    let err = log.wait_durable(1, Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, LogError::DurableTimeout { offset: 1, .. }), "{err}");
    assert!(matches!(log.wait_durable(5, Duration::from_millis(20)), Err(LogError::OffsetOutOfRange { .. })));
}

#[test]
fn always_policy_makes_concurrent_appends_durable() {
    let d = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(open(d.path(), FsyncPolicy::Always));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let info = log.append(&mut batch_of(&[&format!("{t}-{i}")], 0), 0).unwrap();
                    log.wait_durable(info.log_end, Duration::from_secs(30)).unwrap();
                    let o = log.offsets();
                    assert!(o.durable_end >= info.log_end && o.durable_end <= o.log_end);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.durable_end(), 200);
    assert!(log.fsync_count() <= 200);
}

#[test]
fn never_policy_durable_end_follows_log_end() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    log.append(&mut batch_of(&["n"], 0), 0).unwrap();
    assert_eq!(log.durable_end(), 1);
    assert_eq!(log.fsync_count(), 0);
}

#[test]
fn fsync_policy_parses_and_config_is_validated() {
    assert_eq!("always".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Always);
    assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
    assert_eq!(
        "interval:250".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    for bad in ["", "sometimes", "interval:", "interval:0", "interval:-5"] {
        assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
    }
    assert_eq!(FsyncPolicy::Interval(Duration::from_millis(7)).to_string(), "interval:7");
    let d = tempfile::tempdir().unwrap();
    for bad in [
        LogConfig { segment_bytes: 10, ..LogConfig::default() },
        LogConfig { segment_bytes: 1 << 33, ..LogConfig::default() },
        LogConfig { index_interval_bytes: 0, ..LogConfig::default() },
        LogConfig { max_batch_bytes: 5, ..LogConfig::default() },
        LogConfig { retention_ms: Some(0), ..LogConfig::default() },
    ] {
        assert!(matches!(Log::open(d.path(), bad), Err(LogError::Config(_))));
    }
}

/// The header of every batch, read through `batch_headers` from `from`.
fn walked(log: &Log, from: u64) -> Vec<runnel_storage::BatchHeader> {
    log.batch_headers(from).unwrap().map(|h| h.expect("a valid header")).collect()
}

#[test]
fn batch_headers_walk_every_segment_from_any_offset_without_reading_records() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Never);
    let value = "v".repeat(300);
    let mut expected = Vec::new();
    for i in 0..40u32 {
        let values: Vec<&str> = (0..=(i % 3)).map(|_| value.as_str()).collect();
        let mut b = runnel_storage::BatchBuilder::new(Compression::None);
        for v in &values {
            b.push(runnel_storage::NewRecord::with_value(v.as_bytes().to_vec(), 5));
        }
        let mut bytes = b.producer(7, 1, i as i32 * 10).build().unwrap();
        let info = log.append(&mut bytes, 3).unwrap();
        expected.push((info.base_offset as i64, info.last_offset as i64, i as i32 * 10));
    }
    assert!(log.segment_count() > 3, "the walk must cross segments");

    let all = walked(&log, 0);
    let got: Vec<(i64, i64, i32)> =
        all.iter().map(|h| (h.base_offset, h.last_offset(), h.base_sequence)).collect();
    assert_eq!(got, expected);
    assert!(all.iter().all(|h| h.producer_id == 7 && h.producer_epoch == 1 && h.partition_leader_epoch == 3));
    assert_eq!(all, headers(&read_whole(&log)), "the same headers as reading the batches");

    // From the middle of a batch: that whole batch first, as reads do.
    let (base, last, _) = expected[20];
    let from_mid = walked(&log, (last as u64).max(base as u64));
    assert_eq!(from_mid.first().map(|h| h.base_offset), Some(base));
    assert_eq!(from_mid.len(), 20);
    assert!(walked(&log, log.log_end()).is_empty());
    assert_eq!(walked(&log, u64::MAX).len(), 0);

    // Below the log start after retention-like truncation: from the log start.
    log.truncate_to(expected[10].0 as u64).unwrap();
    assert_eq!(walked(&log, 0).len(), 10, "nothing past a truncation is seen");
}

/// Every batch of the log, concatenated.
fn read_whole(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start();
    loop {
        let (buf, info) = log.read(offset, 1 << 20).unwrap();
        if info.first_offset.is_none() {
            return out;
        }
        out.extend_from_slice(&buf);
        offset = info.next_offset;
    }
}

#[test]
fn batch_headers_see_a_snapshot_and_report_damage_per_segment() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path(), FsyncPolicy::Always);
    let value = "w".repeat(500);
    for _ in 0..30 {
        log.append(&mut batch_of(&[&value], 1), 0).unwrap();
    }
    log.flush().unwrap();
    let segments = log.segment_count();
    assert!(segments >= 3);
    let mut walk = log.batch_headers(0).unwrap();
    let first = walk.next().unwrap().unwrap();
    log.append(&mut batch_of(&["later"], 1), 0).unwrap();
    let rest: Vec<_> = walk.map(|h| h.unwrap()).collect();
    assert_eq!(1 + rest.len(), 30, "a batch appended after the call is not seen");
    assert_eq!(first.base_offset, 0);
    drop(log);

    // Damage the second batch header of the first segment (its magic byte).
    let first_segment = d.path().join(format!("{:020}.log", 0));
    let bytes = std::fs::read(&first_segment).unwrap();
    let second = runnel_storage::BatchHeader::parse(&bytes, 1 << 20).unwrap().total_len();
    let mut damaged = bytes.clone();
    damaged[second + 16] = 9;
    std::fs::write(&first_segment, &damaged).unwrap();
    let log = open(d.path(), FsyncPolicy::Always);
    let results: Vec<_> = log.batch_headers(0).unwrap().collect();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(errors, 1, "one error for the damaged segment: {results:?}");
    assert!(results[0].is_ok(), "the batch before the damage is seen");
    assert!(matches!(results[1], Err(LogError::Corrupt { .. })));
    let last = results.last().unwrap().as_ref().unwrap();
    assert_eq!(last.next_offset() as u64, log.log_end(), "later segments are still walked");
}
