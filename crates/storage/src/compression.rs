//! Compression of the records section of a RecordBatch v2, byte-compatible with Kafka.
//!
//! In a v2 batch everything after the record count (the concatenated records) is compressed
//! as one blob with the codec named by the low three bits of the batch attributes. What we
//! write has to be readable by the Java client and librdkafka, and we have to read what they
//! write:
//!
//! * **gzip**: a standard gzip stream (RFC 1952). We read concatenated members too, as Java's
//!   `GZIPInputStream` does.
//! * **snappy**: the Java client writes snappy-java's ("xerial") stream framing: the 8-byte
//!   magic `0x82 "SNAPPY" 0x00`, an i32 version (1) and an i32 compatible version (1), all
//!   big-endian, then blocks of `i32 compressed length` + one raw snappy block, each holding
//!   up to 32 KiB of input. librdkafka writes that framing or a single raw snappy block
//!   depending on version and mode. We write the xerial framing and read both, telling them
//!   apart the way snappy-java does: a stream of at least 16 bytes that starts with the magic
//!   is framed, anything else is one raw block. The version fields are not checked (as in
//!   librdkafka), and a magic header in place of a block length starts a concatenated stream.
//! * **lz4**: one LZ4 frame. We write what the Java client writes: independent blocks of at
//!   most 64 KiB, no block or content checksums, no content size. We read any standard
//!   frame (checksums are verified when present), but not the legacy format.
//! * **zstd**: a standard zstd frame (level 3, Kafka's default), with the content size set.
//!
//! Decompression works on bytes from the network, so it never trusts a size the input
//! claims: output is produced in bounded steps and refused with
//! [`BatchError::DecompressedTooLarge`] as soon as it would pass the caller's limit, and a
//! snappy block's declared length is checked against the limit and against what its
//! compressed size could possibly expand to before anything is allocated. The codecs' own
//! working memory is bounded separately: lz4 frames declare blocks of at most 4 MiB, and the
//! zstd window is capped at `2^clamp(log2(limit), 23, 27)` bytes (8 to 128 MiB; Kafka's
//! default level writes 2 MiB windows).

use std::io::{self, Read, Write};

use crate::batch::Compression;
use crate::error::BatchError;

/// The magic that starts a snappy-java (xerial) `SnappyOutputStream` stream.
pub const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Version we write in the xerial header (snappy-java's `DEFAULT_VERSION`).
const XERIAL_VERSION: i32 = 1;
/// Compatible version we write in the xerial header (`MINIMUM_COMPATIBLE_VERSION`).
const XERIAL_COMPATIBLE_VERSION: i32 = 1;
/// Magic + version + compatible version.
const XERIAL_HEADER_LEN: usize = 16;
/// Uncompressed bytes per xerial block: snappy-java's default block size, which Kafka uses.
const XERIAL_BLOCK_SIZE: usize = 32 * 1024;

/// A raw snappy block cannot expand by more than this factor: the most productive element
/// is a 3-byte copy of 64 bytes (about 21x). Declared lengths beyond it are malformed.
const SNAPPY_MAX_EXPANSION: usize = 32;

/// The LZ4 frame magic number, 0x184D2204, as it appears on the wire (little-endian).
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
/// Magic, FLG, BD and header checksum: the shortest possible frame header.
const LZ4_MIN_FRAME_HEADER_LEN: usize = 7;

/// Kafka's default zstd level (`compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;
/// Smallest zstd window log we accept whatever the limit: enough for any level up to 19
/// when the compressor did not know the input size (Kafka's Java client writes 2^21).
const ZSTD_MIN_WINDOW_LOG: u32 = 23;
/// zstd's default maximum window log for decompression.
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// Step in which streaming decompressors hand over output.
const READ_CHUNK: usize = 16 * 1024;

fn compress_failed(codec: Compression, e: impl std::fmt::Display) -> BatchError {
    BatchError::Malformed(format!("{} compression failed: {e}", codec.name()))
}

fn decompress_failed(codec: Compression, e: impl std::fmt::Display) -> BatchError {
    BatchError::Malformed(format!("{} decompression failed: {e}", codec.name()))
}

/// Compresses a records section with `codec`, in the format Kafka clients expect.
///
/// [`Compression::None`] returns a copy of `data`.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let out = Vec::with_capacity(data.len() / 2 + 64);
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            enc.write_all(data).map_err(|e| compress_failed(codec, e))?;
            enc.finish().map_err(|e| compress_failed(codec, e))
        }
        Compression::Snappy => xerial_compress(data),
        Compression::Lz4 => {
            use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
            let info = FrameInfo::new().block_size(BlockSize::Max64KB).block_mode(BlockMode::Independent);
            let out = Vec::with_capacity(data.len() / 2 + 64);
            let mut enc = FrameEncoder::with_frame_info(info, out);
            enc.write_all(data).map_err(|e| compress_failed(codec, e))?;
            enc.finish().map_err(|e| compress_failed(codec, e))
        }
        Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| compress_failed(codec, e)),
    }
}

