//! Records inside a Kafka RecordBatch v2: building a batch from records, and decoding the
//! records of a stored or received batch.
//!
//! After the 61-byte batch header (see [`crate::batch`]) come the records, concatenated and,
//! when the batch attributes name a codec, compressed as one blob (see
//! [`crate::compression`]). Each record is:
//!
//! | field             | type                                              |
//! |-------------------|---------------------------------------------------|
//! | length            | varint — bytes of the rest of this record         |
//! | attributes        | int8 — unused, 0                                  |
//! | timestamp delta   | varlong — from the batch base timestamp           |
//! | offset delta      | varint — from the batch base offset               |
//! | key length, key   | varint (-1 = null), bytes                         |
//! | value length, value | varint (-1 = null), bytes                       |
//! | header count      | varint                                            |
//! | per header        | key length varint + UTF-8 key, value length varint (-1 = null) + value |
//!
//! Varints are Kafka's: zigzag-encoded, then base-128 little-endian groups with a
//! continuation bit, at most 5 bytes for an int32 and 10 for an int64.

use bytes::Bytes;

use crate::batch::{
    self, BATCH_HEADER_LEN, BatchHeader, Compression, LOG_OVERHEAD, MAGIC_V2, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, TimestampType,
};
use crate::compression;
use crate::error::BatchError;

/// Longest encoding of an int32 varint.
pub const MAX_VARINT_LEN: usize = 5;
/// Longest encoding of an int64 varlong.
pub const MAX_VARLONG_LEN: usize = 10;

/// Smallest encoded record: a 1-byte length, the attributes byte and five 1-byte varints
/// (timestamp delta, offset delta, key length, value length, header count).
const MIN_RECORD_LEN: usize = 7;

/// A record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Header { key: key.into(), value: Some(value.into()) }
    }
}

/// A record to put in a new batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Create time, in milliseconds since the epoch (-1 if unknown, as in Kafka).
    pub timestamp_ms: i64,
}

impl NewRecord {
    /// A record with a value, no key and no headers.
    pub fn with_value(value: impl Into<Bytes>, timestamp_ms: i64) -> Self {
        NewRecord { key: None, value: Some(value.into()), headers: Vec::new(), timestamp_ms }
    }
}

/// A record decoded from a stored batch, with absolute offset and timestamp.
///
/// Keys, values and header values of the records of one batch share one buffer (the
/// decompressed records section), so keeping any of them keeps that buffer alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    /// The record's create time, or the batch's max timestamp when the batch has the
    /// LogAppendTime type (Kafka's rule: the broker's append time replaces every record's).
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

fn malformed(msg: impl Into<String>) -> BatchError {
    BatchError::Malformed(msg.into())
}

// ---------------------------------------------------------------------------------------
// Varints
// ---------------------------------------------------------------------------------------

fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

fn unzigzag32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ -((n & 1) as i32)
}

fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_unsigned(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn unsigned_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    let bits = (u64::BITS - v.leading_zeros()).max(1) as usize;
    bits.div_ceil(7)
}

/// Appends `n` as a Kafka (zigzag) varint.
pub fn put_varint(buf: &mut Vec<u8>, n: i32) {
    put_unsigned(buf, u64::from(zigzag32(n)));
}

/// Appends `n` as a Kafka (zigzag) varlong.
pub fn put_varlong(buf: &mut Vec<u8>, n: i64) {
    put_unsigned(buf, zigzag64(n));
}

/// Bytes [`put_varint`] writes for `n`.
pub fn varint_len(n: i32) -> usize {
    unsigned_len(u64::from(zigzag32(n)))
}

/// Bytes [`put_varlong`] writes for `n`.
pub fn varlong_len(n: i64) -> usize {
    unsigned_len(zigzag64(n))
}

/// Reads a Kafka varint from the start of `buf`; returns it and the bytes it took.
///
/// Refuses truncated input, encodings longer than 5 bytes and encodings whose value does not
/// fit 32 bits. Non-minimal encodings (such as `0x80 0x00` for 0) are accepted, as Kafka does.
pub fn read_varint(buf: &[u8]) -> Result<(i32, usize), BatchError> {
    let mut r = Reader::new(buf);
    let v = r.varint("varint")?;
    Ok((v, r.pos))
}

/// Reads a Kafka varlong from the start of `buf`; returns it and the bytes it took.
///
/// Refuses truncated input, encodings longer than 10 bytes and encodings whose value does
/// not fit 64 bits.
pub fn read_varlong(buf: &[u8]) -> Result<(i64, usize), BatchError> {
    let mut r = Reader::new(buf);
    let v = r.varlong("varlong")?;
    Ok((v, r.pos))
}

/// A bounds-checked cursor over untrusted bytes. Positions are absolute within `buf`, so a
/// reader over a prefix of a buffer yields ranges valid in the whole buffer.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn u8(&mut self, what: &str) -> Result<u8, BatchError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| malformed(format!("truncated {what}")))?;
        self.pos += 1;
        Ok(b)
    }

    /// A base-128 unsigned integer of at most `max_len` bytes whose value fits `bits` bits.
    fn unsigned(&mut self, max_len: usize, bits: u32, what: &str) -> Result<u64, BatchError> {
        let mut v: u64 = 0;
        for i in 0..max_len {
            let b = self.u8(what)?;
            let shift = 7 * i as u32;
            let group = u64::from(b & 0x7f);
            // Bits of this group that land at or past `bits` must be zero.
            if shift + 7 > bits && group >> (bits - shift) != 0 {
                return Err(malformed(format!("{what} overflows {bits} bits")));
            }
            v |= group << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed(format!("{what} is longer than {max_len} bytes")))
    }

    fn varint(&mut self, what: &str) -> Result<i32, BatchError> {
        let v = self.unsigned(MAX_VARINT_LEN, 32, what)?;
        // unsigned() has checked that v fits 32 bits.
        Ok(unzigzag32(v as u32))
    }

    fn varlong(&mut self, what: &str) -> Result<i64, BatchError> {
        let v = self.unsigned(MAX_VARLONG_LEN, 64, what)?;
        Ok(unzigzag64(v))
    }

    /// The range of the next `len` bytes.
    fn take(&mut self, len: usize, what: &str) -> Result<std::ops::Range<usize>, BatchError> {
        if len > self.remaining() {
            return Err(malformed(format!(
                "{what} of {len} bytes runs past the end ({} bytes left)",
                self.remaining()
            )));
        }
        let start = self.pos;
        self.pos += len;
        Ok(start..self.pos)
    }

    /// A length-prefixed byte string where length -1 means null.
    fn nullable(&mut self, what: &str) -> Result<Option<std::ops::Range<usize>>, BatchError> {
        let len = self.varint(what)?;
        match len {
            -1 => Ok(None),
            _ => match usize::try_from(len) {
                Ok(len) => self.take(len, what).map(Some),
                Err(_) => Err(malformed(format!("{what} has invalid length {len}"))),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------

/// A length as the format's int32, or [`BatchError::TooLarge`].
fn len_i32(len: usize) -> Result<i32, BatchError> {
    i32::try_from(len).map_err(|_| BatchError::TooLarge { size: len, max: i32::MAX as usize })
}

/// Length of a nullable byte field: its length varint plus its bytes.
fn nullable_len(field: Option<&[u8]>) -> usize {
    match field {
        None => varint_len(-1),
        Some(b) => varint_len(i32::try_from(b.len()).unwrap_or(i32::MAX)) + b.len(),
    }
}

/// Bytes of a record after its length field. Saturates for fields too large to encode;
/// [`encode_record`] refuses those.
fn record_body_len(rec: &NewRecord, timestamp_delta: i64, offset_delta: i32) -> usize {
    let headers: usize = rec
        .headers
        .iter()
        .map(|h| nullable_len(Some(h.key.as_bytes())).saturating_add(nullable_len(h.value.as_deref())))
        .fold(0, usize::saturating_add);
    [
        1,
        varlong_len(timestamp_delta),
        varint_len(offset_delta),
        nullable_len(rec.key.as_deref()),
        nullable_len(rec.value.as_deref()),
        varint_len(i32::try_from(rec.headers.len()).unwrap_or(i32::MAX)),
        headers,
    ]
    .into_iter()
    .fold(0, usize::saturating_add)
}

/// Bytes of a whole record, length field included.
fn record_len(rec: &NewRecord, timestamp_delta: i64, offset_delta: i32) -> usize {
    let body = record_body_len(rec, timestamp_delta, offset_delta);
    varint_len(i32::try_from(body).unwrap_or(i32::MAX)).saturating_add(body)
}

fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) -> Result<(), BatchError> {
    match field {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, len_i32(b.len())?);
            out.extend_from_slice(b);
        }
    }
    Ok(())
}

