//! Hostile requests on a real node cost bounded memory and get clear errors (issue 14's
//! "validation at the edge" and part of "bounded memory"):
//!
//! - a replica fetch naming one partition 100,000 times, and one naming more partitions than
//!   any follower could follow, are refused with INVALID_ARGUMENT, without a read each;
//! - compression bombs (64 KiB of gzip that inflates to 64 MiB), sent concurrently, are each
//!   refused with MESSAGE_TOO_LARGE before they are inflated past the leader's cap;
//! - a batch whose `last_offset_delta` claims 2^31 offsets for one record is refused with
//!   INVALID_RECORD, and a far-future create time with INVALID_TIMESTAMP;
//!
//! and afterwards the log holds exactly the good records, the node still serves, its peak
//! resident memory (`VmHWM` in `/proc/<pid>/status`, the high-water mark over its whole
//! life, so nothing between two samples is missed) stayed under 1 GiB, and the refusals'
//! log lines carry protocol, API, client, topic, partition and error code. A second test
//! checks the Kafka listener's connection cap and idle timeout, a third 10,000 idle gRPC
//! streams and the gRPC listener's connection cap.
//!
//! Run with `cargo test -p runnel --test hostile_inputs`.

use std::time::Duration;

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::replication_service_client::ReplicationServiceClient;
use runnel_storage::{BatchBuilder, Compression, NewRecord};
use runnel_testkit::{Cluster, ClusterOpts};

const CALL: Duration = Duration::from_secs(30);
/// The bound the issue sets on a node's memory under these inputs.
const RSS_MAX_BYTES: u64 = 1 << 30;
const BOMBS: usize = 32;

fn produce_batch(batch: Vec<u8>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Batch(Bytes::from(batch))),
        producer: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn error_name(status: &tonic::Status) -> String {
    runnel_testkit::error_name(status)
}

