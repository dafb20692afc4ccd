//! Crash tests with real processes.
//!
//! - `kill9_during_appends_loses_nothing_durable`: a child process appends to a log with
//!   `fsync = always`, reporting each durable advance; the parent kills it with SIGKILL at a
//!   random moment, checks a recovered copy of the directory, and starts the next child on
//!   the same directory, so recovery runs on a growing, multi-segment log (and kills also land
//!   during a child's own recovery, its rolls and its epoch checkpoint writes).
//! - `disk_full_append_fails_cleanly`: a child runs under `ulimit -f` with SIGXFSZ ignored, so
//!   a segment write past the limit fails with EFBIG; the failed append must leave nothing
//!   behind.
//! - `kill9_during_truncation_leaves_a_prefix`: a child truncates a log of many segments and
//!   is killed while it deletes them; what is left must still be a contiguous log.
//!
//! The children are the `*_child` tests of this same binary, which do nothing unless their
//! environment variable is set. Random choices come from a seed that is printed, fixed
//! unless `RUNNEL_CRASH_SEED` is set.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel_storage::batch::BatchIter;
use runnel_storage::dump::{DumpOptions, dump_partition};
use runnel_storage::record::{BatchBuilder, DecodeLimits, NewRecord, decode_batch};
use runnel_storage::{BatchHeader, Compression, EpochEntry, FsyncPolicy, Log, LogConfig, SystemClock};

const CRASH_CHILD_ENV: &str = "RUNNEL_CRASH_CHILD_DIR";
const CRASH_EPOCH_ENV: &str = "RUNNEL_CRASH_CHILD_EPOCH";
const DISK_FULL_CHILD_ENV: &str = "RUNNEL_DISK_FULL_CHILD_DIR";
const DEFAULT_SEED: u64 = 0xc0a5_d15c;

/// How many times the appending child is killed.
const KILLS: usize = 24;
/// Range of the delay between starting a child and killing it, for kills meant to land while
/// it starts and recovers the log.
const EARLY_KILL_MS: std::ops::Range<u64> = 0..40;
/// Range of the delay between the child reporting the log open and killing it.
const KILL_MS: std::ops::Range<u64> = 0..100;
/// A child that is never killed gives up after this long.
const CHILD_MAX_RUN: Duration = Duration::from_secs(20);

/// `ulimit -f` for the disk-full child, in the 512-byte blocks dash uses (checked at run time
/// through the child's `/proc/self/limits`).
const FILE_SIZE_LIMIT_BLOCKS: u64 = 256;
const FILE_SIZE_LIMIT_BYTES: u64 = FILE_SIZE_LIMIT_BLOCKS * 512;

fn crash_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 1024,
        max_batch_bytes: 64 * 1024,
        fsync: FsyncPolicy::Always,
        // Reservations beyond the data are in play when the kill lands.
        preallocate_bytes: 256 * 1024,
    }
}

fn disk_full_config() -> LogConfig {
    // Segments larger than the file size limit: the failure hits inside a segment write.
    LogConfig { segment_bytes: 1 << 20, ..crash_config() }
}

