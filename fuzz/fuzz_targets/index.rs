//! The segment indexes (runnel-storage `index`: `<base>.index`, offset -> position, and
//! `<base>.timeindex`, timestamp -> offset) fed arbitrary file contents the way recovery
//! reads them: a fixture log of several sealed segments is laid down in a scratch
//! directory with one sealed segment's two index files replaced by the input, then opened
//! with `Log::open` (which trusts a sealed segment's indexes when they hold together and
//! rebuilds them otherwise), read at every offset and searched by timestamp.
//!
//! Input: byte 0 flags (bit 0: the offset index is the fixture's own with the part applied
//! as a patch, see `runnel_fuzz::patch`; bit 1: the same for the time index; bits 4..7 pick
//! the sealed segment), bytes 1..3 the length of the offset index part (big-endian), that
//! part, and the rest for the time index.
//!
//! Indexes are derived data, so whatever they hold: the log must open, the recovery report
//! must find no damage (the segments are intact), and every read that succeeds must return
//! exactly the bytes the pristine log returns. A read may fail (an index that looks whole
//! but points at the wrong place makes the log report corruption rather than serve the
//! wrong batch); a timestamp lookup is only required not to panic, since nothing checks a
//! time index entry's timestamp against the batch it names.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runnel_fuzz::{LogFiles, fixture_config, patch, scratch_dir, segment_file};
use runnel_storage::Log;

struct Fixture {
    dir: PathBuf,
    files: LogFiles,
    /// Base offsets of the segments (the last is the active one).
    bases: Vec<u64>,
    log_end: u64,
    /// `read(offset, max_bytes)` of the pristine log, per offset and size.
    reads: Vec<(u64, usize, Vec<u8>)>,
    /// Timestamps to look up.
    timestamps: Vec<i64>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = scratch_dir("index");
        let files = LogFiles::build(&dir.join("build"));
        let bases = files.segment_bases();
        assert!(bases.len() >= 4, "the fixture has several sealed segments");
        let log = Log::open(dir.join("build"), fixture_config()).expect("open the pristine log");
        let log_end = log.log_end();
        let mut reads = Vec::new();
        for offset in 0..=log_end {
            for max in [1, 300] {
                let (bytes, _) = log.read(offset, max).expect("the pristine log reads");
                reads.push((offset, max, bytes));
            }
        }
        log.close().expect("close");
        let mut timestamps = vec![i64::MIN, 0, i64::MAX];
        for ts in (999_000..1_006_000).step_by(97) {
            timestamps.push(ts);
        }
        Fixture { dir: dir.join("log"), files, bases, log_end, reads, timestamps }
    })
}

/// For every sealed segment: its own two files unchanged through the patch mode, and the
/// same files given whole.
fn seeds() -> Vec<Vec<u8>> {
    let f = fixture();
    let mut seeds = Vec::new();
    for which in 0..f.bases.len() - 1 {
        let flags = (which as u8) << 4;
        seeds.push(vec![flags | 0x03, 0, 0]);
        let index = f.files.get(&segment_file(f.bases[which], "index")).expect("offset index");
        let time = f.files.get(&segment_file(f.bases[which], "timeindex")).expect("time index");
        let mut seed = vec![flags];
        seed.extend_from_slice(&u16::try_from(index.len()).expect("small index").to_be_bytes());
        seed.extend_from_slice(index);
        seed.extend_from_slice(time);
        seeds.push(seed);
        // A time index claiming an interval near 2^64 (the scan window once overflowed).
        let mut seed = vec![flags | 0x02, 0, 0];
        for at in 8..16u8 {
            seed.extend([0, at, 0xff]);
        }
        seeds.push(seed);
    }
    seeds
}

fuzz_target!(init: runnel_fuzz::write_seeds(seeds), |data: &[u8]| {
    let f = fixture();
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
    let split = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (offset_part, time_part) = rest.split_at(split);
    let which = usize::from(flags >> 4) % (f.bases.len() - 1);
    let (base, next_base) = (f.bases[which], f.bases[which + 1]);
    let (index_name, time_name) = (segment_file(base, "index"), segment_file(base, "timeindex"));
    let offset_index = if flags & 1 != 0 {
        patch(f.files.get(&index_name).expect("fixture offset index"), offset_part)
    } else {
        offset_part.to_vec()
    };
    let time_index = if flags & 2 != 0 {
        patch(f.files.get(&time_name).expect("fixture time index"), time_part)
    } else {
        time_part.to_vec()
    };

    std::fs::create_dir_all(&f.dir).expect("scratch log directory");
    f.files.lay_down(&f.dir, &[(index_name, offset_index), (time_name, time_index)]);
    let log = Log::open(&f.dir, fixture_config()).expect("a log with damaged indexes still opens");
    let report = log.recovery_report();
    assert!(report.truncations.is_empty(), "intact segments truncated: {:?}", report.truncations);
    assert!(report.corruptions.is_empty(), "intact segments reported corrupt: {:?}", report.corruptions);
    assert_eq!(log.log_end(), f.log_end, "recovery found another log end");

    // Reads of the damaged segment's offsets (one past its end starts in the next one).
    for (offset, max, expected) in f.reads.iter().filter(|(o, ..)| (base..=next_base).contains(o)) {
        if let Ok((bytes, _)) = log.read(*offset, *max) {
            assert_eq!(&bytes, expected, "read({offset}, {max}) served other bytes than the log holds");
        }
    }
    for &ts in &f.timestamps {
        let _ = log.offset_for_timestamp(ts);
    }
    log.close().expect("close");
});