/// One node started with `opts`, with topic `t` (one partition, one replica) led.
async fn one_node_with_topic(opts: ClusterOpts) -> Cluster {
    let cluster = Cluster::start(1, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let request = pb::CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        replication_factor: 1,
        configs: Default::default(),
    };
    cluster.create_topic(1, request, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.wait_for_partition_leaders(1, "t", Duration::from_secs(20)).await.unwrap();
    cluster
}

/// The node's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_within_bounded_memory() {
    let cluster = one_node_with_topic(ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"))).await;
    let pid = cluster.node(1).pid().expect("node 1 runs");
    println!("node 1 peak RSS at the start: {:.1} MiB", peak_rss(pid) as f64 / (1 << 20) as f64);
    let mut client = cluster.broker_client(1).await.unwrap();

    // Some real data to read, so a repeated partition would cost a read each.
    let mut good = BatchBuilder::new(Compression::None);
    for i in 0..64 {
        good.push(NewRecord::with_value(vec![b'x'; 8 * 1024], now_ms() + i));
    }
    let answer = client.produce(produce_batch(good.build().unwrap())).await.unwrap().into_inner();
    assert_eq!((answer.base_offset, answer.last_offset), (0, 63));

    // A replica fetch naming the partition 100,000 times, then one naming 30,000 distinct
    // partitions: both refused whole, on a stream that stays a stream (the node lives on).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.node(1).grpc_addr()))
        .unwrap()
        .connect_timeout(CALL)
        .timeout(CALL)
        .connect()
        .await
        .unwrap();
    let mut replication = ReplicationServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let part = |partition: u32| pb::ReplicaFetchPartition {
        topic: "t".into(),
        topic_id: vec![0; 16],
        partition,
        fetch_offset: 0,
        last_fetched_epoch: -1,
        current_leader_epoch: 0,
        durable_end: 0,
    };
    for (what, partitions) in [
        ("one partition 100,000 times", (0..100_000).map(|_| part(0)).collect::<Vec<_>>()),
        ("30,000 partitions", (0..30_000).map(part).collect()),
    ] {
        let request = pb::ReplicaFetchRequest {
            follower_id: 2,
            follower_epoch: 1,
            partitions,
            max_wait_ms: 0,
            max_bytes: 64 << 20,
        };
        let outcome = match replication.replica_fetch(tokio_stream::iter([request])).await {
            Ok(response) => response.into_inner().message().await,
            Err(status) => Err(status),
        };
        match outcome {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
                println!("replica fetch of {what}: refused: {}", status.message());
            }
            Ok(answer) => {
                panic!("a replica fetch of {what} was answered: {:?}", answer.map(|a| a.partitions.len()))
            }
        }
    }

    println!("node 1 peak RSS after the replica fetches: {:.1} MiB", peak_rss(pid) as f64 / (1 << 20) as f64);

    // Compression bombs, concurrently: 64 MiB of zeros in one record, gzip'd.
    let mut bomb = BatchBuilder::new(Compression::Gzip);
    bomb.push(NewRecord::with_value(vec![0u8; 64 << 20], now_ms()));
    let bomb = bomb.build().unwrap();
    assert!(bomb.len() < 128 * 1024, "the bomb is {} bytes", bomb.len());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..BOMBS {
        let mut client = client.clone();
        let bomb = bomb.clone();
        calls.spawn(async move { client.produce(produce_batch(bomb)).await });
    }
    while let Some(outcome) = calls.join_next().await {
        let status = outcome.expect("the call's task").expect_err("a compression bomb was appended");
        assert_eq!(error_name(&status), "MESSAGE_TOO_LARGE", "{status:?}");
        assert!(status.message().contains("decompressed"), "{}", status.message());
    }

    println!("node 1 peak RSS after the bombs: {:.1} MiB", peak_rss(pid) as f64 / (1 << 20) as f64);

    // One record claiming 2^31 offsets, and one dated ten years ahead.
    let mut one = BatchBuilder::new(Compression::None);
    one.push(NewRecord::with_value(b"v".to_vec(), now_ms()));
    let mut wide = one.build().unwrap();
    wide[23..27].copy_from_slice(&i32::MAX.to_be_bytes());
    runnel_storage::batch::write_crc(&mut wide);
    let status = client.produce(produce_batch(wide)).await.expect_err("2^31 offsets were appended");
    assert_eq!(error_name(&status), "INVALID_RECORD", "{status:?}");
    let mut future = BatchBuilder::new(Compression::None);
    future.push(NewRecord::with_value(b"v".to_vec(), now_ms() + 10 * 365 * 24 * 3_600_000));
    let status = client
        .produce(produce_batch(future.build().unwrap()))
        .await
        .expect_err("a future record was appended");
    assert_eq!(error_name(&status), "INVALID_TIMESTAMP", "{status:?}");

    // Nothing of it reached the log, the node serves on, and its peak memory stayed bounded.
    let mut last = BatchBuilder::new(Compression::None);
    last.push(NewRecord::with_value(b"after".to_vec(), now_ms()));
    let answer = client.produce(produce_batch(last.build().unwrap())).await.unwrap().into_inner();
    assert_eq!(answer.base_offset, 64, "the offsets go on where the good records left them");
    assert!(cluster.is_up(1), "node 1 died:\n{}", cluster.all_logs());
    let logs = cluster.node(1).logs();
    let refusal = logs
        .lines()
        .find(|l| l.contains("request refused") && l.contains("INVALID_TIMESTAMP"))
        .unwrap_or_else(|| panic!("no log line for the refused future record:\n{logs}"));
    for field in [
        "protocol=\"grpc\"",
        "api=\"produce\"",
        "client=127.0.0.1:",
        "topic=\"t\"",
        "partition=0",
        "error_code=32",
    ] {
        assert!(refusal.contains(field), "{field} missing from the refusal's log line: {refusal}");
    }
    let peak = peak_rss(pid);
    println!("node 1 peak RSS (VmHWM) after the hostile requests: {:.1} MiB", peak as f64 / (1 << 20) as f64);
    assert!(peak < RSS_MAX_BYTES, "node 1's peak RSS was {peak} bytes, over {RSS_MAX_BYTES}");
}

/// One ApiVersions v0 request (correlation id `id`, no client id) on `stream`, and its answer's
/// correlation id; `None` when the broker closed the connection instead.
fn api_versions(stream: &mut std::net::TcpStream, id: i32) -> Option<i32> {
    use std::io::{Read, Write};
    let mut frame = 10i32.to_be_bytes().to_vec();
    frame.extend(18i16.to_be_bytes());
    frame.extend(0i16.to_be_bytes());
    frame.extend(id.to_be_bytes());
    frame.extend((-1i16).to_be_bytes());
    stream.write_all(&frame).ok()?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len).clamp(4, 1 << 20) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(i32::from_be_bytes(body[..4].try_into().unwrap()))
}

