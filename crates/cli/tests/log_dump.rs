//! `runnel log dump` on logs the storage engine wrote.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use runnel_storage::record::{BatchBuilder, Header, NewRecord};
use runnel_storage::{Compression, FsyncPolicy, Log, LogConfig};

fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel")).args(args).output().expect("runnel runs")
}

fn write_log(dir: &Path) {
    let cfg = LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 512,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let log = Log::open(dir, cfg).unwrap();
    for (i, codec) in Compression::ALL.iter().cycle().take(20).enumerate() {
        let mut b = BatchBuilder::new(*codec);
        b.push(NewRecord {
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: vec![Header::new("h", Bytes::from_static(b"1"))],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        });
        b.push(NewRecord::with_value(Bytes::from(format!("second-{i}")), 1_700_000_000_000));
        log.append(&mut b.build().unwrap(), 4).unwrap();
    }
}

#[test]
fn dumps_a_clean_log_with_records() {
    let d = tempfile::tempdir().unwrap();
    write_log(d.path());
    let out = runnel(&["log", "dump", d.path().to_str().unwrap(), "--records"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches(" valid").count(), 20, "{text}");
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        assert!(text.contains(&format!("compression: {codec}")), "{codec}");
    }
    assert!(
        text.contains("| offset: 38 timestamp: 1700000000019 key: key-19 value: value-19 headers: [h=1]"),
        "{text}"
    );
    assert!(text.contains("partitionLeaderEpoch: 4"));
    assert!(text.contains("leader epochs: [4@0]"));
    assert!(
        text.contains("summary: ")
            && text.contains("20 batches, 40 records")
            && text.contains("no corruption")
    );
}

#[test]
fn exits_non_zero_on_corruption_and_names_the_offset() {
    let d = tempfile::tempdir().unwrap();
    write_log(d.path());
    let first = d.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let out = runnel(&["log", "dump", d.path().to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("CORRUPT") && text.contains("CRC mismatch"), "{text}");
    assert!(text.contains("1 problem(s)"), "{text}");
}

#[test]
fn clear_errors_for_bad_paths_and_flags() {
    let out = runnel(&["log", "dump", "/nonexistent/runnel-dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));

    let empty = tempfile::tempdir().unwrap();
    let out = runnel(&["log", "dump", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a partition directory"));

    let out = runnel(&["log", "dump", "--no-such-flag", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument"));

    let out = runnel(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("runnel "));
}