/// Decompresses a records section compressed with `codec`, producing at most `limit` bytes.
///
/// Fails with [`BatchError::DecompressedTooLarge`] if the output would exceed `limit` and
/// with [`BatchError::Malformed`] if the input is not valid for the codec (including trailing
/// garbage and truncation). [`Compression::None`] returns a copy of `data`, subject to the
/// same limit.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    decompress_into(codec, data, limit, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (cleared first), so that a caller can reuse one buffer: its
/// capacity never grows past `limit`.
pub fn decompress_into(
    codec: Compression,
    data: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    out.clear();
    // A guess at the output size for the first allocation; growth is bounded by `limit`.
    let hint = data.len().saturating_mul(4).max(1024);
    if data.is_empty() && codec != Compression::None {
        // Every codec's stream has a header; some decoders would read nothing as nothing.
        return Err(decompress_failed(codec, "no compressed data"));
    }
    match codec {
        Compression::None => {
            if data.len() > limit {
                return Err(BatchError::DecompressedTooLarge { max: limit });
            }
            out.extend_from_slice(data);
            Ok(())
        }
        Compression::Gzip => {
            read_limited(codec, flate2::bufread::MultiGzDecoder::new(data), limit, hint, out)
        }
        Compression::Snappy => {
            if is_xerial(data) {
                xerial_decompress(data, limit, out)
            } else {
                snappy_raw_append(data, out, limit)
            }
        }
        Compression::Lz4 => {
            lz4_check_frame(data)?;
            read_limited(codec, lz4_flex::frame::FrameDecoder::new(data), limit, hint, out)
        }
        Compression::Zstd => zstd_decompress(data, limit, hint, out),
    }
}

/// Drains `reader` into `out`, refusing to produce more than `limit` bytes. The vector's
/// capacity never exceeds `limit` either.
fn read_limited(
    codec: Compression,
    mut reader: impl Read,
    limit: usize,
    hint: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    out.reserve_exact(hint.min(limit).saturating_sub(out.capacity()));
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decompress_failed(codec, e)),
        };
        let Some(got) = chunk.get(..n) else {
            return Err(decompress_failed(codec, "decoder reported more bytes than it was given room for"));
        };
        // Invariant: out.len() <= limit.
        if n > limit - out.len() {
            return Err(BatchError::DecompressedTooLarge { max: limit });
        }
        if out.capacity() - out.len() < n {
            let target = out.len().saturating_mul(2).max(out.len() + n).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(got);
    }
}

fn zstd_decompress(data: &[u8], limit: usize, hint: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Zstd;
    // Shortcut: a first frame that declares more than the limit is refused unread.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data)
        && size > limit as u64
    {
        return Err(BatchError::DecompressedTooLarge { max: limit });
    }
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|e| decompress_failed(codec, e))?;
    decoder.window_log_max(zstd_window_log_max(limit)).map_err(|e| decompress_failed(codec, e))?;
    read_limited(codec, decoder, limit, hint, out)
}

