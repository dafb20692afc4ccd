//! Consumer groups on three real `runnel node` processes, through raw GroupService clients
//! (as a non-Rust client would use them): commits and fetches, a wrong broker answering
//! NOT_COORDINATOR, resets refused while the group has members, committed offsets kept across
//! `kill -9` of the coordinator's node, and KIP-848 membership splitting a 6-partition topic
//! 3/3, then 2/2/2, then moving a silent member's partitions after its session timeout.
//!
//! Every wait is a poll against a deadline; the cluster's nodes are killed when it drops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::group_service_client::GroupServiceClient;
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL, error_name};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 6;

fn start3() -> Cluster {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.extra_args =
        ["--election-timeout-min-ms", "300", "--election-timeout-max-ms", "600"].map(str::to_owned).to_vec();
    Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

async fn create_topic(cluster: &Cluster) {
    let request = pb::CreateTopicRequest {
        name: TOPIC.into(),
        partitions: PARTITIONS,
        replication_factor: 3,
        configs: Default::default(),
    };
    cluster.create_topic(1, request, DEADLINE).await.unwrap();
    cluster.wait_for_partition_leaders(1, TOPIC, DEADLINE).await.unwrap();
}

async fn client(cluster: &Cluster, id: u64) -> Option<GroupServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{}", cluster.node(id).grpc_addr()))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()?;
    Some(GroupServiceClient::new(channel))
}

/// Errors a client retries after finding the coordinator again: loading, no leader, not the
/// coordinator, a commit not replicated in time, and no answer at all.
fn retriable(status: &tonic::Status) -> bool {
    matches!(
        error_name(status).as_str(),
        "COORDINATOR_LOAD_IN_PROGRESS"
            | "COORDINATOR_NOT_AVAILABLE"
            | "NOT_COORDINATOR"
            | "REQUEST_TIMED_OUT"
            | ""
    )
}

/// The coordinator of `group` as some running node names it, retrying until it answers.
async fn find_coordinator(cluster: &Cluster, group: &str) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        for id in cluster.ids().into_iter().filter(|&id| cluster.is_up(id)) {
            let Some(mut c) = client(cluster, id).await else { continue };
            match c.find_coordinator(pb::FindCoordinatorRequest { group_id: group.into() }).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let coordinator = u64::from(r.broker_id);
                    assert_eq!(r.address, cluster.node(coordinator).grpc_addr().to_string());
                    if cluster.is_up(coordinator) {
                        return coordinator;
                    }
                    last = format!("node {id} names node {coordinator}, which is down");
                }
                Err(e) => last = format!("node {id}: {e:?}"),
            }
        }
        assert!(Instant::now() < deadline, "no coordinator for {group} within {DEADLINE:?}: {last}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Calls `f` on the coordinator of `group`, finding it again after each retriable error.
async fn on_coordinator<T, F, Fut>(cluster: &Cluster, group: &str, f: F) -> Result<T, tonic::Status>
where
    F: Fn(GroupServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        let id = find_coordinator(cluster, group).await;
        let result = match client(cluster, id).await {
            Some(c) => f(c).await,
            None => Err(tonic::Status::unavailable("cannot connect")),
        };
        match result {
            Err(e) if retriable(&e) && Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
            other => return other,
        }
    }
}

fn offsets(values: &[(u32, i64)]) -> Vec<pb::OffsetCommitPartition> {
    values
        .iter()
        .map(|&(partition, offset)| pb::OffsetCommitPartition {
            topic: TOPIC.into(),
            partition,
            offset,
            metadata: format!("meta-{offset}"),
        })
        .collect()
}

async fn commit(cluster: &Cluster, group: &str, values: &[(u32, i64)]) {
    let request = pb::OffsetCommitRequest {
        group_id: group.into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: offsets(values),
    };
    on_coordinator(cluster, group, |mut c| {
        let request = request.clone();
        async move { c.offset_commit(request).await }
    })
    .await
    .unwrap_or_else(|e| panic!("commit to {group}: {e:?}"));
}

async fn fetch(cluster: &Cluster, group: &str) -> BTreeMap<u32, (i64, String)> {
    let request = pb::OffsetFetchRequest { group_id: group.into(), partitions: Vec::new() };
    let answer = on_coordinator(cluster, group, |mut c| {
        let request = request.clone();
        async move { c.offset_fetch(request).await }
    })
    .await
    .unwrap_or_else(|e| panic!("fetch of {group}: {e:?}"))
    .into_inner();
    answer.offsets.into_iter().map(|o| (o.partition, (o.offset, o.metadata))).collect()
}

