//! `runnel consume`: reads partitions with `FetchStream` (batches as stored, decoded here)
//! and prints their records.
//!
//! Each partition has a [`PartitionReader`] in its own task. It opens a `FetchStream` at the
//! partition's leader from the next offset it wants, and when the stream fails (the broker
//! stopped leading, or went away) it finds the leader again and resumes from the offset after
//! the last record it returned. Chunks of records reach one printing loop through a bounded
//! channel, so records of one partition are printed in offset order (partitions interleave).
//!
//! Without `--follow` each partition is read up to the high watermark it had when the
//! command started; with it, until `--max-messages` or Ctrl-C.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::Record;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::router::{Failure, Next, Retry, Router};
use super::{code, decode_batches, error, payload_len};
use crate::client::{ClientError, Output};

/// Roughly how many bytes one FetchStream response carries.
pub(crate) const FETCH_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Deadline of opening a stream or of a ListOffsets call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
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

/// The partition's earliest or latest offset, asked of its leader.
pub(crate) async fn list_offset(
    router: &Router,
    topic: &str,
    partition: u32,
    spec: pb::OffsetSpec,
) -> Result<i64, ClientError> {
    let request =
        pb::ListOffsetsRequest { topic: topic.to_owned(), partition, spec: spec as i32, timestamp_ms: 0 };
    let answer = router
        .call(topic, partition, CALL_TIMEOUT, |mut client| {
            let request = request.clone();
            async move { client.list_offsets(request).await.map(tonic::Response::into_inner) }
        })
        .await?;
    Ok(answer.offset)
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

/// Records read from one partition in one go.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) partition: u32,
    pub(crate) records: Vec<Record>,
}

/// Reads one partition from an offset, across leader changes.
#[derive(Debug)]
pub(crate) struct PartitionReader {
    router: Arc<Router>,
    topic: String,
    partition: u32,
    /// The next offset wanted.
    next: i64,
    /// Stop before this offset (`None`: follow).
    end: Option<i64>,
    max_bytes: u32,
    stream: Option<(String, tonic::Streaming<pb::FetchResponse>)>,
    retry: Retry,
}

impl PartitionReader {
    pub(crate) fn new(
        router: Arc<Router>,
        topic: String,
        partition: u32,
        from: i64,
        end: Option<i64>,
    ) -> Self {
        PartitionReader {
            router,
            topic,
            partition,
            next: from,
            end,
            max_bytes: FETCH_BYTES_MAX,
            stream: None,
            retry: Retry::new(),
        }
    }

    /// The next records, or `None` once the end offset is reached. Retries across leader
    /// changes up to the router's deadlines (which start over whenever records arrive).
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Chunk>, ClientError> {
        loop {
            if self.end.is_some_and(|end| self.next >= end) {
                // Dropping the stream cancels it at the broker.
                self.stream = None;
                return Ok(None);
            }
            let failure = match self.poll().await {
                Ok(Some(chunk)) => {
                    self.retry.reset();
                    if chunk.records.is_empty() {
                        continue;
                    }
                    return Ok(Some(chunk));
                }
                Ok(None) => Failure {
                    error: error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", "the fetch stream ended"),
                    next: Next::Refresh,
                },
                Err(failure) => failure,
            };
            self.stream = None;
            self.router.note_failure(&self.topic, self.partition, &failure);
            let pause = self.retry.after(&failure).map_err(|mut e| {
                e.message = format!(
                    "partition {}-{} at offset {}: {}",
                    self.topic, self.partition, self.next, e.message
                );
                e
            })?;
            tracing::debug!(partition = self.partition, error = %failure.error, ?pause, "resuming the fetch stream");
            tokio::time::sleep(pause).await;
        }
    }

    /// One response of the stream (opening it first if needed); `Ok(None)` when it ended.
    async fn poll(&mut self) -> Result<Option<Chunk>, Failure> {
        if self.stream.is_none() {
            let addr = self.router.leader(&self.topic, self.partition).await?;
            let mut client =
                self.router.client(&addr).map_err(|error| Failure { error, next: Next::Fail })?;
            let request = pb::FetchStreamRequest {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: self.next,
                max_bytes: self.max_bytes,
                format: pb::RecordFormat::Batches as i32,
            };
            let stream = match tokio::time::timeout(CALL_TIMEOUT, client.fetch_stream(request)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return Err(Failure::from_status(status, &addr)),
                Err(_) => {
                    return Err(Failure {
                        error: error(
                            code::REQUEST_TIMED_OUT,
                            "REQUEST_TIMED_OUT",
                            format!("broker {addr} did not open the fetch stream"),
                        ),
                        next: Next::Refresh,
                    });
                }
            };
            self.stream = Some((addr, stream));
        }
        let Some((addr, stream)) = self.stream.as_mut() else { return Ok(None) };
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(None),
            Err(status) => return Err(Failure::from_status(status, addr)),
        };
        let decoded = decode_batches(&response.batches, self.next, self.end)
            .map_err(|error| Failure { error, next: Next::Fail })?;
        if let Some(next) = decoded.next_offset {
            if next != response.next_offset {
                // The broker continues from its own next offset: if it skipped a batch we
                // could not decode whole, reopen from ours.
                tracing::warn!(
                    partition = self.partition,
                    decoded_next = next,
                    broker_next = response.next_offset,
                    partial_bytes = decoded.partial_bytes,
                    "fetch answer's next_offset disagrees with its batches; reopening the stream"
                );
                self.stream = None;
            }
            self.next = self.next.max(next);
        } else if decoded.partial_bytes > 0 {
            // Nothing whole arrived, so this stream cannot get past the batch: a failure (with
            // the retry deadline), not progress.
            return Err(Failure {
                error: error(
                    code::CORRUPT_MESSAGE,
                    "CORRUPT_MESSAGE",
                    format!(
                        "a fetch answer at offset {} held only {} bytes of a batch",
                        self.next, decoded.partial_bytes
                    ),
                ),
                next: Next::Refresh,
            });
        }
        Ok(Some(Chunk { partition: self.partition, records: decoded.records }))
    }
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