fn encode_record(
    out: &mut Vec<u8>,
    rec: &NewRecord,
    timestamp_delta: i64,
    offset_delta: i32,
) -> Result<(), BatchError> {
    let body = record_body_len(rec, timestamp_delta, offset_delta);
    put_varint(out, len_i32(body)?);
    let start = out.len();
    out.push(0); // attributes
    put_varlong(out, timestamp_delta);
    put_varint(out, offset_delta);
    put_nullable(out, rec.key.as_deref())?;
    put_nullable(out, rec.value.as_deref())?;
    put_varint(out, len_i32(rec.headers.len())?);
    for h in &rec.headers {
        put_nullable(out, Some(h.key.as_bytes()))?;
        put_nullable(out, h.value.as_deref())?;
    }
    debug_assert_eq!(out.len() - start, body);
    Ok(())
}

/// Builds one RecordBatch v2 from records, the way a Kafka producer does.
///
/// The batch has base offset 0 (the log assigns offsets with [`batch::set_base_offset`]),
/// no partition leader epoch, the CreateTime timestamp type, the first record's timestamp as
/// base timestamp, consecutive offset deltas from 0, and by default no producer id, epoch
/// or sequence.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<NewRecord>,
    /// Uncompressed bytes of the encoded records so far.
    records_len: usize,
}

impl BatchBuilder {
    /// An empty builder for a batch compressed with `compression`.
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            records: Vec::new(),
            records_len: 0,
        }
    }

    /// Sets the idempotent-producer fields of the batch header.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Adds a record; it gets the next offset delta.
    pub fn push(&mut self, record: NewRecord) -> &mut Self {
        let base = self.records.first().map_or(record.timestamp_ms, |r| r.timestamp_ms);
        let offset_delta = i32::try_from(self.records.len()).unwrap_or(i32::MAX);
        let len = record_len(&record, record.timestamp_ms.saturating_sub(base), offset_delta);
        self.records_len = self.records_len.saturating_add(len);
        self.records.push(record);
        self
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Size in bytes of the batch built from the records so far, before compression (header
    /// included). For uncompressed batches this is exactly the size [`build`](Self::build)
    /// returns; use it to cut batches by size.
    pub fn estimated_size(&self) -> usize {
        BATCH_HEADER_LEN.saturating_add(self.records_len)
    }

    /// The compression the batch will use.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Encodes, compresses and frames the records: a complete batch with its CRC set.
    ///
    /// Fails if there are no records, if a length does not fit the format's int32 fields,
    /// or if a timestamp is so far from the first record's that the delta overflows.
    pub fn build(self) -> Result<Vec<u8>, BatchError> {
        let Some(first) = self.records.first() else {
            return Err(malformed("cannot build a batch with no records"));
        };
        let base_timestamp = first.timestamp_ms;
        let max_timestamp = self.records.iter().map(|r| r.timestamp_ms).max().unwrap_or(base_timestamp);
        let count = len_i32(self.records.len())?;

        let mut out = Vec::with_capacity(match self.compression {
            Compression::None => self.estimated_size(),
            _ => BATCH_HEADER_LEN + self.records_len / 2,
        });
        out.resize(BATCH_HEADER_LEN, 0);
        {
            let mut scratch = Vec::new();
            let records_out = match self.compression {
                Compression::None => &mut out,
                _ => {
                    scratch.reserve(self.records_len);
                    &mut scratch
                }
            };
            for (i, rec) in self.records.iter().enumerate() {
                let delta = rec.timestamp_ms.checked_sub(base_timestamp).ok_or_else(|| {
                    malformed(format!(
                        "record {i}: timestamp {} is too far from the base timestamp {base_timestamp}",
                        rec.timestamp_ms
                    ))
                })?;
                // i < count, which fits i32.
                encode_record(records_out, rec, delta, i as i32)?;
            }
            if self.compression != Compression::None {
                let compressed = compression::compress(self.compression, &scratch)?;
                out.extend_from_slice(&compressed);
            }
        }

        let batch_length = i32::try_from(out.len() - LOG_OVERHEAD)
            .map_err(|_| BatchError::TooLarge { size: out.len(), max: i32::MAX as usize + LOG_OVERHEAD })?;
        let attributes = i16::from(self.compression.id()); // CreateTime, not transactional

        let mut header = [0u8; BATCH_HEADER_LEN];
        let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &0i64.to_be_bytes());
        put(8, &batch_length.to_be_bytes());
        put(12, &NO_PARTITION_LEADER_EPOCH.to_be_bytes());
        put(16, &[MAGIC_V2 as u8]);
        // 17..21: CRC, written last.
        put(21, &attributes.to_be_bytes());
        put(23, &(count - 1).to_be_bytes());
        put(27, &base_timestamp.to_be_bytes());
        put(35, &max_timestamp.to_be_bytes());
        put(43, &self.producer_id.to_be_bytes());
        put(51, &self.producer_epoch.to_be_bytes());
        put(53, &self.base_sequence.to_be_bytes());
        put(57, &count.to_be_bytes());
        out[..BATCH_HEADER_LEN].copy_from_slice(&header);
        batch::write_crc(&mut out);
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Bounds for decoding batches from untrusted sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most bytes the records section may take once decompressed.
    pub max_decompressed_bytes: usize,
    /// Most bytes a whole batch may take (header included).
    pub max_batch_bytes: usize,
}

impl Default for DecodeLimits {
    /// 64 MiB each.
    fn default() -> Self {
        DecodeLimits { max_decompressed_bytes: 64 << 20, max_batch_bytes: 64 << 20 }
    }
}

/// Verifies and decodes one whole batch: `batch` must be exactly one batch.
///
/// Checks the header and CRC ([`batch::check_batch`]), decompresses the records section
/// (never allocating more than `limits.max_decompressed_bytes` for it, whatever sizes the
/// bytes claim), and decodes every record. The number of records must match the header's
/// record count, with nothing left over; offset deltas must be strictly increasing and at
/// most the header's last offset delta (gaps are allowed: compaction leaves them).
pub fn decode_batch(batch: &[u8], limits: &DecodeLimits) -> Result<(BatchHeader, Vec<Record>), BatchError> {
    let header = batch::check_batch(batch, limits.max_batch_bytes)?;
    if batch.len() != header.total_len() {
        return Err(malformed(format!(
            "{} bytes after the end of the {}-byte batch",
            batch.len() - header.total_len(),
            header.total_len()
        )));
    }
    let section = batch.get(BATCH_HEADER_LEN..).unwrap_or_default();
    let data = if section.is_empty() && header.records_count == 0 {
        Bytes::new()
    } else {
        match header.compression() {
            Compression::None => {
                if section.len() > limits.max_decompressed_bytes {
                    return Err(BatchError::DecompressedTooLarge { max: limits.max_decompressed_bytes });
                }
                Bytes::copy_from_slice(section)
            }
            codec => Bytes::from(compression::decompress(codec, section, limits.max_decompressed_bytes)?),
        }
    };
    let records = decode_records(&header, &data)?;
    Ok((header, records))
}

/// What a leader checks a producer's batch against before appending it, as Kafka's log
/// validator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceChecks {
    /// Bounds on the batch and its decompressed records.
    pub limits: DecodeLimits,
    /// The leader's clock, in milliseconds since the epoch.
    pub now_ms: i64,
    /// `message.timestamp.before.max.ms`: how far before `now_ms` a create time may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far after `now_ms` a create time may be.
    pub timestamp_after_max_ms: i64,
}