/// The largest zstd window (as a log) we let a frame ask for, given the output limit.
fn zstd_window_log_max(limit: usize) -> u32 {
    let needed = usize::BITS - limit.saturating_sub(1).leading_zeros(); // ceil(log2(limit))
    needed.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG)
}

/// Walks the structure of an LZ4 frame without decompressing it. It must be one standard
/// frame (not the legacy format, whose 8 MiB blocks the decoder would allocate for, nor a
/// skippable frame; Kafka reads neither), complete up to its end mark and content checksum,
/// with nothing after it. The decoder checks the rest (block sizes, reserved bits,
/// checksums), but on its own it takes a frame cut off at a block boundary for a complete
/// one and stops reading at the end of the first frame, both of which would lose data
/// silently.
fn lz4_check_frame(data: &[u8]) -> Result<(), BatchError> {
    const FLG_DICT_ID: u8 = 0x01;
    const FLG_CONTENT_CHECKSUM: u8 = 0x04;
    const FLG_CONTENT_SIZE: u8 = 0x08;
    const FLG_BLOCK_CHECKSUMS: u8 = 0x10;
    const UNCOMPRESSED_BIT: u32 = 0x8000_0000;
    let malformed = |msg: String| decompress_failed(Compression::Lz4, msg);
    let truncated = || malformed(format!("frame truncated at {} bytes", data.len()));

    if !data.starts_with(&LZ4_FRAME_MAGIC) {
        return Err(malformed("no LZ4 frame magic".to_owned()));
    }
    let flg = *data.get(4).ok_or_else(truncated)?;
    let mut pos = LZ4_MIN_FRAME_HEADER_LEN;
    if flg & FLG_CONTENT_SIZE != 0 {
        pos += 8;
    }
    if flg & FLG_DICT_ID != 0 {
        pos += 4;
    }
    let block_checksum_len = if flg & FLG_BLOCK_CHECKSUMS != 0 { 4 } else { 0 };
    loop {
        let size: [u8; 4] = match data.get(pos..).and_then(|r| r.get(..4)).map(<[u8; 4]>::try_from) {
            Some(Ok(b)) => b,
            _ => return Err(truncated()),
        };
        pos += 4;
        let size = u32::from_le_bytes(size);
        if size == 0 {
            break; // end mark
        }
        let len = (size & !UNCOMPRESSED_BIT) as usize;
        pos = pos.saturating_add(len).saturating_add(block_checksum_len);
        if pos > data.len() {
            return Err(truncated());
        }
    }
    if flg & FLG_CONTENT_CHECKSUM != 0 {
        pos += 4;
    }
    match pos.cmp(&data.len()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(truncated()),
        std::cmp::Ordering::Less => {
            Err(malformed(format!("{} bytes after the end of the frame", data.len() - pos)))
        }
    }
}

fn is_xerial(data: &[u8]) -> bool {
    data.len() >= XERIAL_HEADER_LEN && data.starts_with(&XERIAL_MAGIC)
}

fn xerial_compress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let codec = Compression::Snappy;
    let blocks = data.len().div_ceil(XERIAL_BLOCK_SIZE);
    let max_block = snap::raw::max_compress_len(XERIAL_BLOCK_SIZE);
    let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + blocks * 4 + data.len() / 2 + 64);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    out.extend_from_slice(&XERIAL_COMPATIBLE_VERSION.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    let mut buf = vec![0u8; max_block];
    for block in data.chunks(XERIAL_BLOCK_SIZE) {
        let n = encoder.compress(block, &mut buf).map_err(|e| compress_failed(codec, e))?;
        let compressed = buf.get(..n).ok_or_else(|| compress_failed(codec, "encoder overran its buffer"))?;
        // n <= max_compress_len(32 KiB), far below i32::MAX.
        let len = i32::try_from(n).map_err(|e| compress_failed(codec, e))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(compressed);
    }
    Ok(out)
}

