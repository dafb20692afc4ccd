//! `runnel consume`: reads partitions with `FetchStream` (batches as stored, decoded here)
//! and prints their records.
//!
//! Each partition has a [`PartitionReader`] (the client crate's, which follows the
//! partition's leader across failures) in its own task. Chunks of records reach one printing loop through a bounded
//! channel, so records of one partition are printed in offset order (partitions interleave).
//!
//! Without `--follow` each partition is read up to the high watermark it had when the
//! command started; with it, until `--max-messages` or Ctrl-C.

use std::io::Write;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::Record;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) use runnel_client::fetch::{Chunk, PartitionReader, list_offset};

use super::router::Router;
use super::{code, error, payload_len};
use crate::client::{ClientError, Output};

/// Chunks of records queued between the readers and the printer.
const CHUNKS_QUEUED_MAX: usize = 16;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The log start offset (`--from-beginning`).
    Earliest,
    /// The high watermark: only records produced from now on (the default).
    Latest,
    /// This offset (`--offset N`).
    Offset(i64),
}

/// The offsets `[start, end)` to read from a partition (`end` is `None` when following).
pub(crate) async fn resolve_range(
    router: &Router,
    topic: &str,
    partition: u32,
    start: Start,
    follow: bool,
) -> Result<(i64, Option<i64>), ClientError> {
    let latest = list_offset(router, topic, partition, pb::OffsetSpec::Latest).await?;
    let from = match start {
        Start::Latest => latest,
        Start::Earliest => list_offset(router, topic, partition, pb::OffsetSpec::Earliest).await?,
        Start::Offset(n) => {
            let earliest = list_offset(router, topic, partition, pb::OffsetSpec::Earliest).await?;
            if n < earliest || n > latest {
                return Err(error(
                    code::OFFSET_OUT_OF_RANGE,
                    "OFFSET_OUT_OF_RANGE",
                    format!(
                        "offset {n} is outside partition {topic}-{partition}'s range: offsets {earliest} to {latest} can be fetched"
                    ),
                ));
            }
            n
        }
    };
    Ok((from, (!follow).then_some(latest)))
}

/// How records are printed.
#[derive(Debug, Clone)]
pub(crate) struct PrintOptions {
    pub(crate) output: Output,
    pub(crate) print_key: bool,
    pub(crate) key_separator: String,
}

/// A key, value or header value for JSON: a string when it is UTF-8, else base64 (standard
/// alphabet, padded), with a flag saying which.
fn blob_json(bytes: Option<&Bytes>) -> (Value, bool) {
    match bytes {
        None => (Value::Null, false),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (Value::String(s.to_owned()), false),
            Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(b)), true),
        },
    }
}

/// One record as a JSON object (see the README for the fields).
pub(crate) fn record_json(topic: &str, partition: u32, record: &Record) -> Value {
    let (key, key_base64) = blob_json(record.key.as_ref());
    let (value, value_base64) = blob_json(record.value.as_ref());
    let headers: Vec<Value> = record
        .headers
        .iter()
        .map(|h| {
            let (value, value_base64) = blob_json(h.value.as_ref());
            json!({"key": h.key, "value": value, "value_base64": value_base64})
        })
        .collect();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": key,
        "key_base64": key_base64,
        "value": value,
        "value_base64": value_base64,
        "headers": headers,
    })
}

/// Writes one record in the chosen format, newline-terminated.
pub(crate) fn write_record(
    out: &mut impl Write,
    topic: &str,
    partition: u32,
    record: &Record,
    print: &PrintOptions,
) -> std::io::Result<()> {
    match print.output {
        Output::Json => {
            serde_json::to_writer(&mut *out, &record_json(topic, partition, record))?;
        }
        Output::Text => {
            // Bytes as they are (like Kafka's console consumer), "null" for a null.
            if print.print_key {
                out.write_all(record.key.as_deref().unwrap_or(b"null"))?;
                out.write_all(print.key_separator.as_bytes())?;
            }
            out.write_all(record.value.as_deref().unwrap_or(b"null"))?;
        }
    }
    out.write_all(b"\n")
}

/// What `runnel consume` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ConsumeOptions {
    pub(crate) topic: String,
    pub(crate) partition: Option<u32>,
    pub(crate) start: Start,
    pub(crate) max_messages: Option<u64>,
    pub(crate) follow: bool,
    pub(crate) print: PrintOptions,
}

/// What `runnel consume` did.
#[derive(Debug, Default)]
pub(crate) struct ConsumeSummary {
    pub(crate) records: u64,
    /// Key and value bytes of the records printed.
    pub(crate) payload_bytes: u64,
    /// Set when reading stopped on an error.
    pub(crate) error: Option<ClientError>,
}

/// The partitions to read: `--partition`, or all of them.
pub(crate) async fn partitions_to_read(
    router: &Router,
    topic: &str,
    partition: Option<u32>,
) -> Result<Vec<u32>, ClientError> {
    let count = router.partition_count(topic).await?;
    match partition {
        Some(p) if p >= count => Err(error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "UNKNOWN_TOPIC_OR_PARTITION",
            format!("topic {topic:?} has {count} partitions; there is no partition {p}"),
        )),
        Some(p) => Ok(vec![p]),
        None => Ok((0..count).collect()),
    }
}

