//! The idempotent producer on real `runnel node` processes: producer ids from
//! `InitProducerId` are unique across brokers, a retried batch is answered with its
//! original offsets and stored once, a sequence gap and a stale epoch are refused, and the
//! deduplication state survives a `kill -9` of the partition leader.
//!
//! Every wait is a poll or a call bounded by a deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient;
use runnel_storage::{BatchBuilder, Compression, NewRecord};
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL, error_name};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);

fn start(n: usize) -> Cluster {
    Cluster::start(n, ClusterOpts::new(env!("CARGO_BIN_EXE_runnel")))
        .unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

async fn create(cluster: &Cluster, name: &str, replication_factor: u32) {
    let min_isr = if replication_factor > 1 { "2" } else { "1" };
    let request = pb::CreateTopicRequest {
        name: name.into(),
        partitions: 1,
        replication_factor,
        configs: [("min.insync.replicas".to_owned(), min_isr.to_owned())].into(),
    };
    cluster.create_topic(1, request, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}"));
}

/// InitProducerId on broker `id`, retried while the broker answers a retriable error.
async fn init_producer_id(cluster: &Cluster, id: u64) -> i64 {
    init_producer_id_with(cluster.broker_client(id).await.unwrap()).await
}

/// InitProducerId through `client`, retried while the broker answers a retriable error.
async fn init_producer_id_with(mut client: BrokerServiceClient<Channel>) -> i64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match client.init_producer_id(pb::InitProducerIdRequest {}).await {
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(r.producer_epoch, 0);
                return r.producer_id;
            }
            Err(e) => {
                let name = error_name(&e);
                assert!(
                    ["LEADER_NOT_AVAILABLE", "REQUEST_TIMED_OUT"].contains(&name.as_str()),
                    "InitProducerId failed for good: {e:?}"
                );
            }
        }
        assert!(Instant::now() < deadline, "no producer id within {DEADLINE:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn records(values: &[&str]) -> Vec<pb::Record> {
    values
        .iter()
        .map(|v| pb::Record { value: Some(Bytes::from(v.to_string())), ..Default::default() })
        .collect()
}

fn idempotent(
    topic: &str,
    producer_id: i64,
    epoch: i32,
    base_sequence: i32,
    values: &[&str],
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Records(pb::RecordList { records: records(values) })),
        producer: Some(pb::ProducerBatch { producer_id, producer_epoch: epoch, base_sequence }),
    }
}

/// Polls the running nodes until `check` holds for the partition's state.
async fn wait_state(
    cluster: &Cluster,
    topic: &str,
    what: &str,
    check: impl Fn(&pb::PartitionInfo) -> bool,
) -> pb::PartitionInfo {
    cluster.wait_for_first_partition(topic, what, DEADLINE, check).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sends `request` to broker `leader` until it answers other than with a retriable
/// leadership error; answers that.
async fn send_to(
    cluster: &Cluster,
    leader: u64,
    request: &pb::ProduceRequest,
) -> Result<pb::ProduceResponse, tonic::Status> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = match cluster.broker_client(leader).await {
            Ok(mut c) => c.produce(request.clone()).await.map(tonic::Response::into_inner),
            Err(e) => Err(tonic::Status::unavailable(format!("{e:#}"))),
        };
        match answer {
            Err(e)
                if ["NOT_LEADER_OR_FOLLOWER", "LEADER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS", ""]
                    .contains(&error_name(&e).as_str())
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            other => return other,
        }
    }
}

