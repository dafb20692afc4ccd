//! The leader-epoch cache: which leader epoch started at which offset.
//!
//! Followers use "end offset for epoch e" to find where their log diverged from the leader's
//! (KIP-101/KIP-279). The cache is written crash-safely beside the log before any batch of a
//! new epoch, so after a crash it covers every batch on disk; recovery then trims entries
//! that start at or past the recovered log end.
//!
//! File `leader-epoch-checkpoint` (text, so operators can read it):
//! ```text
//! runnel-leader-epoch-checkpoint 1
//! <entry count>
//! <epoch> <start offset>       one line per entry, epochs and offsets increasing
//! crc32c <8 hex digits>        CRC32C of every byte before this line
//! ```

use std::path::{Path, PathBuf};

use crate::crashsafe;
use crate::error::{LogError, Result};

pub(crate) const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
const MAGIC_LINE: &str = "runnel-leader-epoch-checkpoint 1";

/// One epoch's first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: u64,
}

#[derive(Debug)]
pub(crate) struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Loads the checkpoint in `dir`. A missing file is an empty cache; a damaged one is an
    /// error the caller handles by rebuilding from the log.
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CHECKPOINT_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LeaderEpochCache { path, entries: Vec::new() });
            }
            Err(e) => return Err(LogError::io("read", &path)(e)),
        };
        let entries = parse_epoch_checkpoint(&text)
            .map_err(|reason| LogError::CorruptFile { path: path.clone(), reason })?;
        Ok(LeaderEpochCache { path, entries })
    }

    /// An empty cache for `dir`, to be filled by [`assign`](Self::assign) (rebuilds).
    pub(crate) fn empty(dir: &Path) -> Self {
        LeaderEpochCache { path: dir.join(CHECKPOINT_FILE), entries: Vec::new() }
    }

    fn encode(&self) -> Vec<u8> {
        let mut s = format!("{MAGIC_LINE}\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        let crc = crc32c::crc32c(s.as_bytes());
        s.push_str(&format!("crc32c {crc:08x}\n"));
        s.into_bytes()
    }

    /// Writes the checkpoint crash-safely.
    pub(crate) fn persist(&self) -> Result<()> {
        crashsafe::write_atomic(&self.path, &self.encode())
    }

    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than every epoch known.
    /// Returns whether the cache changed (and so must be persisted).
    pub(crate) fn assign(&mut self, epoch: i32, start_offset: u64) -> bool {
        if epoch < 0 {
            return false;
        }
        let new = EpochEntry { epoch, start_offset };
        match self.entries.last() {
            Some(last) if !entry_follows(last, &new) => false,
            _ => {
                self.entries.push(new);
                true
            }
        }
    }

    /// Forgets epochs that start at or after `end_offset` (the log was truncated there).
    pub(crate) fn truncate_from_end(&mut self, end_offset: u64) -> bool {
        let keep = self.entries.partition_point(|e| e.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start_offset`: drops epochs that ended before it and moves the
    /// start of the one it falls in.
    pub(crate) fn truncate_from_start(&mut self, start_offset: u64) -> bool {
        let after = self.entries.partition_point(|e| e.start_offset <= start_offset);
        if after == 0 {
            return false;
        }
        let mut changed = after > 1;
        self.entries.drain(..after - 1);
        if self.entries[0].start_offset != start_offset {
            self.entries[0].start_offset = start_offset;
            changed = true;
        }
        changed
    }

    /// Kafka's OffsetsForLeaderEpoch answer: the largest epoch at most `epoch` that this log
    /// knows, and the offset where it ended (the next epoch's start, or `log_end` for the
    /// latest). For an epoch older than all known ones, the start of the earliest known one.
    /// `None` when the epoch is newer than any known, or nothing is known.
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: u64) -> Option<(i32, u64)> {
        let latest = self.entries.last()?;
        if epoch == latest.epoch {
            return Some((epoch, log_end));
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        let next = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            Some(i) => Some((self.entries[i].epoch, next.start_offset)),
            None => Some((epoch, next.start_offset)),
        }
    }
}

/// Parses the contents of a `leader-epoch-checkpoint` file, as opening a log does: the
/// entries, or why the file is damaged (a damaged file makes [`crate::Log::open`] rebuild
/// the cache from the log). Public as the parser's entry point, for fuzzing and tools.
pub fn parse_epoch_checkpoint(bytes: &[u8]) -> std::result::Result<Vec<EpochEntry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body_end = text.rfind("crc32c ").ok_or("no crc32c line")?;
    let (body, crc_line) = text.split_at(body_end);
    let stored = u32::from_str_radix(crc_line.trim_start_matches("crc32c ").trim_end(), 16)
        .map_err(|_| "unreadable crc32c line".to_string())?;
    let computed = crc32c::crc32c(body.as_bytes());
    if stored != computed {
        return Err(format!("checksum mismatch: stored {stored:08x}, computed {computed:08x}"));
    }
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC_LINE) {
        return Err("unknown header line".into());
    }
    let count: usize =
        lines.next().and_then(|l| l.parse().ok()).ok_or_else(|| "unreadable entry count".to_string())?;
    let mut entries = Vec::new();
    for line in lines {
        let mut parts = line.split(' ');
        let (Some(e), Some(o), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("bad entry line {line:?}"));
        };
        let entry = EpochEntry {
            epoch: e.parse().map_err(|_| format!("bad epoch in {line:?}"))?,
            start_offset: o.parse().map_err(|_| format!("bad offset in {line:?}"))?,
        };
        if let Some(prev) = entries.last()
            && !(entry_follows(prev, &entry))
        {
            return Err(format!("entries out of order at {line:?}"));
        }
        entries.push(entry);
    }
    if entries.len() != count {
        return Err(format!("expected {count} entries, found {}", entries.len()));
    }
    Ok(entries)
}

fn entry_follows(prev: &EpochEntry, next: &EpochEntry) -> bool {
    next.epoch > prev.epoch && next.start_offset >= prev.start_offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, u64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::empty(Path::new("/nonexistent"));
        for &(e, o) in entries {
            assert!(c.assign(e, o));
        }
        c
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_offset_for(4, 40), Some((4, 40)));
        assert_eq!(c.end_offset_for(3, 40), Some((3, 25)));
        assert_eq!(c.end_offset_for(2, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for(1, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for(0, 40), Some((0, 0)));
        assert_eq!(c.end_offset_for(5, 40), None);
        assert_eq!(cache(&[]).end_offset_for(1, 0), None);
    }

    #[test]
    fn assign_ignores_older_epochs_and_negative() {
        let mut c = cache(&[(2, 5)]);
        assert!(!c.assign(1, 9));
        assert!(!c.assign(2, 9));
        assert!(!c.assign(-1, 9));
        assert!(!c.assign(3, 4));
        assert!(c.assign(3, 9));
    }

    #[test]
    fn truncations() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(c.truncate_from_end(25));
        assert_eq!(c.latest(), Some(EpochEntry { epoch: 3, start_offset: 10 }));
        assert!(!c.truncate_from_end(25));
        assert!(c.truncate_from_start(12));
        assert_eq!(c.entries(), &[EpochEntry { epoch: 3, start_offset: 12 }]);
        assert!(!c.truncate_from_start(5));
    }

    #[test]
    fn checkpoint_round_trips_and_detects_damage() {
        let d = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::load(d.path()).unwrap();
        assert!(c.entries().is_empty());
        c.assign(0, 0);
        c.assign(7, 1234);
        c.persist().unwrap();
        let again = LeaderEpochCache::load(d.path()).unwrap();
        assert_eq!(again.entries(), c.entries());

        let p = d.path().join(CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        let i = bytes.iter().position(|&b| b == b'7').unwrap();
        bytes[i] = b'8';
        std::fs::write(&p, &bytes).unwrap();
        let err = LeaderEpochCache::load(d.path()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(LeaderEpochCache::load(d.path()).is_err());
    }
}