fn seed() -> u64 {
    match std::env::var("RUNNEL_CRASH_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("RUNNEL_CRASH_SEED={s:?} is not a number")),
        Err(_) => DEFAULT_SEED,
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic content: what is stored at each offset, and how batches are made
// ---------------------------------------------------------------------------------------

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value of the record at `offset`: `v<offset>` padded to a length derived from the
/// offset (now and then several KB, so some batches are large and a kill can tear their
/// write).
fn value_for(offset: u64) -> String {
    let h = mix(offset);
    let len = if h.is_multiple_of(64) { 1_000 + (h >> 8) % 7_000 } else { 8 + (h >> 8) % 100 } as usize;
    let mut v = format!("v{offset}");
    let pad = char::from(b'a' + (offset % 26) as u8);
    while v.len() < len {
        v.push(pad);
    }
    v
}

/// The batch the children append at `base`: 1 to 8 records, now and then compressed.
fn batch_at(base: u64, timestamp_ms: i64) -> Vec<u8> {
    let h = mix(base ^ 0xba7c);
    let count = 1 + h % 8;
    let compression =
        if h.is_multiple_of(5) { Compression::ALL[((h >> 8) % 5) as usize] } else { Compression::None };
    let mut b = BatchBuilder::new(compression);
    for offset in base..base + count {
        b.push(NewRecord::with_value(Bytes::from(value_for(offset)), timestamp_ms));
    }
    b.build().expect("valid batch")
}

/// Appends the batch for the log end; checks it got the offsets its values were made for.
fn append_next(log: &Log, epoch: i32) -> runnel_storage::error::Result<u64> {
    use runnel_storage::Clock;
    let base = log.log_end();
    let mut batch = batch_at(base, SystemClock.now_ms());
    let info = log.append(&mut batch, epoch)?;
    assert_eq!(info.base_offset, base, "the child is the only writer");
    Ok(info.log_end)
}

// ---------------------------------------------------------------------------------------
// Checking a log
// ---------------------------------------------------------------------------------------

/// Every batch of the log from its start: header and `(offset, value)` of each record.
fn scan(log: &Log) -> Vec<(BatchHeader, Vec<(u64, String)>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start();
    loop {
        let (buf, info) = log.read(offset, 1 << 20).unwrap_or_else(|e| panic!("read at {offset}: {e}"));
        if info.first_offset.is_none() {
            assert_eq!(offset, log.log_end(), "a read before the log end returned nothing");
            break;
        }
        for item in BatchIter::new(&buf, 1 << 30) {
            let (h, bytes) = item.expect("served batches are valid");
            let (_, records) = decode_batch(bytes, &DecodeLimits::default()).expect("records decode");
            let recs = records
                .into_iter()
                .map(|r| {
                    let v = r.value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
                    (r.offset as u64, v)
                })
                .collect();
            out.push((h, recs));
        }
        offset = info.next_offset;
    }
    out
}

/// The leader-epoch cache a log with these batches must have: one entry where the epoch
/// of the batches changes.
fn epochs_of(batches: &[(BatchHeader, Vec<(u64, String)>)]) -> Vec<EpochEntry> {
    let mut out: Vec<EpochEntry> = Vec::new();
    for (h, _) in batches {
        if out.last().is_none_or(|e| e.epoch != h.partition_leader_epoch) {
            out.push(EpochEntry { epoch: h.partition_leader_epoch, start_offset: h.base_offset as u64 });
        }
    }
    out
}

/// Checks the content of a log whose records were all made by [`batch_at`]: offsets
/// contiguous from 0, every value as expected, the epoch cache consistent with the batches.
/// Returns the number of batches.
fn check_content(log: &Log, ctx: &str) -> usize {
    let o = log.offsets();
    assert_eq!(o.log_start, 0, "{ctx}: nothing deletes from the start");
    assert_eq!(o.durable_end, o.log_end, "{ctx}: a reopened log is durable to its end");
    let batches = scan(log);
    let mut expected = 0u64;
    for (h, recs) in &batches {
        assert_eq!(h.base_offset as u64, expected, "{ctx}: batch offsets not contiguous");
        for (offset, value) in recs {
            assert_eq!(*offset, expected, "{ctx}: record offsets not contiguous");
            assert!(*value == value_for(*offset), "{ctx}: wrong value at offset {offset}: {value:?}");
            expected += 1;
        }
    }
    assert_eq!(expected, o.log_end, "{ctx}: records end before the log end");
    assert_eq!(log.epochs(), epochs_of(&batches), "{ctx}: leader-epoch cache does not match the batches");
    batches.len()
}

/// `dump` of a partition directory, printed output kept for failure messages.
fn dump(dir: &Path) -> (runnel_storage::dump::DumpSummary, String) {
    let mut out = Vec::new();
    let opts = DumpOptions::default();
    let summary = dump_partition(dir, &opts, &mut out).expect("dump runs");
    (summary, String::from_utf8_lossy(&out).into_owned())
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).expect("open segment to append");
    f.write_all(bytes).expect("append bytes");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
    }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// Output of a child, collected by reader threads.
struct ChildIo {
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<String>,
    /// Largest `durable <end>` line seen so far.
    durable: Arc<AtomicU64>,
    /// Every whole line the child prints, as it prints it.
    lines: mpsc::Receiver<String>,
}

/// Waits until the child prints a line starting with `prefix`; false if it ends first or
/// `timeout` passes.
fn wait_for_line(lines: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Starts this test binary running only `test`, with `env` set, optionally under a shell
/// prefix (`sh -c '...; exec "$0" "$@"'`).
fn spawn_child(test: &str, env: &[(&str, String)], shell: Option<&str>) -> (Child, ChildIo) {
    let exe = std::env::current_exe().expect("current exe");
    let args = ["--exact", test, "--nocapture", "--test-threads=1"];
    let mut cmd = match shell {
        None => Command::new(&exe),
        Some(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script).arg(&exe);
            c
        }
    };
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child");
    let durable = Arc::new(AtomicU64::new(0));
    let out = child.stdout.take().expect("piped stdout");
    let seen = Arc::clone(&durable);
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(out);
        let mut line = String::new();
        // Only whole lines count: the kill can cut the last one short.
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) && line.ends_with('\n') {
            if let Some(end) = line.trim_end().strip_prefix("durable ").and_then(|n| n.parse().ok()) {
                seen.fetch_max(end, Ordering::SeqCst);
            }
            let _ = lines_tx.send(line.trim_end().to_string());
            lines.push(line.trim_end().to_string());
            line.clear();
        }
        lines
    });
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, ChildIo { stdout, stderr, durable, lines: lines_rx })
}

