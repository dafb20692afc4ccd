//! The shell over one broker's real replica manager (RF 1, fsync never): commits are
//! written to the log and read back by a load, calls wait for the load, and a broker that
//! does not lead the group's partition points at the one that does.

use std::collections::BTreeMap;

use runnel_storage::{FsyncPolicy, LogConfig};

use super::*;
use crate::cache::{BrokerEntry, PartitionEntry, TopicEntry};
use crate::group::state::Heartbeat;

fn cache(offsets_leader: u32, epoch: i32) -> MetadataCache {
    cache_with_isr(offsets_leader, epoch, vec![1])
}

/// `isr` are the offsets partition's replicas and ISR; broker 2 never fetches in these tests.
fn cache_with_isr(offsets_leader: u32, epoch: i32, isr: Vec<u32>) -> MetadataCache {
    let mut cache = MetadataCache { loaded: true, version: epoch as u64 + 1, ..MetadataCache::default() };
    for id in [1, 2] {
        cache.brokers.insert(
            id,
            BrokerEntry {
                epoch: 1,
                grpc: format!("127.0.0.1:5005{id}"),
                kafka: String::new(),
                rack: String::new(),
                fenced: false,
            },
        );
    }
    let entry = |leader: u32| PartitionEntry {
        replicas: vec![1],
        isr: vec![1],
        leader: Some(leader),
        leader_epoch: epoch,
        partition_epoch: epoch,
    };
    let offsets = PartitionEntry { replicas: isr.clone(), isr, ..entry(offsets_leader) };
    cache.topics.insert(
        OFFSETS_TOPIC.into(),
        TopicEntry { id: vec![9; 16], configs: BTreeMap::new(), partitions: vec![offsets] },
    );
    cache.topics.insert(
        "t".into(),
        TopicEntry { id: vec![7; 16], configs: BTreeMap::new(), partitions: vec![entry(1); 6] },
    );
    cache
}

struct Node {
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    status: watch::Sender<BrokerStatus>,
    coordinator: Arc<GroupCoordinator>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    fn start(dir: &std::path::Path, leader: u32) -> Node {
        // Leader epoch 0: the partition's first leadership, with no takeover grace.
        Self::start_with(dir, cache(leader, 0))
    }

