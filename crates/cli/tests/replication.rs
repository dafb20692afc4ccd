//! Replication on three real `runnel node` processes: acks=all commits once the ISR has a
//! batch, a killed leader's acknowledged records are all on its successor, a restarted
//! broker catches up and rejoins the ISR (and takes its preferred leadership back), and a
//! follower that stops fetching leaves the ISR so writes go on.
//!
//! Every wait is a poll against a deadline.

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL};

const DEADLINE: Duration = Duration::from_secs(30);

fn start3(lag_ms: &str) -> Cluster {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.extra_args = ["--replica-lag-time-ms", lag_ms].map(str::to_owned).to_vec();
    Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

async fn create(cluster: &Cluster, name: &str) {
    let request = pb::CreateTopicRequest {
        name: name.into(),
        partitions: 1,
        replication_factor: 3,
        configs: [("min.insync.replicas".to_owned(), "2".to_owned())].into(),
    };
    cluster.create_topic(1, request, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}"));
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

/// Produces `values` at acks=all to the partition's leader, retrying (with the same values)
/// while leadership settles. Answers the base offset.
async fn produce(cluster: &Cluster, topic: &str, values: &[String]) -> i64 {
    let records = values
        .iter()
        .map(|v| pb::Record { value: Some(Bytes::from(v.clone())), ..Default::default() })
        .collect();
    let request = pb::ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Records(pb::RecordList { records })),
        producer: None,
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = describe_leader(cluster, topic).await;
        if let Some(leader) = leader
            && let Ok(mut c) = cluster.broker_client(leader).await
        {
            match c.produce(request.clone()).await {
                Ok(r) => return r.into_inner().base_offset,
                Err(e) => {
                    let name = runnel_testkit::error_name(&e);
                    assert!(
                        ["NOT_LEADER_OR_FOLLOWER", "LEADER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS", ""]
                            .contains(&name.as_str()),
                        "produce failed for good: {e:?}"
                    );
                }
            }
        }
        assert!(Instant::now() < deadline, "no produce succeeded within {DEADLINE:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn describe_leader(cluster: &Cluster, topic: &str) -> Option<u64> {
    for id in cluster.ids().into_iter().filter(|&id| cluster.is_up(id)) {
        if let Some(state) = cluster.first_partition(id, topic).await {
            return u64::try_from(state.leader).ok().filter(|&l| cluster.is_up(l));
        }
    }
    None
}

/// Every committed value of the partition, read from its leader once it holds at least
/// `at_least` of them. A new leader's high watermark can trail its predecessor's until its
/// followers have fetched from it once, so a read right after a failover may see fewer.
async fn read_all(cluster: &Cluster, topic: &str, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(leader) = describe_leader(cluster, topic).await
            && let Ok(mut c) = cluster.broker_client(leader).await
        {
            let mut out = Vec::new();
            let mut offset = 0;
            let mut ok = true;
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
                match c.fetch(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        for rec in &r.records {
                            assert_eq!(rec.offset, out.len() as i64, "offsets are contiguous");
                            out.push(
                                String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default())
                                    .into_owned(),
                            );
                        }
                        if r.next_offset >= r.high_watermark {
                            break;
                        }
                        offset = r.next_offset;
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok && out.len() >= at_least {
                return out;
            }
        }
        assert!(Instant::now() < deadline, "could not read {topic} within {DEADLINE:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_the_leader_and_the_restarted_broker_rejoins() {
    let mut cluster = start3("10000");
    create(&cluster, "r").await;
    let first =
        wait_state(&cluster, "r", "a leader with a full ISR", |s| s.leader > 0 && s.isr.len() == 3).await;
    let preferred = first.replicas[0];

    // acks=all commits with all three in sync; a consumer sees it.
    let mut acked = Vec::new();
    for round in 0..5 {
        let batch = values(&format!("a{round}"), 50);
        assert_eq!(produce(&cluster, "r", &batch).await, acked.len() as i64);
        acked.extend(batch);
    }
    assert_eq!(read_all(&cluster, "r", acked.len()).await, acked);

    // kill -9 the leader: a new one comes from the ISR and has every acknowledged record.
    let old = u64::try_from(first.leader).unwrap();
    cluster.kill(old).unwrap();
    let after = wait_state(&cluster, "r", "a new leader", |s| s.leader > 0 && s.leader as u64 != old).await;
    assert!(after.leader_epoch > first.leader_epoch, "{after:?}");
    assert!(!after.isr.contains(&(old as u32)), "{after:?}");
    assert_eq!(read_all(&cluster, "r", acked.len()).await, acked, "nothing acknowledged was lost");
    let batch = values("b", 100);
    assert_eq!(produce(&cluster, "r", &batch).await, acked.len() as i64, "writes go on with 2 of 3");
    acked.extend(batch);

    // The old leader comes back, catches up, rejoins the ISR and leads again (preferred).
    cluster.restart(old).unwrap();
    let back = wait_state(&cluster, "r", "the restarted broker back in the ISR", |s| s.isr.len() == 3).await;
    println!("rejoined: {back:?}");
    if preferred as u64 == old {
        wait_state(&cluster, "r", "preferred leadership restored", |s| s.leader == i64::from(preferred))
            .await;
    }
    assert_eq!(read_all(&cluster, "r", acked.len()).await, acked);
    let batch = values("c", 100);
    assert_eq!(produce(&cluster, "r", &batch).await, acked.len() as i64);
    acked.extend(batch);
    assert_eq!(read_all(&cluster, "r", acked.len()).await, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_fetching_leaves_the_isr_and_writes_go_on() {
    // A lag time well under the 3 s session timeout, so the leader (not the controller's
    // fencing) is what removes the follower.
    let mut cluster = start3("1000");
    create(&cluster, "lag").await;
    let state = wait_state(&cluster, "lag", "a full ISR", |s| s.leader > 0 && s.isr.len() == 3).await;
    let leader = state.leader as u32;
    let follower = *state.replicas.iter().find(|&&r| r != leader).unwrap();
    assert_eq!(produce(&cluster, "lag", &values("x", 10)).await, 0);

    cluster.pause(u64::from(follower)).unwrap();
    let t = Instant::now();
    // Writes stall at most until the ISR drops the paused follower (lag time, or fencing).
    assert_eq!(produce(&cluster, "lag", &values("y", 10)).await, 10);
    println!("acks=all went on {:?} after pausing a follower", t.elapsed());
    let shrunk =
        wait_state(&cluster, "lag", "the ISR without the paused follower", |s| !s.isr.contains(&follower))
            .await;
    assert_eq!(shrunk.isr.len(), 2, "{shrunk:?}");
    cluster.resume(u64::from(follower)).unwrap();
    wait_state(&cluster, "lag", "the follower back in the ISR", |s| s.isr.contains(&follower)).await;
    assert_eq!(read_all(&cluster, "lag", 20).await.len(), 20);
}

/// The bytes of every segment of `topic`-0 on node `id`, in offset order.
fn segment_bytes(cluster: &Cluster, id: u64, topic: &str) -> Vec<u8> {
    let dir = cluster.node(id).data_dir().join("logs").join(format!("{topic}-0"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect()
}

/// Polls until `follower`'s copy of `topic`-0 has exactly `leader`'s bytes.
fn wait_same_bytes(cluster: &Cluster, leader: u64, follower: u64, topic: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (l, f) = (segment_bytes(cluster, leader, topic), segment_bytes(cluster, follower, topic));
        if l == f {
            assert!(!l.is_empty());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's log ({} bytes) never matched the leader's ({} bytes)",
            f.len(),
            l.len()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_and_its_log_matches_the_leaders_byte_for_byte() {
    let mut cluster = start3("10000");
    create(&cluster, "f").await;
    let state = wait_state(&cluster, "f", "a full ISR", |s| s.leader > 0 && s.isr.len() == 3).await;
    let leader = state.leader as u64;
    let follower = u64::from(*state.replicas.iter().find(|&&r| u64::from(r) != leader).unwrap());
    let mut acked = values("before", 100);
    produce(&cluster, "f", &acked).await;

    cluster.kill(follower).unwrap();
    wait_state(&cluster, "f", "the ISR without the killed follower", |s| !s.isr.contains(&(follower as u32)))
        .await;
    for round in 0..5 {
        let batch = values(&format!("during{round}"), 100);
        produce(&cluster, "f", &batch).await;
        acked.extend(batch);
    }
    cluster.restart(follower).unwrap();
    wait_state(&cluster, "f", "the follower back in the ISR", |s| s.isr.contains(&(follower as u32))).await;
    let batch = values("after", 100);
    produce(&cluster, "f", &batch).await;
    acked.extend(batch);
    assert_eq!(read_all(&cluster, "f", acked.len()).await, acked);
    let leader = describe_leader(&cluster, "f").await.unwrap();
    for other in cluster.ids().into_iter().filter(|&id| id != leader) {
        wait_same_bytes(&cluster, leader, other, "f");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_killing_all_three_nodes_at_once() {
    let mut cluster = start3("10000");
    create(&cluster, "all").await;
    wait_state(&cluster, "all", "a full ISR", |s| s.leader > 0 && s.isr.len() == 3).await;
    let mut acked = Vec::new();
    for round in 0..10 {
        let batch = values(&format!("r{round}"), 100);
        produce(&cluster, "all", &batch).await;
        acked.extend(batch);
    }
    for id in cluster.ids() {
        cluster.kill(id).unwrap();
    }
    for id in cluster.ids() {
        cluster.spawn(id).unwrap();
    }
    cluster.wait_all_ready(DEADLINE).unwrap();
    assert_eq!(read_all(&cluster, "all", acked.len()).await, acked);
    let batch = values("after", 100);
    produce(&cluster, "all", &batch).await;
    acked.extend(batch);
    assert_eq!(read_all(&cluster, "all", acked.len()).await, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_torn_tail_recovers_and_re_replicates() {
    let mut cluster = start3("10000");
    create(&cluster, "torn").await;
    let state = wait_state(&cluster, "torn", "a full ISR", |s| s.leader > 0 && s.isr.len() == 3).await;
    let leader = state.leader as u64;
    // Not the preferred replica, whose return would (rightly) take leadership back once in sync.
    let follower = u64::from(
        *state.replicas.iter().find(|&&r| u64::from(r) != leader && r != state.replicas[0]).unwrap(),
    );
    let mut acked = Vec::new();
    for round in 0..3 {
        let batch = values(&format!("t{round}"), 100);
        produce(&cluster, "torn", &batch).await;
        acked.extend(batch);
    }
    wait_same_bytes(&cluster, leader, follower, "torn");
    cluster.stop(follower).unwrap();
    // Tear the tail: cut 7 bytes off the follower's newest segment, as a crash mid-write would.
    let dir = cluster.node(follower).data_dir().join("logs").join("torn-0");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let tail = logs.last().unwrap();
    let len = std::fs::metadata(tail).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(tail).unwrap().set_len(len - 7).unwrap();

    let batch = values("while-down", 100);
    produce(&cluster, "torn", &batch).await;
    acked.extend(batch);
    cluster.restart(follower).unwrap();
    let back = wait_state(&cluster, "torn", "the torn follower back in the ISR", |s| {
        s.isr.contains(&(follower as u32))
    })
    .await;
    assert_eq!(back.leader as u64, leader, "the leader stayed; the behind follower was not elected");
    wait_same_bytes(&cluster, leader, follower, "torn");
    assert_eq!(read_all(&cluster, "torn", acked.len()).await, acked);
}