/// The appending child: opens the log (recovering it), fills it to a few segments if it is
/// smaller, then appends and waits for durability in a loop, printing `durable <end>` after
/// each durable advance, until killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else { return };
    let epoch: i32 = std::env::var(CRASH_EPOCH_ENV).expect("epoch").parse().expect("epoch number");
    let started = Instant::now();
    let log = Log::open(&dir, crash_config()).expect("child opens the log");
    let mut out = std::io::stdout().lock();
    // (A newline first: the test harness has printed "test crash_child ... " without one.)
    writeln!(out, "\nopened {}", log.log_end()).and_then(|()| out.flush()).expect("stdout");
    // Several segments early, whatever the machine's speed, so recovery always deals with
    // sealed segments as well as the tail.
    if log.segment_count() < 3 {
        while log.segment_count() < 3 {
            append_next(&log, epoch).expect("append");
        }
        let end = log.log_end();
        log.wait_durable(end, Duration::from_secs(10)).expect("wait durable");
        writeln!(out, "durable {end}").and_then(|()| out.flush()).expect("stdout");
    }
    let mut round = 0u64;
    while started.elapsed() < CHILD_MAX_RUN {
        // One to four batches per durable wait, so one fsync often covers several.
        let mut end = log.log_end();
        for _ in 0..1 + mix(round) % 4 {
            end = append_next(&log, epoch).expect("append");
        }
        log.wait_durable(end, Duration::from_secs(10)).expect("wait durable");
        if writeln!(out, "durable {end}").and_then(|()| out.flush()).is_err() {
            return; // the parent is gone
        }
        round += 1;
    }
}

#[test]
fn kill9_during_appends_loses_nothing_durable() {
    let seed = seed();
    println!("kill -9 test: seed {seed} (set RUNNEL_CRASH_SEED to change)");
    let result = std::panic::catch_unwind(|| kill9_rounds(seed));
    if let Err(e) = result {
        eprintln!("kill -9 test failed with seed {seed} (RUNNEL_CRASH_SEED={seed} to reproduce the timings)");
        std::panic::resume_unwind(e);
    }
}

