//! RecordBatch v2 decoding (runnel-storage `batch`, `record`, `compression`) fed arbitrary
//! bytes: what a producer sends (`check_producer_batch`, the leader's validation), what a
//! consumer or replica reads back (`decode_batch`, `BatchIter`), and every decompressor.
//!
//! The first input byte picks how the rest is used, so that the CRC (which random bytes
//! almost never match) does not stop the fuzzer at the header:
//!
//! - mode 0: the rest is a batch as it is; bit 2 sets the length field to the input's
//!   length and bit 3 rewrites the CRC first;
//! - mode 1: the rest is a 61-byte header and an *uncompressed* records section; the
//!   harness compresses the section with the header's codec and fixes length and CRC, so
//!   mutated records reach the record parser under every codec;
//! - mode 2: the rest (after a codec byte) goes straight to `compression::decompress_into`.
//!
//! Bit 4 picks small decode limits (4 KiB), else 1 MiB: both are far below what the
//! broker allows (32 MiB), so a compression bomb costs milliseconds, and the limit checks
//! are hit often. Besides "no panic" the target checks what the parsers promise:
//! decompressed output and the reused scratch buffer stay within the limit, a decoded
//! batch has exactly its header's record count with increasing offsets inside the batch,
//! a batch the leader accepts (and may fix up) decodes and passes the CRC check, and
//! decoded records rebuilt with `BatchBuilder` decode to the same records. Decoded records
//! also go through the `__consumer_offsets` record decoder, as a group coordinator reads
//! them on load.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_broker::group::record as offsets_record;
use runnel_storage::batch::{self, BATCH_HEADER_LEN, BatchIter, Compression, LOG_OVERHEAD, TimestampType};
use runnel_storage::compression;
use runnel_storage::record::{
    BatchBuilder, DecodeLimits, NewRecord, ProduceChecks, Record, check_producer_batch, decode_batch,
};

/// A fixed "now" so that a run is reproducible (the window checks use it).
const NOW_MS: i64 = 1_700_000_000_000;

fn limits(small: bool) -> DecodeLimits {
    if small {
        DecodeLimits { max_decompressed_bytes: 4 << 10, max_batch_bytes: 64 << 10 }
    } else {
        DecodeLimits { max_decompressed_bytes: 1 << 20, max_batch_bytes: 1 << 20 }
    }
}

fn fix_length_and_crc(buf: &mut [u8], length: bool, crc: bool) {
    if length && buf.len() >= LOG_OVERHEAD {
        let len = i32::try_from(buf.len() - LOG_OVERHEAD).unwrap_or(i32::MAX);
        buf[8..12].copy_from_slice(&len.to_be_bytes());
    }
    if crc && buf.len() > 21 {
        batch::write_crc(buf);
    }
}

/// Mode 1: a header from the input, then the section compressed with the header's codec.
fn synthesized(rest: &[u8]) -> Option<Vec<u8>> {
    if rest.len() < BATCH_HEADER_LEN {
        return None;
    }
    let (header, section) = rest.split_at(BATCH_HEADER_LEN);
    let mut out = header.to_vec();
    out[16] = 2; // magic
    let codec = Compression::from_id((out[22] & 0x07) % 5).ok()?;
    out[22] = (out[22] & !0x07) | codec.id();
    match codec {
        Compression::None => out.extend_from_slice(section),
        codec => out.extend(compression::compress(codec, section).ok()?),
    }
    fix_length_and_crc(&mut out, true, true);
    Some(out)
}

/// What a decoded batch must satisfy.
fn check_decoded(header: &batch::BatchHeader, records: &[Record]) {
    assert_eq!(records.len(), usize::try_from(header.records_count).unwrap(), "record count");
    let mut previous = None;
    for r in records {
        // base + last_offset_delta may overflow for a forged base offset; a record's own
        // offset was computed with a checked add.
        let last = header.base_offset.saturating_add(i64::from(header.last_offset_delta));
        assert!(r.offset >= header.base_offset && r.offset <= last, "offset outside the batch");
        assert!(previous.is_none_or(|p| r.offset > p), "offsets must increase");
        previous = Some(r.offset);
        if header.timestamp_type() == TimestampType::LogAppendTime {
            assert_eq!(r.timestamp_ms, header.max_timestamp);
        }
        // As the group coordinator reads `__consumer_offsets`: errors are fine, panics not.
        let _ = offsets_record::decode(r.key.as_ref(), r.value.as_ref());
    }
}

/// Decoded records, rebuilt uncompressed, decode to the same records (offsets aside: a
/// rebuilt batch numbers them 0, 1, 2, ...).
fn check_rebuild(records: &[Record]) {
    if records.is_empty() {
        return;
    }
    let mut builder = BatchBuilder::new(Compression::None);
    for r in records {
        builder.push(NewRecord {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp_ms: r.timestamp_ms,
        });
    }
    let Ok(rebuilt) = builder.build() else { return }; // timestamps too far apart to encode
    let big = DecodeLimits { max_decompressed_bytes: usize::MAX, max_batch_bytes: usize::MAX };
    let (_, again) = decode_batch(&rebuilt, &big).expect("a batch built from decoded records decodes");
    assert_eq!(again.len(), records.len());
    for (a, b) in again.iter().zip(records) {
        assert_eq!(
            (&a.key, &a.value, &a.headers, a.timestamp_ms),
            (&b.key, &b.value, &b.headers, b.timestamp_ms)
        );
    }
}

