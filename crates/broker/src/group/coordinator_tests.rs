//! The shell over one broker's real replica manager (RF 1, fsync never): commits are
//! written to the log and read back by a load, calls wait for the load, and a broker that
//! does not lead the group's partition points at the one that does.

use std::collections::BTreeMap;

use runnel_storage::{FsyncPolicy, LogConfig};

use super::*;
use crate::cache::{BrokerEntry, PartitionEntry, TopicEntry};
use crate::group::classic::{ClassicHeartbeat, JoinGroupRequest, LeaveMember, SyncGroupRequest};
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
                replication: format!("127.0.0.1:5005{id}"),
                kafka: String::new(),
                http: String::new(),
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

/// The classic groups' initial delay in these tests: long enough that members joining
/// "at once" (in one poll of a `join!`) always make the first generation together.
const INITIAL_DELAY: Duration = Duration::from_millis(500);

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
            controllers: crate::ControllerSet::new(vec!["127.0.0.1:1".into()], None),
            request_timeout: Duration::from_secs(1),
            initial_rebalance_delay: INITIAL_DELAY,
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

fn classic(client_id: &str, metadata: &'static str) -> JoinGroupRequest {
    JoinGroupRequest {
        member_id: String::new(),
        group_instance_id: None,
        require_known_member_id: false,
        protocol_type: "consumer".into(),
        protocols: vec![crate::group::classic::JoinProtocol {
            name: "range".into(),
            metadata: Bytes::from_static(metadata.as_bytes()),
        }],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 20_000,
        client_id: client_id.into(),
        client_host: "/127.0.0.1".into(),
    }
}

