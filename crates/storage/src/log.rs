//! The partition log: an ordered sequence of segments in one directory.
//!
//! Invariants (checked by the tests in this crate):
//! - offsets are contiguous: every segment starts where the previous one ends, and every
//!   batch starts where the previous one ends;
//! - `log_start <= durable_end <= log_end`, and `durable_end` only moves back by truncation;
//! - an offset below `durable_end` has been fsynced (unless the policy is `never`, which is
//!   page-cache durability by choice);
//! - no batch is served without its length, magic, CRC and offset having been checked.
//!
//! Concurrency: one mutex guards the segment map and offsets. Appends write under it (one
//! `pwrite`); fsyncs run on a sync thread outside it, so appends continue while the disk
//! works, and one fsync covers every batch appended meanwhile (group commit). Reads find
//! their segment and position under the mutex and copy bytes outside it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{self, BATCH_HEADER_LEN, BatchHeader, BatchIter};
use crate::crashsafe;
use crate::epoch::{EpochEntry, LeaderEpochCache};
use crate::error::{BatchError, LogError, Result};
use crate::segment::{self, Rebuilt, Scanner, Segment, SegmentSettings, Truncation};

/// When appended data is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A sync thread fsyncs as soon as there is unsynced data; one fsync covers every batch
    /// appended while the previous one ran (group commit). The default.
    Always,
    /// Fsync at most once per interval.
    Interval(Duration),
    /// Never fsync on the append path: data is as durable as the page cache (it survives a
    /// process crash, not a power loss). The durable offset follows the log end.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(FsyncPolicy::Interval(Duration::from_millis(ms))),
                _ => Err(format!(
                    "invalid fsync policy '{s}': expected always, never or interval:<ms> with ms > 0"
                )),
            },
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Per-log settings. Names follow Kafka's topic configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment once the active one would exceed this (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll a segment this old, measured from its first append (`segment.ms`).
    pub segment_ms: Option<u64>,
    /// Delete segments whose newest record is older than this (`retention.ms`).
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while the log is larger than this (`retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Bytes between sparse index entries (`index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// Largest batch accepted, header included (`max.message.bytes`).
    pub max_batch_bytes: usize,
    pub fsync: FsyncPolicy,
    /// Disk space the active segment reserves ahead of its end, in chunks of this many
    /// bytes, so writes skip the filesystem's block allocation (0: off). The reservation is
    /// given back when the segment is sealed; the file's length is always its data.
    pub preallocate_bytes: u64,
}

/// Largest segment: index positions are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// Largest batch the log ever accepts, whatever the config says.
pub const BATCH_BYTES_LIMIT: usize = 256 << 20;
/// Most bytes one read returns (beyond a single larger batch), whatever the caller asks:
/// a read buffer is never sized by an untrusted request alone.
pub const READ_BYTES_MAX: usize = 64 << 20;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            index_interval_bytes: 4096,
            max_batch_bytes: 1_048_588,
            fsync: FsyncPolicy::Always,
            preallocate_bytes: 16 << 20,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(LogError::Config(m));
        if self.segment_bytes < 1024 || self.segment_bytes > SEGMENT_BYTES_MAX {
            return err(format!(
                "segment.bytes {} must be in [1024, {SEGMENT_BYTES_MAX}]",
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_bytes {
            return err(format!(
                "index.interval.bytes {} must be in [1, segment.bytes]",
                self.index_interval_bytes
            ));
        }
        if self.max_batch_bytes < BATCH_HEADER_LEN || self.max_batch_bytes > BATCH_BYTES_LIMIT {
            return err(format!(
                "max.message.bytes {} must be in [{BATCH_HEADER_LEN}, {BATCH_BYTES_LIMIT}]",
                self.max_batch_bytes
            ));
        }
        if self.segment_ms == Some(0) || self.retention_ms == Some(0) {
            return err("segment.ms and retention.ms must be positive".into());
        }
        Ok(())
    }

    fn segment_settings(&self) -> SegmentSettings {
        SegmentSettings {
            index_interval_bytes: self.index_interval_bytes,
            preallocate_bytes: self.preallocate_bytes,
        }
    }
}

/// Wall-clock milliseconds, injectable so tests control segment age and retention.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Where an appended batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The log end offset after the append.
    pub log_end: u64,
    pub max_timestamp: i64,
}

/// The log's offsets at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start: u64,
    /// Offset the next appended record gets (LEO).
    pub log_end: u64,
    /// Every offset below this has been fsynced (or accepted by policy `never`).
    pub durable_end: u64,
}

/// What a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadInfo {
    /// Offsets at the time of the read.
    pub offsets: LogOffsets,
    /// Base offset of the first batch returned (it may be below the requested offset, since
    /// batches are returned whole), or `None` when nothing was returned.
    pub first_offset: Option<u64>,
    /// The offset after the last batch returned: where the next read starts.
    pub next_offset: u64,
}

/// What opening a log found and repaired.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Torn or corrupt tails that were cut off.
    pub truncations: Vec<Truncation>,
    /// Damage in sealed segments, left in place and never served.
    pub corruptions: Vec<String>,
    /// Whether the leader-epoch checkpoint was missing or damaged and rebuilt from the log.
    pub epoch_cache_rebuilt: bool,
}

