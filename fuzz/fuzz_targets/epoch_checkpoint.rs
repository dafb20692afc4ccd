//! The leader-epoch checkpoint (runnel-storage `epoch`: `leader-epoch-checkpoint`, a text
//! file with a CRC32C line) fed arbitrary contents: parsed with
//! `runnel_storage::parse_epoch_checkpoint`, then put in a fixture log's directory and
//! opened with `Log::open`, which trusts the file when it parses and rebuilds the cache
//! from the log when it does not, then trims it to the log.
//!
//! Input: byte 0 flags (bit 0: the rest is a patch, see `runnel_fuzz::patch`, applied to
//! the body of the fixture's own checkpoint, else the file itself; bit 1: append the right
//! `crc32c` line, so damage gets past the checksum; bit 2: delete the first segment, so the
//! log starts past offset 0 as after retention; bits 3..7 an epoch to append a batch with),
//! then the file or the patch.
//!
//! Checked: a file that does not parse is rebuilt into exactly the epochs the log's batches
//! carry; one that parses is kept, trimmed as documented (entries at or past the log end
//! dropped, the first moved up to the log start); `end_offset_for_epoch` never answers past
//! the log end; and after one more append and a reopen, the epochs read back are the ones
//! the log had (the checkpoint it writes parses back to the same entries).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runnel_fuzz::{LogFiles, fixture_config, patch, scratch_dir, segment_file};
use runnel_storage::record::{BatchBuilder, NewRecord};
use runnel_storage::{Compression, EpochEntry, Log, parse_epoch_checkpoint};

const CHECKPOINT: &str = "leader-epoch-checkpoint";

struct Fixture {
    dir: PathBuf,
    files: LogFiles,
    /// The first segment's file names, for the "after retention" variant.
    first_segment: [String; 3],
    /// The checkpoint's body (without its crc32c line).
    body: Vec<u8>,
    /// The epochs a rebuild from the log finds: whole log, and without the first segment.
    rebuilt: [Vec<EpochEntry>; 2],
    /// The log start without the first segment.
    second_base: u64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = scratch_dir("epoch");
        let files = LogFiles::build(&dir.join("build"));
        let bases = files.segment_bases();
        let first_segment = ["log", "index", "timeindex"].map(|s| segment_file(bases[0], s));
        let text = files.get(CHECKPOINT).expect("the fixture has a checkpoint").to_vec();
        let crc_at = text.windows(7).rposition(|w| w == b"crc32c ").expect("a crc32c line");
        let body = text[..crc_at].to_vec();
        let f = Fixture {
            dir: dir.join("log"),
            files,
            first_segment,
            body,
            rebuilt: [Vec::new(), Vec::new()],
            second_base: bases[1],
        };
        std::fs::create_dir_all(&f.dir).expect("scratch log directory");
        let rebuilt = [false, true].map(|drop_first| {
            // A checkpoint that is not one: the log rebuilds the cache from its batches.
            lay_down(&f, drop_first, b"garbage".to_vec());
            let log = Log::open(&f.dir, fixture_config()).expect("open");
            assert!(log.recovery_report().epoch_cache_rebuilt);
            let epochs = log.epochs();
            log.close().expect("close");
            epochs
        });
        assert!(rebuilt[0].len() >= 4, "the fixture log has several epochs: {rebuilt:?}");
        Fixture { rebuilt, ..f }
    })
}

fn lay_down(f: &Fixture, drop_first: bool, checkpoint: Vec<u8>) {
    f.files.lay_down(&f.dir, &[(CHECKPOINT.to_owned(), checkpoint)]);
    if drop_first {
        for name in &f.first_segment {
            std::fs::remove_file(f.dir.join(name)).expect("remove a segment file");
        }
    }
}

fn with_crc_line(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c(&body);
    body.extend_from_slice(format!("crc32c {crc:08x}\n").as_bytes());
    body
}