/// Why a producer's batch was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProduceBatchError {
    /// Framing, CRC, size or compression: Kafka's CORRUPT_MESSAGE or MESSAGE_TOO_LARGE.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// Well-framed but inconsistent: Kafka's INVALID_RECORD.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// A create time outside the allowed window: Kafka's INVALID_TIMESTAMP.
    #[error(
        "timestamp {timestamp_ms} of record {index} is out of range: it must be within \
         [{earliest}, {latest}] (message.timestamp.before.max.ms / after.max.ms around now)"
    )]
    Timestamp { index: usize, timestamp_ms: i64, earliest: i64, latest: i64 },
}

/// Checks a producer's batch before a leader appends it, decoding every record once, and
/// fixes its header's max timestamp in place (re-writing the CRC) when the header disagrees
/// with its records: time retention and time look-ups trust that field.
///
/// Refused: anything [`batch::check_batch`] refuses, bytes after the batch, no records, a
/// `last_offset_delta` other than `records_count - 1`, records that do not parse or whose
/// offset deltas are not exactly 0, 1, 2, … (a producer's batch has no gaps), records that
/// decompress past `limits.max_decompressed_bytes`, and create times outside
/// `[now - before.max, now + after.max]`. A batch marked LogAppendTime gets `now_ms`.
///
/// A compressed batch is inflated into `scratch` (cleared first; its capacity never grows
/// past `limits.max_decompressed_bytes`), which a caller may keep and reuse.
pub fn check_producer_batch(
    batch: &mut [u8],
    checks: &ProduceChecks,
    scratch: &mut Vec<u8>,
) -> Result<BatchHeader, ProduceBatchError> {
    let limits = &checks.limits;
    let header = batch::check_batch(batch, limits.max_batch_bytes)?;
    if batch.len() != header.total_len() {
        return Err(BatchError::Malformed(format!(
            "{} bytes follow the {}-byte batch; send exactly one batch",
            batch.len() - header.total_len(),
            header.total_len()
        ))
        .into());
    }
    if header.records_count < 1 {
        return Err(ProduceBatchError::InvalidRecord("the batch has no records".into()));
    }
    if i64::from(header.last_offset_delta) != i64::from(header.records_count) - 1 {
        return Err(ProduceBatchError::InvalidRecord(format!(
            "last_offset_delta {} disagrees with the batch's {} records (it must be {})",
            header.last_offset_delta,
            header.records_count,
            header.records_count - 1
        )));
    }
    let section = batch.get(BATCH_HEADER_LEN..).unwrap_or_default();
    let data: &[u8] = match header.compression() {
        Compression::None => {
            if section.len() > limits.max_decompressed_bytes {
                return Err(BatchError::DecompressedTooLarge { max: limits.max_decompressed_bytes }.into());
            }
            section
        }
        codec => {
            compression::decompress_into(codec, section, limits.max_decompressed_bytes, scratch)?;
            scratch
        }
    };
    let earliest = checks.now_ms.saturating_sub(checks.timestamp_before_max_ms);
    let latest = checks.now_ms.saturating_add(checks.timestamp_after_max_ms);
    let create_time = header.timestamp_type() == TimestampType::CreateTime;
    let mut max_timestamp = i64::MIN;
    let mut refused = None;
    walk_records(&header, data, |i, raw| {
        if raw.offset_delta != i as i32 {
            refused = Some(ProduceBatchError::InvalidRecord(format!(
                "record {i} has offset delta {}; a producer's records are numbered 0, 1, 2, …",
                raw.offset_delta
            )));
            return Err(malformed("refused"));
        }
        if create_time {
            let ts = header.base_timestamp.saturating_add(raw.timestamp_delta);
            if ts < earliest || ts > latest {
                refused = Some(ProduceBatchError::Timestamp { index: i, timestamp_ms: ts, earliest, latest });
                return Err(malformed("refused"));
            }
            max_timestamp = max_timestamp.max(ts);
        }
        Ok(())
    })
    .map_err(|e| refused.take().unwrap_or(ProduceBatchError::Batch(e)))?;
    let max_timestamp = if create_time { max_timestamp } else { checks.now_ms };
    if header.max_timestamp != max_timestamp {
        batch::set_max_timestamp(batch, max_timestamp);
        batch::write_crc(batch);
    }
    Ok(BatchHeader { max_timestamp, ..header })
}

type Span = std::ops::Range<usize>;

/// One record as it lies in a decompressed records section: its deltas and the ranges of
/// its key, value and headers within the section.
struct RawRecord {
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<Span>,
    value: Option<Span>,
    /// Where its headers lie, and how many there are (already checked to parse).
    headers: Span,
    header_count: usize,
}

/// Walks the (decompressed) records section `data` of a batch whose header is `header`,
/// checking the framing of every record and header: the count matches, nothing is left
/// over, offset deltas strictly increase within `[0, last_offset_delta]`, header keys are
/// UTF-8. Calls `on_record` with each record's index. The one parser behind both decoding
/// and the leader's produce validation.
fn walk_records(
    header: &BatchHeader,
    data: &[u8],
    mut on_record: impl FnMut(usize, RawRecord) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    // parse() has refused negative counts.
    let count = usize::try_from(header.records_count).unwrap_or(0);
    let mut r = Reader::new(data);
    let mut prev_delta: Option<i32> = None;
    for i in 0..count {
        if r.remaining() == 0 {
            return Err(malformed(format!("the header claims {count} records but the batch holds {i}")));
        }
        let in_record = |e: BatchError| match e {
            BatchError::Malformed(m) => malformed(format!("record {i} of {count}: {m}")),
            other => other,
        };
        let len = r.varint("record length").map_err(in_record)?;
        let len = usize::try_from(len).map_err(|_| in_record(malformed(format!("negative length {len}"))))?;
        let body = r.take(len, "record").map_err(in_record)?;
        let record = parse_record_body(data, body).map_err(in_record)?;
        let offset_delta = record.offset_delta;
        if offset_delta < 0 || offset_delta > header.last_offset_delta {
            return Err(in_record(malformed(format!(
                "offset delta {offset_delta} outside the batch's [0, {}]",
                header.last_offset_delta
            ))));
        }
        if let Some(prev) = prev_delta
            && offset_delta <= prev
        {
            return Err(in_record(malformed(format!(
                "offset delta {offset_delta} does not increase (previous {prev})"
            ))));
        }
        prev_delta = Some(offset_delta);
        on_record(i, record).map_err(in_record)?;
    }
    if r.remaining() != 0 {
        return Err(malformed(format!("{} bytes after the last of {count} records", r.remaining())));
    }
    Ok(())
}

