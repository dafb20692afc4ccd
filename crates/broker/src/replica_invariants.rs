//! The replication invariants of docs/architecture.md, each with a test of its own, on
//! real logs in temp dirs. Brokers are [`ReplicaManager`]s wired by hand: a follower's
//! request goes straight into the leader's [`Partition::serve_replica_fetch`] and the answer
//! into the follower's [`Partition::apply_replica_fetch`], with no network in between.

use runnel_storage::{BatchBuilder, Compression, NewRecord};

use super::*;
use crate::cache::TopicEntry;

const TOPIC_ID: u8 = 9;

fn cache(
    leader: u32,
    replicas: &[u32],
    isr: &[u32],
    leader_epoch: i32,
    min_isr: Option<&str>,
) -> MetadataCache {
    let mut cache = MetadataCache { loaded: true, version: 1, ..MetadataCache::default() };
    let configs = min_isr.map(|m| ("min.insync.replicas".to_owned(), m.to_owned())).into_iter().collect();
    let entry = PartitionEntry {
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
        leader: Some(leader),
        leader_epoch,
        partition_epoch: leader_epoch,
    };
    cache.topics.insert("t".into(), TopicEntry { id: vec![TOPIC_ID; 16], configs, partitions: vec![entry] });
    cache
}

fn batch(values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(NewRecord::with_value(v.as_bytes().to_vec(), 1_000));
    }
    b.build().unwrap()
}

/// Brokers 1..=n over the same metadata, each with its own data dir (fsync never: durable
/// at append, so tests control durability only where they mean to).
struct Brokers {
    _dirs: Vec<tempfile::TempDir>,
    managers: Vec<ReplicaManager>,
}

impl Brokers {
    fn new(n: u32, metadata: &MetadataCache) -> Self {
        let defaults = LogConfig { fsync: FsyncPolicy::Never, preallocate_bytes: 0, ..LogConfig::default() };
        let mut dirs = Vec::new();
        let mut managers = Vec::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let m = ReplicaManager::open(id, dir.path(), defaults.clone()).unwrap();
            m.reconcile(metadata);
            dirs.push(dir);
            managers.push(m);
        }
        Brokers { _dirs: dirs, managers }
    }

    fn p(&self, id: u32) -> Arc<Partition> {
        self.managers[(id - 1) as usize].get(&TopicPartition::new("t", 0)).unwrap()
    }

    fn set(&self, id: u32, metadata: &MetadataCache) {
        self.managers[(id - 1) as usize].reconcile(metadata);
    }

    /// One fetch round of `follower` from `leader`; answers what the leader said.
    fn fetch(&self, follower: u32, leader: u32) -> pb::ReplicaFetchPartitionData {
        let request = self.p(follower).replica_fetch_request(leader).expect("follows the leader");
        let answer = self.p(leader).serve_replica_fetch(&request, follower, 1, 1 << 20);
        self.p(follower).apply_replica_fetch(&answer).ok();
        answer
    }

    /// Every byte of a broker's log.
    fn log_bytes(&self, id: u32) -> Vec<u8> {
        let p = self.p(id);
        let mut all = Vec::new();
        let mut offset = p.log().log_start();
        while offset < p.log().log_end() {
            let mut buf = Vec::new();
            let info = p.log().read_into(offset, 1 << 20, None, &mut buf).unwrap();
            all.extend_from_slice(&buf);
            offset = info.next_offset;
        }
        all
    }
}