fn kill9_rounds(seed: u64) {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("topic-0");
    let mut max_durable = 0u64;
    let mut torn = 0usize;
    let mut kills_after_progress = 0usize;
    for round in 0..KILLS {
        // A quarter of the kills come at a random time after the start (often during the
        // child's startup or recovery); the rest at a random time after the log is open.
        let early = rng.gen_bool(0.25);
        let delay = Duration::from_millis(rng.gen_range(if early { EARLY_KILL_MS } else { KILL_MS }));
        let env = [(CRASH_CHILD_ENV, dir.display().to_string()), (CRASH_EPOCH_ENV, round.to_string())];
        let (mut child, io) = spawn_child("crash_child", &env, None);
        if !early {
            // False if the child fails first: the checks below show why.
            wait_for_line(&io.lines, "opened ", Duration::from_secs(30));
        }
        std::thread::sleep(delay);
        child.kill().expect("kill child");
        let status = child.wait().expect("wait for child");
        let lines = io.stdout.join().expect("stdout reader");
        let stderr = io.stderr.join().expect("stderr reader");
        let durable = io.durable.load(Ordering::SeqCst);
        let when = if early { "after the start" } else { "after the open" };
        let ctx = format!("round {round} (seed {seed}, killed {delay:?} {when})");
        assert_eq!(
            status.signal(),
            Some(9),
            "{ctx}: the child should have been killed by SIGKILL, but {status}\nstdout: {lines:?}\nstderr: {stderr}"
        );
        if lines.iter().any(|l| l.starts_with("durable ")) {
            kills_after_progress += 1;
        }
        max_durable = max_durable.max(durable);
        if !dir.exists() {
            continue; // killed before it created the directory
        }

        // Now and then, also leave a torn write at the end of the tail segment, as a crash in
        // the middle of a large write (or a power loss) would: the start of a batch, or zeros.
        let tail = segment_files(&dir).pop();
        let injected = match (&tail, rng.gen_range(0..3)) {
            (Some(tail), 1) => {
                let batch = batch_at(max_durable, 0);
                let len = rng.gen_range(1..batch.len());
                append_bytes(tail, &batch[..len]);
                len
            }
            (Some(tail), 2) => {
                let len = rng.gen_range(1..200);
                append_bytes(tail, &vec![0u8; len]);
                len
            }
            _ => 0,
        };

        // Check a copy, so the next child still finds (and must recover) the torn log.
        let copy = tmp.path().join(format!("copy-{round}"));
        copy_dir(&dir, &copy);
        let segments = segment_files(&copy);
        if let Some(tail) = segments.last() {
            // Before recovery, only the tail segment may be damaged.
            let (raw, text) = dump(&copy);
            for p in &raw.problems {
                assert_eq!(&p.segment, tail, "{ctx}: damage before the tail segment\n{text}");
            }
        }
        let log = Log::open(&copy, crash_config()).unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
        let report = log.recovery_report().clone();
        assert!(report.corruptions.is_empty(), "{ctx}: recovery found corruption: {:?}", report.corruptions);
        assert!(!report.epoch_cache_rebuilt, "{ctx}: the epoch checkpoint was damaged");
        for t in &report.truncations {
            assert_eq!(Some(&t.segment), segments.last(), "{ctx}: truncated a segment other than the tail");
        }
        if injected > 0 {
            assert_eq!(report.truncations.len(), 1, "{ctx}: injected torn tail not repaired: {report:?}");
            assert!(report.truncations[0].bytes_removed >= injected as u64, "{ctx}: {report:?}");
        }
        torn += report.truncations.len();
        let end = log.log_end();
        assert!(
            end >= max_durable,
            "{ctx}: log end {end} after recovery is below the durable end {max_durable} reported before"
        );
        let batches = check_content(&log, &ctx);
        log.close().expect("close");
        let (summary, text) = dump(&copy);
        assert!(summary.is_clean(), "{ctx}: dump after recovery found problems\n{text}");
        assert_eq!(summary.records, end, "{ctx}: dump counts other records than the log holds");
        assert_eq!(summary.batches, batches as u64, "{ctx}: dump counts other batches than the log serves");
        fs::remove_dir_all(&copy).expect("remove copy");
        println!(
            "round {round:2}: killed {:3} ms {when:15}, reported durable {durable:6}, recovered end {end:6}, \
             {:3} segments, {injected:3} bytes of torn write injected, truncations {:?}",
            delay.as_millis(),
            segments.len(),
            report.truncations.iter().map(|t| t.bytes_removed).collect::<Vec<_>>()
        );
    }

    // The real directory, recovered once more, holds the same.
    let log = Log::open(&dir, crash_config()).expect("final open");
    assert!(log.recovery_report().corruptions.is_empty());
    check_content(&log, "final");
    let segments = log.segment_count();
    let end = log.log_end();
    log.close().expect("close");
    let (summary, text) = dump(&dir);
    assert!(summary.is_clean(), "final dump found problems\n{text}");
    println!(
        "{KILLS} kills in {:?}: {kills_after_progress} after some durable progress, log end {end}, \
         {segments} segments, {torn} torn tail(s) repaired",
        started.elapsed()
    );
    // The run must have exercised what it is for.
    assert!(kills_after_progress > 0, "no child made progress before being killed");
    assert!(segments >= 3, "the log never grew to a few segments");
}

// ---------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------