/// Decodes the (decompressed) records section of a batch whose header is `header`.
fn decode_records(header: &BatchHeader, data: &Bytes) -> Result<Vec<Record>, BatchError> {
    let count = usize::try_from(header.records_count).unwrap_or(0);
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let mut records = Vec::with_capacity(count.min(data.len() / MIN_RECORD_LEN));
    walk_records(header, data, |_, raw| {
        let offset = header
            .base_offset
            .checked_add(i64::from(raw.offset_delta))
            .ok_or_else(|| malformed("offset overflows"))?;
        let timestamp_ms = if log_append_time {
            header.max_timestamp
        } else {
            header
                .base_timestamp
                .checked_add(raw.timestamp_delta)
                .ok_or_else(|| malformed(format!("timestamp delta {} overflows", raw.timestamp_delta)))?
        };
        let mut headers = Vec::with_capacity(raw.header_count);
        for_each_header(data, raw.headers, raw.header_count, |key, value| {
            headers.push(Header {
                // for_each_header has checked that the key is UTF-8.
                key: String::from_utf8_lossy(data.get(key).unwrap_or_default()).into_owned(),
                value: value.map(|v| data.slice(v)),
            });
        })?;
        let key = raw.key.map(|k| data.slice(k));
        let value = raw.value.map(|v| data.slice(v));
        records.push(Record { offset, timestamp_ms, key, value, headers });
        Ok(())
    })?;
    Ok(records)
}

/// Parses the fields of one record, which occupy exactly `body` within `data`; its headers
/// are checked but not collected.
fn parse_record_body(data: &[u8], body: Span) -> Result<RawRecord, BatchError> {
    let end = body.end;
    let mut r = Reader { buf: data.get(..end).unwrap_or_default(), pos: body.start };
    let _attributes = r.u8("attributes")?;
    let timestamp_delta = r.varlong("timestamp delta")?;
    let offset_delta = r.varint("offset delta")?;
    let key = r.nullable("key")?;
    let value = r.nullable("value")?;
    let header_count = r.varint("header count")?;
    let header_count = usize::try_from(header_count)
        .map_err(|_| malformed(format!("negative header count {header_count}")))?;
    let headers = r.pos..end;
    let parsed_to = for_each_header(data, headers.clone(), header_count, |_, _| {})?;
    if parsed_to != end {
        return Err(malformed(format!(
            "{} bytes left over inside the record",
            end.saturating_sub(parsed_to)
        )));
    }
    Ok(RawRecord { offset_delta, timestamp_delta, key, value, headers, header_count })
}

