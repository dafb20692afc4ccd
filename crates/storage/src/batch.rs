//! Kafka RecordBatch v2: the on-disk and on-wire unit of the log.
//!
//! The log stores batches exactly as Kafka does, so the Kafka listener can serve stored bytes
//! as they are. This module knows the fixed 61-byte header and the CRC; building batches from
//! records and iterating their records lives in [`crate::record`].
//!
//! Layout (all integers big-endian):
//!
//! | offset | field                   | type  |
//! |-------:|-------------------------|-------|
//! | 0      | base offset             | i64   |
//! | 8      | batch length            | i32 — bytes after this field |
//! | 12     | partition leader epoch  | i32   |
//! | 16     | magic (2)               | i8    |
//! | 17     | CRC32C                  | u32 — over bytes 21..end |
//! | 21     | attributes              | i16   |
//! | 23     | last offset delta       | i32   |
//! | 27     | base timestamp          | i64   |
//! | 35     | max timestamp           | i64   |
//! | 43     | producer id             | i64   |
//! | 51     | producer epoch          | i16   |
//! | 53     | base sequence           | i32   |
//! | 57     | record count            | i32   |
//! | 61     | records (maybe compressed) |    |
//!
//! The CRC does not cover the base offset, the length or the leader epoch, so the log can
//! assign offsets and stamp the epoch without recomputing it.

use crate::error::BatchError;

/// Bytes before the batch length field's coverage begins: base offset (8) + length (4).
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed RecordBatch v2 header, up to and including the record count.
pub const BATCH_HEADER_LEN: usize = 61;
/// The only record format this log accepts.
pub const MAGIC_V2: i8 = 2;
/// Smallest legal value of the batch length field (a header with no records).
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;

pub(crate) const BASE_OFFSET_POS: usize = 0;
pub(crate) const LENGTH_POS: usize = 8;
pub(crate) const LEADER_EPOCH_POS: usize = 12;
pub(crate) const MAGIC_POS: usize = 16;
pub(crate) const CRC_POS: usize = 17;
pub(crate) const ATTRIBUTES_POS: usize = 21;
pub(crate) const MAX_TIMESTAMP_POS: usize = 35;

/// Sentinel for "no producer id" (non-idempotent producers).
pub const NO_PRODUCER_ID: i64 = -1;
/// Sentinel for "no producer epoch".
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// Sentinel for "no sequence".
pub const NO_SEQUENCE: i32 = -1;
/// Sentinel leader epoch for batches that never had one.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Compression codec, from the low three bits of the batch attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// All codecs, in attribute order.
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    /// The codec's id in the attributes field.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec for an attribute id.
    pub fn from_id(id: u8) -> Result<Self, BatchError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(BatchError::UnsupportedCompression { id: other }),
        })
    }

    /// Kafka's name for the codec (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown compression '{s}' (expected none, gzip, snappy, lz4 or zstd)"))
    }
}

/// Timestamp type bit of the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The decoded fixed header of one RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses and sanity-checks the fixed header at the start of `buf`.
    ///
    /// Checks the magic, that the length is at least a bare header and at most
    /// `max_batch_bytes`, that the record count is non-negative and that the last offset
    /// delta fits the count. It does not check the CRC (see [`verify_crc`]) nor that `buf`
    /// holds the whole batch.
    pub fn parse(buf: &[u8], max_batch_bytes: usize) -> Result<Self, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated { needed: BATCH_HEADER_LEN, available: buf.len() });
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic { magic });
        }
        let batch_length = be_i32(buf, LENGTH_POS);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::BadLength {
                length: batch_length,
                reason: "shorter than a batch header",
            });
        }
        if batch_length as usize + LOG_OVERHEAD > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size: batch_length as usize + LOG_OVERHEAD,
                max: max_batch_bytes,
            });
        }
        let h = BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET_POS),
            batch_length,
            partition_leader_epoch: be_i32(buf, LEADER_EPOCH_POS),
            magic,
            crc: u32::from_be_bytes([buf[CRC_POS], buf[CRC_POS + 1], buf[CRC_POS + 2], buf[CRC_POS + 3]]),
            attributes: be_i16(buf, ATTRIBUTES_POS),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        };
        if h.records_count < 0 {
            return Err(BatchError::BadLength { length: h.records_count, reason: "negative record count" });
        }
        if h.last_offset_delta < 0 {
            return Err(BatchError::BadLength {
                length: h.last_offset_delta,
                reason: "negative last offset delta",
            });
        }
        if h.records_count > 0 && h.last_offset_delta < h.records_count - 1 {
            return Err(BatchError::BadLength {
                length: h.last_offset_delta,
                reason: "last offset delta smaller than record count - 1",
            });
        }
        Compression::from_id(h.compression_id())?;
        Ok(h)
    }

    /// Bytes the whole batch occupies, including base offset and length fields.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record of the batch.
    pub fn last_offset(&self) -> i64 {
        // Saturating: a header from the network may claim a base offset near i64::MAX; the
        // checks that compare these with the log's offsets then refuse it.
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    /// The offset right after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Number of offsets the batch occupies (last offset delta + 1).
    pub fn offset_count(&self) -> u64 {
        self.last_offset_delta as u64 + 1
    }

    fn compression_id(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }

    /// Compression codec of the records section.
    pub fn compression(&self) -> Compression {
        // parse() has checked the id already.
        Compression::from_id(self.compression_id()).unwrap_or_default()
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & 0x08 != 0 { TimestampType::LogAppendTime } else { TimestampType::CreateTime }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// CRC32C (Castagnoli) of the bytes the batch CRC covers.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Checks the stored CRC of a whole batch (`batch` is exactly one batch).
pub fn verify_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    debug_assert_eq!(batch.len(), header.total_len());
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { stored: header.crc, computed });
    }
    Ok(())
}

