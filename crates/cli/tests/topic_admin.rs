//! Topic administration on three real `runnel node` processes: a topic grows from one to
//! three partitions (`runnel topic add-partitions`) and the new partitions take produces and
//! fetches through the gRPC data plane; config changes (`runnel topic alter-config`) reach
//! the brokers' logs: a lowered max.message.bytes refuses a large record with
//! MESSAGE_TOO_LARGE, one raised above the log's opening limit takes it, and a shortened
//! retention.ms deletes old records.
//!
//! Every wait is a poll against a deadline.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL};

const DEADLINE: Duration = Duration::from_secs(30);
const TOPIC: &str = "grow";

fn start3() -> Cluster {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    // Retention passes often enough to see one within the test.
    opts.extra_args = ["--retention-check-interval-ms", "200"].map(str::to_owned).to_vec();
    Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

fn record(value: Vec<u8>, timestamp_ms: Option<i64>) -> pb::Record {
    pb::Record { value: Some(Bytes::from(value)), timestamp_ms, ..Default::default() }
}

/// The broker leading `partition` of the topic, once every partition is served.
async fn leader(cluster: &Cluster, partition: u32) -> u64 {
    let leaders =
        cluster.wait_for_partition_leaders(1, TOPIC, DEADLINE).await.unwrap_or_else(|e| panic!("{e:#}"));
    leaders[partition as usize]
}

/// Produces `records` at acks=all to `partition`'s leader, retrying while leadership settles
/// or a broker has not applied the latest metadata. Any other refusal is answered.
async fn produce(cluster: &Cluster, partition: u32, records: Vec<pb::Record>) -> Result<i64, tonic::Status> {
    let request = pb::ProduceRequest {
        topic: TOPIC.into(),
        partition,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Records(pb::RecordList { records })),
        producer: None,
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = leader(cluster, partition).await;
        let answer = match cluster.broker_client(leader).await {
            Ok(mut c) => c.produce(request.clone()).await.map(|r| r.into_inner().base_offset),
            Err(e) => Err(tonic::Status::unavailable(format!("{e:#}"))),
        };
        match answer {
            Err(e)
                if Instant::now() < deadline
                    && [
                        "NOT_LEADER_OR_FOLLOWER",
                        "LEADER_NOT_AVAILABLE",
                        "UNKNOWN_TOPIC_OR_PARTITION",
                        "NOT_ENOUGH_REPLICAS",
                        "REQUEST_TIMED_OUT",
                        "",
                    ]
                    .contains(&runnel_testkit::error_name(&e).as_str()) =>
            {
                tokio::time::sleep(POLL_INTERVAL).await
            }
            answer => return answer,
        }
    }
}

