//! Sparse per-segment indexes: offset -> file position, and timestamp -> offset.
//!
//! Entries are fixed-size, big-endian, appended to a file and mirrored in memory, so a lookup
//! is a binary search followed by a scan of at most `index_interval_bytes` (plus one batch)
//! of the segment. Indexes are derived data: the tail segment's are rebuilt on every open,
//! and a sealed segment's are checked on open and rebuilt if they do not hold together.
//! So new entries are only kept in memory until [`Index::persist`] (called when a segment is
//! sealed or the log closes): the append path makes no index syscall.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

/// Bytes before the first entry: magic (4), format version (u32), the index interval the
/// entries were built with (u64). The time index lookup depends on that interval, and a
/// segment keeps the index it was built with even if the config changes later.
pub(crate) const HEADER_LEN: usize = 16;
const FORMAT_VERSION: u32 = 1;

/// One fixed-size index entry.
pub(crate) trait Entry: Copy + std::fmt::Debug {
    const MAGIC: [u8; 4];
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(b: &[u8]) -> Self;
}

/// Offset index entry: the batch starting at `position` has base offset
/// `segment base + relative_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

impl Entry for OffsetEntry {
    const MAGIC: [u8; 4] = *b"RNOI";
    const SIZE: usize = 8;
    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Time index entry: every batch up to and including the batch at `relative_offset` has a
/// max timestamp of at most `timestamp`, and that batch's max timestamp is `timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

impl Entry for TimeEntry {
    const MAGIC: [u8; 4] = *b"RNTI";
    const SIZE: usize = 12;
    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimeEntry {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// An index file and its in-memory mirror.
#[derive(Debug)]
pub(crate) struct Index<E: Entry> {
    path: PathBuf,
    file: File,
    entries: Vec<E>,
    /// How many of `entries` are in the file.
    persisted: usize,
    /// `index.interval.bytes` the entries were built with.
    interval: u64,
}

impl<E: Entry> Index<E> {
    /// Creates an empty index built with `interval`, replacing any file at `path`.
    pub(crate) fn create(path: &Path, interval: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(LogError::io("create index", path))?;
        let mut index = Index { path: path.to_owned(), file, entries: Vec::new(), persisted: 0, interval };
        index.write_header()?;
        Ok(index)
    }

    fn write_header(&mut self) -> Result<()> {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&E::MAGIC);
        h[4..8].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        h[8..16].copy_from_slice(&self.interval.to_be_bytes());
        self.file.write_all_at(&h, 0).map_err(LogError::io("write index", &self.path))
    }

    /// Loads an existing index. Returns `Ok(None)` when the file is missing, is not an index
    /// of this kind and version, or its size is not a whole number of entries (a torn
    /// write); the caller then rebuilds it.
    pub(crate) fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io("read index", path)(e)),
        };
        if bytes.len() < HEADER_LEN
            || bytes[..4] != E::MAGIC
            || bytes[4..8] != FORMAT_VERSION.to_be_bytes()
            || !(bytes.len() - HEADER_LEN).is_multiple_of(E::SIZE)
        {
            return Ok(None);
        }
        let mut interval = [0u8; 8];
        interval.copy_from_slice(&bytes[8..16]);
        let interval = u64::from_be_bytes(interval);
        if interval == 0 {
            return Ok(None);
        }
        let entries: Vec<E> = bytes[HEADER_LEN..].chunks_exact(E::SIZE).map(E::decode).collect();
        let persisted = entries.len();
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(LogError::io("open index", path))?;
        Ok(Some(Index { path: path.to_owned(), file, entries, persisted, interval }))
    }

    /// Empties the index and restarts it with `interval` (a rebuild).
    pub(crate) fn reset(&mut self, interval: u64) -> Result<()> {
        self.entries.clear();
        self.persisted = 0;
        self.interval = interval;
        self.file.set_len(0).map_err(LogError::io("truncate index", &self.path))?;
        self.write_header()
    }

    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    pub(crate) fn entries(&self) -> &[E] {
        &self.entries
    }

    pub(crate) fn last(&self) -> Option<E> {
        self.entries.last().copied()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Adds an entry in memory; [`persist`](Self::persist) writes it out.
    pub(crate) fn append(&mut self, e: E) {
        self.entries.push(e);
    }

    /// Writes the entries not yet in the file, in one write.
    pub(crate) fn persist(&mut self) -> Result<()> {
        if self.persisted == self.entries.len() {
            return Ok(());
        }
        let mut buf = vec![0u8; (self.entries.len() - self.persisted) * E::SIZE];
        for (chunk, e) in buf.chunks_exact_mut(E::SIZE).zip(&self.entries[self.persisted..]) {
            e.encode(chunk);
        }
        let at = (HEADER_LEN + self.persisted * E::SIZE) as u64;
        self.file.write_all_at(&buf, at).map_err(LogError::io("write index", &self.path))?;
        self.persisted = self.entries.len();
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(LogError::io("fsync index", &self.path))
    }
}