fn exercise_batch(buf: &[u8], limits: &DecodeLimits) {
    if let Ok((header, records)) = decode_batch(buf, limits) {
        check_decoded(&header, &records);
        check_rebuild(&records);
    }

    for item in BatchIter::new(buf, limits.max_batch_bytes) {
        let Ok((_, one)) = item else { break };
        if let Ok((header, records)) = decode_batch(one, limits) {
            check_decoded(&header, &records);
        }
    }

    // The leader's validation: two windows, a tight one and an open one.
    for (before, after) in [(3_600_000, 3_600_000), (i64::MAX, i64::MAX)] {
        let checks = ProduceChecks {
            limits: *limits,
            now_ms: NOW_MS,
            timestamp_before_max_ms: before,
            timestamp_after_max_ms: after,
        };
        let mut mine = buf.to_vec();
        let mut scratch = Vec::new();
        let accepted = check_producer_batch(&mut mine, &checks, &mut scratch);
        assert!(scratch.capacity() <= limits.max_decompressed_bytes, "scratch grew past the limit");
        if let Ok(header) = accepted {
            let checked = batch::check_batch(&mine, limits.max_batch_bytes)
                .expect("an accepted batch keeps a valid CRC");
            assert_eq!(checked.max_timestamp, header.max_timestamp);
            let (decoded_header, records) =
                decode_batch(&mine, limits).expect("a batch the leader accepts decodes");
            check_decoded(&decoded_header, &records);
            assert!(header.records_count >= 1);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset - header.base_offset, i as i64, "a producer's offsets have no gaps");
                if header.timestamp_type() == TimestampType::CreateTime {
                    assert!(r.timestamp_ms <= header.max_timestamp);
                    assert!(r.timestamp_ms >= NOW_MS.saturating_sub(before));
                    assert!(r.timestamp_ms <= NOW_MS.saturating_add(after));
                }
            }
            if header.timestamp_type() == TimestampType::CreateTime {
                assert_eq!(records.iter().map(|r| r.timestamp_ms).max(), Some(header.max_timestamp));
            } else {
                assert_eq!(header.max_timestamp, NOW_MS);
            }
        }
    }
}

/// Valid inputs of every mode and codec, written when scripts/fuzz.sh asks.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for codec in Compression::ALL {
        // Mode 0 as it is (default limits, then small ones): a client's batch, and an
        // idempotent producer's batch inside the leader's time window.
        for (flags, timestamp) in [(0x00, 1_000), (0x10, NOW_MS - 5)] {
            let mut seed = vec![flags];
            seed.extend(runnel_fuzz::sample_batch(codec, 3, timestamp));
            seeds.push(seed);
        }
        // Mode 1: the header with the codec, and the records uncompressed.
        let plain = runnel_fuzz::sample_batch(Compression::None, 4, NOW_MS);
        let mut seed = vec![0x01];
        seed.extend_from_slice(&plain);
        seed[1 + 22] |= codec.id();
        seeds.push(seed);
        // Mode 2: a compressed records section.
        let mut seed = vec![0x02, codec.id()];
        seed.extend(compression::compress(codec, &plain[BATCH_HEADER_LEN..]).expect("compress"));
        seeds.push(seed);
    }
    // Records of `__consumer_offsets`, a commit and a tombstone.
    let key = offsets_record::OffsetKey { group: "g".into(), topic: "t".into(), partition: 3 };
    let value = offsets_record::OffsetValue { offset: 42, commit_timestamp_ms: NOW_MS, metadata: "m".into() };
    let mut builder = BatchBuilder::new(Compression::None);
    for value in [Some(offsets_record::encode_value(&value)), None] {
        builder.push(NewRecord {
            key: Some(offsets_record::encode_key(&key).into()),
            value: value.map(Into::into),
            headers: Vec::new(),
            timestamp_ms: NOW_MS,
        });
    }
    let mut seed = vec![0x00];
    seed.extend(builder.build().expect("build"));
    seeds.push(seed);
    seeds
}

fuzz_target!(init: runnel_fuzz::write_seeds(seeds), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = limits(mode & 0x10 != 0);
    match mode & 0x03 {
        0 => {
            let mut buf = rest.to_vec();
            fix_length_and_crc(&mut buf, mode & 0x04 != 0, mode & 0x08 != 0);
            exercise_batch(&buf, &limits);
        }
        1 => {
            if let Some(buf) = synthesized(rest) {
                exercise_batch(&buf, &limits);
            }
        }
        _ => {
            let Some((&codec, compressed)) = rest.split_first() else { return };
            let Ok(codec) = Compression::from_id(codec % 5) else { return };
            let limit = limits.max_decompressed_bytes;
            let mut out = Vec::new();
            // Twice into the same buffer, as the broker's inflating slots reuse theirs.
            for _ in 0..2 {
                if compression::decompress_into(codec, compressed, limit, &mut out).is_ok() {
                    assert!(out.len() <= limit, "decompressed past the limit");
                }
                assert!(out.capacity() <= limit, "buffer grew past the limit");
            }
        }
    }
});
