//! The broker's client API (`BrokerService`) on real `runnel node` processes: produce and
//! fetch round trips, long polls and tails, the errors every malformed request gets (each
//! leaving the log unchanged), leader redirects, and server reflection.
//!
//! Every wait is a poll or a call bounded by a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient;
use runnel_storage::{BatchBuilder, Compression, NewRecord};
use runnel_testkit::{Cluster, ClusterOpts};
use tonic::transport::Channel;

/// Bound on every call a test makes.
const CALL: Duration = Duration::from_secs(10);

fn start(n: usize) -> Cluster {
    Cluster::start(n, ClusterOpts::new(env!("CARGO_BIN_EXE_runnel")))
        .unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

async fn create_topic(cluster: &Cluster, name: &str, partitions: u32, configs: &[(&str, &str)]) -> Vec<u64> {
    let request = pb::CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 1,
        configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    cluster.create_topic(1, request, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.wait_for_partition_leaders(1, name, Duration::from_secs(20)).await.unwrap()
}

/// `runnel-error-name`, `runnel-error-code` and any other metadata value of a failed call.
fn meta(status: &tonic::Status, key: &str) -> String {
    status.metadata().get(key).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn assert_error(status: &tonic::Status, name: &str, code: i32) {
    assert_eq!(meta(status, "runnel-error-name"), name, "{status:?}");
    assert_eq!(meta(status, "runnel-error-code"), code.to_string(), "{status:?}");
}

fn record(key: Option<&str>, value: &str) -> pb::Record {
    pb::Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp_ms: None,
        offset: 0,
    }
}

fn produce_records(topic: &str, partition: u32, records: Vec<pb::Record>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Records(pb::RecordList { records })),
        producer: None,
    }
}

fn produce_batch(topic: &str, partition: u32, batch: Vec<u8>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Batch(Bytes::from(batch))),
        producer: None,
    }
}

fn batch_of(values: &[&[u8]]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(NewRecord::with_value(v.to_vec(), 1_700_000_000_000));
    }
    b.build().unwrap()
}

fn fetch(topic: &str, partition: u32, offset: i64, format: pb::RecordFormat) -> pb::FetchRequest {
    pb::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
        min_bytes: 0,
        format: format as i32,
    }
}

async fn values(
    client: &mut BrokerServiceClient<Channel>,
    topic: &str,
    partition: u32,
) -> Vec<(i64, String)> {
    let r = client.fetch(fetch(topic, partition, 0, pb::RecordFormat::Records)).await.unwrap().into_inner();
    r.records
        .iter()
        .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()))
        .collect()
}

