//! The records of `__consumer_offsets`: a committed offset is one record whose key names
//! (group, topic, partition) and whose value holds the offset. Both are small, versioned,
//! self-describing binary encodings (big-endian), so a later format can live beside this one:
//!
//! ```text
//! key   v1: version u8 = 1 | kind u8 (1 = offset commit) | group: u16 len + UTF-8
//!           | topic: u16 len + UTF-8 | partition u32
//! value v1: version u8 = 1 | offset i64 | commit_timestamp_ms i64 | metadata: u16 len + UTF-8
//! ```
//!
//! A record without a value (a tombstone) deletes the offset. A key with a version or kind
//! this broker does not know is skipped when loading (a newer broker may write kinds an
//! older one ignores); a key or value that does not parse is reported, never panicked on.

use bytes::Bytes;

/// The only key and value version written.
pub const RECORD_VERSION: u8 = 1;
/// Key kind: a committed offset.
pub const KIND_OFFSET: u8 = 1;
/// Longest group id, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Longest offset metadata, in bytes.
pub const METADATA_BYTES_MAX: usize = 4096;
/// Longest topic name, in bytes (Kafka's rule).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// The key of a committed offset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OffsetKey {
    /// The group id.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    /// The next offset to consume.
    pub offset: i64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub commit_timestamp_ms: i64,
    /// Free text the committer stored with it.
    pub metadata: String,
}

/// A record of the offsets topic, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// An offset was committed (`Some`) or deleted (`None`).
    Offset(OffsetKey, Option<OffsetValue>),
    /// A key of a version or kind this broker does not know: skipped.
    Unknown {
        /// The key's version byte.
        version: u8,
        /// The key's kind byte (0 when the key has none).
        kind: u8,
    },
}

/// Why a record of the offsets topic could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record has no key.
    #[error("an offsets record without a key")]
    NoKey,
    /// The bytes end early, carry a bad length, or are not UTF-8.
    #[error("malformed offsets record {what}: {why}")]
    Malformed {
        /// "key" or "value".
        what: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Encodes the key of `key`. The caller checked the lengths (see the `*_MAX` limits).
pub fn encode_key(key: &OffsetKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 2 + key.group.len() + 2 + key.topic.len() + 4);
    out.push(RECORD_VERSION);
    out.push(KIND_OFFSET);
    put_str(&mut out, &key.group);
    put_str(&mut out, &key.topic);
    out.extend_from_slice(&key.partition.to_be_bytes());
    out
}

/// Encodes a committed offset's value.
pub fn encode_value(value: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 8 + 2 + value.metadata.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&value.offset.to_be_bytes());
    out.extend_from_slice(&value.commit_timestamp_ms.to_be_bytes());
    put_str(&mut out, &value.metadata);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string written is bounded far below u16::MAX by the request validation; a longer
    // one is cut rather than written with a wrong length.
    let len = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// A cursor over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn fail(&self, why: impl Into<String>) -> RecordError {
        RecordError::Malformed { what: self.what, why: why.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(self.fail(format!("{n} bytes wanted, {} left", self.buf.len())));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn string(&mut self, max: usize) -> Result<String, RecordError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(self.fail(format!("a string of {len} bytes, over the limit of {max}")));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.fail("a string that is not UTF-8"))
    }

    fn end(&self) -> Result<(), RecordError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.fail(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// Decodes one record of the offsets topic from its key and value.
pub fn decode(key: Option<&Bytes>, value: Option<&Bytes>) -> Result<OffsetsRecord, RecordError> {
    let key = key.ok_or(RecordError::NoKey)?;
    let mut k = Reader { buf: key, what: "key" };
    let version = k.u8()?;
    if version != RECORD_VERSION {
        return Ok(OffsetsRecord::Unknown { version, kind: 0 });
    }
    let kind = k.u8()?;
    if kind != KIND_OFFSET {
        return Ok(OffsetsRecord::Unknown { version, kind });
    }
    let group = k.string(GROUP_ID_BYTES_MAX)?;
    let topic = k.string(TOPIC_NAME_BYTES_MAX)?;
    let partition = k.u32()?;
    k.end()?;
    let key = OffsetKey { group, topic, partition };
    let Some(value) = value else {
        return Ok(OffsetsRecord::Offset(key, None));
    };
    let mut v = Reader { buf: value, what: "value" };
    let version = v.u8()?;
    if version != RECORD_VERSION {
        return Err(v.fail(format!("value version {version}, this broker reads {RECORD_VERSION}")));
    }
    let offset = v.i64()?;
    let commit_timestamp_ms = v.i64()?;
    let metadata = v.string(METADATA_BYTES_MAX)?;
    v.end()?;
    Ok(OffsetsRecord::Offset(key, Some(OffsetValue { offset, commit_timestamp_ms, metadata })))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_layout_is_the_documented_one() {
        let key = OffsetKey { group: "g".into(), topic: "t".into(), partition: 258 };
        assert_eq!(encode_key(&key), vec![1, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 1, 2]);
        let value = OffsetValue { offset: 5, commit_timestamp_ms: 7, metadata: "m".into() };
        assert_eq!(encode_value(&value), vec![1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 7, 0, 1, b'm']);
    }

    #[test]
    fn unknown_versions_and_kinds_are_skipped_and_garbage_is_an_error() {
        let unknown = decode(Some(&Bytes::from_static(&[2, 9, 9])), None).unwrap();
        assert_eq!(unknown, OffsetsRecord::Unknown { version: 2, kind: 0 });
        let kind = decode(Some(&Bytes::from_static(&[1, 7])), None).unwrap();
        assert_eq!(kind, OffsetsRecord::Unknown { version: 1, kind: 7 });
        assert_eq!(decode(None, None), Err(RecordError::NoKey));
        assert!(decode(Some(&Bytes::from_static(&[1, 1, 0, 5, b'g'])), None).is_err(), "short string");
        let key = Bytes::from(encode_key(&OffsetKey { group: "g".into(), topic: "t".into(), partition: 0 }));
        assert!(decode(Some(&key), Some(&Bytes::from_static(&[1, 0]))).is_err(), "short value");
        let mut long = key.to_vec();
        long.push(0);
        assert!(decode(Some(&Bytes::from(long)), None).is_err(), "trailing bytes");
    }

    proptest! {
        #[test]
        fn records_round_trip(
            group in "\\PC{1,40}",
            topic in "[a-zA-Z0-9._-]{1,60}",
            partition in any::<u32>(),
            offset in any::<i64>(),
            ts in any::<i64>(),
            metadata in "\\PC{0,80}",
            tombstone in any::<bool>(),
        ) {
            let key = OffsetKey { group, topic, partition };
            let value = OffsetValue { offset, commit_timestamp_ms: ts, metadata };
            let k = Bytes::from(encode_key(&key));
            let v = Bytes::from(encode_value(&value));
            let decoded = decode(Some(&k), if tombstone { None } else { Some(&v) }).unwrap();
            let expected = OffsetsRecord::Offset(key, (!tombstone).then_some(value));
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(key in proptest::collection::vec(any::<u8>(), 0..64),
                                      value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let key = Bytes::from(key);
            let value = value.map(Bytes::from);
            let _ = decode(Some(&key), value.as_ref());
        }
    }
}