#[test]
fn the_hw_is_the_minimum_durable_end_over_the_isr() {
    let b = Brokers::new(3, &cache(1, &[1, 2, 3], &[1, 2, 3], 0, None));
    b.p(1).append(&mut batch(&["a", "b", "c"]), true).unwrap();
    b.fetch(2, 1);
    b.fetch(2, 1);
    assert_eq!(b.p(1).high_watermark(), 0, "broker 3 is in the ISR and has nothing");
    b.fetch(3, 1);
    assert_eq!(b.p(1).high_watermark(), 0, "broker 3 has the records but has not reported them yet");
    let answer = b.fetch(3, 1);
    assert_eq!(b.p(1).high_watermark(), 3);
    assert_eq!(answer.high_watermark, 3, "followers learn the HW in the answer");
    b.fetch(2, 1);
    assert_eq!(b.p(2).high_watermark(), 3, "a follower takes the leader's HW");
}

#[test]
fn only_durable_offsets_count_toward_the_hw() {
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 0, Some("2")));
    b.p(1).append(&mut batch(&["a", "b", "c"]), true).unwrap();
    b.fetch(2, 1);
    // The follower has all three but says only one is fsynced.
    let mut request = b.p(2).replica_fetch_request(1).unwrap();
    assert_eq!(request.fetch_offset, 3);
    request.durable_end = 1;
    b.p(1).serve_replica_fetch(&request, 2, 1, 1 << 20);
    assert_eq!(b.p(1).high_watermark(), 1);
    request.durable_end = 3;
    b.p(1).serve_replica_fetch(&request, 2, 1, 1 << 20);
    assert_eq!(b.p(1).high_watermark(), 3);
}

#[test]
fn the_hw_never_moves_while_the_isr_is_below_min_insync_replicas() {
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1], 0, Some("2")));
    b.p(1).append(&mut batch(&["a"]), false).unwrap();
    assert_eq!(b.p(1).high_watermark(), 0);
    let err = b.p(1).append(&mut batch(&["b"]), true).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotEnoughReplicas, "acks=all is refused before the append");
    assert_eq!(b.p(1).log().log_end(), 1);
}

#[test]
fn the_hw_never_moves_back() {
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 0, None));
    b.p(1).append(&mut batch(&["a", "b"]), true).unwrap();
    b.fetch(2, 1);
    b.fetch(2, 1);
    assert_eq!(b.p(1).high_watermark(), 2);
    let mut request = b.p(2).replica_fetch_request(1).unwrap();
    request.fetch_offset = 1;
    request.durable_end = 1;
    b.p(1).serve_replica_fetch(&request, 2, 1, 1 << 20);
    assert_eq!(b.p(1).high_watermark(), 2);
}

#[tokio::test]
async fn acks_all_waits_for_the_hw_and_fails_if_the_isr_shrinks_meanwhile() {
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 0, Some("2")));
    let info = b.p(1).append(&mut batch(&["a"]), true).unwrap();
    let leader = b.p(1);
    let waiter =
        tokio::spawn(
            async move { leader.wait_committed(info.last_offset + 1, Duration::from_secs(30)).await },
        );
    b.fetch(2, 1);
    b.fetch(2, 1);
    tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().expect("committed");

    let info = b.p(1).append(&mut batch(&["b"]), true).unwrap();
    let leader = b.p(1);
    let waiter =
        tokio::spawn(
            async move { leader.wait_committed(info.last_offset + 1, Duration::from_secs(30)).await },
        );
    b.set(1, &cache(1, &[1, 2], &[1], 0, Some("2")));
    let err = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::NotEnoughReplicasAfterAppend);
}

#[test]
fn requests_with_a_stale_or_unknown_leader_epoch_are_refused() {
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 5, None));
    let mut request = b.p(2).replica_fetch_request(1).unwrap();
    request.current_leader_epoch = 4;
    let answer = b.p(1).serve_replica_fetch(&request, 2, 1, 1 << 20);
    assert_eq!(answer.error_code, 74, "FENCED_LEADER_EPOCH: {}", answer.error_message);
    request.current_leader_epoch = 6;
    let answer = b.p(1).serve_replica_fetch(&request, 2, 1, 1 << 20);
    assert_eq!(answer.error_code, 76, "UNKNOWN_LEADER_EPOCH: {}", answer.error_message);
    // A broker that is not a replica gets nothing either.
    request.current_leader_epoch = 5;
    let answer = b.p(1).serve_replica_fetch(&request, 3, 1, 1 << 20);
    assert_eq!(answer.error_code, 6);
    // Nor does anyone once this broker no longer leads.
    b.set(1, &cache(2, &[1, 2], &[1, 2], 6, None));
    let answer = b.p(1).serve_replica_fetch(&request, 2, 1, 1 << 20);
    assert_eq!(answer.error_code, 6);
    assert!(b.p(1).append(&mut batch(&["x"]), false).is_err(), "a deposed leader takes no writes");
}