fn expected(values: &[(u32, i64)]) -> BTreeMap<u32, (i64, String)> {
    values.iter().map(|&(p, o)| (p, (o, format!("meta-{o}")))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_fetch_back_and_only_the_coordinator_serves_the_group() {
    let cluster = start3();
    create_topic(&cluster).await;
    let group = "billing";
    let values = [(0, 10), (1, 11), (5, 15)];
    commit(&cluster, group, &values).await;
    assert_eq!(fetch(&cluster, group).await, expected(&values));

    // A named partition without a commit answers -1.
    let named = pb::OffsetFetchRequest {
        group_id: group.into(),
        partitions: vec![pb::TopicPartitions { topic: TOPIC.into(), partitions: vec![1, 2] }],
    };
    let answer = on_coordinator(&cluster, group, |mut c| {
        let named = named.clone();
        async move { c.offset_fetch(named).await }
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(answer.offsets.iter().map(|o| o.offset).collect::<Vec<_>>(), vec![11, -1]);

    // Any other broker refuses with NOT_COORDINATOR and names the coordinator.
    let coordinator = find_coordinator(&cluster, group).await;
    let other = cluster.ids().into_iter().find(|&id| id != coordinator).unwrap();
    let mut c = client(&cluster, other).await.unwrap();
    let e = c
        .offset_fetch(pb::OffsetFetchRequest { group_id: group.into(), partitions: vec![] })
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), "NOT_COORDINATOR", "{e:?}");
    let hint = e.metadata().get("runnel-leader").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(hint, Some(cluster.node(coordinator).grpc_addr().to_string()));

    // An unknown partition is refused; so is a bad group id.
    let bad = pb::OffsetCommitRequest {
        group_id: group.into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: offsets(&[(PARTITIONS, 1)]),
    };
    let e = on_coordinator(&cluster, group, |mut c| {
        let bad = bad.clone();
        async move { c.offset_commit(bad).await }
    })
    .await
    .unwrap_err();
    assert_eq!(error_name(&e), "UNKNOWN_TOPIC_OR_PARTITION");
    let e = c.find_coordinator(pb::FindCoordinatorRequest { group_id: String::new() }).await.unwrap_err();
    assert_eq!(error_name(&e), "INVALID_GROUP_ID");

    // With a member in the group, a reset is refused; once it left, the reset applies.
    let join = heartbeat_request(group, "", 0, &BTreeSet::new(), 45_000);
    let member = on_coordinator(&cluster, group, |mut c| {
        let join = join.clone();
        async move { c.consumer_group_heartbeat(join).await }
    })
    .await
    .unwrap()
    .into_inner();
    let reset = pb::ResetOffsetsRequest { group_id: group.into(), offsets: offsets(&[(0, 0)]) };
    let reset_call = |reset: pb::ResetOffsetsRequest| {
        on_coordinator(&cluster, group, move |mut c| {
            let reset = reset.clone();
            async move { c.reset_offsets(reset).await }
        })
    };
    let e = reset_call(reset.clone()).await.unwrap_err();
    assert_eq!(error_name(&e), "NON_EMPTY_GROUP", "{e:?}");
    let listed =
        client(&cluster, coordinator).await.unwrap().list_groups(pb::ListGroupsRequest {}).await.unwrap();
    let listing = listed.into_inner().groups.into_iter().find(|g| g.group_id == group).expect("listed");
    assert_eq!(listing.member_count, 1);
    let leave = heartbeat_request(group, &member.member_id, -1, &BTreeSet::new(), 45_000);
    on_coordinator(&cluster, group, |mut c| {
        let leave = leave.clone();
        async move { c.consumer_group_heartbeat(leave).await }
    })
    .await
    .unwrap();
    reset_call(reset).await.unwrap();
    assert_eq!(fetch(&cluster, group).await, expected(&[(0, 0), (1, 11), (5, 15)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_kill_9_of_the_coordinator() {
    let mut cluster = start3();
    create_topic(&cluster).await;
    let group = "survivor";
    let values: Vec<(u32, i64)> = (0..PARTITIONS).map(|p| (p, 100 + i64::from(p))).collect();
    commit(&cluster, group, &values).await;
    // A second commit, so the log holds more than one batch and the later one must win.
    let later: Vec<(u32, i64)> = (0..PARTITIONS).map(|p| (p, 200 + i64::from(p))).collect();
    commit(&cluster, group, &later).await;
    let before = fetch(&cluster, group).await;
    assert_eq!(before, expected(&later));

    let coordinator = find_coordinator(&cluster, group).await;
    let controller = cluster.wait_for_leader(None, DEADLINE).await.unwrap();
    cluster.kill(coordinator).unwrap();
    let killed = Instant::now();
    let successor = find_coordinator(&cluster, group).await;
    assert_ne!(successor, coordinator);
    let after = fetch(&cluster, group).await;
    println!(
        "coordinator node {coordinator} (controller leader: {}) killed; node {successor} serves the same \
         offsets after {:?}",
        controller == coordinator,
        killed.elapsed()
    );
    assert_eq!(after, before, "the offsets committed before the kill are the ones used after");

    // The new coordinator takes commits too.
    commit(&cluster, group, &[(0, 300)]).await;
    assert_eq!(fetch(&cluster, group).await.get(&0).map(|v| v.0), Some(300));
}

fn heartbeat_request(
    group: &str,
    member_id: &str,
    epoch: i32,
    owned: &BTreeSet<u32>,
    session_timeout_ms: u32,
) -> pb::ConsumerGroupHeartbeatRequest {
    pb::ConsumerGroupHeartbeatRequest {
        group_id: group.into(),
        member_id: member_id.into(),
        member_epoch: epoch,
        subscribed_topics: vec![TOPIC.into()],
        assignor: "uniform".into(),
        session_timeout_ms,
        rebalance_timeout_ms: 0,
        owned_partitions: if owned.is_empty() {
            Vec::new()
        } else {
            vec![pb::TopicPartitions { topic: TOPIC.into(), partitions: owned.iter().copied().collect() }]
        },
        client_id: "groups-test".into(),
    }
}

/// A member driven by the test: it owns exactly what the last answer gave it (it gives up
/// revoked partitions at once).
#[derive(Debug, Default)]
struct Member {
    id: String,
    epoch: i32,
    owned: BTreeSet<u32>,
    last_ok: Option<Instant>,
    /// Times it joined again after UNKNOWN_MEMBER_ID.
    rejoins: u32,
}

const SESSION_MS: u32 = 3_000;

async fn beat(cluster: &Cluster, group: &str, m: &mut Member) {
    let request = heartbeat_request(group, &m.id, m.epoch, &m.owned, SESSION_MS);
    let answer = on_coordinator(cluster, group, |mut c| {
        let request = request.clone();
        async move { c.consumer_group_heartbeat(request).await }
    })
    .await;
    let answer = match answer {
        // A new coordinator does not know the member: it joins again under its id, reporting
        // what it still owns (group.proto).
        Err(e) if error_name(&e) == "UNKNOWN_MEMBER_ID" && m.epoch > 0 => {
            m.epoch = 0;
            m.rejoins += 1;
            return Box::pin(beat(cluster, group, m)).await;
        }
        other => other.unwrap_or_else(|e| panic!("heartbeat of {m:?}: {e:?}")).into_inner(),
    };
    assert!(answer.heartbeat_interval_ms > 0 && answer.heartbeat_interval_ms <= 1_000);
    m.id = answer.member_id;
    m.epoch = answer.member_epoch;
    m.owned = answer
        .assignment
        .iter()
        .filter(|t| t.topic == TOPIC)
        .flat_map(|t| t.partitions.iter().copied())
        .collect();
    m.last_ok = Some(Instant::now());
}

/// Heartbeats every member in `active` until their partition counts are `sizes` (sorted)
/// and together cover the topic; checks at every step that no partition is owned twice.
async fn converge(cluster: &Cluster, group: &str, members: &mut [Member], active: &[usize], sizes: &[usize]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for &i in active {
            beat(cluster, group, &mut members[i]).await;
            let mut seen = BTreeSet::new();
            for &j in active {
                for p in &members[j].owned {
                    assert!(seen.insert(*p), "partition {p} owned twice: {members:?}");
                }
            }
        }
        let mut counts: Vec<usize> = active.iter().map(|&i| members[i].owned.len()).collect();
        counts.sort_unstable();
        let covered: usize = counts.iter().sum();
        if counts == sizes && covered == PARTITIONS as usize {
            return;
        }
        assert!(Instant::now() < deadline, "no {sizes:?} split within {DEADLINE:?}: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_partitions_and_rebalance_on_join_and_silence() {
    let cluster = start3();
    create_topic(&cluster).await;
    let group = "splitters";
    let mut members: Vec<Member> = (0..3).map(|_| Member::default()).collect();
    converge(&cluster, group, &mut members, &[0, 1], &[3, 3]).await;
    converge(&cluster, group, &mut members, &[0, 1, 2], &[2, 2, 2]).await;
    let epochs: Vec<i32> = members.iter().map(|m| m.epoch).collect();
    assert!(epochs.iter().all(|&e| e == epochs[0]), "a stable group has one epoch: {epochs:?}");

    // Member 2 goes silent; the others keep heartbeating until they own everything.
    let silent_since = members[2].last_ok.expect("it heartbeated");
    let deadline = Instant::now() + DEADLINE;
    loop {
        for i in [0, 1] {
            beat(&cluster, group, &mut members[i]).await;
        }
        let owned: BTreeSet<u32> = members[0].owned.union(&members[1].owned).copied().collect();
        if owned.len() == PARTITIONS as usize {
            break;
        }
        assert!(Instant::now() < deadline, "the silent member's partitions never moved: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved_after = silent_since.elapsed();
    println!(
        "a silent member's partitions moved {moved_after:?} after its last heartbeat (session {SESSION_MS} ms)"
    );
    let session = Duration::from_millis(u64::from(SESSION_MS));
    // The coordinator stamped the last heartbeat a little before the answer arrived here.
    let slack = Duration::from_millis(100);
    assert!(moved_after + slack >= session, "not before its session timeout: {moved_after:?}");
    assert!(
        moved_after <= session + Duration::from_secs(1),
        "within the session timeout + 1 s: {moved_after:?}"
    );
    assert_eq!((members[0].owned.len(), members[1].owned.len()), (3, 3));

    // The silent member was removed: its next heartbeat is refused, and it may join again.
    let stale = heartbeat_request(group, &members[2].id, members[2].epoch, &BTreeSet::new(), SESSION_MS);
    let e = on_coordinator(&cluster, group, |mut c| {
        let stale = stale.clone();
        async move { c.consumer_group_heartbeat(stale).await }
    })
    .await
    .unwrap_err();
    assert_eq!(error_name(&e), "UNKNOWN_MEMBER_ID", "{e:?}");

    let described = on_coordinator(&cluster, group, |mut c| async move {
        c.describe_group(pb::DescribeGroupRequest { group_id: group.into() }).await
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(described.members.len(), 2);
    assert_eq!(described.assignor, "uniform");
    for m in &described.members {
        assert_eq!(m.client_id, "groups-test");
        assert!(m.host.starts_with("127.0.0.1:"), "the peer address: {:?}", m.host);
        assert_eq!(m.subscribed_topics, vec![TOPIC.to_owned()]);
        let target: usize = m.target_assignment.iter().map(|t| t.partitions.len()).sum();
        assert_eq!(target, 3);
    }
    assert!(matches!(described.state.as_str(), "stable" | "reconciling"), "{}", described.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_keep_their_partitions_across_kill_9_of_the_coordinator() {
    let mut cluster = start3();
    create_topic(&cluster).await;
    let group = "steadfast";
    let mut members: Vec<Member> = (0..2).map(|_| Member::default()).collect();
    converge(&cluster, group, &mut members, &[0, 1], &[3, 3]).await;
    let before: Vec<BTreeSet<u32>> = members.iter().map(|m| m.owned.clone()).collect();

    let coordinator = find_coordinator(&cluster, group).await;
    cluster.kill(coordinator).unwrap();
    let killed = Instant::now();
    // Both rejoin the new coordinator reporting what they own; neither loses a partition,
    // and no partition is ever given to the other one meanwhile.
    let deadline = Instant::now() + DEADLINE;
    loop {
        for i in 0..2 {
            beat(&cluster, group, &mut members[i]).await;
            assert!(members[0].owned.is_disjoint(&members[1].owned), "owned twice: {members:?}");
        }
        let rejoined = members.iter().all(|m| m.rejoins > 0);
        if rejoined && members.iter().zip(&before).all(|(m, b)| m.owned == *b) {
            break;
        }
        assert!(Instant::now() < deadline, "the members did not settle on the new coordinator: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("both members rejoined with their partitions {:?} after the kill", killed.elapsed());
    assert_ne!(find_coordinator(&cluster, group).await, coordinator);
}