/// Every committed value of partition 0, with its offset, read from broker `id`.
async fn read_all(client: &mut BrokerServiceClient<Channel>, topic: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let request = pb::FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset,
            max_bytes: 0,
            max_wait_ms: 0,
            min_bytes: 0,
            format: pb::RecordFormat::Records as i32,
        };
        let r = client.fetch(request).await.unwrap().into_inner();
        out.extend(r.records.iter().map(|rec| {
            (rec.offset, String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default()).into_owned())
        }));
        if r.next_offset >= r.high_watermark {
            return out;
        }
        offset = r.next_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_unique_across_brokers_and_concurrent_callers() {
    let cluster = start(3);
    // The first calls on each broker arrive together: they must share one block, not each
    // fetch their own from the controller.
    let mut per_broker = Vec::new();
    for id in cluster.ids() {
        let client = cluster.broker_client(id).await.unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..20 {
            calls.spawn(init_producer_id_with(client.clone()));
        }
        per_broker.push(calls.join_all().await);
    }
    let mut all = BTreeSet::new();
    for (ids, broker) in per_broker.iter().zip(cluster.ids()) {
        let blocks: BTreeSet<i64> = ids.iter().map(|id| id / 1000).collect();
        assert_eq!(blocks.len(), 1, "broker {broker} handed out ids from several blocks: {ids:?}");
        all.extend(ids.iter().copied());
    }
    assert_eq!(all.len(), 60, "every id is handed out once: {per_broker:?}");
    assert!(all.iter().all(|&id| id >= 0));
    let blocks: BTreeSet<i64> = all.iter().map(|id| id / 1000).collect();
    assert_eq!(blocks.len(), 3, "each broker has a block of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_gets_its_original_offsets_and_a_gap_or_stale_epoch_is_refused() {
    let cluster = start(1);
    create(&cluster, "idem", 1).await;
    cluster.wait_for_partition_leaders(1, "idem", DEADLINE).await.unwrap();
    let pid = init_producer_id(&cluster, 1).await;
    let mut c = cluster.broker_client(1).await.unwrap();

    let first = c.produce(idempotent("idem", pid, 0, 0, &["a", "b"])).await.unwrap().into_inner();
    assert_eq!((first.base_offset, first.last_offset, first.duplicate), (0, 1, false));
    let second = c.produce(idempotent("idem", pid, 0, 2, &["c"])).await.unwrap().into_inner();
    assert_eq!((second.base_offset, second.duplicate), (2, false));
    // Another producer's batch in between.
    let other = init_producer_id(&cluster, 1).await;
    assert_ne!(other, pid);
    c.produce(idempotent("idem", other, 0, 0, &["other"])).await.unwrap();

    // The retries: same producer, epoch and sequence.
    let retry = c.produce(idempotent("idem", pid, 0, 0, &["a", "b"])).await.unwrap().into_inner();
    assert_eq!((retry.base_offset, retry.last_offset, retry.duplicate), (0, 1, true));
    let retry = c.produce(idempotent("idem", pid, 0, 2, &["c"])).await.unwrap().into_inner();
    assert_eq!((retry.base_offset, retry.last_offset, retry.duplicate), (2, 2, true));

    // A gap: sequence 5 where 3 is next.
    let e = c.produce(idempotent("idem", pid, 0, 5, &["gap"])).await.unwrap_err();
    assert_eq!(error_name(&e), "OUT_OF_ORDER_SEQUENCE_NUMBER", "{e:?}");
    assert_eq!(e.metadata().get("runnel-error-code").unwrap(), "45");
    // A new epoch starts at 0; after it, the old epoch is fenced.
    let e = c.produce(idempotent("idem", pid, 1, 3, &["x"])).await.unwrap_err();
    assert_eq!(error_name(&e), "OUT_OF_ORDER_SEQUENCE_NUMBER", "{e:?}");
    let bumped = c.produce(idempotent("idem", pid, 1, 0, &["d"])).await.unwrap().into_inner();
    assert_eq!((bumped.base_offset, bumped.duplicate), (4, false));
    let e = c.produce(idempotent("idem", pid, 0, 3, &["zombie"])).await.unwrap_err();
    assert_eq!(error_name(&e), "INVALID_PRODUCER_EPOCH", "{e:?}");
    assert_eq!(e.metadata().get("runnel-error-code").unwrap(), "47");

    // A Kafka producer's own batch carries the fields in its header; it dedupes the same way.
    let mut b = BatchBuilder::new(Compression::None).producer(other, 0, 1);
    b.push(NewRecord::with_value(b"kafka".to_vec(), 1_700_000_000_000));
    let raw = b.build().unwrap();
    let mut request = idempotent("idem", other, 0, 1, &[]);
    request.producer = None;
    request.data = Some(pb::produce_request::Data::Batch(Bytes::from(raw)));
    let appended = c.produce(request.clone()).await.unwrap().into_inner();
    assert_eq!((appended.base_offset, appended.duplicate), (5, false));
    let again = c.produce(request.clone()).await.unwrap().into_inner();
    assert_eq!((again.base_offset, again.duplicate), (5, true));
    // The fields go in the header or in `producer`, never both; bad values are refused.
    request.producer = Some(pb::ProducerBatch { producer_id: other, producer_epoch: 0, base_sequence: 2 });
    assert_eq!(error_name(&c.produce(request).await.unwrap_err()), "INVALID_REQUEST");
    for (p, e, s) in [(-2, 0, 0), (pid, -1, 0), (pid, 40_000, 0), (pid, 1, -1)] {
        let e = c.produce(idempotent("idem", p, e, s, &["bad"])).await.unwrap_err();
        assert_eq!(error_name(&e), "INVALID_REQUEST", "{e:?}");
    }

    let log = read_all(&mut c, "idem").await;
    let values: Vec<&str> = log.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["a", "b", "c", "other", "d", "kafka"], "each batch is in the log once");
    assert!(log.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_leader_is_killed_is_a_duplicate_on_the_new_leader() {
    let mut cluster = start(3);
    create(&cluster, "fo", 3).await;
    let first =
        wait_state(&cluster, "fo", "a leader with a full ISR", |s| s.leader > 0 && s.isr.len() == 3).await;
    let leader = u64::try_from(first.leader).unwrap();
    let pid = init_producer_id(&cluster, leader).await;

    // Five acknowledged (acks=all) batches of 10 records from one producer.
    let batch = |i: usize| -> Vec<String> { (0..10).map(|j| format!("b{i}-{j}")).collect() };
    let mut answers = Vec::new();
    for i in 0..5 {
        let values = batch(i);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let request = idempotent("fo", pid, 0, (i * 10) as i32, &values);
        let answer = send_to(&cluster, leader, &request).await.unwrap();
        assert!(!answer.duplicate);
        answers.push((request, answer));
    }

    // kill -9 the leader; a new one comes from the ISR.
    cluster.kill(leader).unwrap();
    let after =
        wait_state(&cluster, "fo", "a new leader", |s| s.leader > 0 && s.leader as u64 != leader).await;
    let new_leader = u64::try_from(after.leader).unwrap();

    // The producer never saw the last answer and resends the batch to the new leader; so
    // does it with an older one of the five.
    for (request, original) in [&answers[4], &answers[1]] {
        let retry = send_to(&cluster, new_leader, request).await.unwrap();
        assert!(retry.duplicate, "{retry:?}");
        assert_eq!((retry.base_offset, retry.last_offset), (original.base_offset, original.last_offset));
    }
    let next: Vec<String> = batch(5);
    let next: Vec<&str> = next.iter().map(String::as_str).collect();
    let appended = send_to(&cluster, new_leader, &idempotent("fo", pid, 0, 50, &next)).await.unwrap();
    assert_eq!((appended.base_offset, appended.duplicate), (50, false));

    let mut c = cluster.broker_client(new_leader).await.unwrap();
    let log = read_all(&mut c, "fo").await;
    let expected: Vec<String> = (0..6).flat_map(batch).collect();
    assert_eq!(log.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), expected, "each batch is stored once");
}