#[test]
fn a_diverged_follower_truncates_to_the_divergence_point_and_converges() {
    // Epoch 0: broker 1 leads and both brokers get three records.
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 0, Some("1")));
    b.p(1).append(&mut batch(&["a", "b", "c"]), true).unwrap();
    b.fetch(2, 1);
    b.fetch(2, 1);
    assert_eq!(b.p(1).high_watermark(), 3);
    // Epoch 1: broker 2 believes it leads (cut off) and writes two records nobody else has.
    b.set(2, &cache(2, &[1, 2], &[2], 1, Some("1")));
    b.p(2).append(&mut batch(&["x", "y"]), false).unwrap();
    // Epoch 2: broker 1 leads again and writes four others.
    b.set(1, &cache(1, &[1, 2], &[1], 2, Some("1")));
    b.p(1).append(&mut batch(&["d", "e", "f", "g"]), true).unwrap();
    // Broker 2 learns it follows broker 1 in epoch 2.
    b.set(2, &cache(1, &[1, 2], &[1], 2, Some("1")));
    let answer = b.fetch(2, 1);
    assert!(answer.diverging, "{answer:?}");
    assert_eq!((answer.diverging_epoch, answer.diverging_end_offset), (0, 3));
    assert_eq!(b.p(2).log().log_end(), 3, "truncated to the divergence point, not below it");
    b.fetch(2, 1);
    assert_eq!(b.p(2).log().log_end(), 7);
    assert_eq!(b.log_bytes(2), b.log_bytes(1), "the logs match byte for byte");
}

#[test]
fn isr_changes_count_only_once_committed() {
    let b = Brokers::new(3, &cache(1, &[1, 2, 3], &[1, 2], 0, Some("1")));
    b.p(1).append(&mut batch(&["a"]), true).unwrap();
    // Broker 2 never fetches: after the lag time the leader proposes dropping it...
    let live = |_: u32| true;
    let proposal = b.p(1).propose_isr(Duration::ZERO, &live).expect("a shrink");
    let ids: Vec<u32> = proposal.new_isr.iter().map(|m| m.broker_id).collect();
    assert_eq!(ids, [1]);
    assert!(b.p(1).propose_isr(Duration::ZERO, &live).is_none(), "one change in flight at a time");
    // ...but until the controller commits it, broker 2 still holds the HW back.
    assert_eq!(b.p(1).state().isr, [1, 2]);
    assert_eq!(b.p(1).high_watermark(), 0);
    b.p(1).alter_done(true);
    b.set(1, &cache(1, &[1, 2, 3], &[1], 0, Some("1")));
    assert_eq!(b.p(1).high_watermark(), 1, "committed: the leader alone makes the HW");

    // Broker 3 catches up to the HW; the leader proposes adding it and counts it for the
    // HW at once (the controller may commit it any moment, and could then elect it).
    b.set(3, &cache(1, &[1, 2, 3], &[1], 0, Some("1")));
    b.fetch(3, 1);
    b.fetch(3, 1);
    let proposal = b.p(1).propose_isr(Duration::from_secs(60), &live).expect("an expansion");
    let ids: Vec<u32> = proposal.new_isr.iter().map(|m| m.broker_id).collect();
    assert_eq!(ids, [1, 3]);
    b.p(1).append(&mut batch(&["b"]), true).unwrap();
    assert_eq!(b.p(1).high_watermark(), 1, "broker 3 has not got offset 1 yet, and may already count");
    b.fetch(3, 1);
    b.fetch(3, 1);
    assert_eq!(b.p(1).high_watermark(), 2);
    // A fenced replica is never proposed.
    b.p(1).alter_done(false);
    let dead = |id: u32| id != 3;
    assert!(b.p(1).propose_isr(Duration::from_secs(60), &dead).is_none());
}