fn xerial_decompress(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let malformed = |msg: String| BatchError::Malformed(format!("snappy (xerial framing): {msg}"));
    let mut pos = XERIAL_HEADER_LEN;
    while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
        if rest.len() >= XERIAL_HEADER_LEN && rest.starts_with(&XERIAL_MAGIC) {
            // Another stream's header: snappy-java reads concatenated streams.
            pos += XERIAL_HEADER_LEN;
            continue;
        }
        let len_bytes: [u8; 4] = match rest.get(..4).map(<[u8; 4]>::try_from) {
            Some(Ok(b)) => b,
            _ => return Err(malformed(format!("truncated block length at byte {pos}"))),
        };
        let len = i32::from_be_bytes(len_bytes);
        let len = usize::try_from(len)
            .map_err(|_| malformed(format!("negative block length {len} at byte {pos}")))?;
        let Some(block) = 4usize.checked_add(len).and_then(|end| rest.get(4..end)) else {
            return Err(malformed(format!(
                "block of {len} bytes at byte {pos} runs past the end ({} bytes left)",
                rest.len() - 4
            )));
        };
        snappy_raw_append(block, out, limit)?;
        pos += 4 + len;
    }
    Ok(())
}

/// Decompresses one raw snappy block onto the end of `out`, keeping `out` within `limit`.
fn snappy_raw_append(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    if block.is_empty() {
        return Err(decompress_failed(codec, "empty block"));
    }
    let n = snap::raw::decompress_len(block).map_err(|e| decompress_failed(codec, e))?;
    // Invariant: out.len() <= limit.
    if n > limit - out.len() {
        return Err(BatchError::DecompressedTooLarge { max: limit });
    }
    if n > block.len().saturating_mul(SNAPPY_MAX_EXPANSION) {
        return Err(decompress_failed(
            codec,
            format!(
                "block of {} bytes claims to expand to {n} bytes, more than snappy can encode",
                block.len()
            ),
        ));
    }
    let start = out.len();
    out.resize(start + n, 0);
    let written = match out.get_mut(start..) {
        Some(dst) => snap::raw::Decoder::new().decompress(block, dst),
        None => return Err(decompress_failed(codec, "output buffer shorter than resized")),
    };
    match written {
        Ok(w) if w == n => Ok(()),
        Ok(w) => {
            out.truncate(start);
            Err(decompress_failed(codec, format!("block declared {n} bytes but produced {w}")))
        }
        Err(e) => {
            out.truncate(start);
            Err(decompress_failed(codec, e))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial.
        (0..len).map(|i| (i % 251) as u8 ^ ((i / 1000) as u8)).collect()
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in Compression::ALL {
            for len in [0, 1, 9, 1000, XERIAL_BLOCK_SIZE, XERIAL_BLOCK_SIZE + 1, 200_000] {
                let data = sample(len);
                let c = compress(codec, &data).unwrap();
                let d = decompress(codec, &c, 64 * MIB).unwrap();
                assert_eq!(d, data, "{} len {len}", codec.name());
            }
        }
    }

    #[test]
    fn snappy_writes_xerial_framing() {
        let data = sample(XERIAL_BLOCK_SIZE * 2 + 100);
        let c = compress(Compression::Snappy, &data).unwrap();
        assert_eq!(&c[..8], &XERIAL_MAGIC);
        assert_eq!(&c[8..12], &[0, 0, 0, 1]);
        assert_eq!(&c[12..16], &[0, 0, 0, 1]);
        // Walk the blocks by hand: three blocks of 32 KiB, 32 KiB and 100 bytes.
        let mut pos = 16;
        let mut sizes = Vec::new();
        let mut joined = Vec::new();
        while pos < c.len() {
            let len = i32::from_be_bytes(c[pos..pos + 4].try_into().unwrap()) as usize;
            let block = &c[pos + 4..pos + 4 + len];
            let raw = snap::raw::Decoder::new().decompress_vec(block).unwrap();
            sizes.push(raw.len());
            joined.extend(raw);
            pos += 4 + len;
        }
        assert_eq!(pos, c.len());
        assert_eq!(sizes, [XERIAL_BLOCK_SIZE, XERIAL_BLOCK_SIZE, 100]);
        assert_eq!(joined, data);
    }

    /// A raw snappy block written by hand from the format description, so that reading does
    /// not only ever see what `snap` itself writes: a 16-byte literal, three copies at
    /// offset 7 (64 + 64 + 5 bytes) and a 1-byte literal.
    pub(crate) fn hand_made_raw_snappy() -> (Vec<u8>, Vec<u8>) {
        let mut expected = vec![0xa8, 0x02, 0, 0, 0, 0x02, b'k', 0x98, 0x02];
        expected.extend(b"runnel ".repeat(20));
        expected.push(0);
        assert_eq!(expected.len(), 150);

        let mut raw = vec![0x96, 0x01]; // uncompressed length 150
        raw.push((16 - 1) << 2); // literal, 16 bytes
        raw.extend(&expected[..16]);
        raw.extend([((64 - 1) << 2) | 2, 7, 0]); // copy 64 bytes from 7 back
        raw.extend([((64 - 1) << 2) | 2, 7, 0]);
        raw.extend([((5 - 1) << 2) | 2, 7, 0]);
        raw.extend([0, 0]); // literal, 1 byte: 0
        (raw, expected)
    }

    #[test]
    fn snappy_reads_raw_blocks_and_xerial_streams() {
        let (raw, expected) = hand_made_raw_snappy();
        assert_eq!(decompress(Compression::Snappy, &raw, MIB).unwrap(), expected);

        // The same block in xerial framing, twice, then a concatenated second stream.
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend([0, 0, 0, 1, 0, 0, 0, 1]);
        for _ in 0..2 {
            framed.extend((raw.len() as i32).to_be_bytes());
            framed.extend(&raw);
        }
        framed.extend(XERIAL_MAGIC);
        framed.extend([0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend((raw.len() as i32).to_be_bytes());
        framed.extend(&raw);
        assert_eq!(decompress(Compression::Snappy, &framed, MIB).unwrap(), expected.repeat(3));

        // A bare xerial header is an empty stream.
        assert_eq!(decompress(Compression::Snappy, &framed[..16], MIB).unwrap(), b"");
        // A raw block written by snap is read as raw (no magic).
        let other = snap::raw::Encoder::new().compress_vec(b"hello hello hello").unwrap();
        assert_eq!(decompress(Compression::Snappy, &other, MIB).unwrap(), b"hello hello hello");
    }

    #[test]
    fn snappy_rejects_bad_framing_and_impossible_lengths() {
        let (raw, _) = hand_made_raw_snappy();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend([0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend((raw.len() as i32).to_be_bytes());
        framed.extend(&raw);
        for cut in 17..framed.len() {
            assert!(decompress(Compression::Snappy, &framed[..cut], MIB).is_err(), "cut at {cut}");
        }
        let mut negative = framed.clone();
        negative[16..20].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(decompress(Compression::Snappy, &negative, MIB), Err(BatchError::Malformed(_))));
        let mut zero = framed[..16].to_vec();
        zero.extend([0, 0, 0, 0]);
        assert!(matches!(decompress(Compression::Snappy, &zero, MIB), Err(BatchError::Malformed(_))));

        // A 6-byte block claiming 4 GiB - 1: refused without allocating it.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(matches!(
            decompress(Compression::Snappy, &claim, usize::MAX),
            Err(BatchError::Malformed(m)) if m.contains("more than snappy can encode")
        ));
        assert!(matches!(
            decompress(Compression::Snappy, &claim, MIB),
            Err(BatchError::DecompressedTooLarge { max: MIB })
        ));
        assert!(decompress(Compression::Snappy, &[], MIB).is_err());
    }

    #[test]
    fn lz4_frames_must_be_complete() {
        let one = compress(Compression::Lz4, &sample(200_000)).unwrap();
        // Cut right after a block, before the end mark: the decoder alone would accept it.
        let first_block = 7 + 4 + (u32::from_le_bytes(one[7..11].try_into().unwrap()) & 0x7fff_ffff) as usize;
        assert!(decompress(Compression::Lz4, &one[..first_block], MIB).is_err());
        assert!(decompress(Compression::Lz4, &one[..4], MIB).is_err());
        assert!(decompress(Compression::Lz4, &one[..one.len() - 1], MIB).is_err());
        // A second frame after the first is refused: Kafka writes one, and the decoder
        // would stop after the first.
        let mut two = one.clone();
        two.extend(compress(Compression::Lz4, b"tail").unwrap());
        assert!(matches!(
            decompress(Compression::Lz4, &two, MIB),
            Err(BatchError::Malformed(m)) if m.contains("after the end of the frame")
        ));
        // Legacy and skippable frames are not Kafka's.
        let legacy = [0x02, 0x21, 0x4c, 0x18, 0, 0, 0, 0];
        assert!(decompress(Compression::Lz4, &legacy, MIB).is_err());
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        assert!(decompress(Compression::Lz4, &skippable, MIB).is_err());
    }

    #[test]
    fn lz4_frames_look_like_the_java_clients() {
        let c = compress(Compression::Lz4, b"some records").unwrap();
        // Magic 0x184D2204 (LE), FLG = version 01 + independent blocks, BD = 64 KiB, and the
        // header checksum byte for those two (from the reference `lz4` CLI's output).
        assert_eq!(&c[..7], &[0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82]);
        // Ends with the end mark and no content checksum.
        assert_eq!(&c[c.len() - 4..], &[0, 0, 0, 0]);
    }

    /// The 150 bytes of `hand_made_raw_snappy` compressed by the reference command-line tools
    /// (gzip 1.12 `-9 -n`, zstd 1.5.4 `-3`, lz4 1.9.4 `-B4 -BI --no-frame-crc` as the Java
    /// client writes it, and lz4 defaults, with a content checksum).
    const GZIP_FIXTURE: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x5b, 0xc1, 0xc4, 0xc0, 0xc0, 0xc0, 0x94,
        0x3d, 0x83, 0xa9, 0xa8, 0x34, 0x2f, 0x2f, 0x35, 0x47, 0x61, 0x50, 0x50, 0x0c, 0x00, 0xbf, 0x05, 0x9f,
        0x01, 0x96, 0x00, 0x00, 0x00,
    ];
    const ZSTD_FIXTURE: &[u8] = &[
        0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x96, 0xc5, 0x00, 0x00, 0x88, 0xa8, 0x02, 0x00, 0x00, 0x00, 0x02, 0x6b,
        0x98, 0x02, 0x72, 0x75, 0x6e, 0x6e, 0x65, 0x6c, 0x20, 0x00, 0x01, 0x00, 0x04, 0xa2, 0xca, 0x12, 0xa3,
        0x17, 0x37, 0x01,
    ];
    const LZ4_JAVA_STYLE_FIXTURE: &[u8] = &[
        0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82, 0x1b, 0x00, 0x00, 0x00, 0xff, 0x01, 0xa8, 0x02, 0x00, 0x00,
        0x00, 0x02, 0x6b, 0x98, 0x02, 0x72, 0x75, 0x6e, 0x6e, 0x65, 0x6c, 0x20, 0x07, 0x00, 0x6e, 0x50, 0x6e,
        0x65, 0x6c, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    const LZ4_CHECKSUMMED_FIXTURE: &[u8] = &[
        0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7, 0x1b, 0x00, 0x00, 0x00, 0xff, 0x01, 0xa8, 0x02, 0x00, 0x00,
        0x00, 0x02, 0x6b, 0x98, 0x02, 0x72, 0x75, 0x6e, 0x6e, 0x65, 0x6c, 0x20, 0x07, 0x00, 0x6e, 0x50, 0x6e,
        0x65, 0x6c, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1d, 0xab, 0x52, 0x44,
    ];

    pub(crate) fn reference_fixtures() -> Vec<(Compression, &'static [u8])> {
        vec![
            (Compression::Gzip, GZIP_FIXTURE),
            (Compression::Zstd, ZSTD_FIXTURE),
            (Compression::Lz4, LZ4_JAVA_STYLE_FIXTURE),
            (Compression::Lz4, LZ4_CHECKSUMMED_FIXTURE),
        ]
    }

    #[test]
    fn reads_what_the_reference_tools_write() {
        let (_, expected) = hand_made_raw_snappy();
        for (codec, fixture) in reference_fixtures() {
            assert_eq!(decompress(codec, fixture, MIB).unwrap(), expected, "{}", codec.name());
            // Truncated anywhere: an error, never a panic or a short result.
            for cut in 0..fixture.len() {
                assert!(decompress(codec, &fixture[..cut], MIB).is_err(), "{} cut at {cut}", codec.name());
            }
            // Trailing garbage is refused too.
            let mut long = fixture.to_vec();
            long.extend([1, 2, 3, 4, 5, 6, 7, 8]);
            assert!(decompress(codec, &long, MIB).is_err(), "{} with trailing bytes", codec.name());
        }
    }

    #[test]
    fn decompression_bombs_are_refused() {
        let zeros = vec![0u8; 8 * MIB];
        let limit = MIB;
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let bomb = compress(codec, &zeros).unwrap();
            assert!(bomb.len() < MIB / 2, "{} bomb is {} bytes", codec.name(), bomb.len());
            assert_eq!(
                decompress(codec, &bomb, limit),
                Err(BatchError::DecompressedTooLarge { max: limit }),
                "{}",
                codec.name()
            );
            // Exactly at the limit is fine.
            let at = compress(codec, &zeros[..limit]).unwrap();
            assert_eq!(decompress(codec, &at, limit).unwrap().len(), limit);
        }

        // A zstd stream that does not declare its size is stopped while streaming.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(&zeros).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(matches!(zstd::zstd_safe::get_frame_content_size(&bomb), Ok(None)));
        assert_eq!(
            decompress(Compression::Zstd, &bomb, limit),
            Err(BatchError::DecompressedTooLarge { max: limit })
        );
        assert_eq!(
            decompress(Compression::None, &zeros, limit),
            Err(BatchError::DecompressedTooLarge { max: limit })
        );
    }

    #[test]
    fn zstd_window_cap_follows_the_limit() {
        assert_eq!(zstd_window_log_max(0), ZSTD_MIN_WINDOW_LOG);
        assert_eq!(zstd_window_log_max(1024), ZSTD_MIN_WINDOW_LOG);
        assert_eq!(zstd_window_log_max(64 * MIB), 26);
        assert_eq!(zstd_window_log_max(64 * MIB + 1), 27);
        assert_eq!(zstd_window_log_max(usize::MAX), ZSTD_MAX_WINDOW_LOG);
    }

    #[test]
    fn garbage_is_an_error() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            for junk in [&b""[..], b"\x00", b"not compressed at all, just text", &[0xff; 64]] {
                let r = decompress(codec, junk, MIB);
                // A lone zero byte is a valid raw snappy block holding nothing; everything
                // else must fail.
                if codec == Compression::Snappy && junk == b"\x00" {
                    assert_eq!(r, Ok(Vec::new()));
                } else {
                    assert!(r.is_err(), "{} accepted {junk:?}", codec.name());
                }
            }
        }
    }
}