/// Result of a retention pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start: u64,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    log_start: u64,
    log_end: u64,
    durable_end: u64,
    epochs: LeaderEpochCache,
    /// Bumped by truncation, so a sync that raced with it does not advance `durable_end`.
    generation: u64,
    failed: Option<String>,
    closed: bool,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }
    fn offsets(&self) -> LogOffsets {
        LogOffsets { log_start: self.log_start, log_end: self.log_end, durable_end: self.durable_end }
    }
}

struct Shared {
    dir: PathBuf,
    /// The settings now: [`Log::update_config`] changes the live ones. Held only to copy or
    /// replace them (lock order: state, then this).
    config: RwLock<LogConfig>,
    /// The fsync policy, fixed while the log is open (the sync thread is started for it).
    fsync: FsyncPolicy,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Signalled on append and close: wakes the sync thread.
    appended: Condvar,
    /// Signalled when `durable_end` moves, on failure and on close: wakes durable waiters.
    durable: Condvar,
    /// Successful fsyncs of segment data by the append path (for group-commit metrics).
    fsyncs: AtomicU64,
    /// Called with the new `durable_end` whenever it advances (see
    /// [`Log::set_durable_listener`]).
    listener: Mutex<Option<DurableListener>>,
    /// Told about each group-commit fsync (see [`Log::set_sync_observer`]).
    observer: Mutex<Option<Arc<dyn SyncObserver>>>,
}

/// Told about each fsync of the append path (group commit), for metrics. Called on the
/// log's sync thread after the fsync, outside the log's state lock: it must be quick (an
/// atomic add, a histogram observation) and must not call back into the log.
pub trait SyncObserver: Send + Sync + std::fmt::Debug {
    /// One fsync took `took` and made `records` more offsets durable (the group-commit
    /// batch: every record appended while the previous fsync ran, or since it).
    fn synced(&self, took: Duration, records: u64);
}

/// A callback told the new durable end offset each time it advances.
pub type DurableListener = Arc<dyn Fn(u64) + Send + Sync>;

impl Shared {
    /// The settings now (a copy).
    fn config(&self) -> LogConfig {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state itself is still consistent
        // at every await-free point, so keep going rather than poisoning every caller.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_writable(&self, st: &State) -> Result<()> {
        if st.closed {
            return Err(LogError::Closed { dir: self.dir.clone() });
        }
        if let Some(reason) = &st.failed {
            return Err(LogError::Failed { dir: self.dir.clone(), reason: reason.clone() });
        }
        Ok(())
    }

    /// `durable_end` advanced: wake blocking waiters and tell the listener. Called with the
    /// state lock held, so listeners see advances in order.
    fn durable_advanced(&self, st: &State) {
        self.durable.notify_all();
        let listener = self.listener.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(listener) = listener {
            listener(st.durable_end);
        }
    }
}

/// One segment's part of a [`BatchHeaders`] walk.
#[derive(Debug)]
struct HeaderSegment {
    file: Arc<File>,
    path: PathBuf,
    /// Where the next header starts.
    position: u64,
    /// The segment's data end when the walk began.
    end: u64,
    /// The base offset the next batch must have.
    expected: u64,
}

/// The batch headers of a log, oldest first: see [`Log::batch_headers`].
#[derive(Debug)]
pub struct BatchHeaders {
    segments: std::vec::IntoIter<HeaderSegment>,
    current: Option<HeaderSegment>,
    /// The log end when the walk began: nothing at or past it is returned.
    end_offset: u64,
}