#[test]
fn the_leader_reports_each_followers_lag_in_records_and_time() {
    let b = Brokers::new(3, &cache(1, &[1, 2, 3], &[1, 2, 3], 0, None));
    b.p(1).append(&mut batch(&["a", "b", "c"]), true).unwrap();
    b.fetch(2, 1);
    b.fetch(2, 1);
    let lags = b.p(1).follower_lags();
    let of = |id: u32| *lags.iter().find(|l| l.follower == id).expect("every follower has a lag");
    assert_eq!(lags.len(), 2, "the leader itself is not listed: {lags:?}");
    assert_eq!(of(2).records, 0, "broker 2 fetched up to the end");
    assert_eq!(of(3).records, 3, "broker 3 never fetched");
    assert!(of(2).since_caught_up <= of(3).since_caught_up, "{lags:?}");
    b.p(1).append(&mut batch(&["d"]), true).unwrap();
    assert_eq!(b.p(1).follower_lags().iter().find(|l| l.follower == 2).unwrap().records, 1);
    assert!(b.p(2).follower_lags().is_empty(), "a follower reports no lags");
}

// ----- idempotent producers -----

fn idempotent(producer_id: i64, epoch: i16, base_sequence: i32, values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).producer(producer_id, epoch, base_sequence);
    for v in values {
        b.push(NewRecord::with_value(v.as_bytes().to_vec(), 1_000));
    }
    b.build().unwrap()
}

#[test]
fn a_follower_that_replicated_a_batch_answers_its_retry_as_a_duplicate_once_it_leads() {
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 0, Some("1")));
    let first = b.p(1).append(&mut idempotent(5, 0, 0, &["a", "b", "c"]), false).unwrap();
    let second = b.p(1).append(&mut idempotent(5, 0, 3, &["d", "e"]), false).unwrap();
    assert_eq!((second.base_offset, second.last_offset, second.duplicate), (3, 4, false));
    let retry = b.p(1).append(&mut idempotent(5, 0, 0, &["a", "b", "c"]), false).unwrap();
    assert_eq!(
        (retry.base_offset, retry.last_offset, retry.duplicate),
        (first.base_offset, first.last_offset, true)
    );
    b.fetch(2, 1);
    b.fetch(2, 1);
    assert_eq!(b.p(2).log().log_end(), 5);

    // Broker 1 dies; broker 2 leads in epoch 1 and gets the producer's retry of its last batch.
    b.set(2, &cache(2, &[1, 2], &[2], 1, Some("1")));
    let answer = b.p(2).append(&mut idempotent(5, 0, 3, &["d", "e"]), true).unwrap();
    assert_eq!((answer.base_offset, answer.last_offset, answer.duplicate), (3, 4, true));
    assert_eq!(b.p(2).log().log_end(), 5, "the retry was not appended again");
    let err = b.p(2).append(&mut idempotent(5, 0, 9, &["z"]), true).unwrap_err();
    assert_eq!(err.code, ErrorCode::OutOfOrderSequenceNumber);
    let next = b.p(2).append(&mut idempotent(5, 0, 5, &["f"]), true).unwrap();
    assert_eq!((next.base_offset, next.duplicate), (5, false));
    assert_eq!(b.p(2).producer_state(5).unwrap().1.len(), 3);
}

