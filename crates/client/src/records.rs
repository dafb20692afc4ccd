//! Decoding fetch answers: concatenated RecordBatch v2 bytes into records.

use bytes::Bytes;
use runnel_storage::batch::BatchHeader;
use runnel_storage::{DecodeLimits, Record, decode_batch};

use crate::error::{ClientError, code, error};

/// Largest batch accepted from a broker, and largest decompressed records section.
const DECODE_LIMITS: DecodeLimits =
    DecodeLimits { max_decompressed_bytes: 64 << 20, max_batch_bytes: 64 << 20 };

/// The records of a buffer of concatenated batches (a fetch answer).
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records at or after the offset asked for and before the limit, in offset order
    /// (records of control batches left out).
    pub records: Vec<Record>,
    /// The offset after the last whole batch, when there was one.
    pub next_offset: Option<i64>,
    /// Bytes of the buffer after its last whole batch: a batch cut short, which is
    /// fetched again from `next_offset`.
    pub partial_bytes: usize,
}

/// Decodes concatenated RecordBatch v2 bytes, keeping records with `from <= offset < until`.
///
/// Every batch is CRC-checked (`decode_batch`); a corrupt one is an error
/// (CORRUPT_MESSAGE). A last batch cut short is not an error: Kafka brokers may end a fetch
/// answer in the middle of a batch, and this leaves it for the next fetch.
pub fn decode_batches(buf: &Bytes, from: i64, until: Option<i64>) -> Result<Decoded, ClientError> {
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
pub fn payload_len(record: &Record) -> usize {
    record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len)
}

/// One uncompressed batch of `values` at `base_offset`, as a broker would serve it: a
/// fixture for tests of code that decodes fetch answers.
#[doc(hidden)]
pub fn test_batch(base_offset: i64, values: &[&str]) -> Vec<u8> {
    let mut b = runnel_storage::BatchBuilder::new(runnel_storage::Compression::None);
    for v in values {
        b.push(runnel_storage::NewRecord::with_value(
            Bytes::copy_from_slice(v.as_bytes()),
            1_700_000_000_000,
        ));
    }
    let mut bytes = b.build().expect("a small uncompressed batch always encodes");
    runnel_storage::batch::set_base_offset(&mut bytes, base_offset);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base_offset: i64, values: &[&str]) -> Vec<u8> {
        test_batch(base_offset, values)
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
