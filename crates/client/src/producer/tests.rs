//! The producer against an in-process fake broker that dedupes idempotent batches the way the
//! real one does (the last five batches per producer and partition, OUT_OF_ORDER_SEQUENCE_NUMBER
//! for a gap), with scripted faults per request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use runnel_storage::decode_batch;

use super::*;

/// What the fake does with one produce request (by its order of arrival, over all streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Refuse it with this Kafka code, appending nothing.
    Refuse(i32),
    /// Append it, then answer this code instead of the offsets (an answer lost after the
    /// append, as with a timed out acks=all wait).
    AppendThenRefuse(i32),
    /// Refuse it with NOT_LEADER_OR_FOLLOWER naming another address of this same broker
    /// (`localhost` instead of `127.0.0.1`), which the producer follows at once.
    Redirect,
}

#[derive(Debug, Default)]
struct ProducerState {
    /// The sequence the next batch must start at.
    next: i32,
    /// Recent batches: base sequence → (base offset, last offset).
    recent: VecDeque<(i32, i64, i64)>,
}

#[derive(Debug, Default)]
struct Log {
    /// Per partition: values in offset order.
    partitions: BTreeMap<u32, Vec<String>>,
    /// Per (producer id, partition).
    producers: BTreeMap<(i64, u32), ProducerState>,
    /// Every batch's (partition, producer id, base sequence, records) in arrival order.
    seen: Vec<(u32, i64, i32, usize)>,
    requests: usize,
    faults: BTreeMap<usize, Fault>,
    next_producer_id: i64,
    /// Answers are held back until this many requests have arrived on the stream (so that a
    /// window of batches is in flight), then flow freely.
    hold_until: usize,
}

#[derive(Debug)]
struct Fake {
    log: Mutex<Log>,
    addr: Mutex<String>,
    /// Closed gate: produce answers wait for it (backpressure tests).
    gate: tokio::sync::Semaphore,
    gated: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

fn kafka_error(code: i32) -> pb::Error {
    let name = match code {
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        _ => "OTHER",
    };
    pb::Error {
        code,
        name: name.into(),
        message: format!("fake says {name}"),
        leader: String::new(),
        leader_id: 0,
    }
}

impl Fake {
    /// Handles one produce request as a broker with idempotence would.
    fn produce(&self, request: &pb::ProduceRequest) -> Result<pb::ProduceResponse, pb::Error> {
        let mut log = lock(&self.log);
        let n = log.requests;
        log.requests += 1;
        let fault = log.faults.get(&n).copied();
        if let Some(Fault::Refuse(code)) = fault {
            return Err(kafka_error(code));
        }
        if let Some(Fault::Redirect) = fault {
            let addr = lock(&self.addr).replace("127.0.0.1", "localhost");
            return Err(pb::Error { leader: addr, ..kafka_error(6) });
        }
        let Some(pb::produce_request::Data::Batch(bytes)) = &request.data else {
            return Err(kafka_error(42));
        };
        let (header, records) = decode_batch(bytes, &Default::default()).map_err(|_| kafka_error(2))?;
        let p = request.partition;
        log.seen.push((p, header.producer_id, header.base_sequence, records.len()));
        let end = log.partitions.get(&p).map_or(0, Vec::len) as i64;
        if header.producer_id >= 0 {
            let state = log.producers.entry((header.producer_id, p)).or_default();
            if let Some(&(_, base, last)) = state.recent.iter().find(|(s, _, _)| *s == header.base_sequence) {
                return Ok(pb::ProduceResponse {
                    base_offset: base,
                    last_offset: last,
                    log_start_offset: 0,
                    duplicate: true,
                });
            }
            if header.base_sequence != state.next {
                return Err(kafka_error(45));
            }
            state.next = next_sequence(header.base_sequence, records.len());
            state.recent.push_back((header.base_sequence, end, end + records.len() as i64 - 1));
            if state.recent.len() > 5 {
                state.recent.pop_front();
            }
        }
        let values = records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap());
        log.partitions.entry(p).or_default().extend(values);
        if let Some(Fault::AppendThenRefuse(code)) = fault {
            return Err(kafka_error(code));
        }
        Ok(pb::ProduceResponse {
            base_offset: end,
            last_offset: end + records.len() as i64 - 1,
            log_start_offset: 0,
            duplicate: false,
        })
    }