impl Index<OffsetEntry> {
    /// The last entry whose relative offset is at most `relative_offset`.
    pub(crate) fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Checks that entries strictly increase in both fields and stay inside the segment.
    pub(crate) fn is_consistent(&self, segment_size: u64) -> bool {
        self.entries
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position)
            && self.entries.last().is_none_or(|e| u64::from(e.position) < segment_size)
    }
}

impl Index<TimeEntry> {
    /// The last entry whose timestamp is below `timestamp`: the first batch with a max
    /// timestamp at or above `timestamp` comes after that entry's batch.
    pub(crate) fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let i = self.entries.partition_point(|e| e.timestamp < timestamp);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Checks that entries strictly increase in timestamp and do not decrease in offset.
    pub(crate) fn is_consistent(&self, max_relative_offset: u32) -> bool {
        self.entries
            .windows(2)
            .all(|w| w[0].timestamp < w[1].timestamp && w[0].relative_offset <= w[1].relative_offset)
            && self.entries.last().is_none_or(|e| e.relative_offset <= max_relative_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_floor_and_reset_survive_reload() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.index");
        let mut idx = Index::<OffsetEntry>::create(&p, 4096).unwrap();
        for i in 0..10u32 {
            idx.append(OffsetEntry { relative_offset: i * 10, position: i * 100 });
        }
        idx.persist().unwrap();
        assert_eq!(idx.floor(0).unwrap().position, 0);
        assert_eq!(idx.floor(35).unwrap().position, 300);
        assert_eq!(idx.floor(1000).unwrap().position, 900);
        let again = Index::<OffsetEntry>::load(&p).unwrap().unwrap();
        assert_eq!(again.entries(), idx.entries());
        assert_eq!(again.interval(), 4096);
        assert!(again.is_consistent(901));
        assert!(!again.is_consistent(900));
        idx.reset(128).unwrap();
        let empty = Index::<OffsetEntry>::load(&p).unwrap().unwrap();
        assert!(empty.entries().is_empty());
        assert_eq!(empty.interval(), 128);
    }

    #[test]
    fn torn_or_missing_index_loads_as_none() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.index");
        assert!(Index::<OffsetEntry>::load(&p).unwrap().is_none());
        std::fs::write(&p, [0u8; 13]).unwrap();
        assert!(Index::<OffsetEntry>::load(&p).unwrap().is_none());
        // A time index is not an offset index, and a torn entry is not an index.
        Index::<TimeEntry>::create(&p, 64).unwrap();
        assert!(Index::<OffsetEntry>::load(&p).unwrap().is_none());
        let mut t = Index::<TimeEntry>::load(&p).unwrap().unwrap();
        assert_eq!(t.interval(), 64);
        t.append(TimeEntry { timestamp: 1, relative_offset: 0 });
        t.persist().unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, bytes).unwrap();
        assert!(Index::<TimeEntry>::load(&p).unwrap().is_none());
    }

    #[test]
    fn time_index_last_below() {
        let d = tempfile::tempdir().unwrap();
        let mut idx = Index::<TimeEntry>::create(&d.path().join("0.timeindex"), 4096).unwrap();
        assert!(idx.last_below(5).is_none());
        idx.append(TimeEntry { timestamp: 10, relative_offset: 0 });
        idx.append(TimeEntry { timestamp: 20, relative_offset: 5 });
        assert!(idx.last_below(10).is_none());
        assert_eq!(idx.last_below(11).unwrap().relative_offset, 0);
        assert_eq!(idx.last_below(25).unwrap().relative_offset, 5);
        assert!(idx.is_consistent(5));
        assert!(!idx.is_consistent(4));
    }
}
