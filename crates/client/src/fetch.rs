//! Reading one partition across leader changes: [`PartitionReader`] over `FetchStream`
//! (batches as stored, decoded and CRC-checked here), and [`list_offset`].
//!
//! A reader opens a `FetchStream` at the partition's leader from the next offset it wants,
//! and when the stream fails (the broker stopped leading, or went away) it finds the leader
//! again and resumes from the offset after the last record it returned, so records are
//! neither lost nor repeated across leader changes.

use std::sync::Arc;
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::Record;

use crate::error::{ClientError, code, error};
use crate::records::decode_batches;
use crate::router::{Failure, Next, Retry, Router};

/// Roughly how many bytes one FetchStream response carries, by default.
pub const FETCH_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Deadline of opening a stream or of a ListOffsets call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition's earliest or latest offset, asked of its leader.
pub async fn list_offset(
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

/// Records read from one partition in one go.
#[derive(Debug)]
pub struct Chunk {
    /// The partition read.
    pub partition: u32,
    /// Its records, in offset order.
    pub records: Vec<Record>,
}

/// Reads one partition from an offset, across leader changes.
#[derive(Debug)]
pub struct PartitionReader {
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
    /// A reader of `topic`/`partition` from offset `from`, stopping before `end` (`None`:
    /// following the partition as it grows).
    pub fn new(router: Arc<Router>, topic: String, partition: u32, from: i64, end: Option<i64>) -> Self {
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

    /// Asks for about `max_bytes` per stream response instead of [`FETCH_BYTES_MAX`].
    pub fn with_max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// The next offset this reader will return.
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// The next records, or `None` once the end offset is reached. Retries across leader
    /// changes up to the router's deadlines (which start over whenever records arrive).
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, ClientError> {
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