impl Iterator for BatchHeaders {
    type Item = Result<BatchHeader>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let seg = match &mut self.current {
                Some(seg) if seg.position < seg.end && seg.expected < self.end_offset => seg,
                _ => {
                    self.current = Some(self.segments.next()?);
                    continue;
                }
            };
            let mut hdr = [0u8; BATCH_HEADER_LEN];
            let read = if seg.end - seg.position < BATCH_HEADER_LEN as u64 {
                Err(LogError::Corrupt {
                    segment: seg.path.clone(),
                    position: seg.position,
                    offset: seg.expected,
                    source: BatchError::Truncated {
                        needed: BATCH_HEADER_LEN,
                        available: (seg.end - seg.position) as usize,
                    },
                })
            } else {
                seg.file
                    .read_exact_at(&mut hdr, seg.position)
                    .map_err(LogError::io("read segment", &seg.path))
            };
            let parsed = read.and_then(|()| {
                let h = BatchHeader::parse(&hdr, BATCH_BYTES_LIMIT)
                    .and_then(|h| {
                        if h.base_offset == seg.expected as i64 {
                            Ok(h)
                        } else {
                            Err(BatchError::Malformed(format!(
                                "base offset {} where {} was expected",
                                h.base_offset, seg.expected
                            )))
                        }
                    })
                    .map_err(|source| LogError::Corrupt {
                        segment: seg.path.clone(),
                        position: seg.position,
                        offset: seg.expected,
                        source,
                    })?;
                Ok(h)
            });
            match parsed {
                Ok(h) => {
                    seg.position += h.total_len() as u64;
                    seg.expected = h.next_offset() as u64;
                    return Some(Ok(h));
                }
                Err(e) => {
                    // The rest of this segment cannot be framed; go on with the next one.
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// One partition's log. Dropping it stops its sync thread after a final fsync.
pub struct Log {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.shared.dir).field("offsets", &self.offsets()).finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` with the system clock.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// Opens the log in `dir`, recovering it after an unclean stop.
    pub fn open_with_clock(dir: impl AsRef<Path>, config: LogConfig, clock: Arc<dyn Clock>) -> Result<Log> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(LogError::io("create directory", &dir))?;
        crashsafe::remove_stale_temp_files(&dir)?;
        let settings = config.segment_settings();
        let mut report = RecoveryReport::default();

        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(LogError::io("read directory", &dir))? {
            let entry = entry.map_err(LogError::io("read directory", &dir))?;
            if let Some(base) = entry.file_name().to_str().and_then(segment::parse_log_file_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        remove_orphan_indexes(&dir, &bases)?;

        let mut segments = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let tail = i + 1 == bases.len();
            let (mut seg, outcome) = if tail {
                Segment::recover(&dir, base, settings, true)?
            } else {
                Segment::open_sealed(&dir, base, settings)?
            };
            let mut damaged = false;
            match outcome {
                Rebuilt::Clean => {}
                Rebuilt::Truncated(t) => report.truncations.push(t),
                Rebuilt::Corrupt(e) => {
                    tracing::error!(error = %e, "corrupt batch in sealed segment; it will not be served");
                    report.corruptions.push(e.to_string());
                    damaged = true;
                }
            }
            if let Some(&next_base) = bases.get(i + 1)
                && seg.next_offset() != next_base
            {
                let msg = format!(
                    "segment {} ends at offset {} but the next segment starts at {next_base}",
                    seg.path().display(),
                    seg.next_offset()
                );
                if seg.next_offset() > next_base {
                    return Err(LogError::CorruptFile { path: seg.path().to_owned(), reason: msg });
                }
                if !damaged {
                    tracing::error!("{msg}; the missing offsets will not be served");
                    report.corruptions.push(msg);
                }
                seg.force_next_offset(next_base);
            }
            segments.insert(base, seg);
        }
        if segments.is_empty() {
            segments.insert(0, Segment::create(&dir, 0, settings)?);
            crashsafe::fsync_dir(&dir)?;
        }
        let log_start = *segments.keys().next().expect("non-empty");
        let log_end = segments.values().next_back().expect("non-empty").next_offset();

        let mut epochs = match LeaderEpochCache::load(&dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "leader-epoch checkpoint damaged; rebuilding it from the log");
                report.epoch_cache_rebuilt = true;
                rebuild_epoch_cache(&dir, &segments)?
            }
        };
        let trimmed = epochs.truncate_from_end(log_end) | epochs.truncate_from_start(log_start);
        if trimmed || report.epoch_cache_rebuilt {
            epochs.persist()?;
        }

        // Everything that survived is made durable now, so durable_end can start at log_end.
        segments.values().next_back().expect("non-empty").sync()?;
        crashsafe::fsync_dir(&dir)?;

        let fsync = config.fsync;
        let shared = Arc::new(Shared {
            dir,
            config: RwLock::new(config),
            fsync,
            clock,
            state: Mutex::new(State {
                segments,
                log_start,
                log_end,
                durable_end: log_end,
                epochs,
                generation: 0,
                failed: None,
                closed: false,
            }),
            appended: Condvar::new(),
            durable: Condvar::new(),
            fsyncs: AtomicU64::new(0),
            listener: Mutex::new(None),
            observer: Mutex::new(None),
        });
        let syncer = match shared.fsync {
            FsyncPolicy::Never => None,
            policy => {
                let s = Arc::clone(&shared);
                let name = format!("runnel-sync-{}", s.dir.file_name().unwrap_or_default().to_string_lossy());
                Some(
                    std::thread::Builder::new()
                        .name(name)
                        .spawn(move || sync_loop(&s, policy))
                        .map_err(LogError::io("spawn sync thread", &shared.dir))?,
                )
            }
        };
        Ok(Log { shared, syncer, recovery: report })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The settings now.
    pub fn config(&self) -> LogConfig {
        self.shared.config()
    }

    /// Changes the settings of the open log, as a topic's config change asks: the new
    /// `segment_bytes`, `segment_ms`, `retention_ms`, `retention_bytes` and `max_batch_bytes`
    /// apply to later appends, rolls and retention passes. `fsync`, `index_interval_bytes`
    /// and `preallocate_bytes` are fixed while the log is open: their values in `config`
    /// are ignored here and apply when the log is next opened. Refused (and nothing changes)
    /// if the resulting settings are invalid. Answers whether anything changed.
    pub fn update_config(&self, config: &LogConfig) -> Result<bool> {
        let mut current = self.shared.config.write().unwrap_or_else(|p| p.into_inner());
        let next = LogConfig {
            segment_bytes: config.segment_bytes,
            segment_ms: config.segment_ms,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            max_batch_bytes: config.max_batch_bytes,
            ..current.clone()
        };
        next.validate()?;
        if next == *current {
            return Ok(false);
        }
        tracing::info!(dir = %self.shared.dir.display(), ?next, "log settings changed");
        *current = next;
        Ok(true)
    }

    /// What opening the log found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn offsets(&self) -> LogOffsets {
        self.shared.lock().offsets()
    }

    pub fn log_start(&self) -> u64 {
        self.shared.lock().log_start
    }

    pub fn log_end(&self) -> u64 {
        self.shared.lock().log_end
    }

    pub fn durable_end(&self) -> u64 {
        self.shared.lock().durable_end
    }

    /// Why the log refuses writes until it is reopened (a failed fsync, or a truncation that
    /// failed part way), if it does.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failed.clone()
    }

    /// How many fsyncs have advanced the durable offset so far; with group commit this
    /// grows more slowly than the number of appends.
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Number of segments (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.shared.lock().segments.len()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.lock().segments.values().map(Segment::size).sum()
    }

    /// Appends one producer batch as leader: checks it, assigns its offsets from the log end,
    /// stamps `leader_epoch` into it (both in place; neither is covered by the CRC) and
    /// writes it. Returns without waiting for the disk; see [`wait_durable`](Self::wait_durable).
    ///
    /// `batch` must be exactly one RecordBatch v2 with at least one record. On any error the
    /// log is unchanged.
    pub fn append(&self, batch: &mut [u8], leader_epoch: i32) -> Result<AppendInfo> {
        let header = self.check_one_batch(batch)?;
        if header.records_count == 0 {
            return Err(LogError::InvalidBatch(BatchError::Malformed("batch has no records".into())));
        }
        let mut st = self.shared.lock();
        self.shared.check_writable(&st)?;
        let base = st.log_end;
        batch::set_base_offset(batch, base as i64);
        batch::set_partition_leader_epoch(batch, leader_epoch);
        let header = BatchHeader { base_offset: base as i64, partition_leader_epoch: leader_epoch, ..header };
        self.write_batch(&mut st, &header, batch)?;
        self.after_append(&mut st);
        Ok(AppendInfo {
            base_offset: base,
            last_offset: header.last_offset() as u64,
            log_end: st.log_end,
            max_timestamp: header.max_timestamp,
        })
    }

    /// Appends batches fetched from the leader, keeping their offsets and epochs. The first
    /// must start at the log end and each must follow the previous one. All are checked
    /// before any is written, so an invalid one leaves the log unchanged.
    pub fn append_replicated(&self, batches: &[u8]) -> Result<Option<AppendInfo>> {
        // The leader already accepted these; only the hard limit applies to a copy.
        let max = BATCH_BYTES_LIMIT;
        let mut headers = Vec::new();
        for item in BatchIter::new(batches, max) {
            let (h, _) = item.map_err(LogError::InvalidBatch)?;
            if h.base_offset < 0 {
                return Err(LogError::InvalidBatch(BatchError::Malformed("negative base offset".into())));
            }
            if let Some(prev) = headers.last().map(|p: &BatchHeader| p.next_offset())
                && h.base_offset != prev
            {
                return Err(LogError::InvalidBatch(BatchError::Malformed(format!(
                    "batch at offset {} does not follow the previous one ending at {prev}",
                    h.base_offset
                ))));
            }
            headers.push(h);
        }
        let (Some(first), Some(last)) = (headers.first().copied(), headers.last().copied()) else {
            return Ok(None);
        };
        let mut st = self.shared.lock();
        self.shared.check_writable(&st)?;
        if first.base_offset as u64 != st.log_end {
            return Err(LogError::InvalidBatch(BatchError::Malformed(format!(
                "replicated batches start at offset {} but the log ends at {}",
                first.base_offset, st.log_end
            ))));
        }
        let mut pos = 0;
        for h in &headers {
            let len = h.total_len();
            self.write_batch(&mut st, h, &batches[pos..pos + len])?;
            pos += len;
        }
        self.after_append(&mut st);
        let max_timestamp = headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1);
        Ok(Some(AppendInfo {
            base_offset: first.base_offset as u64,
            last_offset: last.last_offset() as u64,
            log_end: st.log_end,
            max_timestamp,
        }))
    }

    fn check_one_batch(&self, batch: &[u8]) -> Result<BatchHeader> {
        let h = batch::check_batch(batch, self.shared.config().max_batch_bytes)
            .map_err(LogError::InvalidBatch)?;
        if h.total_len() != batch.len() {
            return Err(LogError::InvalidBatch(BatchError::Malformed(format!(
                "{} bytes after the batch",
                batch.len() - h.total_len()
            ))));
        }
        Ok(h)
    }

    /// Writes one batch whose offsets are already final, rolling first if needed.
    fn write_batch(&self, st: &mut State, h: &BatchHeader, bytes: &[u8]) -> Result<()> {
        debug_assert_eq!(h.base_offset as u64, st.log_end);
        let now = self.shared.clock.now_ms();
        if self.should_roll(st.active(), bytes.len() as u64, now) {
            self.roll(st)?;
        }
        if st.epochs.assign(h.partition_leader_epoch, st.log_end) {
            // Before the batch: after a crash the checkpoint then covers every batch on disk.
            if let Err(e) = st.epochs.persist() {
                st.epochs.truncate_from_end(st.log_end);
                return Err(e);
            }
        }
        if let Err(e) = st.active_mut().append(h, bytes, now) {
            if st.epochs.truncate_from_end(st.log_end) {
                let _ = st.epochs.persist();
            }
            return Err(e);
        }
        st.log_end = h.next_offset() as u64;
        Ok(())
    }

    fn after_append(&self, st: &mut State) {
        if self.shared.fsync == FsyncPolicy::Never {
            st.durable_end = st.log_end;
            self.shared.durable_advanced(st);
        } else {
            self.shared.appended.notify_one();
        }
    }

    fn should_roll(&self, active: &Segment, incoming: u64, now: i64) -> bool {
        if active.is_empty() {
            return false;
        }
        let config = self.shared.config();
        if active.size() + incoming > config.segment_bytes {
            return true;
        }
        match (config.segment_ms, active.rolling_base_ms()) {
            (Some(ms), Some(base)) => now.saturating_sub(base) >= ms as i64,
            _ => false,
        }
    }

    /// Seals the active segment (fsyncing it unless the policy is `never`, so that after a
    /// power loss only the tail segment can be torn) and starts a new one at the log end.
    fn roll(&self, st: &mut State) -> Result<()> {
        let sync = self.shared.fsync != FsyncPolicy::Never;
        st.active_mut().seal(sync)?;
        let base = st.log_end;
        let seg = Segment::create(&self.shared.dir, base, self.shared.config().segment_settings())?;
        st.segments.insert(base, seg);
        if sync {
            crashsafe::fsync_dir(&self.shared.dir)?;
        }
        tracing::debug!(dir = %self.shared.dir.display(), base, "rolled segment");
        Ok(())
    }

    /// Rolls the active segment now if it is not empty (`kafka-log-dirs`-style maintenance,
    /// and tests).
    pub fn force_roll(&self) -> Result<()> {
        let mut st = self.shared.lock();
        self.shared.check_writable(&st)?;
        if !st.active().is_empty() {
            self.roll(&mut st)?;
        }
        Ok(())
    }

    /// Blocks until every offset below `end` is durable, or `timeout` passes.
    pub fn wait_durable(&self, end: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.durable_end >= end {
                return Ok(());
            }
            self.shared.check_writable(&st)?;
            if end > st.log_end {
                return Err(LogError::OffsetOutOfRange {
                    requested: end,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LogError::DurableTimeout { offset: end, waited_ms: timeout.as_millis() as u64 });
            }
            st = self.shared.durable.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Registers `listener`, called with the new durable end offset every time it advances
    /// (after an fsync, or after each append under policy `never`), replacing any earlier
    /// one. It runs on the thread that advanced the offset with the log's lock held: it must
    /// be quick and must not call back into this log.
    pub fn set_durable_listener(&self, listener: DurableListener) {
        *self.shared.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// Registers `observer`, told about every later fsync of appended data (the sync
    /// thread's group commits and [`Log::flush`]; not the fsyncs of a segment roll),
    /// replacing any earlier one.
    pub fn set_sync_observer(&self, observer: Arc<dyn SyncObserver>) {
        *self.shared.observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    /// Fsyncs the active segment now and advances the durable offset (any policy).
    pub fn flush(&self) -> Result<()> {
        sync_once(&self.shared)
    }

    /// Reads whole batches starting with the one that contains `offset`, up to `max_bytes`
    /// (capped at [`READ_BYTES_MAX`]; at least one batch, however large, so a consumer
    /// always makes progress).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<(Vec<u8>, ReadInfo)> {
        let mut buf = Vec::new();
        let info = self.read_into(offset, max_bytes, None, &mut buf)?;
        Ok((buf, info))
    }

    /// Like [`read`](Self::read), into a caller-owned buffer (cleared first), returning only
    /// batches that end at or below `upper_bound` when given (the high watermark, for
    /// consumers). Reads stay within one segment; the next read continues at
    /// `ReadInfo::next_offset`.
    pub fn read_into(
        &self,
        offset: u64,
        max_bytes: usize,
        upper_bound: Option<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<ReadInfo> {
        buf.clear();
        let max_batch = BATCH_BYTES_LIMIT;
        let (file, path, seg_end, start_pos, first, offsets, end) = {
            let st = self.shared.lock();
            let offsets = st.offsets();
            if offset < st.log_start || offset > st.log_end {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            let end = upper_bound.map_or(st.log_end, |u| u.min(st.log_end));
            if offset >= end {
                return Ok(ReadInfo { offsets, first_offset: None, next_offset: offset });
            }
            let seg = st
                .segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s)
                .filter(|s| offset < s.next_offset())
                .or_else(|| st.segments.range(offset + 1..).next().map(|(_, s)| s))
                .ok_or_else(|| LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                })?;
            let target = offset.max(seg.base_offset);
            let Some((pos, h)) = seg.find_batch(target)? else {
                return Ok(ReadInfo { offsets, first_offset: None, next_offset: offset });
            };
            (Arc::clone(seg.file()), seg.path().to_owned(), seg.size(), pos, h, offsets, end)
        };
        if first.next_offset() as u64 > end {
            return Ok(ReadInfo { offsets, first_offset: None, next_offset: offset });
        }
        let want =
            (max_bytes.min(READ_BYTES_MAX).max(first.total_len()) as u64).min(seg_end - start_pos) as usize;
        buf.resize(want, 0);
        file.read_exact_at(buf, start_pos).map_err(LogError::io("read segment", &path))?;

        let mut pos = 0usize;
        let mut expected = first.base_offset;
        while pos < buf.len() {
            let rest = &buf[pos..];
            if rest.len() < BATCH_HEADER_LEN && pos > 0 {
                break;
            }
            let corrupt = |source| LogError::Corrupt {
                segment: path.clone(),
                position: start_pos + pos as u64,
                offset: expected as u64,
                source,
            };
            let h = match BatchHeader::parse(rest, max_batch) {
                Ok(h) => h,
                Err(e) if pos > 0 && matches!(e, BatchError::Truncated { .. }) => break,
                Err(e) => return Err(corrupt(e)),
            };
            if h.total_len() > rest.len() {
                if pos == 0 {
                    return Err(corrupt(BatchError::Truncated {
                        needed: h.total_len(),
                        available: rest.len(),
                    }));
                }
                break;
            }
            if h.base_offset != expected {
                return Err(corrupt(BatchError::Malformed(format!(
                    "base offset {} where {expected} was expected",
                    h.base_offset
                ))));
            }
            if h.next_offset() as u64 > end {
                break;
            }
            batch::verify_crc(&h, &rest[..h.total_len()]).map_err(corrupt)?;
            pos += h.total_len();
            expected = h.next_offset();
        }
        buf.truncate(pos);
        Ok(ReadInfo {
            offsets,
            first_offset: (pos > 0).then_some(first.base_offset as u64),
            next_offset: if pos > 0 { expected as u64 } else { offset },
        })
    }

    /// Removes every record at or after `offset` (a follower whose log diverged). Batches are
    /// atomic: if `offset` falls inside a batch, that whole batch goes, so the new log end
    /// may be below `offset`. Truncating below the log start empties the log and restarts
    /// it at `offset`. Returns the new log end.
    pub fn truncate_to(&self, offset: u64) -> Result<u64> {
        let mut st = self.shared.lock();
        self.shared.check_writable(&st)?;
        if offset >= st.log_end {
            return Ok(st.log_end);
        }
        if offset <= st.log_start {
            drop(st);
            self.truncate_fully_and_start_at(offset)?;
            return Ok(offset);
        }
        let seg_base = *st.segments.range(..=offset).next_back().expect("offset >= log_start").0;
        // Newest first: a crash part way leaves a shorter valid log, never a gap.
        let doomed: Vec<u64> = st.segments.range(seg_base + 1..).rev().map(|(b, _)| *b).collect();
        let truncated = delete_segments(&mut st, &doomed).and_then(|()| {
            let seg = st.segments.get_mut(&seg_base).expect("present");
            let end = match seg.find_batch(offset)? {
                Some((pos, h)) => {
                    seg.truncate_to_batch(pos)?;
                    h.base_offset as u64
                }
                None => seg.next_offset(),
            };
            crashsafe::fsync_dir(&self.shared.dir)?;
            Ok(end)
        });
        let new_end = self.fail_on_error(&mut st, truncated)?;
        st.log_end = new_end;
        st.durable_end = st.durable_end.min(new_end);
        st.generation += 1;
        if st.epochs.truncate_from_end(new_end) {
            st.epochs.persist()?;
        }
        tracing::info!(dir = %self.shared.dir.display(), requested = offset, log_end = new_end, "truncated log");
        Ok(new_end)
    }

    /// A truncation that failed part way has left the files in a state the in-memory log
    /// no longer describes; refuse further writes until the log is reopened and recovered.
    fn fail_on_error<T>(&self, st: &mut State, r: Result<T>) -> Result<T> {
        r.inspect_err(|e| {
            let reason = format!("truncation failed part way: {e}");
            tracing::error!(dir = %self.shared.dir.display(), %reason, "log failed");
            st.failed = Some(reason);
            self.shared.durable.notify_all();
        })
    }

    /// Deletes every segment and restarts the log, empty, at `offset` (a follower whose
    /// leader no longer has the offsets it needs).
    pub fn truncate_fully_and_start_at(&self, offset: u64) -> Result<()> {
        let mut st = self.shared.lock();
        self.shared.check_writable(&st)?;
        // Newest first, as in truncate_to: a crash part way leaves a prefix of the old log,
        // which a follower will truncate again, never stale data past a gap.
        let doomed: Vec<u64> = st.segments.keys().rev().copied().collect();
        let created = delete_segments(&mut st, &doomed)
            .and_then(|()| Segment::create(&self.shared.dir, offset, self.shared.config().segment_settings()))
            .and_then(|seg| crashsafe::fsync_dir(&self.shared.dir).map(|()| seg));
        let seg = self.fail_on_error(&mut st, created)?;
        st.segments.insert(offset, seg);
        st.log_start = offset;
        st.log_end = offset;
        st.durable_end = offset;
        st.generation += 1;
        st.epochs = LeaderEpochCache::empty(&self.shared.dir);
        st.epochs.persist()?;
        Ok(())
    }

    /// Deletes whole segments past retention: by time (`retention.ms`, measured against the
    /// segment's newest record) and by size (`retention.bytes`). The active segment is rolled
    /// first when it has expired by time, so a log left idle empties. The log start moves to
    /// the first remaining segment.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let now = self.shared.clock.now_ms();
        let cfg = self.shared.config();
        let mut st = self.shared.lock();
        self.shared.check_writable(&st)?;
        let expired = |s: &Segment| match (cfg.retention_ms, s.max_timestamp()) {
            (Some(ms), Some(ts)) => ts < now.saturating_sub(ms as i64),
            _ => false,
        };
        if !st.active().is_empty()
            && expired(st.active())
            && st.segments.values().all(expired_or_empty(&expired))
        {
            self.roll(&mut st)?;
        }
        let mut doomed = Vec::new();
        let mut total: u64 = st.segments.values().map(Segment::size).sum();
        let active_base = st.active().base_offset;
        for (base, seg) in &st.segments {
            if *base == active_base {
                break;
            }
            let by_time = expired(seg);
            let by_size = cfg.retention_bytes.is_some_and(|limit| total.saturating_sub(seg.size()) >= limit);
            if !(by_time || by_size) {
                break;
            }
            total -= seg.size();
            doomed.push(*base);
        }
        let mut outcome = RetentionOutcome { log_start: st.log_start, ..Default::default() };
        if doomed.is_empty() {
            return Ok(outcome);
        }
        let before = (st.segments.len(), st.segments.values().map(Segment::size).sum::<u64>());
        // Oldest first: a failure part way leaves a suffix of the log, which is a valid log.
        let deleted = delete_segments(&mut st, &doomed);
        outcome.deleted_segments = before.0 - st.segments.len();
        outcome.deleted_bytes = before.1 - st.segments.values().map(Segment::size).sum::<u64>();
        st.log_start = *st.segments.keys().next().expect("active segment remains");
        st.durable_end = st.durable_end.max(st.log_start);
        outcome.log_start = st.log_start;
        let start = st.log_start;
        if st.epochs.truncate_from_start(start) {
            st.epochs.persist()?;
        }
        tracing::info!(dir = %self.shared.dir.display(), deleted = outcome.deleted_segments,
            log_start = outcome.log_start, "retention deleted segments");
        deleted.map(|()| outcome)
    }

    /// The first record whose timestamp is at or after `timestamp`: its offset and
    /// timestamp (Kafka's ListOffsets by time). `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>> {
        let (file, path, pos, h) = {
            let st = self.shared.lock();
            let Some(seg) = st.segments.values().find(|s| s.max_timestamp().is_some_and(|m| m >= timestamp))
            else {
                return Ok(None);
            };
            let Some((pos, h)) = seg.find_by_timestamp(timestamp)? else { return Ok(None) };
            (Arc::clone(seg.file()), seg.path().to_owned(), pos, h)
        };
        let mut bytes = vec![0u8; h.total_len()];
        file.read_exact_at(&mut bytes, pos).map_err(LogError::io("read segment", &path))?;
        let corrupt = |source| LogError::Corrupt {
            segment: path.clone(),
            position: pos,
            offset: h.base_offset as u64,
            source,
        };
        let limits = crate::record::DecodeLimits { max_batch_bytes: BATCH_BYTES_LIMIT, ..Default::default() };
        let (_, records) = crate::record::decode_batch(&bytes, &limits).map_err(corrupt)?;
        Ok(records
            .iter()
            .find(|r| r.timestamp_ms >= timestamp)
            .map(|r| (r.offset as u64, r.timestamp_ms))
            .or(Some((h.base_offset as u64, h.max_timestamp))))
    }

    /// Kafka's OffsetsForLeaderEpoch: the largest epoch at most `epoch` that this log knows,
    /// and the offset where it ended. See [`crate::epoch`].
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        let st = self.shared.lock();
        st.epochs.end_offset_for(epoch, st.log_end)
    }

    /// The headers of the batches from the one that contains `from` (or the log start, if
    /// `from` is below it) up to the log end at the time of the call, oldest first. Only
    /// each batch's fixed 61-byte header is read, one `pread` per batch, outside the log's
    /// lock; records are neither read nor decoded, and the CRC is not checked (the header
    /// fields are checked for sanity and the base offsets for contiguity). This is how a
    /// broker rebuilds per-producer state from its log: the cost is one small read per
    /// batch, from the page cache when the log was recently written.
    ///
    /// An error (a damaged header, an I/O failure) is yielded once for the segment it is in,
    /// and the iteration goes on with the next segment. Segments deleted by retention
    /// meanwhile stay readable through the open handles; batches appended after the call are
    /// not seen.
    pub fn batch_headers(&self, from: u64) -> Result<BatchHeaders> {
        let st = self.shared.lock();
        let from = from.max(st.log_start);
        let mut segments = Vec::new();
        if from < st.log_end {
            let first_base = st.segments.range(..=from).next_back().map_or(from, |(b, _)| *b);
            for (&base, seg) in st.segments.range(first_base..) {
                if seg.is_empty() {
                    continue;
                }
                let (position, expected) = if base < from {
                    match seg.find_batch(from)? {
                        Some((pos, h)) => (pos, h.base_offset as u64),
                        None => continue,
                    }
                } else {
                    (0, base)
                };
                segments.push(HeaderSegment {
                    file: Arc::clone(seg.file()),
                    path: seg.path().to_owned(),
                    position,
                    end: seg.size(),
                    expected,
                });
            }
        }
        Ok(BatchHeaders { segments: segments.into_iter(), current: None, end_offset: st.log_end })
    }

    /// The leader-epoch cache entries, oldest first.
    pub fn epochs(&self) -> Vec<EpochEntry> {
        self.shared.lock().epochs.entries().to_vec()
    }

    /// The latest leader epoch in the log, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.shared.lock().epochs.latest().map(|e| e.epoch)
    }