/// Parses the header of the batch at the start of `buf`, checks that `buf` holds all of it,
/// and verifies its CRC. Returns the header; the batch is `&buf[..header.total_len()]`.
pub fn check_batch(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(buf, max_batch_bytes)?;
    if buf.len() < h.total_len() {
        return Err(BatchError::Truncated { needed: h.total_len(), available: buf.len() });
    }
    verify_crc(&h, &buf[..h.total_len()])?;
    Ok(h)
}

/// Writes the base offset field in place.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch field in place.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Writes the max timestamp field in place; covered by the CRC, so [`write_crc`] must follow.
pub fn set_max_timestamp(batch: &mut [u8], timestamp_ms: i64) {
    batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
}

/// Recomputes and writes the CRC (for builders, and tests that craft batches).
pub fn write_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates over the whole, CRC-checked batches of a buffer of concatenated batches.
///
/// Yields `(header, batch bytes)`; stops at the end of the buffer, and yields one error (then
/// stops) at the first batch that is incomplete or invalid.
#[derive(Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    max_batch_bytes: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8], max_batch_bytes: usize) -> Self {
        BatchIter { buf, pos: 0, max_batch_bytes, failed: false }
    }

    /// Byte position of the next batch within the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        match check_batch(rest, self.max_batch_bytes) {
            Ok(h) => {
                let len = h.total_len();
                self.pos += len;
                Some(Ok((h, &rest[..len])))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid batch with `count` empty-ish offsets and no record bodies; enough
    /// for header-level tests (records are the codec's business).
    pub(crate) fn bare_batch(count: i32, ts: i64) -> Vec<u8> {
        let mut b = vec![0u8; BATCH_HEADER_LEN];
        b[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&MIN_BATCH_LENGTH.to_be_bytes());
        b[MAGIC_POS] = MAGIC_V2 as u8;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&ts.to_be_bytes());
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        b[43..51].copy_from_slice(&NO_PRODUCER_ID.to_be_bytes());
        b[51..53].copy_from_slice(&NO_PRODUCER_EPOCH.to_be_bytes());
        b[53..57].copy_from_slice(&NO_SEQUENCE.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        write_crc(&mut b);
        b
    }

    #[test]
    fn parses_a_valid_header() {
        let b = bare_batch(3, 1000);
        let h = check_batch(&b, 1 << 20).unwrap();
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.total_len(), BATCH_HEADER_LEN);
        assert_eq!(h.offset_count(), 3);
        assert_eq!(h.compression(), Compression::None);
    }

    #[test]
    fn offset_and_epoch_are_outside_the_crc() {
        let mut b = bare_batch(1, 0);
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let h = check_batch(&b, 1 << 20).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.partition_leader_epoch, 7);
    }

    #[test]
    fn rejects_bad_crc_magic_length_and_truncation() {
        let mut b = bare_batch(1, 0);
        b[30] ^= 1;
        assert!(matches!(check_batch(&b, 1 << 20), Err(BatchError::CrcMismatch { .. })));

        let mut b = bare_batch(1, 0);
        b[MAGIC_POS] = 1;
        assert!(matches!(check_batch(&b, 1 << 20), Err(BatchError::UnsupportedMagic { magic: 1 })));

        let mut b = bare_batch(1, 0);
        b[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(check_batch(&b, 1 << 20), Err(BatchError::BadLength { .. })));

        let mut b = bare_batch(1, 0);
        b[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&(MIN_BATCH_LENGTH + 5).to_be_bytes());
        assert!(matches!(check_batch(&b, 1 << 20), Err(BatchError::Truncated { .. })));

        let b = bare_batch(1, 0);
        assert!(matches!(check_batch(&b[..40], 1 << 20), Err(BatchError::Truncated { .. })));
        assert!(matches!(check_batch(&b, 10), Err(BatchError::TooLarge { .. })));

        let mut b = bare_batch(1, 0);
        b[22] = 6; // compression id 6
        write_crc(&mut b);
        assert!(matches!(check_batch(&b, 1 << 20), Err(BatchError::UnsupportedCompression { id: 6 })));
    }

    #[test]
    fn iterates_concatenated_batches_and_stops_at_garbage() {
        let mut buf = bare_batch(2, 0);
        buf.extend(bare_batch(5, 0));
        buf.extend([1, 2, 3]);
        let mut it = BatchIter::new(&buf, 1 << 20);
        assert_eq!(it.next().unwrap().unwrap().0.records_count, 2);
        assert_eq!(it.next().unwrap().unwrap().0.records_count, 5);
        assert_eq!(it.position(), 2 * BATCH_HEADER_LEN);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }
}