#[test]
fn a_follower_that_truncates_rebuilds_its_producer_state_from_what_is_left() {
    // Epoch 0: broker 1 leads; producer 1's first batch reaches both brokers.
    let b = Brokers::new(2, &cache(1, &[1, 2], &[1, 2], 0, Some("1")));
    b.p(1).append(&mut idempotent(1, 0, 0, &["a", "b", "c"]), true).unwrap();
    b.fetch(2, 1);
    b.fetch(2, 1);
    // Epoch 1: broker 2, cut off, believes it leads and takes producer 1's next batch alone.
    b.set(2, &cache(2, &[1, 2], &[2], 1, Some("1")));
    b.p(2).append(&mut idempotent(1, 0, 3, &["x", "y"]), false).unwrap();
    assert_eq!(b.p(2).producer_state(1).unwrap().1.len(), 2);
    // Epoch 2: broker 1 leads again and takes another producer's batch.
    b.set(1, &cache(1, &[1, 2], &[1], 2, Some("1")));
    b.p(1).append(&mut idempotent(2, 0, 0, &["d", "e", "f", "g"]), true).unwrap();
    b.set(2, &cache(1, &[1, 2], &[1], 2, Some("1")));
    let answer = b.fetch(2, 1);
    assert!(answer.diverging, "{answer:?}");
    assert_eq!(b.p(2).log().log_end(), 3);
    assert_eq!(
        b.p(2).producer_state(1),
        b.p(1).producer_state(1),
        "the batch cut off by the truncation is forgotten"
    );
    assert_eq!(b.p(2).producer_state(1).unwrap().1.len(), 1);
    b.fetch(2, 1);
    assert_eq!(b.p(2).producer_state(2), b.p(1).producer_state(2));

    // Broker 2 leads next: producer 1's retry of the lost batch is appended, not a duplicate.
    b.set(2, &cache(2, &[1, 2], &[2], 3, Some("1")));
    let retry = b.p(2).append(&mut idempotent(1, 0, 3, &["x", "y"]), true).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (7, false));
}

#[test]
fn a_reopened_log_rebuilds_its_producer_state() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = LogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 1024,
        index_interval_bytes: 256,
        preallocate_bytes: 0,
        ..LogConfig::default()
    };
    let metadata = cache(1, &[1], &[1], 0, None);
    let tp = TopicPartition::new("t", 0);
    let value = "v".repeat(200);
    let before = {
        let m = ReplicaManager::open(1, dir.path(), defaults.clone()).unwrap();
        m.reconcile(&metadata);
        let p = m.get(&tp).unwrap();
        for seq in 0..12 {
            p.append(&mut idempotent(3, 0, seq, &[&value]), false).unwrap();
            p.append(&mut batch(&["plain"]), false).unwrap();
        }
        p.append(&mut idempotent(4, 2, 0, &["a", "b"]), false).unwrap();
        assert!(p.log().segment_count() > 2, "the rebuild must cross segments");
        (p.producer_state(3), p.producer_state(4))
    };
    let m = ReplicaManager::open(1, dir.path(), defaults).unwrap();
    m.reconcile(&metadata);
    let p = m.get(&tp).unwrap();
    assert_eq!((p.producer_state(3), p.producer_state(4)), before);
    let retry = p.append(&mut idempotent(3, 0, 11, &[&value]), false).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (22, true));
    let fenced = p.append(&mut idempotent(4, 1, 2, &["c"]), false).unwrap_err();
    assert_eq!(fenced.code, ErrorCode::InvalidProducerEpoch);
}

#[test]
fn concurrent_copies_of_one_batch_are_appended_once() {
    let b = Brokers::new(1, &cache(1, &[1], &[1], 0, None));
    let p = b.p(1);
    let answers: Vec<Appended> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| p.append(&mut idempotent(6, 0, 0, &["only", "once"]), false).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(answers.iter().all(|a| (a.base_offset, a.last_offset) == (0, 1)));
    assert_eq!(p.log().log_end(), 2);
}