/// The file size limit of this process, in bytes, from `/proc/self/limits`.
fn file_size_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max file size"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The disk-full child: appends (each acknowledged once durable) until an append fails, then
/// reports the error and the last acknowledged end, and checks that the failure changed
/// nothing and the log still takes a batch that fits.
#[test]
fn disk_full_child() {
    let Some(dir) = std::env::var_os(DISK_FULL_CHILD_ENV) else { return };
    let mut out = std::io::stdout().lock();
    let limit = file_size_limit();
    // (A newline first: the test harness has printed "test disk_full_child ... " without one.)
    writeln!(out, "\nlimit {}", limit.map_or("none".to_string(), |l| l.to_string())).expect("stdout");
    let log = Log::open(&dir, disk_full_config()).expect("child opens the log");
    let mut acked = log.log_end();
    let error = loop {
        match append_next(&log, 0) {
            Ok(end) => {
                log.wait_durable(end, Duration::from_secs(10)).expect("wait durable");
                acked = end;
            }
            Err(e) => break e,
        }
        assert!(log.size_bytes() <= 2 * FILE_SIZE_LIMIT_BYTES, "the file size limit is not enforced");
    };
    writeln!(out, "error {error}").expect("stdout");
    writeln!(out, "acked {acked}").expect("stdout");
    assert_eq!(log.log_end(), acked, "a failed append moved the log end");
    // The same append fails again and still changes nothing.
    assert!(append_next(&log, 0).is_err(), "the append that hit the limit succeeded on retry");
    assert_eq!(log.log_end(), acked, "a failed append moved the log end");
    assert_eq!(log.durable_end(), acked);
    // The log is still usable: after a roll (a new, empty segment file) a small batch goes in.
    log.force_roll().expect("roll after the failed append");
    let mut tiny = common::batch_of(&["t"], 0);
    let info = log.append(&mut tiny, 0).expect("a batch that fits is accepted after the failure");
    assert_eq!(info.base_offset, acked);
    log.wait_durable(info.log_end, Duration::from_secs(10)).expect("wait durable");
    writeln!(out, "tiny {}", info.log_end).expect("stdout");
    log.close().expect("close");
    writeln!(out, "done").expect("stdout");
}

#[test]
fn disk_full_append_fails_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("topic-0");
    // dash's ulimit -f counts 512-byte blocks; the child reports the limit in bytes.
    let script = format!("trap '' XFSZ; ulimit -f {FILE_SIZE_LIMIT_BLOCKS} && exec \"$0\" \"$@\"");
    let (mut child, io) =
        spawn_child("disk_full_child", &[(DISK_FULL_CHILD_ENV, dir.display().to_string())], Some(&script));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the disk-full child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines = io.stdout.join().expect("stdout reader");
    let stderr = io.stderr.join().expect("stderr reader");
    let shown = format!("status {status}\nstdout: {lines:#?}\nstderr: {stderr}");
    assert!(status.success(), "the disk-full child failed (a panic, or killed by SIGXFSZ)\n{shown}");
    let field = |name: &str| lines.iter().find_map(|l| l.strip_prefix(name).map(str::to_string));
    assert_eq!(
        field("limit "),
        Some(FILE_SIZE_LIMIT_BYTES.to_string()),
        "ulimit -f did not set the expected limit (is /bin/sh's unit not 512 bytes?)\n{shown}"
    );
    let error = field("error ").unwrap_or_else(|| panic!("the child reported no write error\n{shown}"));
    assert!(
        error.contains("append to segment") && error.contains("(os error 27)"),
        "expected EFBIG from a segment write, got: {error}"
    );
    let acked: u64 = field("acked ").and_then(|a| a.parse().ok()).expect("acked line");
    let tiny: u64 = field("tiny ").and_then(|a| a.parse().ok()).expect("tiny line");
    assert!(lines.iter().any(|l| l == "done"), "the child did not finish its checks\n{shown}");
    assert!(acked > 0, "nothing was appended before the limit");
    assert_eq!(tiny, acked + 1);
    println!(
        "disk full: error {error:?}, acknowledged end {acked}, then {tiny} after a roll and a small batch"
    );

    let log = Log::open(&dir, disk_full_config()).expect("reopen");
    let report = log.recovery_report().clone();
    assert!(report.truncations.is_empty(), "the failed append left bytes behind: {:?}", report.truncations);
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
    assert!(!report.epoch_cache_rebuilt);
    assert_eq!(log.log_end(), tiny, "log end after reopen");
    assert_eq!(log.segment_count(), 2);
    for seg in segment_files(&dir) {
        let len = fs::metadata(&seg).expect("stat").len();
        assert!(len <= FILE_SIZE_LIMIT_BYTES, "{} is {len} bytes, over the limit", seg.display());
    }
    let batches = scan(&log);
    let mut expected = 0;
    for (h, recs) in &batches {
        assert_eq!(h.base_offset as u64, expected);
        for (offset, value) in recs {
            assert_eq!(*offset, expected);
            if *offset < acked {
                assert!(*value == value_for(*offset), "wrong value at offset {offset}: {value:?}");
            } else {
                assert_eq!(value, "t", "the tiny batch appended after the failure");
            }
            expected += 1;
        }
    }
    assert_eq!(expected, tiny);
    log.close().expect("close");
    let (summary, text) = dump(&dir);
    assert!(summary.is_clean(), "dump found problems\n{text}");
}