    /// Stops the sync thread after a final fsync. Further writes get `LogError::Closed`.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
        }
        self.shared.appended.notify_all();
        self.shared.durable.notify_all();
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
        let mut st = self.shared.lock();
        if st.failed.is_some() {
            return Ok(());
        }
        // The active segment's indexes are rebuilt on open anyway; writing them here only
        // saves that scan after a clean stop. Sealed segments persisted theirs when sealed.
        st.active_mut().persist_indexes()?;
        st.active().sync()
    }

    /// Deletes the log's directory. The log must not be used afterwards.
    pub fn delete(mut self) -> Result<()> {
        self.shutdown()?;
        fs::remove_dir_all(&self.shared.dir).map_err(LogError::io("delete log directory", &self.shared.dir))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "final fsync failed on close");
        }
    }
}

fn expired_or_empty<'a>(expired: &'a impl Fn(&Segment) -> bool) -> impl Fn(&Segment) -> bool + 'a {
    move |s| s.is_empty() || expired(s)
}

/// One fsync of the active segment, advancing `durable_end` to the log end it covered.
fn sync_once(shared: &Shared) -> Result<()> {
    let (file, path, target, generation, from) = {
        let st = shared.lock();
        shared.check_writable(&st)?;
        if st.durable_end >= st.log_end {
            return Ok(());
        }
        let a = st.active();
        (Arc::clone(a.file()), a.path().to_owned(), st.log_end, st.generation, st.durable_end)
    };
    let started = Instant::now();
    let res = file.sync_data();
    let took = started.elapsed();
    let mut st = shared.lock();
    match res {
        Ok(()) => {
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            if st.generation == generation && target > st.durable_end {
                st.durable_end = target.min(st.log_end);
                shared.durable_advanced(&st);
            }
            drop(st);
            let observer = shared.observer.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(observer) = observer {
                observer.synced(took, target.saturating_sub(from));
            }
            Ok(())
        }
        Err(e) => {
            // After a failed fsync the kernel may have dropped the dirty pages; nothing
            // written since the last good fsync can be trusted, so stop accepting writes.
            let reason = format!("fsync of {} failed: {e}", path.display());
            tracing::error!(%reason, "log failed");
            st.failed = Some(reason);
            shared.durable.notify_all();
            Err(LogError::io("fsync segment", path)(e))
        }
    }
}