    fn values(&self, partition: u32) -> Vec<String> {
        lock(&self.log).partitions.get(&partition).cloned().unwrap_or_default()
    }
}

struct Service(Arc<Fake>);

type Answers = ReceiverStream<Result<pb::ProduceStreamResponse, tonic::Status>>;

#[tonic::async_trait]
impl pb::broker_service_server::BrokerService for Service {
    type ProduceStreamStream = Answers;
    type FetchStreamStream = tokio_stream::Empty<Result<pb::FetchResponse, tonic::Status>>;

    async fn produce(
        &self,
        _: tonic::Request<pb::ProduceRequest>,
    ) -> Result<tonic::Response<pb::ProduceResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the producer uses ProduceStream"))
    }

    async fn produce_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ProduceStreamRequest>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let mut requests = request.into_inner();
        let fake = self.0.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // Only the first stream holds its answers back.
            let hold = std::mem::take(&mut lock(&fake.log).hold_until);
            let mut held = Vec::new();
            let mut arrived = 0;
            while let Ok(Some(r)) = requests.message().await {
                arrived += 1;
                let result = match r.request.as_ref().map(|p| fake.produce(p)) {
                    Some(Ok(response)) => pb::produce_stream_response::Result::Response(response),
                    Some(Err(e)) => pb::produce_stream_response::Result::Error(e),
                    None => pb::produce_stream_response::Result::Error(kafka_error(42)),
                };
                held.push(pb::ProduceStreamResponse { id: r.id, result: Some(result) });
                if arrived < hold {
                    continue;
                }
                if fake.gated.load(Ordering::Acquire) {
                    // Wait for the test to open the gate.
                    let _ = fake.gate.acquire().await;
                }
                for answer in held.drain(..) {
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch(
        &self,
        _: tonic::Request<pb::FetchRequest>,
    ) -> Result<tonic::Response<pb::FetchResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn fetch_stream(
        &self,
        _: tonic::Request<pb::FetchStreamRequest>,
    ) -> Result<tonic::Response<Self::FetchStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn list_offsets(
        &self,
        _: tonic::Request<pb::ListOffsetsRequest>,
    ) -> Result<tonic::Response<pb::ListOffsetsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn init_producer_id(
        &self,
        _: tonic::Request<pb::InitProducerIdRequest>,
    ) -> Result<tonic::Response<pb::InitProducerIdResponse>, tonic::Status> {
        let mut log = lock(&self.0.log);
        let id = 1000 + log.next_producer_id;
        log.next_producer_id += 1;
        Ok(tonic::Response::new(pb::InitProducerIdResponse { producer_id: id, producer_epoch: 0 }))
    }

    async fn metadata(
        &self,
        _: tonic::Request<pb::MetadataRequest>,
    ) -> Result<tonic::Response<pb::MetadataResponse>, tonic::Status> {
        let addr = lock(&self.0.addr).clone();
        Ok(tonic::Response::new(pb::MetadataResponse {
            brokers: vec![pb::BrokerMetadata { broker_id: 1, grpc: addr, ..Default::default() }],
            topics: vec![pb::TopicMetadata {
                name: "t".into(),
                topic_id: vec![1; 16],
                partitions: (0..3)
                    .map(|p| pb::PartitionMetadata { partition: p, leader: 1, ..Default::default() })
                    .collect(),
                error: None,
            }],
            metadata_version: 1,
            answered_by: 1,
        }))
    }
}

/// A fake broker on a loopback port, leading the three partitions of topic `t`.
async fn fake(faults: &[(usize, Fault)], hold_until: usize) -> Arc<Fake> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = Arc::new(Fake {
        log: Mutex::default(),
        addr: Mutex::default(),
        gate: tokio::sync::Semaphore::new(0),
        gated: AtomicBool::new(false),
    });
    *lock(&fake.addr) = listener.local_addr().unwrap().to_string();
    {
        let mut log = lock(&fake.log);
        log.faults = faults.iter().copied().collect();
        log.hold_until = hold_until;
    }
    let service = pb::broker_service_server::BrokerServiceServer::new(Service(fake.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    fake
}

fn config(fake: &Fake) -> ProducerConfig {
    let mut c = ProducerConfig::new(vec![lock(&fake.addr).clone()]);
    c.linger = Duration::from_millis(1);
    c
}

fn record(partition: u32, i: usize) -> ProducerRecord {
    ProducerRecord::new("t", format!("v{i}")).partition(partition)
}

/// Sends `n` records to `partition` one after another and answers their futures.
async fn send_all(producer: &Producer, partition: u32, range: std::ops::Range<usize>) -> Vec<DeliveryFuture> {
    let mut futures = Vec::new();
    for i in range {
        futures.push(producer.send(record(partition, i)).await);
    }
    futures
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("v{i}")).collect()
}

#[test]
fn sequences_wrap_from_i32_max_to_zero() {
    assert_eq!(next_sequence(0, 1), 1);
    assert_eq!(next_sequence(10, 5), 15);
    assert_eq!(next_sequence(i32::MAX, 1), 0);
    assert_eq!(next_sequence(i32::MAX - 2, 5), 2);
    assert_eq!(next_sequence(i32::MAX, 0), i32::MAX);
}

#[test]
fn idempotence_needs_acks_all_and_a_small_window() {
    let mut c = ProducerConfig::new(vec!["h:1".into()]);
    assert!(c.validate().is_ok());
    c.acks = Acks::Leader;
    assert!(c.validate().unwrap_err().message.contains("acks=all"));
    c.idempotence = false;
    assert!(c.validate().is_ok());
    c.idempotence = true;
    c.acks = Acks::All;
    c.max_in_flight = 6;
    assert!(c.validate().is_err());
}

#[tokio::test]
async fn records_are_acknowledged_in_send_order_with_their_offsets() {
    let fake = fake(&[], 0).await;
    let producer = Producer::new(config(&fake)).await.unwrap();
    let futures = send_all(&producer, 1, 0..50).await;
    let (tx, mut calls) = mpsc::unbounded_channel();
    for i in 50..60 {
        let tx = tx.clone();
        producer.send_with_callback(record(1, i), move |d| tx.send((i, d)).unwrap()).await;
    }
    for (i, f) in futures.into_iter().enumerate() {
        let m = f.await.unwrap();
        assert_eq!((m.topic.as_str(), m.partition, m.offset), ("t", 1, i as i64));
    }
    for i in 50..60 {
        let (j, d) = calls.recv().await.unwrap();
        assert_eq!((j, d.unwrap().offset), (i, i as i64), "callbacks come in send order");
    }
    assert_eq!(fake.values(1), expected(0..60));
    let stats = producer.stats();
    assert_eq!((stats.retries, stats.duplicates, stats.failed_batches), (0, 0, 0));
}

#[tokio::test]
async fn batches_carry_the_producer_id_and_consecutive_sequences_per_partition() {
    let fake = fake(&[], 0).await;
    let mut c = config(&fake);
    // Two or three records per batch.
    c.batch_size = 140;
    let producer = Producer::new(c).await.unwrap();
    let ids = producer.ids().unwrap();
    let mut futures = send_all(&producer, 0, 0..20).await;
    futures.extend(send_all(&producer, 2, 0..7).await);
    for f in futures {
        f.await.unwrap();
    }
    let seen = lock(&fake.log).seen.clone();
    for partition in [0, 2] {
        let mut next = 0;
        let batches: Vec<_> = seen.iter().filter(|s| s.0 == partition).collect();
        assert!(batches.len() > 2, "{seen:?}");
        for &&(_, pid, base, records) in &batches {
            assert_eq!((pid, base), (ids.id, next), "{seen:?}");
            next = next_sequence(base, records);
        }
    }
}

#[tokio::test]
async fn a_lost_answer_is_retried_and_the_duplicate_answer_counts_with_the_original_offsets() {
    // The second request is appended but its answer lost.
    let fake = fake(&[(1, Fault::AppendThenRefuse(7))], 0).await;
    let producer = Producer::new(config(&fake)).await.unwrap();
    let first = send_all(&producer, 0, 0..1).await;
    first.into_iter().next().unwrap().await.unwrap();
    let second = send_all(&producer, 0, 1..2).await;
    let m = second.into_iter().next().unwrap().await.unwrap();
    assert_eq!(m.offset, 1, "the original offset");
    let third = send_all(&producer, 0, 2..3).await;
    assert_eq!(third.into_iter().next().unwrap().await.unwrap().offset, 2);
    assert_eq!(fake.values(0), expected(0..3), "appended once");
    let stats = producer.stats();
    assert_eq!((stats.retries, stats.duplicates), (1, 1));
}

#[tokio::test]
async fn without_idempotence_a_lost_answer_appends_twice() {
    let fake = fake(&[(1, Fault::AppendThenRefuse(7))], 0).await;
    let mut c = config(&fake);
    c.idempotence = false;
    let producer = Producer::new(c).await.unwrap();
    for i in 0..2 {
        let f = send_all(&producer, 0, i..i + 1).await;
        f.into_iter().next().unwrap().await.unwrap();
    }
    assert_eq!(fake.values(0), ["v0", "v1", "v1"]);
    assert_eq!(lock(&fake.log).seen[0].1, -1, "no producer id");
}

#[tokio::test]
async fn a_failed_batch_is_resent_with_every_later_in_flight_batch_in_order() {
    // One record per batch, five in flight (answers held until five arrived). The second
    // batch is refused without being appended; the three after it then find a gap
    // (OUT_OF_ORDER_SEQUENCE_NUMBER). All four are sent again, in order.
    let fake = fake(&[(1, Fault::Refuse(6))], 5).await;
    let mut c = config(&fake);
    c.batch_size = 1;
    let producer = Producer::new(c).await.unwrap();
    let futures = send_all(&producer, 0, 0..12).await;
    for (i, f) in futures.into_iter().enumerate() {
        assert_eq!(f.await.unwrap().offset, i as i64);
    }
    assert_eq!(fake.values(0), expected(0..12));
    let seen = lock(&fake.log).seen.clone();
    let bases: Vec<i32> = seen.iter().map(|s| s.2).collect();
    // 0 ok; 1 refused (not seen); 2, 3, 4 out of order; then 1, 2, 3, 4 again and the rest.
    assert_eq!(&bases[..8], &[0, 2, 3, 4, 1, 2, 3, 4], "{bases:?}");
    assert!(producer.stats().retries >= 4, "{:?}", producer.stats());
}

#[tokio::test]
async fn a_redirect_is_followed_at_once() {
    let fake = fake(&[(0, Fault::Redirect)], 0).await;
    let producer = Producer::new(config(&fake)).await.unwrap();
    let futures = send_all(&producer, 0, 0..3).await;
    // One retry, to the address the hint named, with no backoff.
    for (i, f) in futures.into_iter().enumerate() {
        let m = tokio::time::timeout(Duration::from_secs(10), f).await.expect("delivered").unwrap();
        assert_eq!(m.offset, i as i64);
    }
    assert_eq!(fake.values(0), expected(0..3));
    assert_eq!(producer.stats().retries, 1);
}

#[tokio::test]
async fn a_batch_failing_for_good_fails_the_later_ones_and_the_partition_starts_over() {
    // The second batch is refused for good (MESSAGE_TOO_LARGE) while five are in flight.
    let fake = fake(&[(1, Fault::Refuse(10))], 5).await;
    let mut c = config(&fake);
    c.batch_size = 1;
    let producer = Producer::new(c).await.unwrap();
    let first_id = producer.ids().unwrap().id;
    let futures = send_all(&producer, 0, 0..5).await;
    let mut results: Vec<Delivery> = Vec::new();
    for f in futures {
        results.push(f.await);
    }
    assert_eq!(results[0].as_ref().unwrap().offset, 0);
    assert_eq!(results[1].as_ref().unwrap_err().error.code, 10);
    assert_eq!(results[1].as_ref().unwrap_err().partition, Some(0));
    for r in &results[2..] {
        let e = &r.as_ref().unwrap_err().error;
        assert_eq!(e.code, 10);
        assert!(e.message.contains("an earlier batch of partition 0 failed"), "{e}");
    }
    // Records sent afterwards go under a fresh producer id from sequence 0, after v0.
    let later = send_all(&producer, 0, 5..7).await;
    for (i, f) in later.into_iter().enumerate() {
        assert_eq!(f.await.unwrap().offset, 1 + i as i64);
    }
    assert_eq!(fake.values(0), ["v0", "v5", "v6"]);
    let seen = lock(&fake.log).seen.clone();
    let tail: Vec<(i64, i32)> = seen.iter().rev().take(2).rev().map(|s| (s.1, s.2)).collect();
    assert_ne!(tail[0].0, first_id);
    assert_eq!(tail, [(tail[0].0, 0), (tail[0].0, 1)]);
    assert_eq!(producer.stats().id_resets, 1);
}

#[tokio::test]
async fn send_waits_for_room_in_the_buffer() {
    let fake = fake(&[], 0).await;
    fake.gated.store(true, Ordering::Release);
    let mut c = config(&fake);
    let one = record_size_max(&NewRecord::with_value(Bytes::from_static(b"v0"), 0));
    c.buffer_memory = 3 * one;
    let producer = Producer::new(c).await.unwrap();
    // Three records fill the buffer; their answers wait at the gate.
    let held = send_all(&producer, 0, 0..3).await;
    let fourth = producer.send(record(0, 3));
    tokio::pin!(fourth);
    // The topic's metadata is cached, so nothing but the buffer can hold the send up: give it
    // plenty of polls (no clock involved) and it must still be waiting.
    tokio::select! {
        biased;
        _ = &mut fourth => panic!("a full buffer makes send wait"),
        () = async {
            for _ in 0..1000 {
                tokio::task::yield_now().await;
            }
        } => {}
    }
    fake.gate.add_permits(1000);
    let fourth = fourth.await;
    for f in held {
        f.await.unwrap();
    }
    assert_eq!(fourth.await.unwrap().offset, 3);
}

#[tokio::test]
async fn flush_delivers_without_waiting_for_linger_and_close_refuses_more() {
    let fake = fake(&[], 0).await;
    let mut c = config(&fake);
    c.linger = Duration::from_secs(3600);
    let producer = Producer::new(c).await.unwrap();
    let futures = send_all(&producer, 2, 0..3).await;
    producer.flush().await;
    assert_eq!(fake.values(2), expected(0..3));
    for f in futures {
        f.await.unwrap();
    }
    producer.close().await;
    let e = producer.send(record(2, 3)).await.await.unwrap_err();
    assert_eq!(e.error.name, "PRODUCER_CLOSED");
    let e = producer.send(ProducerRecord::new("t", "x").partition(9)).await;
    assert!(e.await.is_err());
}

#[tokio::test]
async fn keyed_records_land_where_kafka_would_put_them() {
    let fake = fake(&[], 0).await;
    let producer = Producer::new(config(&fake)).await.unwrap();
    for key in ["order-1", "order-2", "order-3", "order-1"] {
        let m = producer.send(ProducerRecord::new("t", "x").key(key)).await.await.unwrap();
        assert_eq!(m.partition, crate::partitioner::partition_for_key(key.as_bytes(), 3));
    }
}