async fn latest(client: &mut BrokerServiceClient<Channel>, topic: &str, partition: u32) -> i64 {
    let request = pb::ListOffsetsRequest {
        topic: topic.into(),
        partition,
        spec: pb::OffsetSpec::Latest as i32,
        timestamp_ms: 0,
    };
    client.list_offsets(request).await.unwrap().into_inner().offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_leave_the_log_unchanged() {
    let cluster = start(1);
    create_topic(&cluster, "t", 2, &[("max.message.bytes", "65536")]).await;
    let mut c = cluster.broker_client(1).await.unwrap();
    let first = vec![record(None, "a"), record(None, "b"), record(None, "c")];
    let ok = c.produce(produce_records("t", 0, first)).await.unwrap().into_inner();
    assert_eq!((ok.base_offset, ok.last_offset), (0, 2));
    let before = values(&mut c, "t", 0).await;

    // A bad CRC.
    let mut bad = batch_of(&[b"x"]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let e = c.produce(produce_batch("t", 0, bad)).await.unwrap_err();
    assert_error(&e, "CORRUPT_MESSAGE", 2);
    assert!(e.message().contains("CRC"), "{}", e.message());

    // Garbage that is not a batch at all, and a batch with trailing bytes.
    let e = c.produce(produce_batch("t", 0, b"not a record batch".to_vec())).await.unwrap_err();
    assert_error(&e, "CORRUPT_MESSAGE", 2);
    let mut trailing = batch_of(&[b"x"]);
    trailing.extend_from_slice(b"junk");
    let e = c.produce(produce_batch("t", 0, trailing)).await.unwrap_err();
    assert_error(&e, "CORRUPT_MESSAGE", 2);

    // An oversized batch, and an oversized record, against max.message.bytes=65536.
    let big = vec![7u8; 100_000];
    let e = c.produce(produce_batch("t", 0, batch_of(&[&big]))).await.unwrap_err();
    assert_error(&e, "MESSAGE_TOO_LARGE", 10);
    assert!(e.message().contains("max.message.bytes=65536"), "{}", e.message());
    let mut huge = record(None, "");
    huge.value = Some(Bytes::from(big.clone()));
    let e = c.produce(produce_records("t", 0, vec![huge])).await.unwrap_err();
    assert_error(&e, "MESSAGE_TOO_LARGE", 10);
    assert!(e.message().contains("record 0"), "{}", e.message());
    let many: Vec<_> = (0..20).map(|_| record(None, &"v".repeat(5_000))).collect();
    let e = c.produce(produce_records("t", 0, many)).await.unwrap_err();
    assert_error(&e, "MESSAGE_TOO_LARGE", 10);

    // An unknown topic, a partition out of range.
    let e = c.produce(produce_records("nope", 0, vec![record(None, "x")])).await.unwrap_err();
    assert_error(&e, "UNKNOWN_TOPIC_OR_PARTITION", 3);
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c.produce(produce_records("t", 7, vec![record(None, "x")])).await.unwrap_err();
    assert_error(&e, "UNKNOWN_TOPIC_OR_PARTITION", 3);
    assert!(e.message().contains("has 2 partitions"), "{}", e.message());
    let e = c.fetch(fetch("t", 7, 0, pb::RecordFormat::Records)).await.unwrap_err();
    assert_error(&e, "UNKNOWN_TOPIC_OR_PARTITION", 3);
    // The group coordinators' internal topic takes no produce from clients, whether or not
    // it exists yet.
    let e = c.produce(produce_records("__consumer_offsets", 0, vec![record(None, "x")])).await.unwrap_err();
    assert_error(&e, "INVALID_TOPIC_EXCEPTION", 17);

    // A negative offset, and one past the high watermark: the valid range comes back.
    for offset in [-1, 4, i64::MAX] {
        let e = c.fetch(fetch("t", 0, offset, pb::RecordFormat::Records)).await.unwrap_err();
        assert_error(&e, "OFFSET_OUT_OF_RANGE", 1);
        assert_eq!(meta(&e, "runnel-log-start-offset"), "0");
        assert_eq!(meta(&e, "runnel-high-watermark"), "3");
        assert!(e.message().contains("[0, 3]"), "{}", e.message());
    }

    // Requests missing their data, a bad acks value, a bad timestamp, a bad format.
    let mut empty = produce_records("t", 0, vec![]);
    let e = c.produce(empty.clone()).await.unwrap_err();
    assert_error(&e, "INVALID_REQUEST", 42);
    empty.data = None;
    let e = c.produce(empty).await.unwrap_err();
    assert_error(&e, "INVALID_REQUEST", 42);
    let mut acks = produce_records("t", 0, vec![record(None, "x")]);
    acks.acks = 99;
    assert_error(&c.produce(acks).await.unwrap_err(), "INVALID_REQUEST", 42);
    let mut old = record(None, "x");
    old.timestamp_ms = Some(-5);
    assert_error(&c.produce(produce_records("t", 0, vec![old])).await.unwrap_err(), "INVALID_RECORD", 87);
    // A create time ten years ahead (message.timestamp.after.max.ms is an hour by default):
    // it would hold back the segment's time retention for ten years.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut future = record(None, "x");
    future.timestamp_ms = Some(now + 10 * 365 * 24 * 3_600_000);
    let e = c.produce(produce_records("t", 0, vec![future])).await.unwrap_err();
    assert_error(&e, "INVALID_TIMESTAMP", 32);
    assert!(e.message().contains("out of range"), "{}", e.message());
    // One record claiming 2^31 offsets (its last_offset_delta, under a valid CRC).
    let mut wide = batch_of(&[b"x"]);
    wide[23..27].copy_from_slice(&i32::MAX.to_be_bytes());
    runnel_storage::batch::write_crc(&mut wide);
    let e = c.produce(produce_batch("t", 0, wide)).await.unwrap_err();
    assert_error(&e, "INVALID_RECORD", 87);
    assert!(e.message().contains("last_offset_delta"), "{}", e.message());
    let mut format = fetch("t", 0, 0, pb::RecordFormat::Records);
    format.format = 9;
    assert_error(&c.fetch(format).await.unwrap_err(), "INVALID_REQUEST", 42);

    // Garbage bytes on the gRPC port: the connection is dropped, the node goes on.
    let addr = cluster.node(1).grpc_addr();
    let mut raw = TcpStream::connect_timeout(&addr, CALL).unwrap();
    raw.set_read_timeout(Some(CALL)).unwrap();
    let garbage: Vec<u8> = (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = raw.write_all(&garbage);
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    drop(raw);

    // Nothing of the above reached the log.
    let mut c = cluster.broker_client(1).await.unwrap();
    assert_eq!(values(&mut c, "t", 0).await, before);
    assert_eq!(latest(&mut c, "t", 0).await, 3);
    let ok = c.produce(produce_records("t", 0, vec![record(None, "d")])).await.unwrap().into_inner();
    assert_eq!(ok.base_offset, 3, "the offsets go on where they were");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_keys_headers_and_timestamps() {
    let cluster = start(1);
    create_topic(&cluster, "events", 1, &[]).await;
    let mut c = cluster.broker_client(1).await.unwrap();

    let mut full = record(Some("k1"), "v1");
    full.timestamp_ms = Some(1_700_000_000_123);
    full.headers = vec![
        pb::RecordHeader { key: "h".into(), value: Some(Bytes::from_static(b"1")) },
        pb::RecordHeader { key: "null".into(), value: None },
    ];
    let mut tombstone = record(Some(""), "");
    tombstone.value = None;
    let sent = vec![full.clone(), record(None, "no key"), tombstone.clone()];
    let ok = c.produce(produce_records("events", 0, sent)).await.unwrap().into_inner();
    assert_eq!((ok.base_offset, ok.last_offset, ok.log_start_offset), (0, 2, 0));
    // A Kafka producer's batch, stored as it is (acks=1, then acks=0).
    let mut leader_only = produce_batch("events", 0, batch_of(&[b"raw1", b"raw2"]));
    leader_only.acks = pb::Acks::Leader as i32;
    let ok = c.produce(leader_only).await.unwrap().into_inner();
    assert_eq!((ok.base_offset, ok.last_offset), (3, 4));
    let mut none = produce_records("events", 0, vec![record(None, "fire and forget")]);
    none.acks = pb::Acks::None as i32;
    let ok = c.produce(none).await.unwrap().into_inner();
    assert_eq!((ok.base_offset, ok.last_offset), (-1, -1));

    // The HW reaches 6 once the acks=0 record is fsynced.
    let deadline = tokio::time::Instant::now() + CALL;
    while latest(&mut c, "events", 0).await < 6 {
        assert!(tokio::time::Instant::now() < deadline, "the HW never reached 6");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c.fetch(fetch("events", 0, 0, pb::RecordFormat::Records)).await.unwrap().into_inner();
    assert_eq!((r.high_watermark, r.log_start_offset, r.next_offset), (6, 0, 6));
    assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    let got = &r.records[0];
    assert_eq!((got.key.clone(), got.value.clone()), (full.key.clone(), full.value.clone()));
    assert_eq!(got.headers, full.headers);
    assert_eq!(got.timestamp_ms, Some(1_700_000_000_123));
    assert_eq!(r.records[1].key, None, "a null key stays null");
    assert_eq!((r.records[2].key.as_deref(), r.records[2].value.as_deref()), (Some(&b""[..]), None));
    assert!(r.records[1].timestamp_ms.unwrap() > 1_700_000_000_123, "unset means the broker's clock");

    // From the middle of a batch: records skip what came before; batches come whole.
    let r = c.fetch(fetch("events", 0, 4, pb::RecordFormat::Records)).await.unwrap().into_inner();
    assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [4, 5]);
    let r = c.fetch(fetch("events", 0, 4, pb::RecordFormat::Batches)).await.unwrap().into_inner();
    let (header, _) = runnel_storage::decode_batch(
        &r.batches[..runnel_storage::batch::check_batch(&r.batches, 1 << 20).unwrap().total_len()],
        &Default::default(),
    )
    .unwrap();
    assert_eq!(header.base_offset, 3, "the batch holding offset 4 starts at 3");
    assert_eq!(r.next_offset, 6);

    // ListOffsets: earliest, latest, by timestamp.
    let list = |spec: pb::OffsetSpec, ts: i64| pb::ListOffsetsRequest {
        topic: "events".into(),
        partition: 0,
        spec: spec as i32,
        timestamp_ms: ts,
    };
    assert_eq!(c.list_offsets(list(pb::OffsetSpec::Earliest, 0)).await.unwrap().into_inner().offset, 0);
    let by_time =
        c.list_offsets(list(pb::OffsetSpec::Timestamp, 1_700_000_000_124)).await.unwrap().into_inner();
    assert_eq!(by_time.offset, 1, "the first record at or after the time");
    let future = c.list_offsets(list(pb::OffsetSpec::Timestamp, i64::MAX)).await.unwrap().into_inner();
    assert_eq!(future.offset, -1);
    let e = c.list_offsets(list(pb::OffsetSpec::Timestamp, -2)).await.unwrap_err();
    assert_error(&e, "INVALID_REQUEST", 42);

    // A long poll at the HW waits for the next record.
    let mut poll = fetch("events", 0, 6, pb::RecordFormat::Records);
    poll.max_wait_ms = 20_000;
    let mut waiter_client = c.clone();
    let waiter = tokio::spawn(async move { waiter_client.fetch(poll).await });
    let mut tail = c
        .fetch_stream(pb::FetchStreamRequest {
            topic: "events".into(),
            partition: 0,
            offset: 5,
            max_bytes: 0,
            format: pb::RecordFormat::Records as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(CALL, tail.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [5]);
    c.produce(produce_records("events", 0, vec![record(None, "late")])).await.unwrap();
    let woke = tokio::time::timeout(CALL, waiter).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(woke.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [6]);
    let next = tokio::time::timeout(CALL, tail.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.records.iter().map(|r| r.value.as_deref()).collect::<Vec<_>>(), [Some(&b"late"[..])]);

    // A produce stream: in-order answers, an error in the middle does not end it.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for (id, topic) in [(1, "events"), (2, "missing"), (3, "events")] {
        let request = produce_records(topic, 0, vec![record(None, &format!("s{id}"))]);
        tx.send(pb::ProduceStreamRequest { id, request: Some(request) }).await.unwrap();
    }
    drop(tx);
    let mut answers =
        c.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(answer) = tokio::time::timeout(CALL, answers.message()).await.unwrap().unwrap() {
        got.push(answer);
    }
    use pb::produce_stream_response::Result as R;
    assert_eq!(got.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(matches!(&got[0].result, Some(R::Response(r)) if r.base_offset == 7));
    assert!(
        matches!(&got[1].result, Some(R::Error(e)) if e.code == 3 && e.name == "UNKNOWN_TOPIC_OR_PARTITION")
    );
    assert!(matches!(&got[2].result, Some(R::Response(r)) if r.base_offset == 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_does_not_lead_names_the_leader() {
    let cluster = start(3);
    let leaders = create_topic(&cluster, "spread", 3, &[]).await;
    let metadata = cluster
        .broker_client(2)
        .await
        .unwrap()
        .metadata(pb::MetadataRequest { topics: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.brokers.len(), 3);
    for (partition, &leader) in leaders.iter().enumerate() {
        let other = if leader == 1 { 2 } else { 1 };
        let mut c = cluster.broker_client(other).await.unwrap();
        let e = c
            .produce(produce_records("spread", partition as u32, vec![record(None, "x")]))
            .await
            .unwrap_err();
        assert_error(&e, "NOT_LEADER_OR_FOLLOWER", 6);
        assert_eq!(meta(&e, "runnel-leader"), cluster.node(leader).grpc_addr().to_string());
        assert_eq!(meta(&e, "runnel-leader-id"), leader.to_string());
        let e = c.fetch(fetch("spread", partition as u32, 0, pb::RecordFormat::Records)).await.unwrap_err();
        assert_error(&e, "NOT_LEADER_OR_FOLLOWER", 6);
        let mut at_leader = cluster.broker_client(leader).await.unwrap();
        let ok =
            at_leader.produce(produce_records("spread", partition as u32, vec![record(None, "x")])).await;
        assert_eq!(ok.unwrap().into_inner().base_offset, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_grpc_tools_can_list_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let cluster = start(1);
    let channel = Channel::from_shared(format!("http://{}", cluster.node(1).grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = tokio::time::timeout(CALL, answers.message()).await.unwrap().unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for wanted in ["runnel.v1.BrokerService", "runnel.v1.ControllerService", "runnel.v1.RaftService"] {
        assert!(names.contains(&wanted), "{names:?}");
    }
}