fn sync(member_id: &str, generation_id: i32, assignments: &[(&str, &'static str)]) -> SyncGroupRequest {
    SyncGroupRequest {
        member_id: member_id.to_owned(),
        generation_id,
        group_instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("range".into()),
        assignments: assignments
            .iter()
            .map(|(m, a)| crate::group::classic::SyncAssignment {
                member_id: (*m).to_owned(),
                assignment: Bytes::from_static(a.as_bytes()),
            })
            .collect(),
    }
}

fn leave(member_id: &str) -> LeaveMember {
    LeaveMember { member_id: member_id.to_owned(), group_instance_id: None }
}

#[tokio::test]
async fn classic_members_joining_at_once_are_both_answered_and_the_leader_relays_the_assignment() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let c = &node.coordinator;
    loaded(|| c.fetch_offsets("g", Vec::new())).await.unwrap();

    let (a, b) =
        tokio::join!(c.join_group("g", classic("a", "meta-a")), c.join_group("g", classic("b", "meta-b")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.generation_id, b.generation_id), (1, 1));
    assert_eq!(a.leader, a.member_id, "the first to join leads");
    assert_eq!(b.leader, a.member_id);
    assert!(b.members.is_empty());
    let seen: Vec<(&str, &[u8])> =
        a.members.iter().map(|m| (m.member_id.as_str(), &m.metadata[..])).collect();
    assert_eq!(seen, vec![(a.member_id.as_str(), &b"meta-a"[..]), (b.member_id.as_str(), &b"meta-b"[..])]);
    assert_eq!(c.group_overviews()[0].state, "CompletingRebalance");

    // The follower syncs first and waits; the leader's sync answers both.
    let assignments = [(a.member_id.as_str(), "to-a"), (b.member_id.as_str(), "to-b")];
    let (sb, sa) = tokio::join!(c.sync_group("g", sync(&b.member_id, 1, &[])), async {
        tokio::task::yield_now().await;
        c.sync_group("g", sync(&a.member_id, 1, &assignments)).await
    });
    assert_eq!(sa.unwrap().assignment, "to-a");
    assert_eq!(sb.unwrap().assignment, "to-b");
    let hb = |m: &str, generation_id| ClassicHeartbeat {
        member_id: m.to_owned(),
        generation_id,
        group_instance_id: None,
    };
    c.classic_heartbeat("g", hb(&b.member_id, 1)).await.unwrap();
    assert_eq!(
        c.classic_heartbeat("g", hb(&b.member_id, 0)).await.unwrap_err().code,
        GroupErrorCode::IllegalGeneration
    );

    // A commit by generation lands in the same offsets the gRPC groups read.
    let member = Committer::Classic { member_id: &b.member_id, generation_id: 1, group_instance_id: None };
    c.commit("g", member, vec![entry(3, 42)]).await.unwrap();
    assert_eq!(fetch(&node).await, vec![(3, 42, "at 42".to_owned())]);
    let stale = Committer::Classic { member_id: &b.member_id, generation_id: 0, group_instance_id: None };
    assert_eq!(
        c.commit("g", stale, vec![entry(3, 43)]).await.unwrap_err().code,
        GroupErrorCode::IllegalGeneration
    );
    let simple = Committer::Classic { member_id: "", generation_id: -1, group_instance_id: None };
    assert_eq!(
        c.commit("g", simple, vec![entry(3, 43)]).await.unwrap_err().code,
        GroupErrorCode::UnknownMemberId
    );

    // Listing and describing, in both shapes.
    let listed = c.list_groups();
    assert_eq!((listed.groups[0].state.as_str(), listed.groups[0].member_count), ("Stable", 2));
    let overview = &c.group_overviews()[0];
    assert_eq!(
        (overview.kind, overview.protocol_type.as_str(), overview.state, overview.member_count),
        (GroupKind::Classic, "consumer", "Stable", 2)
    );
    let described = c.group_description("g").await.unwrap();
    assert_eq!(
        (described.state, described.protocol.as_str(), described.generation_id),
        ("Stable", "range", 1)
    );
    let members: Vec<(&str, &[u8], &[u8])> = described
        .members
        .iter()
        .map(|m| (m.client_id.as_str(), &m.metadata[..], &m.assignment[..]))
        .collect();
    assert_eq!(members, vec![("a", &b"meta-a"[..], &b"to-a"[..]), ("b", &b"meta-b"[..], &b"to-b"[..])]);
    assert_eq!(c.describe_group("g").await.unwrap().members.len(), 2, "the gRPC shape still answers");
    assert_eq!(c.group_description("nobody").await.unwrap().state, "Dead");

    // The KIP-848 protocol cannot join while classic members are in.
    assert_eq!(c.heartbeat("g", join()).await.unwrap_err().code, GroupErrorCode::InconsistentGroupProtocol);

    // DeleteGroups: only once empty; tombstones survive a restart.
    let ids = ["g".to_owned(), "nobody".to_owned()];
    let refused = c.delete_groups(&ids).await;
    assert_eq!(refused[0].1.as_ref().unwrap_err().code, GroupErrorCode::NonEmptyGroup);
    assert_eq!(refused[1].1.as_ref().unwrap_err().code, GroupErrorCode::GroupIdNotFound);
    let left = c.leave_group("g", vec![leave(&a.member_id), leave(&b.member_id)]).await.unwrap();
    assert!(left.iter().all(|l| l.result.is_ok()), "{left:?}");
    assert_eq!(c.group_overviews()[0].state, "Empty");
    let deleted = c.delete_groups(&ids[..1]).await;
    assert_eq!(deleted, vec![("g".to_owned(), Ok(()))]);
    assert!(fetch(&node).await.is_empty());
    assert!(c.group_overviews().is_empty());
    node.stop().await;
    let node = Node::start(dir.path(), 1);
    assert!(fetch(&node).await.is_empty(), "the tombstones were written");
    node.stop().await;
}

#[tokio::test]
async fn a_new_classic_member_is_answered_once_the_others_have_joined_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let c = Arc::clone(&node.coordinator);
    loaded(|| c.fetch_offsets("g", Vec::new())).await.unwrap();

    // v4+: the id first, then the join.
    let mut first = classic("a", "meta-a");
    first.require_known_member_id = true;
    let e = c.join_group("g", first.clone()).await.unwrap_err();
    assert_eq!(e.code, GroupErrorCode::MemberIdRequired);
    first.member_id = e.member_id.expect("the new id comes with the error");
    let a = c.join_group("g", first.clone()).await.unwrap();
    assert_eq!((a.generation_id, a.members.len()), (1, 1));
    c.sync_group("g", sync(&a.member_id, 1, &[(&a.member_id, "all")])).await.unwrap();

    // b joins the stable group and waits; a learns of the rebalance from its heartbeat.
    let joining = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.join_group("g", classic("b", "meta-b")).await })
    };
    let hb = ClassicHeartbeat { member_id: a.member_id.clone(), generation_id: 1, group_instance_id: None };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match c.classic_heartbeat("g", hb.clone()).await {
            Err(e) if e.code == GroupErrorCode::RebalanceInProgress => break,
            other => assert!(tokio::time::Instant::now() < deadline, "still {other:?}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(!joining.is_finished(), "b waits for a");
    let again = c.join_group("g", first).await.unwrap();
    let b = joining.await.unwrap().unwrap();
    assert_eq!((again.generation_id, b.generation_id), (2, 2));
    assert_eq!((again.leader.as_str(), again.members.len()), (a.member_id.as_str(), 2));
    node.stop().await;
}

#[tokio::test]
async fn a_waiting_join_is_told_when_the_coordinator_moves() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let c = Arc::clone(&node.coordinator);
    loaded(|| c.fetch_offsets("g", Vec::new())).await.unwrap();
    // a is stable with a long rebalance timeout and never joins again, so only the move can
    // end b's wait.
    let mut slow = classic("a", "m");
    slow.rebalance_timeout_ms = 600_000;
    let a = c.join_group("g", slow).await.unwrap();
    c.sync_group("g", sync(&a.member_id, 1, &[])).await.unwrap();
    let joining = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.join_group("g", classic("b", "m")).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.group_overviews()[0].state != "PreparingRebalance" {
        assert!(tokio::time::Instant::now() < deadline, "b's join never arrived");
        tokio::task::yield_now().await;
    }
    node.lead(2, 2);
    let e = joining.await.unwrap().unwrap_err();
    assert_eq!(e.code, GroupErrorCode::NotCoordinator, "{e}");
    node.stop().await;
}