    fn start_with(dir: &std::path::Path, first: MetadataCache) -> Node {
        let defaults = LogConfig { fsync: FsyncPolicy::Never, preallocate_bytes: 0, ..LogConfig::default() };
        let replicas = Arc::new(ReplicaManager::open(1, dir, defaults).unwrap());
        let cache = Arc::new(RwLock::new(first));
        replicas.reconcile(&cache.read().unwrap());
        let (status, rx) = watch::channel(BrokerStatus::default());
        let config = GroupConfig {
            offsets_topic_partitions: 1,
            controllers: vec!["127.0.0.1:1".into()],
            request_timeout: Duration::from_secs(1),
        };
        let coordinator =
            Arc::new(GroupCoordinator::new(1, config, Arc::clone(&replicas), Arc::clone(&cache), rx));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&coordinator), cancel.clone()));
        Node { replicas, cache, status, coordinator, cancel, task }
    }

    /// Moves the offsets partition to `leader` at `epoch`, as a metadata update would.
    fn lead(&self, leader: u32, epoch: i32) {
        let next = cache(leader, epoch);
        self.replicas.reconcile(&next);
        *self.cache.write().unwrap() = next;
        self.status.send_modify(|s| s.metadata_version += 1);
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn entry(partition: u32, offset: i64) -> OffsetEntry {
    OffsetEntry { tp: ("t".into(), partition), offset, metadata: format!("at {offset}") }
}

fn join() -> Heartbeat {
    Heartbeat {
        member_id: String::new(),
        member_epoch: 0,
        subscribed: ["t".to_owned()].into(),
        assignor: Assignor::Uniform,
        session_timeout_ms: 45_000,
        rebalance_timeout_ms: 300_000,
        owned: TpSet::new(),
        client_id: "c".into(),
        host: String::new(),
    }
}

/// Retries `f` while the coordinator is loading, for up to 5 s.
async fn loaded<T, F: std::future::Future<Output = Result<T, GroupError>>>(
    mut f: impl FnMut() -> F,
) -> Result<T, GroupError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match f().await {
            Err(e)
                if e.code == GroupErrorCode::CoordinatorLoadInProgress
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

async fn fetch(node: &Node) -> Vec<(u32, i64, String)> {
    let offsets = loaded(|| node.coordinator.fetch_offsets("g", Vec::new())).await.unwrap();
    offsets.into_iter().map(|o| (o.partition, o.offset, o.metadata)).collect()
}

#[tokio::test]
async fn commits_survive_a_reload_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let none = Committer::Member { id: "", epoch: -1 };
    loaded(|| node.coordinator.commit("g", none, vec![entry(0, 5), entry(1, 7)])).await.unwrap();
    node.coordinator.commit("g", none, vec![entry(0, 6)]).await.unwrap();
    let expected = vec![(0, 6, "at 6".to_owned()), (1, 7, "at 7".to_owned())];
    assert_eq!(fetch(&node).await, expected);
    let named = node.coordinator.fetch_offsets("g", vec![("t".into(), 1), ("t".into(), 4)]).await.unwrap();
    assert_eq!(
        named.iter().map(|o| o.offset).collect::<Vec<_>>(),
        vec![7, -1],
        "-1 where nothing is committed"
    );

    // A new leader epoch drops the shard and loads it again from the log.
    node.lead(1, 2);
    assert_eq!(fetch(&node).await, expected);
    node.stop().await;

    // A fresh process over the same log reads the same offsets.
    let node = Node::start(dir.path(), 1);
    assert_eq!(fetch(&node).await, expected);
    let listed = node.coordinator.list_groups();
    assert_eq!(listed.groups.len(), 1);
    assert_eq!((listed.groups[0].group_id.as_str(), listed.groups[0].state.as_str()), ("g", "empty"));
    node.stop().await;
}

#[tokio::test]
async fn commits_are_checked_against_members_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let c = &node.coordinator;
    let member = loaded(|| c.heartbeat("g", join())).await.unwrap();
    assert_eq!(member.assignment.len(), 6);
    let as_member = Committer::Member { id: &member.member_id, epoch: member.member_epoch };
    c.commit("g", as_member, vec![entry(2, 10)]).await.unwrap();
    let stale = Committer::Member { id: &member.member_id, epoch: member.member_epoch - 1 };
    assert_eq!(
        c.commit("g", stale, vec![entry(2, 11)]).await.unwrap_err().code,
        GroupErrorCode::StaleMemberEpoch
    );
    let outsider = Committer::Member { id: "", epoch: -1 };
    assert_eq!(
        c.commit("g", outsider, vec![entry(2, 11)]).await.unwrap_err().code,
        GroupErrorCode::UnknownMemberId
    );
    assert_eq!(
        c.commit("g", Committer::Reset, vec![entry(2, 0)]).await.unwrap_err().code,
        GroupErrorCode::NonEmptyGroup
    );
    let missing = OffsetEntry { tp: ("t".into(), 6), offset: 1, metadata: String::new() };
    assert_eq!(
        c.commit("g", as_member, vec![missing]).await.unwrap_err().code,
        GroupErrorCode::UnknownTopicOrPartition
    );
    let described = c.describe_group("g").await.unwrap();
    assert_eq!((described.members.len(), described.offsets.len(), described.coordinator), (1, 1, 1));
    assert_eq!(described.members[0].target_assignment[0].partitions, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(c.describe_group("nobody").await.unwrap().state, "dead");

    let mut leave = join();
    leave.member_id = member.member_id.clone();
    leave.member_epoch = -1;
    c.heartbeat("g", leave).await.unwrap();
    c.commit("g", Committer::Reset, vec![entry(2, 0)]).await.unwrap();
    assert_eq!(fetch(&node).await, vec![(2, 0, "at 0".to_owned())]);
    node.stop().await;
}

#[tokio::test]
async fn a_broker_that_does_not_lead_the_partition_points_at_the_one_that_does() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    loaded(|| node.coordinator.fetch_offsets("g", Vec::new())).await.unwrap();
    node.lead(2, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let e = loop {
        match node.coordinator.fetch_offsets("g", Vec::new()).await {
            Err(e) if e.code == GroupErrorCode::NotCoordinator => break e,
            other => assert!(tokio::time::Instant::now() < deadline, "still answering {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(e.coordinator, Some((2, "127.0.0.1:50052".to_owned())));
    let found = node.coordinator.find_coordinator("g").await.unwrap();
    assert_eq!((found.broker_id, found.address.as_str(), found.partition), (2, "127.0.0.1:50052", 0));
    assert_eq!(node.coordinator.find_coordinator("").await.unwrap_err().code, GroupErrorCode::InvalidGroupId);
    node.stop().await;
}

#[tokio::test]
async fn a_new_leader_loads_only_once_its_log_end_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let none = Committer::Member { id: "", epoch: -1 };
    loaded(|| node.coordinator.commit("g", none, vec![entry(0, 5)])).await.unwrap();
    node.stop().await;

    // Leading again with a follower in the ISR that has not fetched: the HW stays below the
    // log end, so the records could still be truncated, and nothing is served.
    let node = Node::start_with(dir.path(), cache_with_isr(1, 2, vec![1, 2]));
    for _ in 0..20 {
        let e = node.coordinator.fetch_offsets("g", Vec::new()).await.unwrap_err();
        assert_eq!(e.code, GroupErrorCode::CoordinatorLoadInProgress, "{e}");
        let e = node.coordinator.commit("g", none, vec![entry(0, 6)]).await.unwrap_err();
        assert_eq!(e.code, GroupErrorCode::CoordinatorLoadInProgress, "{e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The follower leaves the ISR: the HW reaches the log end and the load completes.
    let shrunk = cache_with_isr(1, 2, vec![1]);
    node.replicas.reconcile(&shrunk);
    *node.cache.write().unwrap() = shrunk;
    assert_eq!(fetch(&node).await, vec![(0, 5, "at 5".to_owned())]);
    node.stop().await;
}