/// Parses `count` headers starting at `span.start` (and within `span`), passing each key's
/// and value's range to `on_header`; returns where the headers end.
fn for_each_header(
    data: &[u8],
    span: Span,
    count: usize,
    mut on_header: impl FnMut(Span, Option<Span>),
) -> Result<usize, BatchError> {
    let mut r = Reader { buf: data.get(..span.end).unwrap_or_default(), pos: span.start };
    for h in 0..count {
        let key_len = r.varint("header key length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| malformed(format!("header {h}: invalid key length {key_len}")))?;
        let key = r.take(key_len, "header key")?;
        std::str::from_utf8(data.get(key.clone()).unwrap_or_default())
            .map_err(|e| malformed(format!("header {h}: key is not UTF-8: {e}")))?;
        let value = r.nullable("header value")?;
        on_header(key, value);
    }
    Ok(r.pos)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::batch::{CRC_POS, check_batch, set_base_offset, write_crc};

    const MIB: usize = 1 << 20;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    // ---- varints -------------------------------------------------------------------------

    fn varint_bytes(n: i32) -> Vec<u8> {
        let mut b = Vec::new();
        put_varint(&mut b, n);
        b
    }

    fn varlong_bytes(n: i64) -> Vec<u8> {
        let mut b = Vec::new();
        put_varlong(&mut b, n);
        b
    }

    #[test]
    fn varints_encode_as_kafka_does() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (-65, &[0x81, 0x01]),
            (8191, &[0xfe, 0x7f]),
            (8192, &[0x80, 0x80, 0x01]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(n, bytes) in cases {
            assert_eq!(varint_bytes(n), bytes, "{n}");
            assert_eq!(varint_len(n), bytes.len(), "{n}");
            assert_eq!(read_varint(bytes).unwrap(), (n, bytes.len()), "{n}");
        }
        let long_cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1000, &[0xd0, 0x0f]),
            (i64::MAX, &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            (i64::MIN, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for &(n, bytes) in long_cases {
            assert_eq!(varlong_bytes(n), bytes, "{n}");
            assert_eq!(varlong_len(n), bytes.len(), "{n}");
            assert_eq!(read_varlong(bytes).unwrap(), (n, bytes.len()), "{n}");
        }
        // Reading stops at the end of the varint.
        assert_eq!(read_varint(&[0x80, 0x01, 0xff]).unwrap(), (64, 2));
    }

    #[test]
    fn bad_varints_are_refused() {
        let bad: &[&[u8]] = &[
            &[],                                   // empty
            &[0x80],                               // truncated
            &[0xff, 0xff],                         // truncated
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], // six bytes
            &[0xff, 0xff, 0xff, 0xff, 0x10],       // fifth byte overflows 32 bits
            &[0xff, 0xff, 0xff, 0xff, 0x7f],
        ];
        for b in bad {
            assert!(matches!(read_varint(b), Err(BatchError::Malformed(_))), "{b:?}");
        }
        let bad_long: &[&[u8]] = &[
            &[],
            &[0x80; 9],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], // eleven bytes
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],       // 65th bit
        ];
        for b in bad_long {
            assert!(matches!(read_varlong(b), Err(BatchError::Malformed(_))), "{b:?}");
        }
        // Padded (non-minimal) encodings are accepted, as in Kafka.
        assert_eq!(read_varint(&[0x80, 0x00]).unwrap(), (0, 2));
        assert_eq!(read_varint(&[0x82, 0x80, 0x80, 0x80, 0x00]).unwrap(), (1, 5));
    }

    proptest! {
        #[test]
        fn varints_round_trip(n in any::<i32>(), m in any::<i64>()) {
            let b = varint_bytes(n);
            prop_assert_eq!(read_varint(&b).unwrap(), (n, b.len()));
            prop_assert_eq!(b.len(), varint_len(n));
            let b = varlong_bytes(m);
            prop_assert_eq!(read_varlong(&b).unwrap(), (m, b.len()));
            prop_assert_eq!(b.len(), varlong_len(m));
        }
    }

    // ---- hand-made batches ----------------------------------------------------------------

    /// CRC-32C, bit by bit, to check the batch CRC independently of the `crc32c` crate.
    fn reference_crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn rec(key: &str, value: &str, timestamp_ms: i64) -> NewRecord {
        NewRecord {
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms,
        }
    }

    /// A batch around an arbitrary records section, with a valid CRC.
    fn raw_batch(
        attributes: i16,
        last_offset_delta: i32,
        count: i32,
        base_ts: i64,
        max_ts: i64,
        section: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(100i64.to_be_bytes());
        b.extend(((BATCH_HEADER_LEN - LOG_OVERHEAD + section.len()) as i32).to_be_bytes());
        b.extend(NO_PARTITION_LEADER_EPOCH.to_be_bytes());
        b.push(2);
        b.extend([0; 4]);
        b.extend(attributes.to_be_bytes());
        b.extend(last_offset_delta.to_be_bytes());
        b.extend(base_ts.to_be_bytes());
        b.extend(max_ts.to_be_bytes());
        b.extend(NO_PRODUCER_ID.to_be_bytes());
        b.extend(NO_PRODUCER_EPOCH.to_be_bytes());
        b.extend(NO_SEQUENCE.to_be_bytes());
        b.extend(count.to_be_bytes());
        b.extend(section);
        write_crc(&mut b);
        b
    }

    /// One encoded record from raw parts: fields are written as given, lengths and all.
    fn raw_record(
        ts_delta: i64,
        offset_delta: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Vec<u8> {
        let mut body = vec![0u8];
        put_varlong(&mut body, ts_delta);
        put_varint(&mut body, offset_delta);
        for field in [key, value] {
            match field {
                None => put_varint(&mut body, -1),
                Some(f) => {
                    put_varint(&mut body, f.len() as i32);
                    body.extend(f);
                }
            }
        }
        put_varint(&mut body, headers.len() as i32);
        for (k, v) in headers {
            put_varint(&mut body, k.len() as i32);
            body.extend(*k);
            match v {
                None => put_varint(&mut body, -1),
                Some(v) => {
                    put_varint(&mut body, v.len() as i32);
                    body.extend(*v);
                }
            }
        }
        let mut out = varint_bytes(body.len() as i32);
        out.extend(body);
        out
    }

    fn decode_err(batch: &[u8]) -> String {
        match decode_batch(batch, &limits()) {
            Err(BatchError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    // ---- known answer -----------------------------------------------------------------------

    #[test]
    fn builds_exactly_the_bytes_the_spec_gives() {
        let mut expected = Vec::new();
        expected.extend(0i64.to_be_bytes()); // base offset
        expected.extend(58i32.to_be_bytes()); // batch length: 49 header bytes + 9 record bytes
        expected.extend((-1i32).to_be_bytes()); // partition leader epoch
        expected.push(2); // magic
        expected.extend([0; 4]); // CRC, below
        expected.extend(0i16.to_be_bytes()); // attributes: no compression, CreateTime
        expected.extend(0i32.to_be_bytes()); // last offset delta
        expected.extend(1000i64.to_be_bytes()); // base timestamp
        expected.extend(1000i64.to_be_bytes()); // max timestamp
        expected.extend((-1i64).to_be_bytes()); // producer id
        expected.extend((-1i16).to_be_bytes()); // producer epoch
        expected.extend((-1i32).to_be_bytes()); // base sequence
        expected.extend(1i32.to_be_bytes()); // record count
        expected.extend([
            0x10, // length 8 (zigzag 16)
            0x00, // attributes
            0x00, // timestamp delta 0
            0x00, // offset delta 0
            0x02, b'k', // key length 1, "k"
            0x02, b'v', // value length 1, "v"
            0x00, // no headers
        ]);
        let crc = reference_crc32c(&expected[21..]);
        assert_eq!(crc, 0x716a_6189);
        expected[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(expected.len(), 70);

        let mut b = BatchBuilder::new(Compression::None);
        b.push(rec("k", "v", 1000));
        assert_eq!(b.estimated_size(), 70);
        assert_eq!(b.build().unwrap(), expected);

        let (h, records) = decode_batch(&expected, &limits()).unwrap();
        assert_eq!(h.crc, 0x716a_6189);
        assert_eq!(
            records,
            [Record {
                offset: 0,
                timestamp_ms: 1000,
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
            }]
        );
    }

    #[test]
    fn reference_crc_matches_the_standard_check_value() {
        assert_eq!(reference_crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    // ---- building ------------------------------------------------------------------------------

    #[test]
    fn builder_fills_the_header() {
        let mut b = BatchBuilder::new(Compression::Zstd).producer(77, 3, 1000);
        assert!(b.is_empty());
        b.push(rec("a", "1", 5000)).push(rec("b", "2", 9000)).push(rec("c", "3", 4000));
        assert_eq!(b.len(), 3);
        assert_eq!(b.compression(), Compression::Zstd);
        let batch = b.build().unwrap();
        let h = check_batch(&batch, usize::MAX).unwrap();
        assert_eq!(h.total_len(), batch.len());
        assert_eq!((h.base_offset, h.partition_leader_epoch, h.magic), (0, NO_PARTITION_LEADER_EPOCH, 2));
        assert_eq!(h.compression(), Compression::Zstd);
        assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
        assert!(!h.is_transactional() && !h.is_control());
        assert_eq!((h.last_offset_delta, h.records_count), (2, 3));
        assert_eq!((h.base_timestamp, h.max_timestamp), (5000, 9000));
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (77, 3, 1000));
        let (_, records) = decode_batch(&batch, &limits()).unwrap();
        let ts: Vec<_> = records.iter().map(|r| (r.offset, r.timestamp_ms)).collect();
        assert_eq!(ts, [(0, 5000), (1, 9000), (2, 4000)]);
    }

    #[test]
    fn builder_refuses_empty_batches_and_overflowing_timestamps() {
        assert!(matches!(BatchBuilder::new(Compression::None).build(), Err(BatchError::Malformed(_))));
        let mut b = BatchBuilder::new(Compression::None);
        b.push(rec("a", "1", i64::MIN)).push(rec("b", "2", i64::MAX));
        assert!(matches!(b.build(), Err(BatchError::Malformed(m)) if m.contains("too far")));
    }

    #[test]
    fn null_and_empty_keys_values_and_headers_are_distinct() {
        let records = vec![
            NewRecord { key: None, value: None, headers: vec![], timestamp_ms: -1 },
            NewRecord {
                key: Some(Bytes::new()),
                value: Some(Bytes::new()),
                headers: vec![],
                timestamp_ms: 0,
            },
            NewRecord {
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: vec![
                    Header::new("trace-id", &b"abc"[..]),
                    Header { key: String::new(), value: None },
                    Header { key: "empty".into(), value: Some(Bytes::new()) },
                    Header::new("ünïcödé", vec![0u8, 255, 1]),
                    Header::new("trace-id", &b"duplicate keys are kept"[..]),
                ],
                timestamp_ms: 3,
            },
        ];
        for codec in Compression::ALL {
            let mut b = BatchBuilder::new(codec);
            for r in &records {
                b.push(r.clone());
            }
            let (_, decoded) = decode_batch(&b.build().unwrap(), &limits()).unwrap();
            assert_eq!(decoded.len(), 3);
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                assert_eq!(d.offset, i as i64);
                assert_eq!(
                    (&d.key, &d.value, &d.headers, d.timestamp_ms),
                    (&r.key, &r.value, &r.headers, r.timestamp_ms)
                );
            }
        }
    }

    #[test]
    fn estimated_size_is_the_uncompressed_size() {
        let mut b = BatchBuilder::new(Compression::None);
        assert_eq!(b.estimated_size(), BATCH_HEADER_LEN);
        let mut last = b.estimated_size();
        for i in 0..200 {
            let mut r = rec(&format!("key-{i}"), &"x".repeat(i * 7), 1_700_000_000_000 + i as i64 * 1000);
            r.headers.push(Header::new("h", vec![1u8; i]));
            b.push(r);
            assert!(b.estimated_size() > last);
            last = b.estimated_size();
        }
        let mut gz = BatchBuilder::new(Compression::Gzip);
        for r in &b.records {
            gz.push(r.clone());
        }
        assert_eq!(gz.estimated_size(), last);
        assert_eq!(b.build().unwrap().len(), last);
        assert!(gz.build().unwrap().len() < last);
    }

    // ---- decoding --------------------------------------------------------------------------

    #[test]
    fn decodes_batches_compressed_by_reference_tools() {
        // The records section the fixtures hold: key "k", value "runnel " x 20.
        let value = Bytes::from("runnel ".repeat(20));
        let section = raw_record(0, 0, Some(b"k"), Some(&value), &[]);
        let mut fixtures = crate::compression::tests::reference_fixtures();
        let snappy = crate::compression::tests::hand_made_raw_snappy().0;
        fixtures.push((Compression::Snappy, &snappy));
        for (codec, fixture) in fixtures {
            assert_eq!(compression::decompress(codec, fixture, MIB).unwrap(), section);
            let batch = raw_batch(i16::from(codec.id()), 0, 1, 42, 42, fixture);
            let (h, records) = decode_batch(&batch, &limits()).unwrap();
            assert_eq!(h.compression(), codec);
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].offset, 100);
            assert_eq!(records[0].timestamp_ms, 42);
            assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
            assert_eq!(records[0].value, Some(value.clone()));
        }
    }

    #[test]
    fn offsets_may_have_gaps_but_must_increase_within_the_batch() {
        let mut section = raw_record(0, 0, None, Some(b"a"), &[]);
        section.extend(raw_record(5, 2, None, Some(b"b"), &[]));
        let (_, records) = decode_batch(&raw_batch(0, 2, 2, 10, 15, &section), &limits()).unwrap();
        let got: Vec<_> = records.iter().map(|r| (r.offset, r.timestamp_ms)).collect();
        assert_eq!(got, [(100, 10), (102, 15)]);

        // Delta past the last offset delta.
        assert!(decode_err(&raw_batch(0, 1, 2, 0, 0, &section)).contains("outside"));
        // Repeated delta.
        let mut section = raw_record(0, 1, None, None, &[]);
        section.extend(raw_record(0, 1, None, None, &[]));
        assert!(decode_err(&raw_batch(0, 1, 2, 0, 0, &section)).contains("does not increase"));
        // Negative delta.
        let section = raw_record(0, -1, None, None, &[]);
        assert!(decode_err(&raw_batch(0, 0, 1, 0, 0, &section)).contains("outside"));
    }

    #[test]
    fn record_count_must_match_the_header() {
        let one = raw_record(0, 0, None, Some(b"a"), &[]);
        let m = decode_err(&raw_batch(0, 1, 2, 0, 0, &one));
        assert!(m.contains("claims 2 records") && m.contains("holds 1"), "{m}");
        let mut two = one.clone();
        two.extend(raw_record(0, 1, None, Some(b"b"), &[]));
        assert!(decode_err(&raw_batch(0, 1, 1, 0, 0, &two)).contains("after the last of 1 records"));
        // Zero records and no bytes: fine, whatever the codec.
        for codec in Compression::ALL {
            let (h, records) =
                decode_batch(&raw_batch(i16::from(codec.id()), 0, 0, 0, 0, &[]), &limits()).unwrap();
            assert_eq!(h.records_count, 0);
            assert!(records.is_empty());
        }
    }

    #[test]
    fn malformed_records_are_refused() {
        let check = |section: Vec<u8>, expect: &str| {
            let m = decode_err(&raw_batch(0, 0, 1, 0, 0, &section));
            assert!(m.contains(expect), "expected {expect:?} in {m:?}");
        };
        // Record length past the end of the section.
        let mut r = raw_record(0, 0, None, Some(b"abc"), &[]);
        r.pop();
        check(r, "runs past the end");
        // Record length longer than its fields.
        let mut r = raw_record(0, 0, None, Some(b"abc"), &[]);
        r[0] += 2;
        r.push(0);
        check(r, "left over inside the record");
        // Record length shorter than its fields.
        let mut r = raw_record(0, 0, None, Some(b"abc"), &[]);
        r[0] -= 2;
        r.pop();
        check(r, "record 0 of 1");
        // Negative record length.
        check(vec![0x01], "negative length");
        // Key length -2.
        check(vec![0x0c, 0x00, 0x00, 0x00, 0x03, 0x01, 0x00], "invalid length -2");
        // Value length past the record.
        check(vec![0x0c, 0x00, 0x00, 0x00, 0x01, 0x7e, 0x00], "value of 63 bytes runs past the end");
        // Header key that is not UTF-8, null header key, negative header count.
        check(raw_record(0, 0, None, None, &[(&[0xff, 0xfe], None)]), "not UTF-8");
        check(vec![0x10, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x01, 0x01], "invalid key length -1");
        check(vec![0x0c, 0x00, 0x00, 0x00, 0x01, 0x01, 0x01], "negative header count");
        // Overlong varint inside a record.
        check(
            vec![0x18, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
            "timestamp delta is longer",
        );
        // Timestamp that overflows.
        let r = raw_record(i64::MAX, 0, None, None, &[]);
        assert!(decode_err(&raw_batch(0, 0, 1, 1, 1, &r)).contains("overflows"));
    }

    #[test]
    fn batch_must_be_exactly_one_valid_batch() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(rec("k", "v", 1));
        let batch = b.build().unwrap();
        let mut long = batch.clone();
        long.push(0);
        assert!(decode_err(&long).contains("1 bytes after the end"));
        assert!(matches!(
            decode_batch(&batch[..batch.len() - 1], &limits()),
            Err(BatchError::Truncated { .. })
        ));
        let mut bad = batch.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(decode_batch(&bad, &limits()), Err(BatchError::CrcMismatch { .. })));
        let small = DecodeLimits { max_batch_bytes: batch.len() - 1, ..limits() };
        assert!(matches!(decode_batch(&batch, &small), Err(BatchError::TooLarge { .. })));
        let tiny = DecodeLimits { max_decompressed_bytes: 8, ..limits() };
        assert!(matches!(decode_batch(&batch, &tiny), Err(BatchError::DecompressedTooLarge { max: 8 })));
    }

    #[test]
    fn log_append_time_replaces_record_timestamps() {
        let mut section = raw_record(0, 0, None, None, &[]);
        section.extend(raw_record(7, 1, None, None, &[]));
        let batch = raw_batch(0x08, 1, 2, 1000, 5555, &section);
        let (h, records) = decode_batch(&batch, &limits()).unwrap();
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
        assert!(records.iter().all(|r| r.timestamp_ms == 5555));
    }

    #[test]
    fn compressed_bombs_are_refused() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut b = BatchBuilder::new(codec);
            b.push(NewRecord::with_value(vec![0u8; 8 * MIB], 0));
            let batch = b.build().unwrap();
            assert!(batch.len() < MIB / 2, "{} batch of {} bytes", codec.name(), batch.len());
            let small = DecodeLimits { max_decompressed_bytes: MIB, max_batch_bytes: MIB };
            assert_eq!(
                decode_batch(&batch, &small),
                Err(BatchError::DecompressedTooLarge { max: MIB }),
                "{}",
                codec.name()
            );
            let big = DecodeLimits { max_decompressed_bytes: 9 * MIB, max_batch_bytes: MIB };
            let (_, records) = decode_batch(&batch, &big).unwrap();
            assert_eq!(records[0].value.as_ref().map(Bytes::len), Some(8 * MIB));
        }
    }

    // ---- the leader's produce checks ---------------------------------------------------------

    const NOW: i64 = 1_700_000_000_000;

    fn checks() -> ProduceChecks {
        ProduceChecks {
            limits: DecodeLimits { max_decompressed_bytes: MIB, max_batch_bytes: MIB },
            now_ms: NOW,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 3_600_000,
        }
    }

    fn produce_err(mut batch: Vec<u8>) -> ProduceBatchError {
        check_producer_batch(&mut batch, &checks(), &mut Vec::new()).unwrap_err()
    }

    #[test]
    fn a_producers_batch_is_accepted_as_built_by_every_codec() {
        for codec in Compression::ALL {
            let mut b = BatchBuilder::new(codec);
            b.push(rec("k", "v", NOW - 5));
            b.push(rec("k", "w", NOW + 5));
            let built = b.build().unwrap();
            let mut batch = built.clone();
            let h = check_producer_batch(&mut batch, &checks(), &mut Vec::new()).unwrap();
            assert_eq!((h.records_count, h.max_timestamp), (2, NOW + 5), "{}", codec.name());
            assert_eq!(batch, built, "{}: nothing to fix", codec.name());
        }
    }

    #[test]
    fn a_max_timestamp_that_disagrees_with_the_records_is_fixed_with_the_crc() {
        let mut section = raw_record(0, 0, None, Some(b"a"), &[]);
        section.extend(raw_record(9, 1, None, Some(b"b"), &[]));
        // A far-future max timestamp over records from now: time retention would trust it.
        let mut batch = raw_batch(0, 1, 2, NOW, i64::MAX, &section);
        let h = check_producer_batch(&mut batch, &checks(), &mut Vec::new()).unwrap();
        assert_eq!(h.max_timestamp, NOW + 9);
        let stored = check_batch(&batch, MIB).expect("the CRC was rewritten");
        assert_eq!(stored.max_timestamp, NOW + 9);
        // LogAppendTime from a producer: the leader's clock.
        let mut batch = raw_batch(0x08, 1, 2, 5, 5, &section);
        assert_eq!(check_producer_batch(&mut batch, &checks(), &mut Vec::new()).unwrap().max_timestamp, NOW);
        assert_eq!(check_batch(&batch, MIB).unwrap().max_timestamp, NOW);
    }

    #[test]
    fn a_last_offset_delta_that_disagrees_with_the_count_is_refused() {
        let one = raw_record(0, 0, None, Some(b"a"), &[]);
        // One record claiming 2^31 offsets: it would consume them and wrap the index.
        let e = produce_err(raw_batch(0, i32::MAX, 1, NOW, NOW, &one));
        assert!(matches!(&e, ProduceBatchError::InvalidRecord(m) if m.contains("last_offset_delta")), "{e}");
        // Gaps are fine in a stored (compacted) batch, never in a producer's.
        let mut gap = raw_record(0, 0, None, None, &[]);
        gap.extend(raw_record(0, 2, None, None, &[]));
        assert!(decode_batch(&raw_batch(0, 2, 2, NOW, NOW, &gap), &limits()).is_ok());
        let e = produce_err(raw_batch(0, 1, 2, NOW, NOW, &gap));
        assert!(
            matches!(&e, ProduceBatchError::Batch(BatchError::Malformed(m)) if m.contains("outside")),
            "{e}"
        );
        let mut gap = raw_record(0, 1, None, None, &[]);
        gap.extend(raw_record(0, 2, None, None, &[]));
        let e = produce_err(raw_batch(0, 1, 2, NOW, NOW, &gap));
        assert!(matches!(&e, ProduceBatchError::InvalidRecord(m) if m.contains("numbered")), "{e}");
        // No records.
        assert!(matches!(
            produce_err(raw_batch(0, 0, 0, NOW, NOW, &[])),
            ProduceBatchError::InvalidRecord(_)
        ));
    }

    #[test]
    fn records_that_do_not_parse_are_refused_though_the_crc_is_valid() {
        let mut garbage = raw_record(0, 0, None, Some(b"abc"), &[]);
        garbage[0] += 2;
        garbage.extend([0, 0]);
        let e = produce_err(raw_batch(0, 0, 1, NOW, NOW, &garbage));
        assert!(matches!(&e, ProduceBatchError::Batch(BatchError::Malformed(_))), "{e}");
        let e = produce_err(raw_batch(0, 0, 1, NOW, NOW, &[0xff; 40]));
        assert!(matches!(&e, ProduceBatchError::Batch(BatchError::Malformed(_))), "{e}");
        let mut trailing = raw_batch(0, 0, 1, NOW, NOW, &raw_record(0, 0, None, None, &[]));
        trailing.push(0);
        assert!(matches!(produce_err(trailing), ProduceBatchError::Batch(BatchError::Malformed(_))));
    }

    #[test]
    fn create_times_outside_the_window_are_refused() {
        let future = raw_record(3_600_001, 0, None, None, &[]);
        match produce_err(raw_batch(0, 0, 1, NOW, NOW, &future)) {
            ProduceBatchError::Timestamp { index: 0, timestamp_ms, earliest, latest } => {
                assert_eq!(timestamp_ms, NOW + 3_600_001);
                assert_eq!((earliest, latest), (NOW.saturating_sub(i64::MAX), NOW + 3_600_000));
            }
            other => panic!("{other}"),
        }
        let mut last = raw_record(0, 0, None, None, &[]);
        last.extend(raw_record(i64::MAX / 2, 1, None, None, &[]));
        assert!(matches!(
            produce_err(raw_batch(0, 1, 2, NOW, NOW, &last)),
            ProduceBatchError::Timestamp { index: 1, .. }
        ));
        let old = raw_record(0, 0, None, None, &[]);
        let strict = ProduceChecks { timestamp_before_max_ms: 1000, ..checks() };
        let mut batch = raw_batch(0, 0, 1, NOW - 1001, NOW - 1001, &old);
        assert!(matches!(
            check_producer_batch(&mut batch, &strict, &mut Vec::new()),
            Err(ProduceBatchError::Timestamp { .. })
        ));
        let mut batch = raw_batch(0, 0, 1, NOW - 1000, NOW - 1000, &old);
        assert!(check_producer_batch(&mut batch, &strict, &mut Vec::new()).is_ok());
    }

    #[test]
    fn a_compression_bomb_is_refused_before_it_is_inflated() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut b = BatchBuilder::new(codec);
            b.push(NewRecord::with_value(vec![0u8; 8 * MIB], NOW));
            let batch = b.build().unwrap();
            assert_eq!(
                produce_err(batch),
                ProduceBatchError::Batch(BatchError::DecompressedTooLarge { max: MIB }),
                "{}",
                codec.name()
            );
        }
    }

    // ---- properties ----------------------------------------------------------------------------

    fn arb_blob() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
            2 => proptest::collection::vec(any::<u8>(), 0..4096).prop_map(Bytes::from),
            2 => (any::<u8>(), 0usize..4096).prop_map(|(b, n)| Bytes::from(vec![b; n])),
        ]
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        ("\\PC{0,12}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..48)))
            .prop_map(|(key, value)| Header { key, value: value.map(Bytes::from) })
    }

    fn arb_timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![Just(-1i64), Just(0i64), 0i64..(1i64 << 45), 1_700_000_000_000i64..1_700_000_100_000]
    }

    fn arb_record() -> impl Strategy<Value = NewRecord> {
        (
            proptest::option::weighted(0.8, arb_blob()),
            proptest::option::weighted(0.9, arb_blob()),
            proptest::collection::vec(arb_header(), 0..4),
            arb_timestamp(),
        )
            .prop_map(|(key, value, headers, timestamp_ms)| NewRecord {
                key,
                value,
                headers,
                timestamp_ms,
            })
    }

    fn arb_codec() -> impl Strategy<Value = Compression> {
        proptest::sample::select(Compression::ALL.to_vec())
    }

    fn build(codec: Compression, records: &[NewRecord]) -> Vec<u8> {
        let mut b = BatchBuilder::new(codec);
        for r in records {
            b.push(r.clone());
        }
        b.build().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn batches_round_trip_through_every_codec(
            records in proptest::collection::vec(arb_record(), 1..12),
            base_offset in 0i64..(1i64 << 40),
            producer in proptest::option::of((any::<i64>(), any::<i16>(), any::<i32>())),
        ) {
            for codec in Compression::ALL {
                let mut b = BatchBuilder::new(codec);
                if let Some((id, epoch, seq)) = producer {
                    b = b.producer(id, epoch, seq);
                }
                for r in &records {
                    b.push(r.clone());
                }
                let estimated = b.estimated_size();
                let mut batch = b.build().unwrap();
                if codec == Compression::None {
                    prop_assert_eq!(batch.len(), estimated);
                }
                set_base_offset(&mut batch, base_offset);
                let h = check_batch(&batch, usize::MAX).unwrap();
                prop_assert_eq!(h.total_len(), batch.len());
                prop_assert_eq!(h.compression(), codec);
                prop_assert_eq!(h.records_count as usize, records.len());
                prop_assert_eq!(h.last_offset_delta as usize, records.len() - 1);
                prop_assert_eq!(h.base_timestamp, records[0].timestamp_ms);
                prop_assert_eq!(h.max_timestamp, records.iter().map(|r| r.timestamp_ms).max().unwrap());
                let (id, epoch, seq) = producer.unwrap_or((NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE));
                prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (id, epoch, seq));

                let (dh, decoded) = decode_batch(&batch, &limits()).unwrap();
                prop_assert_eq!(dh, h);
                prop_assert_eq!(decoded.len(), records.len());
                for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                    prop_assert_eq!(d.offset, base_offset + i as i64);
                    prop_assert_eq!(d.timestamp_ms, r.timestamp_ms);
                    prop_assert_eq!(&d.key, &r.key);
                    prop_assert_eq!(&d.value, &r.value);
                    prop_assert_eq!(&d.headers, &r.headers);
                }
            }
        }
    }

    /// Limits small enough that the decompression limit is also exercised.
    fn fuzz_limits() -> DecodeLimits {
        DecodeLimits { max_decompressed_bytes: 4096, max_batch_bytes: 1 << 16 }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_batch(&bytes, &limits());
            let _ = decode_batch(&bytes, &fuzz_limits());
        }

        #[test]
        fn arbitrary_sections_behind_a_valid_header_never_panic(
            section in proptest::collection::vec(any::<u8>(), 0..600),
            attributes in any::<i16>(),
            last_offset_delta in 0i32..64,
            count in 0i32..64,
            base_ts in any::<i64>(),
        ) {
            let batch = raw_batch(attributes & 0x3f, last_offset_delta, count.min(last_offset_delta + 1), base_ts, base_ts, &section);
            let _ = decode_batch(&batch, &limits());
            let _ = decode_batch(&batch, &fuzz_limits());
            // The same bytes behind the xerial header, so snappy's framing is fuzzed too.
            let mut framed = crate::compression::XERIAL_MAGIC.to_vec();
            framed.extend([0, 0, 0, 1, 0, 0, 0, 1]);
            framed.extend(&section);
            let batch = raw_batch(2, last_offset_delta, count.min(last_offset_delta + 1), base_ts, base_ts, &framed);
            let _ = decode_batch(&batch, &fuzz_limits());
        }

        #[test]
        fn mutated_batches_never_panic(
            records in proptest::collection::vec(arb_record(), 1..6),
            codec in arb_codec(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            // Mutate the whole CRC-covered part of a built batch (header fields and the
            // possibly compressed records), maybe cut it short, then fix length and CRC so
            // decoding goes past the checks.
            let mut batch = build(codec, &records);
            for (at, x) in &flips {
                let pos = ATTRIBUTES_POS_FOR_TESTS + at.index(batch.len() - ATTRIBUTES_POS_FOR_TESTS);
                batch[pos] ^= x;
            }
            if let Some(cut) = cut {
                batch.truncate(BATCH_HEADER_LEN + cut.index(batch.len() - BATCH_HEADER_LEN + 1));
            }
            let len = (batch.len() - LOG_OVERHEAD) as i32;
            batch[8..12].copy_from_slice(&len.to_be_bytes());
            write_crc(&mut batch);
            let _ = decode_batch(&batch, &limits());
            let _ = decode_batch(&batch, &fuzz_limits());
        }

        #[test]
        fn mutated_records_under_every_codec_never_panic(
            records in proptest::collection::vec(arb_record(), 1..6),
            codec in arb_codec(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            // Mutate the uncompressed records, then compress them properly: this reaches
            // the record decoder with damaged records for every codec.
            let plain = build(Compression::None, &records);
            let h = check_batch(&plain, usize::MAX).unwrap();
            let mut section = plain[BATCH_HEADER_LEN..].to_vec();
            for (at, x) in &flips {
                let pos = at.index(section.len());
                section[pos] ^= x;
            }
            if let Some(cut) = cut {
                section.truncate(cut.index(section.len() + 1));
            }
            let compressed = compression::compress(codec, &section).unwrap();
            let batch = raw_batch(i16::from(codec.id()), h.last_offset_delta, h.records_count, h.base_timestamp, h.max_timestamp, &compressed);
            let _ = decode_batch(&batch, &limits());
            let _ = decode_batch(&batch, &fuzz_limits());
        }
    }

    const ATTRIBUTES_POS_FOR_TESTS: usize = 21;
}
