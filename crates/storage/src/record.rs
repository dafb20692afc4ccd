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
/// Smallest encoded header: two 1-byte varints (empty key, null or empty value).
const MIN_HEADER_LEN: usize = 2;

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

/// Decodes the (decompressed) records section of a batch whose header is `header`.
fn decode_records(header: &BatchHeader, data: &Bytes) -> Result<Vec<Record>, BatchError> {
    // parse() has refused negative counts.
    let count = usize::try_from(header.records_count).unwrap_or(0);
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let mut records = Vec::with_capacity(count.min(data.len() / MIN_RECORD_LEN));
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
        let (offset_delta, timestamp_delta, key, value, headers) =
            decode_record_body(data, body.clone()).map_err(in_record)?;

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
        let offset = header
            .base_offset
            .checked_add(i64::from(offset_delta))
            .ok_or_else(|| in_record(malformed("offset overflows")))?;
        let timestamp_ms = if log_append_time {
            header.max_timestamp
        } else {
            header
                .base_timestamp
                .checked_add(timestamp_delta)
                .ok_or_else(|| in_record(malformed(format!("timestamp delta {timestamp_delta} overflows"))))?
        };
        records.push(Record { offset, timestamp_ms, key, value, headers });
    }
    if r.remaining() != 0 {
        return Err(malformed(format!("{} bytes after the last of {count} records", r.remaining())));
    }
    Ok(records)
}

type RecordBody = (i32, i64, Option<Bytes>, Option<Bytes>, Vec<Header>);

/// Decodes the fields of one record, which occupy exactly `body` within `data`.
fn decode_record_body(data: &Bytes, body: std::ops::Range<usize>) -> Result<RecordBody, BatchError> {
    let end = body.end;
    let mut r = Reader { buf: data.get(..end).unwrap_or_default(), pos: body.start };
    let _attributes = r.u8("attributes")?;
    let timestamp_delta = r.varlong("timestamp delta")?;
    let offset_delta = r.varint("offset delta")?;
    let key = r.nullable("key")?.map(|k| data.slice(k));
    let value = r.nullable("value")?.map(|v| data.slice(v));
    let header_count = r.varint("header count")?;
    let header_count = usize::try_from(header_count)
        .map_err(|_| malformed(format!("negative header count {header_count}")))?;
    let mut headers = Vec::with_capacity(header_count.min(r.remaining() / MIN_HEADER_LEN));
    for h in 0..header_count {
        let key_len = r.varint("header key length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| malformed(format!("header {h}: invalid key length {key_len}")))?;
        let key = r.take(key_len, "header key")?;
        let key = std::str::from_utf8(data.get(key).unwrap_or_default())
            .map_err(|e| malformed(format!("header {h}: key is not UTF-8: {e}")))?
            .to_owned();
        let value = r.nullable("header value")?.map(|v| data.slice(v));
        headers.push(Header { key, value });
    }
    if r.pos != end {
        return Err(malformed(format!("{} bytes left over inside the record", end.saturating_sub(r.pos))));
    }
    Ok((offset_delta, timestamp_delta, key, value, headers))
}
