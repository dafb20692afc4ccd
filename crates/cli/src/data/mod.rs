//! The client side of the broker data plane: `runnel produce`, `runnel consume` and
//! `runnel bench`, over the brokers' gRPC API (`BrokerService` in
//! `proto/runnel/v1/broker.proto`).
//!
//! - [`router`] finds partition leaders from `Metadata` and retries requests as leadership
//!   moves;
//! - [`partitioner`] is Kafka's default partitioner (murmur2 for keys, sticky without);
//! - [`produce`] batches lines of stdin into RecordBatch v2 per partition;
//! - [`consume`] reads partitions with `FetchStream` and prints records as text or JSON;
//! - [`bench`] measures produce and consume throughput and latency.
//!
//! Errors reuse the controller client's [`ClientError`](crate::client::ClientError), printed
//! as `error: <ERROR_NAME> (<code>): <message>`.

pub(crate) mod bench;
pub(crate) mod cli;
pub(crate) mod consume;
pub(crate) mod partitioner;
pub(crate) mod produce;
pub(crate) mod router;

use bytes::Bytes;
use runnel_storage::batch::BatchHeader;
use runnel_storage::{DecodeLimits, Record, decode_batch};

use crate::client::ClientError;

/// Kafka's error codes, as the brokers send them in `runnel-error-code`.
pub(crate) mod code {
    pub(crate) const OFFSET_OUT_OF_RANGE: i32 = 1;
    pub(crate) const CORRUPT_MESSAGE: i32 = 2;
    pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i32 = 3;
    pub(crate) const LEADER_NOT_AVAILABLE: i32 = 5;
    pub(crate) const NOT_LEADER_OR_FOLLOWER: i32 = 6;
    pub(crate) const REQUEST_TIMED_OUT: i32 = 7;
    pub(crate) const NETWORK_EXCEPTION: i32 = 13;
    pub(crate) const NOT_ENOUGH_REPLICAS: i32 = 19;
    pub(crate) const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i32 = 20;
    pub(crate) const INVALID_REQUEST: i32 = 42;
}

/// A `ClientError` with a Kafka code and name.
pub(crate) fn error(code: i32, name: &str, message: impl Into<String>) -> ClientError {
    ClientError { name: name.to_owned(), code, message: message.into() }
}

/// Largest batch accepted from a broker, and largest decompressed records section.
const DECODE_LIMITS: DecodeLimits =
    DecodeLimits { max_decompressed_bytes: 64 << 20, max_batch_bytes: 64 << 20 };

/// The records of a buffer of concatenated batches (a fetch answer).
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Records at or after the offset asked for and before the limit, in offset order
    /// (records of control batches left out).
    pub(crate) records: Vec<Record>,
    /// The offset after the last whole batch, when there was one.
    pub(crate) next_offset: Option<i64>,
    /// Bytes of the buffer after its last whole batch: a batch cut short, which is
    /// fetched again from `next_offset`.
    pub(crate) partial_bytes: usize,
}

/// Decodes concatenated RecordBatch v2 bytes, keeping records with `from <= offset < until`.
///
/// Every batch is CRC-checked (`decode_batch`); a corrupt one is an error
/// (CORRUPT_MESSAGE). A last batch cut short is not an error: Kafka brokers may end a fetch
/// answer in the middle of a batch, and this leaves it for the next fetch.
pub(crate) fn decode_batches(buf: &Bytes, from: i64, until: Option<i64>) -> Result<Decoded, ClientError> {
    let corrupt = |at: usize, e: &dyn std::fmt::Display| {
        error(code::CORRUPT_MESSAGE, "CORRUPT_MESSAGE", format!("batch at byte {at} of a fetch answer: {e}"))
    };
    let mut out = Decoded::default();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        if rest.len() < runnel_storage::batch::BATCH_HEADER_LEN {
            out.partial_bytes = rest.len();
            break;
        }
        let header = BatchHeader::parse(rest, DECODE_LIMITS.max_batch_bytes).map_err(|e| corrupt(pos, &e))?;
        let len = header.total_len();
        if rest.len() < len {
            out.partial_bytes = rest.len();
            break;
        }
        let (header, records) = decode_batch(&rest[..len], &DECODE_LIMITS).map_err(|e| corrupt(pos, &e))?;
        if !header.is_control() {
            out.records.extend(
                records.into_iter().filter(|r| r.offset >= from && until.is_none_or(|u| r.offset < u)),
            );
        }
        out.next_offset = Some(header.next_offset());
        pos += len;
    }
    Ok(out)
}

/// Bytes of a record's key and value: the payload figure the benchmarks report.
pub(crate) fn payload_len(record: &Record) -> usize {
    record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len)
}

#[cfg(test)]
pub(crate) mod tests {
    use runnel_storage::batch::set_base_offset;
    use runnel_storage::{BatchBuilder, Compression, NewRecord};

    use super::*;

    /// One uncompressed batch of `values` at `base_offset`.
    pub(crate) fn batch(base_offset: i64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for v in values {
            b.push(NewRecord::with_value(Bytes::copy_from_slice(v.as_bytes()), 1_700_000_000_000));
        }
        let mut bytes = b.build().unwrap();
        set_base_offset(&mut bytes, base_offset);
        bytes
    }

    #[test]
    fn decoding_skips_records_outside_the_range_and_keeps_a_cut_batch_for_later() {
        let mut buf = batch(10, &["a", "b", "c"]);
        buf.extend(batch(13, &["d", "e"]));
        let whole = buf.len();
        let third = batch(15, &["f"]);
        buf.extend(&third[..third.len() - 3]);
        let d = decode_batches(&Bytes::from(buf), 11, Some(14)).unwrap();
        let offsets: Vec<i64> = d.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [11, 12, 13]);
        assert_eq!(d.records[0].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(d.next_offset, Some(15));
        assert_eq!(d.partial_bytes, third.len() - 3);
        assert!(whole > 0);
    }

    #[test]
    fn a_corrupt_batch_is_an_error() {
        let mut buf = batch(0, &["a"]);
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        let e = decode_batches(&Bytes::from(buf), 0, None).unwrap_err();
        assert_eq!(e.code, code::CORRUPT_MESSAGE);
        assert_eq!(decode_batches(&Bytes::new(), 0, None).unwrap().next_offset, None);
    }
}