/// `runnel consume`: prints records to `out` until done, `--max-messages`, a failure, or
/// `cancel` (Ctrl-C).
pub(crate) async fn consume(
    router: Arc<Router>,
    options: ConsumeOptions,
    out: &mut impl Write,
    cancel: CancellationToken,
) -> Result<ConsumeSummary, ClientError> {
    let partitions = partitions_to_read(&router, &options.topic, options.partition).await?;
    let mut ranges = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        ranges.push((p, resolve_range(&router, &options.topic, p, options.start, options.follow).await?));
    }
    let mut summary = ConsumeSummary::default();
    if options.max_messages == Some(0) {
        return Ok(summary);
    }
    let readers_done = cancel.child_token();
    let (tx, mut chunks) = mpsc::channel::<Result<Chunk, ClientError>>(CHUNKS_QUEUED_MAX);
    let mut tasks = JoinSet::new();
    for (partition, (from, end)) in ranges {
        let mut reader = PartitionReader::new(router.clone(), options.topic.clone(), partition, from, end);
        let tx = tx.clone();
        let stop = readers_done.clone();
        tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = reader.next_chunk() => next,
                };
                let last = !matches!(next, Ok(Some(_)));
                let sent = match next {
                    Ok(Some(chunk)) => tx.send(Ok(chunk)).await,
                    Ok(None) => return,
                    Err(e) => tx.send(Err(e)).await,
                };
                if sent.is_err() || last {
                    return;
                }
            }
        });
    }
    drop(tx);

    let limit = options.max_messages.unwrap_or(u64::MAX);
    'print: loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            next = chunks.recv() => next,
        };
        let chunk = match next {
            None => break,
            Some(Err(e)) => {
                summary.error = Some(e);
                break;
            }
            Some(Ok(chunk)) => chunk,
        };
        for record in &chunk.records {
            if summary.records >= limit {
                break 'print;
            }
            if let Err(e) = write_record(out, &options.topic, chunk.partition, record, &options.print) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    summary.error = Some(error(-1, "UNKNOWN_SERVER_ERROR", format!("writing stdout: {e}")));
                }
                break 'print;
            }
            summary.records += 1;
            summary.payload_bytes += payload_len(record) as u64;
        }
        // Tailing: show what arrived now, not when a buffer fills.
        if let Err(e) = out.flush() {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                summary.error = Some(error(-1, "UNKNOWN_SERVER_ERROR", format!("writing stdout: {e}")));
            }
            break;
        }
        if summary.records >= limit {
            break;
        }
    }
    let _ = out.flush();
    readers_done.cancel();
    drop(chunks);
    while tasks.join_next().await.is_some() {}
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use runnel_storage::Header;

    use super::*;

    fn record(key: Option<&[u8]>, value: Option<&[u8]>) -> Record {
        Record {
            offset: 42,
            timestamp_ms: 1_700_000_000_123,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: vec![
                Header::new("h", Bytes::from_static(b"\xff\x00")),
                Header { key: "n".into(), value: None },
            ],
        }
    }

    #[test]
    fn json_records_carry_utf8_as_strings_and_other_bytes_as_base64() {
        let v = record_json("demo", 2, &record(Some(b"k1"), Some(&[0xde, 0xad, 0xbe, 0xef])));
        assert_eq!(
            v,
            json!({
                "topic": "demo", "partition": 2, "offset": 42, "timestamp_ms": 1_700_000_000_123_i64,
                "key": "k1", "key_base64": false,
                "value": "3q2+7w==", "value_base64": true,
                "headers": [{"key": "h", "value": "/wA=", "value_base64": true},
                            {"key": "n", "value": null, "value_base64": false}],
            })
        );
        let v = record_json("demo", 0, &record(None, Some("héllo \"x\"\n".as_bytes())));
        assert_eq!(v["key"], Value::Null);
        assert_eq!(v["value"], "héllo \"x\"\n");
        // One line per record: the newline inside the value is escaped.
        let print = PrintOptions { output: Output::Json, print_key: false, key_separator: "\t".into() };
        let mut out = Vec::new();
        write_record(&mut out, "demo", 0, &record(None, Some(b"a\nb")), &print).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["value"], "a\nb");
    }

    #[test]
    fn text_records_are_values_with_optional_keys() {
        let mut print = PrintOptions { output: Output::Text, print_key: false, key_separator: "\t".into() };
        let mut out = Vec::new();
        write_record(&mut out, "t", 0, &record(Some(b"k"), Some(b"v")), &print).unwrap();
        write_record(&mut out, "t", 0, &record(Some(b"k"), None), &print).unwrap();
        print.print_key = true;
        write_record(&mut out, "t", 0, &record(Some(b"k"), Some(b"v")), &print).unwrap();
        write_record(&mut out, "t", 0, &record(None, Some(b"v")), &print).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "v\nnull\nk\tv\nnull\tv\n");
    }
}