/// True once the broker has closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// The Kafka listener's connection limits (Kafka's `max.connections` and
/// `connections.max.idle.ms`): with 8 allowed, a ninth connection is closed at once; an idle
/// one is closed after the idle time, while one that keeps asking stays open past it.
#[test]
fn kafka_connections_are_capped_and_idle_ones_closed() {
    const MAX: usize = 8;
    const IDLE: Duration = Duration::from_millis(1_500);
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.extra_args = vec![
        "--max-connections".into(),
        MAX.to_string(),
        "--connections-max-idle-ms".into(),
        IDLE.as_millis().to_string(),
    ];
    let cluster = Cluster::start(1, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let addr = cluster.node(1).kafka_addr();
    let connect = || {
        let s = std::net::TcpStream::connect_timeout(&addr, CALL).expect("connect to the Kafka listener");
        s.set_read_timeout(Some(CALL)).unwrap();
        s
    };
    let mut open: Vec<_> = (0..MAX).map(|_| connect()).collect();
    for (i, s) in open.iter_mut().enumerate() {
        assert_eq!(api_versions(s, i as i32), Some(i as i32), "connection {i} of {MAX} is served");
    }
    let mut extra = connect();
    assert!(closed_within(&mut extra, CALL), "connection {} was not closed at once", MAX + 1);
    assert!(cluster.node(1).logs().contains("max.connections are open"), "{}", cluster.node(1).logs());

    // One connection keeps asking every IDLE/3 for 2 x IDLE; the others say nothing.
    let mut busy = open.pop().unwrap();
    let started = std::time::Instant::now();
    let mut id = 100;
    while started.elapsed() < 2 * IDLE {
        assert_eq!(
            api_versions(&mut busy, id),
            Some(id),
            "the busy connection was closed after {:?}",
            started.elapsed()
        );
        id += 1;
        std::thread::sleep(IDLE / 3);
    }
    for (i, s) in open.iter_mut().enumerate() {
        assert!(
            closed_within(s, CALL),
            "idle connection {i} still open {:?} after its last request",
            started.elapsed()
        );
    }
    assert_eq!(api_versions(&mut busy, id), Some(id), "the busy connection is still served");
    // The idle ones are gone, so new connections are taken again.
    let mut again = connect();
    assert_eq!(api_versions(&mut again, 7), Some(7));
}

/// 10,000 idle streams (consumers long-polling the end of a log, 1,000 on each of ten HTTP/2
/// connections) on a node's client listener cost bounded memory, a connection past
/// `--max-connections` is closed at once, and the node serves on: a record produced
/// afterwards reaches the waiting streams. The node's own inter-node connections are on its
/// internal listener, so the cap counts only these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_streams_cost_bounded_memory_and_connections_are_capped() {
    const CONNECTIONS: usize = 10;
    const STREAMS_EACH: usize = 1_000;
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.internal_listener = true;
    opts.extra_args = vec!["--max-connections".into(), CONNECTIONS.to_string()];
    let cluster = one_node_with_topic(opts).await;
    let pid = cluster.node(1).pid().expect("node 1 runs");
    let addr = cluster.node(1).grpc_addr();

    // The cap's slots are taken by the connections the node has accepted: connections the
    // setup above made and dropped hold theirs until the node sees them close, so one of
    // these could be refused while a stale one still counts, and the one past the cap then
    // take the freed slot. Each round opens the ten, proves each is served (a call on it),
    // then tries one more; a later round only repeats that after a stale slot freed.
    let deadline = std::time::Instant::now() + CALL;
    let clients = loop {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(CALL)
                .connect()
                .await
                .unwrap();
            clients
                .push(runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient::new(channel));
        }
        let mut served = true;
        for client in &mut clients {
            let answered = client.metadata(runnel_proto::pb::runnel::v1::MetadataRequest::default()).await;
            served &= answered.is_ok();
        }
        // One more connection is closed by the node at once, and says why in its log.
        let mut extra = std::net::TcpStream::connect_timeout(&addr, CALL).unwrap();
        if served && closed_within(&mut extra, Duration::from_secs(5)) {
            break clients;
        }
        assert!(std::time::Instant::now() < deadline, "a connection past --max-connections was kept");
        drop(clients);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(cluster.node(1).logs().contains("max connections are open"), "{}", cluster.node(1).logs());

    let started = std::time::Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..STREAMS_EACH {
            let mut client = client.clone();
            opening.spawn(async move {
                let request = pb::FetchStreamRequest {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 0,
                    format: pb::RecordFormat::Records as i32,
                };
                let stream = client.fetch_stream(request).await.map(tonic::Response::into_inner);
                (c * STREAMS_EACH + s, stream)
            });
        }
    }
    let mut streams = Vec::with_capacity(CONNECTIONS * STREAMS_EACH);
    while let Some(opened) = opening.join_next().await {
        let (i, stream) = opened.unwrap();
        streams.push((i, stream.unwrap_or_else(|e| panic!("stream {i}: {e:?}"))));
    }
    println!("{} idle streams open in {:?}", streams.len(), started.elapsed());
    assert_eq!(streams.len(), CONNECTIONS * STREAMS_EACH);
    let peak = peak_rss(pid);
    println!(
        "node 1 peak RSS (VmHWM) with {} idle streams: {:.1} MiB",
        streams.len(),
        peak as f64 / (1 << 20) as f64
    );
    assert!(peak < RSS_MAX_BYTES, "node 1's peak RSS was {peak} bytes, over {RSS_MAX_BYTES}");

    // The node serves on: a record produced now reaches waiting streams (one on each
    // connection).
    let mut producer = clients[0].clone();
    let mut record = BatchBuilder::new(Compression::None);
    record.push(NewRecord::with_value(b"wake".to_vec(), now_ms()));
    let answer = producer.produce(produce_batch(record.build().unwrap())).await.unwrap().into_inner();
    assert_eq!(answer.base_offset, 0);
    streams.sort_by_key(|(i, _)| *i);
    for (i, stream) in streams.iter_mut().step_by(STREAMS_EACH) {
        let got = tokio::time::timeout(CALL, stream.message()).await;
        let response = match got {
            Ok(Ok(Some(response))) => response,
            other => panic!("stream {i} got no record: {other:?}"),
        };
        assert_eq!(
            response.records.first().and_then(|r| r.value.as_deref()),
            Some(&b"wake"[..]),
            "stream {i}"
        );
    }
    assert!(cluster.is_up(1), "node 1 died:\n{}", cluster.all_logs());
}

