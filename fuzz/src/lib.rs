//! Helpers shared by the fuzz targets: a scratch directory per fuzzer process, a small
//! multi-segment log built once and laid down again before every input, and byte patches.

use std::path::{Path, PathBuf};

use runnel_storage::record::{BatchBuilder, NewRecord};
use runnel_storage::{Compression, FsyncPolicy, Log, LogConfig};

/// A directory of this process's own under `$RUNNEL_FUZZ_TMP` (scripts/fuzz.sh makes one
/// per run and removes it), else under /dev/shm when it exists (fsync is free there), else
/// the system temporary directory. Emptied if it exists.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("RUNNEL_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() }
    });
    let dir = base.join(format!("runnel-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// The log settings of the fixtures: tiny segments and a tiny index interval, so a few
/// dozen batches make several sealed segments with many index entries each.
pub fn fixture_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 64,
        max_batch_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        preallocate_bytes: 0,
    }
}

/// A log's directory as bytes: every file's name and contents.
#[derive(Debug, Clone)]
pub struct LogFiles {
    pub files: Vec<(String, Vec<u8>)>,
}

impl LogFiles {
    /// Builds a log in `dir` (emptied first) with batches of one to three records of
    /// varied sizes, timestamps that mostly rise but sometimes fall, and leader epochs that
    /// rise over the log (0, 0, 2, 2, 2, 5, ...), closes it, and reads its files back.
    pub fn build(dir: &Path) -> LogFiles {
        let _ = std::fs::remove_dir_all(dir);
        let log = Log::open(dir, fixture_config()).expect("open the fixture log");
        let epochs = [0, 0, 2, 2, 2, 5, 7, 7, 8];
        for i in 0..24i64 {
            let mut builder = BatchBuilder::new(Compression::None);
            for j in 0..(1 + i % 3) {
                let ts = 1_000_000 + i * 100 - if i % 7 == 3 { 450 } else { 0 } + j;
                let value = vec![b'a' + (i % 26) as u8; (10 + (i * 37) % 90) as usize];
                builder.push(NewRecord::with_value(value, ts));
            }
            let mut batch = builder.build().expect("build a fixture batch");
            let epoch = epochs[(i as usize * epochs.len()) / 24];
            log.append(&mut batch, epoch).expect("append a fixture batch");
        }
        log.close().expect("close the fixture log");
        LogFiles::read(dir)
    }

    /// Every file of `dir`, sorted by name.
    pub fn read(dir: &Path) -> LogFiles {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("read the fixture directory")
            .map(|e| {
                let e = e.expect("directory entry");
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read a file"))
            })
            .collect();
        files.sort();
        LogFiles { files }
    }

    /// The contents of file `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }

    /// The base offsets of the segments, ascending.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.files.iter().filter_map(|(n, _)| n.strip_suffix(".log")?.parse().ok()).collect()
    }

    /// Empties `dir` and writes the files into it, with `replace` taking precedence over
    /// the fixture's own files of the same name.
    pub fn lay_down(&self, dir: &Path, replace: &[(String, Vec<u8>)]) {
        for e in std::fs::read_dir(dir).expect("read the scratch directory") {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).expect("remove a directory");
            } else {
                std::fs::remove_file(&p).expect("remove a file");
            }
        }
        for (name, bytes) in &self.files {
            if !replace.iter().any(|(n, _)| n == name) {
                std::fs::write(dir.join(name), bytes).expect("write a fixture file");
            }
        }
        for (name, bytes) in replace {
            std::fs::write(dir.join(name), bytes).expect("write a fuzzed file");
        }
    }
}

/// The file name of a segment file, as the log names them.
pub fn segment_file(base: u64, suffix: &str) -> String {
    format!("{base:020}.{suffix}")
}

/// Applies patch operations to a copy of `original`: each 3 bytes `[hi, lo, value]` set
/// the byte at `(hi << 8 | lo) % (len + 4)` to `value`, appending when that is past the end
/// (so a patch can also grow the file a little). A trailing partial operation `[t, ..]`
/// cuts `t % 16` bytes off the end, so a patch can also tear the file as a crash would.
pub fn patch(original: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = original.to_vec();
    let mut chunks = ops.chunks_exact(3);
    for op in &mut chunks {
        let at = usize::from(u16::from_be_bytes([op[0], op[1]])) % (out.len() + 4);
        if at < out.len() {
            out[at] = op[2];
        } else {
            out.push(op[2]);
        }
    }
    if let Some(&tear) = chunks.remainder().first() {
        let keep = out.len().saturating_sub(usize::from(tear % 16));
        out.truncate(keep);
    }
    out
}

/// Writes `seeds()` as files `seed-NNN` into `$RUNNEL_FUZZ_SEEDS` when that is set
/// (scripts/fuzz.sh sets it to the target's corpus directory), so a run starts from valid
/// inputs of every kind the target knows, made by the code that defines the formats, with no
/// binary files in the repository. Called from each target's `init`.
pub fn write_seeds(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("RUNNEL_FUZZ_SEEDS") else { return };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (i, seed) in seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("write a seed");
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A batch of `count` records with keys, values and a header, at `timestamp_ms`.
pub fn sample_batch(codec: Compression, count: usize, timestamp_ms: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(codec);
    for i in 0..count {
        builder.push(NewRecord {
            key: (i % 2 == 0).then(|| bytes::Bytes::from(format!("key-{i}"))),
            value: Some(bytes::Bytes::from(format!("value {i} {}", "x".repeat(i * 7)))),
            headers: vec![runnel_storage::Header::new("h", format!("{i}"))],
            timestamp_ms: timestamp_ms + i as i64,
        });
    }
    builder.build().expect("build a sample batch")
}