// ---------------------------------------------------------------------------------------
// Crash during truncation
// ---------------------------------------------------------------------------------------

const TRUNCATE_CHILD_ENV: &str = "RUNNEL_TRUNCATE_CHILD_DIR";
/// Segments of the log the truncation child cuts back to one record.
const TRUNCATE_SEGMENTS: u64 = 600;
const TRUNCATE_ATTEMPTS: usize = 8;

fn truncate_config() -> LogConfig {
    LogConfig { segment_bytes: 1024, fsync: FsyncPolicy::Never, ..crash_config() }
}

/// The truncation child: opens the log and truncates it to offset 1, as a follower whose log
/// diverged from the leader's does; then waits to be killed.
#[test]
fn truncate_child() {
    let Some(dir) = std::env::var_os(TRUNCATE_CHILD_ENV) else { return };
    let log = Log::open(&dir, truncate_config()).expect("child opens the log");
    let mut out = std::io::stdout().lock();
    writeln!(out, "\ntruncating").and_then(|()| out.flush()).expect("stdout");
    let end = log.truncate_to(1).expect("truncate");
    writeln!(out, "truncated {end}").and_then(|()| out.flush()).expect("stdout");
    std::thread::sleep(CHILD_MAX_RUN);
}

/// A kill in the middle of `truncate_to` must leave a log that is a prefix of the one before:
/// contiguous, with nothing reported corrupt. (Truncation that deletes the doomed segments
/// oldest first leaves a gap followed by segments that should have gone, when it is cut
/// short.)
#[test]
fn kill9_during_truncation_leaves_a_prefix() {
    let seed = seed();
    println!("truncation kill test: seed {seed} (set RUNNEL_CRASH_SEED to change)");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7a);
    let mut cut_short = 0;
    for attempt in 0..TRUNCATE_ATTEMPTS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("topic-0");
        {
            // One batch of one record per segment.
            let log = Log::open(&dir, truncate_config()).expect("open");
            for offset in 0..TRUNCATE_SEGMENTS {
                let mut b = BatchBuilder::new(Compression::None);
                b.push(NewRecord::with_value(Bytes::from(value_for(offset)), 0));
                log.append(&mut b.build().expect("batch"), 0).expect("append");
                log.force_roll().expect("roll");
            }
            log.close().expect("close");
        }
        let before = segment_files(&dir).len();
        let (mut child, io) =
            spawn_child("truncate_child", &[(TRUNCATE_CHILD_ENV, dir.display().to_string())], None);
        // Deleting the segments takes some milliseconds: kill somewhere in them.
        let delay = Duration::from_micros(rng.gen_range(0..6_000));
        let started = wait_for_line(&io.lines, "truncating", Duration::from_secs(30));
        std::thread::sleep(delay);
        child.kill().expect("kill child");
        let status = child.wait().expect("wait for child");
        let lines = io.stdout.join().expect("stdout reader");
        let stderr = io.stderr.join().expect("stderr reader");
        let ctx = format!("attempt {attempt} (seed {seed}, killed {delay:?} into the truncation)");
        assert!(started, "{ctx}: the child never started truncating: {status}\n{lines:?}\n{stderr}");
        assert_eq!(status.signal(), Some(9), "{ctx}: {status}\n{lines:?}\n{stderr}");
        let after = segment_files(&dir).len();
        if after > 2 && after < before {
            cut_short += 1;
        }

        let log = Log::open(&dir, truncate_config()).unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
        let report = log.recovery_report().clone();
        let end = log.log_end();
        println!(
            "attempt {attempt}: killed {:4} us into the truncation, {after:3} of {before} segments left, \
             log end {end}, {} corruption(s)",
            delay.as_micros(),
            report.corruptions.len()
        );
        assert!(
            report.corruptions.is_empty(),
            "{ctx}: {after} of {before} segments left; reopening found {} problem(s), first: {:?}",
            report.corruptions.len(),
            report.corruptions.first()
        );
        check_content(&log, &ctx);
        log.close().expect("close");
        let (summary, text) = dump(&dir);
        assert!(summary.is_clean(), "{ctx}: dump found problems\n{text}");
    }
    println!("{cut_short} of {TRUNCATE_ATTEMPTS} kills landed while segments were being deleted");
}