/// `runnel_partition_producers{topic="t",partition="0"}` on node 1's /metrics.
fn producers_gauge(cluster: &Cluster) -> u64 {
    let (status, body) =
        runnel_testkit::http_get(cluster.node(1).http_addr(), "/metrics", CALL).expect("GET /metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("runnel_partition_producers{topic=\"t\",partition=\"0\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no producers gauge for t-0 in:\n{body}"))
}

/// Idempotent-producer state is bounded (issue 14's "producer-state entries expire and are
/// capped per partition"): 2,500 producer ids, each with one batch, leave the partition
/// remembering the cap of 2,000; with `--producer-id-expiration-ms 2000` all are forgotten
/// once silent that long; and a forgotten producer goes on at its next sequence (as Kafka
/// accepts since KIP-360) instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_producers_expire_and_a_flood_of_producer_ids_is_capped() {
    const FLOOD: i64 = 2_500;
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.extra_args = vec![
        "--producer-id-expiration-ms".into(),
        "2000".into(),
        "--retention-check-interval-ms".into(),
        "200".into(),
    ];
    let cluster = one_node_with_topic(opts).await;
    let mut client = cluster.broker_client(1).await.unwrap();
    // The flood's records are stamped 15 s ahead (within message.timestamp.after.max.ms), so
    // that none expires before the cap is checked, however slow the machine.
    const AHEAD: Duration = Duration::from_secs(15);
    let idempotent = |producer_id: i64, base_sequence: i32, timestamp_ms: i64| {
        let record = pb::Record {
            key: None,
            value: Some(b"v".to_vec().into()),
            headers: Vec::new(),
            timestamp_ms: Some(timestamp_ms),
            offset: 0,
        };
        let mut request = produce_batch(Vec::new());
        request.data = Some(pb::produce_request::Data::Records(pb::RecordList { records: vec![record] }));
        request.producer = Some(pb::ProducerBatch { producer_id, producer_epoch: 0, base_sequence });
        request
    };
    let started = std::time::Instant::now();
    let ahead = now_ms() + AHEAD.as_millis() as i64;
    for id in 1..=FLOOD {
        client.produce(idempotent(id, 0, ahead)).await.unwrap_or_else(|e| panic!("producer {id}: {e:?}"));
    }
    println!("{FLOOD} producers' batches in {:?}", started.elapsed());
    let remembered = producers_gauge(&cluster);
    assert!(remembered <= 2_000, "{remembered} producers remembered, over the cap");
    if started.elapsed() < AHEAD {
        assert_eq!(remembered, 2_000, "the flood did not fill the cap");
    }

    // Silent for the expiration time past their timestamps, every one is forgotten.
    let deadline = std::time::Instant::now() + AHEAD + CALL;
    while producers_gauge(&cluster) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "producers not forgotten: {}",
            producers_gauge(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last producer goes on at sequence 1 and is known again.
    let answer =
        client.produce(idempotent(FLOOD, 1, now_ms())).await.expect("a forgotten producer's next batch");
    assert_eq!(answer.into_inner().base_offset, FLOOD);
    assert_eq!(producers_gauge(&cluster), 1);
}