/// Every committed value of `partition`, from its leader, once it holds at least `at_least`.
async fn read_all(cluster: &Cluster, partition: u32, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut out = Vec::new();
        if let Ok(mut c) = cluster.broker_client(leader(cluster, partition).await).await {
            let mut offset = earliest(cluster, partition).await;
            loop {
                let request = pb::FetchRequest {
                    topic: TOPIC.into(),
                    partition,
                    offset,
                    max_bytes: 0,
                    max_wait_ms: 0,
                    min_bytes: 0,
                    format: pb::RecordFormat::Records as i32,
                };
                let Ok(r) = c.fetch(request).await else { break };
                let r = r.into_inner();
                out.extend(r.records.iter().map(|rec| {
                    String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default()).into_owned()
                }));
                if r.next_offset >= r.high_watermark {
                    break;
                }
                offset = r.next_offset;
            }
        }
        if out.len() >= at_least {
            return out;
        }
        assert!(Instant::now() < deadline, "could not read {TOPIC}-{partition} within {DEADLINE:?}: {out:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The partition's log start offset, as its leader answers it (0 when it cannot answer).
async fn earliest(cluster: &Cluster, partition: u32) -> i64 {
    let request = pb::ListOffsetsRequest {
        topic: TOPIC.into(),
        partition,
        spec: pb::OffsetSpec::Earliest as i32,
        timestamp_ms: 0,
    };
    match cluster.broker_client(leader(cluster, partition).await).await {
        Ok(mut c) => c.list_offsets(request).await.map_or(0, |r| r.into_inner().offset),
        Err(_) => 0,
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_grow_and_config_changes_take_effect_on_the_brokers() {
    let mut cluster = start3();
    let request = pb::CreateTopicRequest {
        name: TOPIC.into(),
        partitions: 1,
        replication_factor: 3,
        configs: Default::default(),
    };
    cluster.create_topic(1, request, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}"));
    // Two hours old: within the default retention (7 days), past the one set below.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let old = |v: &str| record(v.as_bytes().to_vec(), Some(now_ms - 2 * 3600 * 1000));
    produce(&cluster, 0, vec![old("old-0"), old("old-1")]).await.expect("produce to partition 0");

    // Phase 1: grow to three partitions through the CLI; a shrink is refused as Kafka does.
    let shrink = cluster.runnel(&["topic", "add-partitions", TOPIC, "--count", "1"]);
    assert_eq!(shrink.error_name(), Some("INVALID_PARTITIONS"), "{shrink:?}");
    let checked = cluster.runnel(&["topic", "add-partitions", TOPIC, "--count", "3", "--validate-only"]);
    assert!(checked.success(), "{checked:?}");
    let out = cluster.runnel(&["topic", "add-partitions", TOPIC, "--count", "3", "--output", "json"]);
    assert!(out.success(), "{out:?}");
    let grown = out.json().unwrap();
    let partitions = grown["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3, "{grown}");
    assert!(partitions.iter().all(|p| p["replicas"].as_array().unwrap().len() == 3), "{grown}");
    let text = cluster.runnel(&["topic", "describe", TOPIC]);
    assert_eq!(
        text.stdout.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(),
        3,
        "{text:?}"
    );

    // Phase 2: the new partitions take records and serve them; partition 0 is as it was.
    produce(&cluster, 1, vec![record(b"p1-a".to_vec(), None), record(b"p1-b".to_vec(), None)])
        .await
        .expect("produce to the new partition 1");
    produce(&cluster, 2, vec![record(b"p2-a".to_vec(), None)]).await.expect("produce to the new partition 2");
    assert_eq!(read_all(&cluster, 1, 2).await, strings(&["p1-a", "p1-b"]));
    assert_eq!(read_all(&cluster, 2, 1).await, strings(&["p2-a"]));
    assert_eq!(read_all(&cluster, 0, 2).await, strings(&["old-0", "old-1"]));

    // Phase 3: max.message.bytes lowered: a larger record is refused once the leader has
    // the change (produces before that are accepted, hence the poll).
    let bad = cluster.runnel(&["topic", "alter-config", TOPIC, "--set", "max.message.bytes=10"]);
    assert_eq!(bad.error_name(), Some("INVALID_CONFIG"), "{bad:?}");
    let out = cluster.runnel(&[
        "topic",
        "alter-config",
        TOPIC,
        "--set",
        "max.message.bytes=1024",
        "--output",
        "json",
    ]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.json().unwrap()["configs"]["max.message.bytes"], "1024");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match produce(&cluster, 1, vec![record(vec![b'x'; 2000], None)]).await {
            Err(e) if runnel_testkit::error_name(&e) == "MESSAGE_TOO_LARGE" => break,
            other => assert!(Instant::now() < deadline, "a 2000-byte record is still answered {other:?}"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    produce(&cluster, 1, vec![record(b"small".to_vec(), None)]).await.expect("a small record still goes in");

    // Raised above the limit the logs were opened with (1048588): the log takes it too.
    let out = cluster.runnel(&["topic", "alter-config", TOPIC, "--set", "max.message.bytes=2000000"]);
    assert!(out.success(), "{out:?}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match produce(&cluster, 2, vec![record(vec![b'y'; 1_200_000], None)]).await {
            Ok(_) => break,
            other => assert!(Instant::now() < deadline, "a 1.2 MB record is still answered {other:?}"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // Phase 4: retention.ms shortened to an hour: the two-hour-old records of partition 0 go
    // at the next retention pass, on the leader and its followers alike.
    assert_eq!(earliest(&cluster, 0).await, 0);
    let out = cluster.runnel(&[
        "topic",
        "alter-config",
        TOPIC,
        "--set",
        "retention.ms=3600000",
        "--delete",
        "max.message.bytes",
    ]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("retention.ms=3600000") && !out.stdout.contains("max.message.bytes"),
        "{out:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    while earliest(&cluster, 0).await < 2 {
        assert!(Instant::now() < deadline, "retention did not delete the old records within {DEADLINE:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // (Large records that went in before the leader had the lower limit are left out.)
    let kept: Vec<String> = read_all(&cluster, 1, 3).await.into_iter().filter(|v| v.len() < 100).collect();
    assert_eq!(kept, strings(&["p1-a", "p1-b", "small"]), "recent records are kept");

    cluster.stop_all().expect("stop the nodes");
}

/// The controller's internal topics include the group coordinators' offsets topic, so no
/// client deletes or grows the topic the broker writes commits to.
#[test]
fn the_offsets_topic_is_one_of_the_controllers_internal_topics() {
    assert!(
        runnel_controller::controller::service::INTERNAL_TOPICS
            .contains(&runnel_broker::group::OFFSETS_TOPIC),
        "{:?}",
        runnel_controller::controller::service::INTERNAL_TOPICS
    );
}
