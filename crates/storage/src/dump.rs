//! `runnel log dump`: a readable listing of every batch of a partition directory, with a
//! verdict on its integrity. Reads only; never repairs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{BATCH_HEADER_LEN, BatchHeader};
use crate::epoch::{CHECKPOINT_FILE, LeaderEpochCache};
use crate::error::{BatchError, LogError, Result};
use crate::record::{self, DecodeLimits};
use crate::segment::{self, Scanner};

/// What to print.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Also decode and print every record.
    pub records: bool,
    /// Largest batch considered valid.
    pub max_batch_bytes: usize,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions { records: false, max_batch_bytes: crate::log::BATCH_BYTES_LIMIT }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub segment: PathBuf,
    pub position: u64,
    /// The offset expected at that position.
    pub offset: u64,
    pub reason: String,
}

/// Totals of a dump.
#[derive(Debug, Default, Clone)]
pub struct DumpSummary {
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

impl DumpSummary {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Prints every batch of the partition directory `dir` to `out`.
pub fn dump_partition(dir: &Path, opts: &DumpOptions, out: &mut dyn Write) -> Result<DumpSummary> {
    let w = |e| LogError::io("write output", "<stdout>")(e);
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(LogError::io("read directory", dir))? {
        let entry = entry.map_err(LogError::io("read directory", dir))?;
        if let Some(base) = entry.file_name().to_str().and_then(segment::parse_log_file_name) {
            bases.push(base);
        }
    }
    if bases.is_empty() {
        return Err(LogError::Config(format!(
            "{} holds no segment files (*.log): not a partition directory",
            dir.display()
        )));
    }
    bases.sort_unstable();
    let mut summary = DumpSummary::default();
    let mut expected_next: Option<u64> = None;
    for base in bases {
        let path = dir.join(segment::file_name(base, segment::LOG_SUFFIX));
        if let Some(exp) = expected_next
            && exp != base
        {
            summary.problems.push(Problem {
                segment: path.clone(),
                position: 0,
                offset: exp,
                reason: format!("offset gap: previous segment ends at {exp}, this one starts at {base}"),
            });
        }
        writeln!(out, "segment {}", path.display()).map_err(w)?;
        summary.segments += 1;
        let next = dump_segment(&path, base, opts, out, &mut summary)?;
        expected_next = Some(next);
    }
    match LeaderEpochCache::load(dir) {
        Ok(c) => {
            let list: Vec<String> =
                c.entries().iter().map(|e| format!("{}@{}", e.epoch, e.start_offset)).collect();
            writeln!(out, "leader epochs: [{}]", list.join(", ")).map_err(w)?;
        }
        Err(e) => summary.problems.push(Problem {
            segment: dir.join(CHECKPOINT_FILE),
            position: 0,
            offset: 0,
            reason: e.to_string(),
        }),
    }
    for p in &summary.problems {
        writeln!(
            out,
            "CORRUPT {} position {} (offset {}): {}",
            p.segment.display(),
            p.position,
            p.offset,
            p.reason
        )
        .map_err(w)?;
    }
    writeln!(
        out,
        "summary: {} segments, {} batches, {} records, {} bytes, {}",
        summary.segments,
        summary.batches,
        summary.records,
        summary.bytes,
        if summary.is_clean() {
            "no corruption".to_string()
        } else {
            format!("{} problem(s)", summary.problems.len())
        }
    )
    .map_err(w)?;
    Ok(summary)
}

/// Dumps one segment; returns the offset after its last readable batch.
fn dump_segment(
    path: &Path,
    base: u64,
    opts: &DumpOptions,
    out: &mut dyn Write,
    summary: &mut DumpSummary,
) -> Result<u64> {
    let w = |e| LogError::io("write output", "<stdout>")(e);
    let file = File::open(path).map_err(LogError::io("open", path))?;
    let len = file.metadata().map_err(LogError::io("stat", path))?.len();
    let mut start = 0u64;
    let mut expected = base;
    let limits = DecodeLimits { max_batch_bytes: opts.max_batch_bytes, ..Default::default() };
    while start < len {
        let mut scanner = Scanner::new(&file, start, len, opts.max_batch_bytes).expect_offset(expected);
        let stop = loop {
            match scanner.next() {
                Ok(Some(sb)) => {
                    let h = &sb.header;
                    print_batch(out, h, sb.position, "valid").map_err(w)?;
                    summary.batches += 1;
                    summary.records += h.records_count as u64;
                    summary.bytes += h.total_len() as u64;
                    expected = h.next_offset() as u64;
                    if opts.records {
                        match record::decode_batch(scanner.last_batch(&sb), &limits) {
                            Ok((_, records)) => {
                                for r in &records {
                                    print_record(out, r).map_err(w)?;
                                }
                            }
                            Err(e) => summary.problems.push(Problem {
                                segment: path.to_owned(),
                                position: sb.position,
                                offset: h.base_offset as u64,
                                reason: format!("records do not decode: {e}"),
                            }),
                        }
                    }
                }
                Ok(None) => break None,
                Err(stop) => break Some(stop),
            }
        };
        let Some(stop) = stop else { break };
        summary.problems.push(Problem {
            segment: path.to_owned(),
            position: stop.position,
            offset: expected,
            reason: stop.error.to_string(),
        });
        // A batch whose header holds together but whose CRC fails can be stepped over, so
        // the rest of the segment is still shown; anything else ends the segment.
        let mut hdr = [0u8; BATCH_HEADER_LEN];
        match (&stop.error, file.read_exact_at(&mut hdr, stop.position)) {
            (BatchError::CrcMismatch { .. }, Ok(())) => {
                let h = BatchHeader::parse(&hdr, opts.max_batch_bytes)
                    .map_err(|e| LogError::CorruptFile { path: path.to_owned(), reason: e.to_string() })?;
                print_batch(out, &h, stop.position, "CORRUPT").map_err(w)?;
                start = stop.position + h.total_len() as u64;
                expected = h.next_offset() as u64;
            }
            _ => {
                writeln!(out, "  {} unreadable bytes from position {}", len - stop.position, stop.position)
                    .map_err(w)?;
                break;
            }
        }
    }
    Ok(expected)
}

fn print_batch(out: &mut dyn Write, h: &BatchHeader, position: u64, verdict: &str) -> std::io::Result<()> {
    writeln!(
        out,
        "baseOffset: {} lastOffset: {} count: {} partitionLeaderEpoch: {} position: {} size: {} \
         baseTimestamp: {} maxTimestamp: {} compression: {} producerId: {} producerEpoch: {} \
         baseSequence: {} transactional: {} control: {} crc: {:#010x} {}",
        h.base_offset,
        h.last_offset(),
        h.records_count,
        h.partition_leader_epoch,
        position,
        h.total_len(),
        h.base_timestamp,
        h.max_timestamp,
        h.compression().name(),
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
        h.is_transactional(),
        h.is_control(),
        h.crc,
        verdict
    )
}

fn print_record(out: &mut dyn Write, r: &record::Record) -> std::io::Result<()> {
    let show = |b: &Option<bytes::Bytes>| match b {
        None => "null".to_string(),
        Some(b) => printable(&String::from_utf8_lossy(b)),
    };
    let headers: Vec<String> =
        r.headers.iter().map(|h| format!("{}={}", printable(&h.key), show(&h.value))).collect();
    writeln!(
        out,
        "| offset: {} timestamp: {} key: {} value: {} headers: [{}]",
        r.offset,
        r.timestamp_ms,
        show(&r.key),
        show(&r.value),
        headers.join(", ")
    )
}

/// Escapes control characters (so one record stays on one line) and nothing else.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}