/// CRC-32C, bit by bit (the harness's own, so a wrong table in the crate would show).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// The trimming `Log::open` documents: entries starting at or past the log end go, and
/// the entry the log start falls in starts at the log start (earlier ones go).
fn trimmed(mut entries: Vec<EpochEntry>, log_start: u64, log_end: u64) -> Vec<EpochEntry> {
    entries.retain(|e| e.start_offset < log_end);
    let covering = entries.iter().filter(|e| e.start_offset <= log_start).count();
    if covering > 0 {
        entries.drain(..covering - 1);
        entries[0].start_offset = log_start;
    }
    entries
}

/// The fixture's checkpoint through every mode, with and without the first segment.
fn seeds() -> Vec<Vec<u8>> {
    let f = fixture();
    let file = with_crc_line(f.body.clone());
    let mut seeds = Vec::new();
    for drop_first in [0, 4] {
        seeds.push(vec![drop_first | 0x01]);
        seeds.push(vec![drop_first | 0x03]);
        seeds.push([&[drop_first][..], &file].concat());
        seeds.push([&[drop_first | 0x02][..], &f.body].concat());
    }
    seeds
}

fuzz_target!(init: runnel_fuzz::write_seeds(seeds), |data: &[u8]| {
    let f = fixture();
    let Some((&flags, rest)) = data.split_first() else { return };
    let file = match (flags & 1 != 0, flags & 2 != 0) {
        (true, true) => with_crc_line(patch(&f.body, rest)),
        (true, false) => {
            let mut text = patch(&f.body, rest);
            text.extend_from_slice(&with_crc_line(f.body.clone())[f.body.len()..]);
            text
        }
        (false, true) => with_crc_line(rest.to_vec()),
        (false, false) => rest.to_vec(),
    };
    let drop_first = flags & 4 != 0;
    let parsed = parse_epoch_checkpoint(&file);

    lay_down(f, drop_first, file);
    let log = Log::open(&f.dir, fixture_config()).expect("a log with a damaged checkpoint still opens");
    let (log_start, log_end) = (log.log_start(), log.log_end());
    assert_eq!(log_start, if drop_first { f.second_base } else { 0 });
    let epochs = log.epochs();
    match parsed {
        Ok(entries) => {
            assert!(!log.recovery_report().epoch_cache_rebuilt, "a checkpoint that parses is kept");
            assert_eq!(epochs, trimmed(entries, log_start, log_end), "trimmed as documented");
        }
        Err(_) => {
            assert!(log.recovery_report().epoch_cache_rebuilt, "a checkpoint that does not parse is rebuilt");
            assert_eq!(epochs, f.rebuilt[usize::from(drop_first)], "rebuilt from the batches");
        }
    }
    for w in epochs.windows(2) {
        assert!(w[0].epoch < w[1].epoch && w[0].start_offset <= w[1].start_offset, "ordered: {epochs:?}");
    }
    let mut probes = vec![i32::MIN, -1, 0, 1, i32::MAX];
    for e in &epochs {
        probes.extend([e.epoch.saturating_sub(1), e.epoch, e.epoch.saturating_add(1)]);
    }
    for epoch in probes {
        if let Some((_, end)) = log.end_offset_for_epoch(epoch) {
            assert!(end <= log_end, "epoch {epoch} ends at {end}, past the log end {log_end}");
        }
    }

    // One more batch in a (maybe) new epoch, then the checkpoint must read back as it was.
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(NewRecord::with_value("x", 2_000_000));
    let mut batch = builder.build().expect("build");
    log.append(&mut batch, i32::from(flags >> 3) * 2).expect("append");
    let before = log.epochs();
    log.close().expect("close");
    let log = Log::open(&f.dir, fixture_config()).expect("reopen");
    assert!(!log.recovery_report().epoch_cache_rebuilt, "the checkpoint the log wrote parses");
    assert_eq!(log.epochs(), before, "the epochs survive a reopen");
    log.close().expect("close");
});