fn sync_loop(shared: &Shared, policy: FsyncPolicy) {
    let interval = match policy {
        FsyncPolicy::Interval(d) => Some(d),
        _ => None,
    };
    let mut last_sync = Instant::now();
    loop {
        {
            let mut st = shared.lock();
            loop {
                if st.closed || st.failed.is_some() {
                    return;
                }
                if st.log_end > st.durable_end {
                    // One clock read: comparing and subtracting two reads could underflow.
                    let remaining = interval.and_then(|d| d.checked_sub(last_sync.elapsed()));
                    match remaining {
                        Some(wait) if !wait.is_zero() => {
                            st = shared.appended.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
                        }
                        _ => break,
                    }
                } else {
                    st = shared.appended.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        last_sync = Instant::now();
        if sync_once(shared).is_err() {
            return;
        }
    }
}

/// Deletes the given segments' files, in the order given, dropping each from the map once
/// its files are gone.
fn delete_segments(st: &mut State, bases: &[u64]) -> Result<()> {
    for base in bases {
        st.segments.get(base).expect("listed").delete_files()?;
        st.segments.remove(base);
    }
    Ok(())
}

/// Deletes `.index` / `.timeindex` files with no `.log` beside them (left by a crash during
/// segment deletion).
fn remove_orphan_indexes(dir: &Path, bases: &[u64]) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(LogError::io("read directory", dir))? {
        let entry = entry.map_err(LogError::io("read directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, suffix)) = name.split_once('.') else { continue };
        if (suffix == segment::INDEX_SUFFIX || suffix == segment::TIME_INDEX_SUFFIX)
            && stem.parse::<u64>().is_ok_and(|b| bases.binary_search(&b).is_err())
        {
            fs::remove_file(entry.path()).map_err(LogError::io("remove orphan index", entry.path()))?;
        }
    }
    Ok(())
}

/// Rebuilds the leader-epoch cache by reading every batch header of the log.
fn rebuild_epoch_cache(dir: &Path, segments: &BTreeMap<u64, Segment>) -> Result<LeaderEpochCache> {
    let mut cache = LeaderEpochCache::empty(dir);
    for seg in segments.values() {
        let file: &File = seg.file();
        let mut scanner = Scanner::new(file, 0, seg.size(), BATCH_BYTES_LIMIT);
        while let Ok(Some(sb)) = scanner.next() {
            cache.assign(sb.header.partition_leader_epoch, sb.header.base_offset as u64);
        }
    }
    Ok(cache)
}
