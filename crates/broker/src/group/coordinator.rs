//! The I/O shell around [`Groups`]: which `__consumer_offsets` partitions this broker leads
//! (one shard of groups each), loading a shard from its log, writing commits with acks=all,
//! creating the topic on first use, and the clock.
//!
//! - **Leadership.** [`run`] follows the replica manager (after every reconcile, and every
//!   [`EXPIRY_CHECK_INTERVAL`]): a partition this broker now leads in a new leader epoch gets
//!   a fresh shard in the *loading* state; one it no longer leads loses its shard (and
//!   every member with it: members live only in memory and rejoin).
//! - **Loading** waits until the HW reaches the log end this leadership started with, so
//!   everything it reads is committed (a new leader's HW can trail until its followers have
//!   fetched), then reads the log from its start to the HW. Until then calls answer
//!   COORDINATOR_LOAD_IN_PROGRESS.
//! - **Commits** check the member and append one batch under the shards lock (so a check and
//!   its append are atomic, and no load can start between them), then wait outside it for
//!   the HW to pass the batch. The offsets become visible when the HW covers them, in log
//!   order, through a queue of pending batches, also drained by the periodic tick: a commit
//!   whose wait timed out still shows once it commits.
//! - **Classic groups** ([`super::classic`]): a JoinGroup or SyncGroup that must wait parks a
//!   oneshot sender in its shard, keyed by group and member; every call (and the tick, which
//!   ends due join phases and expires sessions) hands the state machine's replies to the
//!   waiting senders under the shards lock, and the callers await outside it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::batch::BatchIter;
use runnel_storage::record::{BatchBuilder, DecodeLimits, NewRecord, decode_batch};
use runnel_storage::{BATCH_BYTES_LIMIT, Compression, TopicPartition};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::assign::{Assignor, TopicCounts, Tp, TpSet};
use super::classic::{
    ClassicHeartbeat, ClassicReply, ClassicState, INITIAL_REBALANCE_DELAY_DEFAULT_MS, JoinGroupOutcome,
    JoinGroupRequest, LeaveMember, LeaveOutcome, SyncGroupOutcome, SyncGroupRequest,
};
use super::error::{GroupError, GroupErrorCode};
use super::record::{self, GROUP_ID_BYTES_MAX, OffsetKey, OffsetValue, OffsetsRecord};
use super::state::{Committed, Group, GroupState, Groups, Heartbeat, HeartbeatAnswer};
use crate::cache::MetadataCache;
use crate::error::{ERROR_CODE_KEY, LEADER_KEY};
use crate::replica::{Partition, ReplicaManager};
use crate::{BrokerStatus, Controllers};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of the offsets topic when the node sets none. Kafka uses 50; Runnel's
/// clusters are small and every partition costs a log, an fsync thread and a replica fetch
/// entry on three brokers, while 8 still spreads coordinators over the brokers of a
/// cluster of up to 8. The count is fixed once the topic exists (the hash depends on it).
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: u32 = 8;
/// Replication factor of the offsets topic, capped by the live brokers at creation.
pub const OFFSETS_TOPIC_REPLICATION_MAX: usize = 3;
/// `min.insync.replicas` of the offsets topic, capped by its replication factor.
pub const OFFSETS_TOPIC_MIN_INSYNC_MAX: usize = 2;
/// Segment size of the offsets topic (Kafka's `offsets.topic.segment.bytes`).
pub const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 100 << 20;
/// How often silent members are looked for, and pending commits applied.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a commit waits for the HW (Kafka's `offsets.commit.timeout.ms`).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a newly created offsets topic to reach this broker's metadata.
pub const TOPIC_CREATE_WAIT: Duration = Duration::from_secs(5);
/// Bytes read per step while loading a shard.
pub const LOAD_READ_BYTES: usize = 4 << 20;
/// Pause before a failed load is tried again.
pub const LOAD_RETRY: Duration = Duration::from_secs(1);
/// Most offsets one commit or reset may carry.
pub const COMMIT_PARTITIONS_MAX: usize = 10_000;
/// Most topics one member may subscribe to.
pub const SUBSCRIBED_TOPICS_MAX: usize = 1_000;
/// Most partitions one heartbeat may say it owns, and one fetch may name.
pub const PARTITIONS_PER_REQUEST_MAX: usize = 100_000;
/// Longest client id.
pub const CLIENT_ID_BYTES_MAX: usize = 255;
/// How long a classic group leaving Empty waits for more members when the node sets
/// nothing (Kafka's `group.initial.rebalance.delay.ms` default).
pub const INITIAL_REBALANCE_DELAY_DEFAULT: Duration =
    Duration::from_millis(INITIAL_REBALANCE_DELAY_DEFAULT_MS);
/// How long a waiting JoinGroup or SyncGroup waits beyond the time the state machine answers
/// within (its timeouts are checked every [`EXPIRY_CHECK_INTERVAL`], on a busy machine).
pub const CLASSIC_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// Most tombstones in one batch of a DeleteGroups: a tombstone's key is at most about 520
/// bytes, so a batch stays below the offsets topic's default `max.message.bytes` (1 MiB).
pub const TOMBSTONES_PER_BATCH_MAX: usize = 1_000;

/// Java's `String.hashCode`: `h = 31 * h + c` over the UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)))
}

/// The offsets partition of `group_id` among `partitions`, as Kafka computes it:
/// `abs(hashCode) % partitions`, where `abs(i32::MIN)` is 0 (Kafka's `Utils.abs`).
pub fn coordinator_partition(group_id: &str, partitions: u32) -> u32 {
    let hash = java_string_hash(group_id);
    let abs = if hash == i32::MIN { 0 } else { hash.unsigned_abs() };
    abs % partitions.max(1)
}

/// What the coordinator needs besides the replicas and the metadata.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Partitions of the offsets topic when this broker creates it.
    pub offsets_topic_partitions: u32,
    /// The controller voters (for CreateTopic).
    pub controllers: crate::ControllerSet,
    /// Deadline of one controller call.
    pub request_timeout: Duration,
    /// How long a classic group leaving Empty waits for more members before its first
    /// generation, extended while members keep arriving (Kafka's
    /// `group.initial.rebalance.delay.ms`; [`INITIAL_REBALANCE_DELAY_DEFAULT`]).
    pub initial_rebalance_delay: Duration,
}

/// A batch appended but not yet known committed.
#[derive(Debug)]
struct Pending {
    end: u64,
    entries: Vec<(OffsetKey, Option<OffsetValue>)>,
}

/// A parked JoinGroup or SyncGroup: its sender and a token telling this call's apart from
/// a later call of the same member.
type Waiter<T> = (u64, oneshot::Sender<Result<T, GroupError>>);

/// The classic calls waiting for an answer, by (group, member). Dropped with the shard, so
/// a coordinator that loses the partition ends every wait.
#[derive(Debug, Default)]
struct Waiters {
    next_token: u64,
    joins: BTreeMap<(String, String), Waiter<JoinGroupOutcome>>,
    syncs: BTreeMap<(String, String), Waiter<SyncGroupOutcome>>,
}

impl Waiters {
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Hands each reply to its waiter; a reply nobody waits for (the call gave up) is dropped.
    fn deliver(&mut self, replies: Vec<ClassicReply>) {
        for reply in replies {
            match reply {
                ClassicReply::Join { group_id, member_id, result } => {
                    if let Some((_, tx)) = self.joins.remove(&(group_id, member_id)) {
                        let _ = tx.send(result);
                    }
                }
                ClassicReply::Sync { group_id, member_id, result } => {
                    if let Some((_, tx)) = self.syncs.remove(&(group_id, member_id)) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
    }
}

/// One offsets partition this broker leads.
#[derive(Debug)]
enum Shard {
    Loading { epoch: i32 },
    Loaded { epoch: i32, groups: Groups, pending: VecDeque<Pending>, waiters: Waiters },
}

impl Shard {
    fn epoch(&self) -> i32 {
        match self {
            Shard::Loading { epoch } | Shard::Loaded { epoch, .. } => *epoch,
        }
    }
}

/// Where a group is coordinated: the leader of its offsets partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorLocation {
    /// The coordinator's broker id.
    pub broker_id: u32,
    /// Its gRPC address (a Kafka front-end looks up the broker's Kafka address by id).
    pub address: String,
    /// The group's `__consumer_offsets` partition.
    pub partition: u32,
}

/// A committed offset as OffsetFetch answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset; -1 when none is committed (only for partitions asked for by name).
    pub offset: i64,
    /// The metadata stored with it.
    pub metadata: String,
    /// When it was committed, in ms since the Unix epoch; -1 when none.
    pub commit_timestamp_ms: i64,
}

impl From<CommittedOffset> for pb::CommittedOffset {
    fn from(c: CommittedOffset) -> Self {
        pb::CommittedOffset {
            topic: c.topic,
            partition: c.partition,
            offset: c.offset,
            metadata: c.metadata,
            commit_timestamp_ms: c.commit_timestamp_ms,
        }
    }
}

/// One offset of a commit, validated.
#[derive(Debug, Clone)]
pub struct OffsetEntry {
    /// Topic and partition.
    pub tp: Tp,
    /// The offset.
    pub offset: i64,
    /// Stored with it.
    pub metadata: String,
}

/// Who commits.
#[derive(Debug, Clone, Copy)]
pub enum Committer<'a> {
    /// A member (or a non-member: empty id, epoch -1) via OffsetCommit.
    Member {
        /// The member id.
        id: &'a str,
        /// Its epoch.
        epoch: i32,
    },
    /// An operator via ResetOffsets: only when the group has no members.
    Reset,
    /// A classic member (or a consumer that only stores offsets: generation -1) via Kafka's
    /// OffsetCommit; checked as Kafka checks it (see [`Groups::check_classic_commit`]).
    Classic {
        /// The member id (empty for a non-member).
        member_id: &'a str,
        /// The generation it is in (-1 for a non-member).
        generation_id: i32,
        /// Its group instance id, if static.
        group_instance_id: Option<&'a str>,
    },
}

/// The protocol of a group's members, as Kafka's ListGroups v5 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// JoinGroup/SyncGroup members, or no members (a group with only offsets is listed as
    /// classic, as Kafka lists it).
    Classic,
    /// KIP-848 members (ConsumerGroupHeartbeat).
    Consumer,
}

impl GroupKind {
    /// Kafka's name ("classic" or "consumer").
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::Classic => "classic",
            GroupKind::Consumer => "consumer",
        }
    }
}

/// One group as Kafka's ListGroups lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    /// The group id.
    pub group_id: String,
    /// Which protocol its members use.
    pub kind: GroupKind,
    /// The classic protocol type ("consumer" for KIP-848 groups; "" when none is known).
    pub protocol_type: String,
    /// Kafka's state name ("Empty", "PreparingRebalance", "CompletingRebalance", "Stable";
    /// for KIP-848 groups "Empty", "Assigning", "Reconciling", "Stable").
    pub state: &'static str,
    /// Members of either protocol.
    pub member_count: usize,
}

/// One coordinated group, for metrics (see [`GroupCoordinator::group_metrics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetrics {
    /// The group id.
    pub group_id: String,
    /// Members of either protocol.
    pub members: usize,
    /// Rebalances since this broker took the group over: the KIP-848 group epoch plus the
    /// classic generation.
    pub rebalances: u64,
    /// Per committed partition (topic, partition, committed offset): the partition's high
    /// watermark as this broker knows it minus the committed offset; `None` where this broker
    /// hosts no replica of the partition.
    pub lags: Vec<(String, u32, i64, Option<u64>)>,
}

/// One member as Kafka's DescribeGroups describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// Its group instance id, if static.
    pub group_instance_id: Option<String>,
    /// For people.
    pub client_id: String,
    /// For people.
    pub client_host: String,
    /// Its metadata for the chosen protocol (classic groups in Stable only, as Kafka).
    pub metadata: Bytes,
    /// What the leader assigned it (classic groups in Stable only, as Kafka).
    pub assignment: Bytes,
}

/// One group as Kafka's DescribeGroups describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// Which protocol its members use.
    pub kind: GroupKind,
    /// Kafka's state name (see [`GroupOverview::state`]); "Dead" for an unknown group.
    pub state: &'static str,
    /// The classic protocol type ("consumer" for KIP-848 groups; "" when none is known).
    pub protocol_type: String,
    /// The chosen protocol (classic groups in Stable only, as Kafka; the assignor of a
    /// KIP-848 group).
    pub protocol: String,
    /// The classic generation, or the KIP-848 group epoch.
    pub generation_id: i32,
    /// The members, in member id order.
    pub members: Vec<MemberDescription>,
}

/// The group coordinator of one broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    broker_id: u32,
    config: GroupConfig,
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    status: watch::Receiver<BrokerStatus>,
    shards: Mutex<BTreeMap<u32, Shard>>,
    /// Partition counts by topic, for the metadata version they were taken at.
    topics: Mutex<(u64, Arc<TopicCounts>)>,
    creating: tokio::sync::Mutex<()>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Validates a group id: 1 to 255 bytes.
pub fn validate_group_id(id: &str) -> Result<(), GroupError> {
    if id.is_empty() || id.len() > GROUP_ID_BYTES_MAX {
        return Err(GroupError::new(
            GroupErrorCode::InvalidGroupId,
            format!("a group id is 1 to {GROUP_ID_BYTES_MAX} bytes; this one is {}", id.len()),
        ));
    }
    Ok(())
}

fn new_member_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl GroupCoordinator {
    /// A coordinator over `replicas`, following `cache` (whose version `status` reports).
    pub fn new(
        broker_id: u32,
        config: GroupConfig,
        replicas: Arc<ReplicaManager>,
        cache: Arc<RwLock<MetadataCache>>,
        status: watch::Receiver<BrokerStatus>,
    ) -> Self {
        GroupCoordinator {
            broker_id,
            config,
            replicas,
            cache,
            status,
            shards: Mutex::new(BTreeMap::new()),
            topics: Mutex::new((u64::MAX, Arc::new(TopicCounts::new()))),
            creating: tokio::sync::Mutex::new(()),
            started: Instant::now(),
        }
    }

    /// This broker's id.
    pub fn broker_id(&self) -> u32 {
        self.broker_id
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every topic's partition count, from the metadata (taken once per metadata version).
    fn topic_counts(&self) -> Arc<TopicCounts> {
        let cache = self.cache();
        let mut held = lock(&self.topics);
        if held.0 != cache.version {
            let counts =
                cache.topics.iter().map(|(name, t)| (name.clone(), t.partitions.len() as u32)).collect();
            *held = (cache.version, Arc::new(counts));
        }
        Arc::clone(&held.1)
    }

    /// The offsets topic's partition count, if the metadata has the topic.
    fn offsets_partitions(&self) -> Option<u32> {
        self.cache().topics.get(OFFSETS_TOPIC).map(|t| t.partitions.len() as u32).filter(|&n| n > 0)
    }

    /// The offsets topic's partition count, creating the topic first if it does not exist.
    async fn ensure_topic(&self) -> Result<u32, GroupError> {
        if let Some(n) = self.offsets_partitions() {
            return Ok(n);
        }
        if !self.cache().loaded {
            return Err(GroupError::new(
                GroupErrorCode::CoordinatorNotAvailable,
                "this broker has not loaded the cluster metadata yet; retry",
            ));
        }
        // One creation at a time from this broker; the others wait for its outcome.
        let _creating = self.creating.lock().await;
        if let Some(n) = self.offsets_partitions() {
            return Ok(n);
        }
        let live = self.cache().brokers.values().filter(|b| !b.fenced).count();
        let rf = OFFSETS_TOPIC_REPLICATION_MAX.min(live).max(1);
        let request = pb::CreateTopicRequest {
            name: OFFSETS_TOPIC.to_owned(),
            partitions: self.config.offsets_topic_partitions.max(1),
            replication_factor: rf as u32,
            configs: [
                ("min.insync.replicas", OFFSETS_TOPIC_MIN_INSYNC_MAX.min(rf).to_string()),
                ("retention.ms", "-1".to_owned()),
                ("retention.bytes", "-1".to_owned()),
                ("segment.bytes", OFFSETS_TOPIC_SEGMENT_BYTES.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        };
        match create_topic(&self.config.controllers, request, self.config.request_timeout).await {
            Ok(created) => tracing::info!(
                partitions = self.config.offsets_topic_partitions,
                replication_factor = rf,
                "{}",
                if created { "created the offsets topic" } else { "the offsets topic already exists" }
            ),
            Err(e) => {
                return Err(GroupError::new(
                    GroupErrorCode::CoordinatorNotAvailable,
                    format!("creating {OFFSETS_TOPIC} failed: {}; retry", e.message()),
                ));
            }
        }
        let mut status = self.status.clone();
        let deadline = tokio::time::Instant::now() + TOPIC_CREATE_WAIT;
        loop {
            status.borrow_and_update();
            if let Some(n) = self.offsets_partitions() {
                return Ok(n);
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(GroupError::new(
                        GroupErrorCode::CoordinatorNotAvailable,
                        format!("{OFFSETS_TOPIC} was created but has not reached this broker yet; retry"),
                    ));
                }
            }
        }
    }

    /// The coordinator of `group_id`: broker id, gRPC address and offsets partition.
    pub async fn find_coordinator(&self, group_id: &str) -> Result<CoordinatorLocation, GroupError> {
        validate_group_id(group_id)?;
        let partitions = self.ensure_topic().await?;
        let partition = coordinator_partition(group_id, partitions);
        let (leader, address) = self.leader_of(partition);
        match (leader, address) {
            (Some(broker_id), Some(address)) => Ok(CoordinatorLocation { broker_id, address, partition }),
            _ => Err(GroupError::new(
                GroupErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC}-{partition} has no leader now; retry"),
            )),
        }
    }

    /// The leader of offsets partition `partition` and its address, from the metadata.
    fn leader_of(&self, partition: u32) -> (Option<u32>, Option<String>) {
        let cache = self.cache();
        let leader = cache
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partitions.get(partition as usize))
            .and_then(|p| p.leader);
        let address =
            leader.and_then(|l| cache.brokers.get(&l)).map(|b| b.grpc.clone()).filter(|a| !a.is_empty());
        (leader, address)
    }

    /// Why this broker cannot serve a group of `partition` now.
    fn unavailable(&self, partition: u32) -> GroupError {
        if let Some(shard) = lock(&self.shards).get(&partition)
            && matches!(shard, Shard::Loading { .. })
        {
            return GroupError::new(
                GroupErrorCode::CoordinatorLoadInProgress,
                format!("loading the groups of {OFFSETS_TOPIC}-{partition}; retry"),
            );
        }
        match self.leader_of(partition) {
            (Some(leader), _) if leader == self.broker_id => GroupError::new(
                GroupErrorCode::CoordinatorLoadInProgress,
                format!("taking over {OFFSETS_TOPIC}-{partition}; retry"),
            ),
            (Some(leader), address) => GroupError {
                coordinator: address.map(|a| (leader, a)),
                ..GroupError::new(
                    GroupErrorCode::NotCoordinator,
                    format!(
                        "broker {} is not the coordinator of this group ({OFFSETS_TOPIC}-{partition} is led by \
                         broker {leader}); find the coordinator again",
                        self.broker_id
                    ),
                )
            },
            (None, _) => GroupError::new(
                GroupErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC}-{partition} has no leader now; retry"),
            ),
        }
    }

    /// The offsets partition of `group_id`, if this broker is its coordinator with the
    /// groups loaded.
    async fn route(&self, group_id: &str) -> Result<u32, GroupError> {
        validate_group_id(group_id)?;
        let partitions = self.ensure_topic().await?;
        let partition = coordinator_partition(group_id, partitions);
        if matches!(lock(&self.shards).get(&partition), Some(Shard::Loaded { .. })) {
            Ok(partition)
        } else {
            Err(self.unavailable(partition))
        }
    }

    /// Runs `f` on the loaded groups of `partition`.
    fn with_groups<R>(&self, partition: u32, f: impl FnOnce(&mut Groups) -> R) -> Result<R, GroupError> {
        let mut shards = lock(&self.shards);
        match shards.get_mut(&partition) {
            Some(Shard::Loaded { groups, .. }) => Ok(f(groups)),
            _ => {
                drop(shards);
                Err(self.unavailable(partition))
            }
        }
    }

    /// Runs `f` on the loaded groups and waiters of `partition`, then hands every queued
    /// classic reply to its waiter.
    fn with_classic<R>(
        &self,
        partition: u32,
        f: impl FnOnce(&mut Groups, &mut Waiters) -> R,
    ) -> Result<R, GroupError> {
        let mut shards = lock(&self.shards);
        match shards.get_mut(&partition) {
            Some(Shard::Loaded { groups, waiters, .. }) => {
                let r = f(groups, waiters);
                waiters.deliver(groups.take_replies());
                Ok(r)
            }
            _ => {
                drop(shards);
                Err(self.unavailable(partition))
            }
        }
    }

    /// Waits for a parked classic call's answer, at most `within` plus a margin.
    async fn await_reply<T>(
        &self,
        partition: u32,
        key: (String, String),
        token: u64,
        rx: oneshot::Receiver<Result<T, GroupError>>,
        within: Duration,
        map: impl Fn(&mut Waiters) -> &mut BTreeMap<(String, String), Waiter<T>>,
    ) -> Result<T, GroupError> {
        match tokio::time::timeout(within + CLASSIC_WAIT_MARGIN, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                // The sender was dropped: the shard went (leadership moved), or a later call
                // of the same member took this one's place.
                if matches!(lock(&self.shards).get(&partition), Some(Shard::Loaded { .. })) {
                    Err(GroupError::new(
                        GroupErrorCode::RebalanceInProgress,
                        format!("a later request of member {:?} took this one's place", key.1),
                    ))
                } else {
                    Err(self.unavailable(partition))
                }
            }
            Err(_) => {
                if let Some(Shard::Loaded { waiters, .. }) = lock(&self.shards).get_mut(&partition) {
                    let parked = map(waiters);
                    if parked.get(&key).is_some_and(|(t, _)| *t == token) {
                        parked.remove(&key);
                    }
                }
                Err(GroupError::new(
                    GroupErrorCode::RebalanceInProgress,
                    format!("member {:?} was not answered in {} ms; join again", key.1, within.as_millis()),
                ))
            }
        }
    }

    /// A classic JoinGroup of `group_id`: waits until the join phase ends (every member has
    /// joined, or the rebalance timeout), at most the group's rebalance timeout plus the
    /// initial delay plus [`CLASSIC_WAIT_MARGIN`]. MEMBER_ID_REQUIRED carries the new member
    /// id in [`GroupError::member_id`].
    pub async fn join_group(
        &self,
        group_id: &str,
        req: JoinGroupRequest,
    ) -> Result<JoinGroupOutcome, GroupError> {
        let partition = self.route(group_id).await?;
        let now = self.now_ms();
        let (key, token, rx, within) = self.with_classic(partition, |groups, waiters| {
            let mut ids = new_member_id;
            let wait = groups.join_group(group_id, req, now, &mut ids)?;
            let key = (group_id.to_owned(), wait.member_id);
            let (tx, rx) = oneshot::channel();
            let token = waiters.token();
            // A member joining again while its earlier JoinGroup waits replaces it (the
            // earlier call's sender drops).
            waiters.joins.insert(key.clone(), (token, tx));
            Ok::<_, GroupError>((key, token, rx, Duration::from_millis(wait.within_ms)))
        })??;
        self.await_reply(partition, key, token, rx, within, |w| &mut w.joins).await
    }

    /// A classic SyncGroup of `group_id`: the leader's stores the assignments and answers
    /// everyone waiting; a follower's waits for the leader's (at most the group's rebalance
    /// timeout plus [`CLASSIC_WAIT_MARGIN`]).
    pub async fn sync_group(
        &self,
        group_id: &str,
        req: SyncGroupRequest,
    ) -> Result<SyncGroupOutcome, GroupError> {
        let partition = self.route(group_id).await?;
        let now = self.now_ms();
        let (key, token, rx, within) = self.with_classic(partition, |groups, waiters| {
            // Parked before the call, so an answer the call itself queues finds it.
            let key = (group_id.to_owned(), req.member_id.clone());
            let (tx, rx) = oneshot::channel();
            let token = waiters.token();
            let previous = waiters.syncs.insert(key.clone(), (token, tx));
            match groups.sync_group(group_id, req, now) {
                Ok(wait) => Ok((key, token, rx, Duration::from_millis(wait.within_ms))),
                Err(e) => {
                    match previous {
                        Some(p) => waiters.syncs.insert(key, p),
                        None => waiters.syncs.remove(&key),
                    };
                    Err(e)
                }
            }
        })??;
        self.await_reply(partition, key, token, rx, within, |w| &mut w.syncs).await
    }

    /// A classic Heartbeat of `group_id`.
    pub async fn classic_heartbeat(&self, group_id: &str, hb: ClassicHeartbeat) -> Result<(), GroupError> {
        let partition = self.route(group_id).await?;
        let now = self.now_ms();
        self.with_classic(partition, |groups, _| groups.classic_heartbeat(group_id, &hb, now))?
    }

    /// A classic LeaveGroup of `group_id`: one outcome per member, in order.
    pub async fn leave_group(
        &self,
        group_id: &str,
        members: Vec<LeaveMember>,
    ) -> Result<Vec<LeaveOutcome>, GroupError> {
        if members.len() > super::state::GROUP_MEMBERS_MAX {
            return Err(GroupError::invalid(format!(
                "{} members in one LeaveGroup, over the limit of {}",
                members.len(),
                super::state::GROUP_MEMBERS_MAX
            )));
        }
        let partition = self.route(group_id).await?;
        let now = self.now_ms();
        self.with_classic(partition, |groups, _| groups.leave_group(group_id, members, now))
    }

    /// One heartbeat (validated into `hb`).
    pub async fn heartbeat(&self, group_id: &str, hb: Heartbeat) -> Result<HeartbeatAnswer, GroupError> {
        let partition = self.route(group_id).await?;
        let topics = self.topic_counts();
        let now = self.now_ms();
        let answer = self.with_groups(partition, |groups| {
            groups.heartbeat(group_id, hb, now, &topics, &mut new_member_id)
        })??;
        Ok(answer)
    }

    /// Validates offsets against the metadata: every partition must exist.
    fn check_offsets(&self, offsets: &[OffsetEntry]) -> Result<(), GroupError> {
        let cache = self.cache();
        for e in offsets {
            let count = cache.topics.get(&e.tp.0).map_or(0, |t| t.partitions.len() as u32);
            if e.tp.1 >= count {
                return Err(GroupError::new(
                    GroupErrorCode::UnknownTopicOrPartition,
                    if count == 0 {
                        format!("unknown topic {:?}", e.tp.0)
                    } else {
                        format!(
                            "topic {:?} has {count} partitions; partition {} does not exist",
                            e.tp.0, e.tp.1
                        )
                    },
                ));
            }
        }
        Ok(())
    }

    /// Commits `offsets` for `group_id` durably (acks=all), then makes them visible.
    pub async fn commit(
        &self,
        group_id: &str,
        committer: Committer<'_>,
        offsets: Vec<OffsetEntry>,
    ) -> Result<(), GroupError> {
        if offsets.len() > COMMIT_PARTITIONS_MAX {
            return Err(GroupError::invalid(format!(
                "{} offsets in one call, over the limit of {COMMIT_PARTITIONS_MAX}",
                offsets.len()
            )));
        }
        let partition = self.route(group_id).await?;
        self.check_offsets(&offsets)?;
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        let log_partition = self.replicas.get(&tp).ok_or_else(|| self.unavailable(partition))?;
        let ts = wall_ms();
        let now = self.now_ms();
        let entries: Vec<(OffsetKey, Option<OffsetValue>)> = offsets
            .into_iter()
            .map(|e| {
                let key = OffsetKey { group: group_id.to_owned(), topic: e.tp.0, partition: e.tp.1 };
                (key, Some(OffsetValue { offset: e.offset, commit_timestamp_ms: ts, metadata: e.metadata }))
            })
            .collect();
        // Encoded before taking the lock: it is the costly part for a large commit.
        let mut batch =
            if entries.is_empty() { None } else { Some(encode_batch(&entries, ts, &log_partition)?) };
        // Check and append atomically with respect to other calls and to loads.
        let end = {
            let mut shards = lock(&self.shards);
            let Some(Shard::Loaded { epoch, groups, pending, .. }) = shards.get_mut(&partition) else {
                drop(shards);
                return Err(self.unavailable(partition));
            };
            match committer {
                Committer::Member { id, epoch } => groups.check_commit(group_id, id, epoch)?,
                Committer::Reset => groups.check_reset(group_id)?,
                Committer::Classic { member_id, generation_id, group_instance_id } => {
                    groups.check_classic_commit(group_id, member_id, generation_id, group_instance_id, now)?
                }
            }
            let Some(batch) = batch.as_mut() else { return Ok(()) };
            let epoch = *epoch;
            let end = match append_locked(&log_partition, epoch, batch) {
                Ok(end) => end,
                Err(None) => {
                    drop(shards);
                    return Err(self.unavailable(partition));
                }
                Err(Some(e)) => return Err(e),
            };
            pending.push_back(Pending { end, entries });
            end
        };
        log_partition.wait_committed(end, COMMIT_TIMEOUT).await.map_err(GroupError::from_append)?;
        self.apply_pending(partition, &log_partition);
        Ok(())
    }

    /// Deletes groups with no members (Kafka's DeleteGroups): tombstones for every committed
    /// offset, written with acks=all so a reload does not bring them back. One result per
    /// id, in order: NON_EMPTY_GROUP while the group has members, GROUP_ID_NOT_FOUND for a
    /// group the coordinator does not know, or the coordinator errors of any group call.
    pub async fn delete_groups(&self, group_ids: &[String]) -> Vec<(String, Result<(), GroupError>)> {
        let mut out = Vec::with_capacity(group_ids.len());
        for id in group_ids {
            out.push((id.clone(), self.delete_group(id).await));
        }
        out
    }

    async fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        let partition = self.route(group_id).await?;
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        let log_partition = self.replicas.get(&tp).ok_or_else(|| self.unavailable(partition))?;
        let ts = wall_ms();
        let end = {
            let mut shards = lock(&self.shards);
            let Some(Shard::Loaded { epoch, groups, pending, .. }) = shards.get_mut(&partition) else {
                drop(shards);
                return Err(self.unavailable(partition));
            };
            // Offsets appended but not yet visible are deleted too: their batch comes first
            // in the log, so the tombstones land after them.
            let in_flight: BTreeSet<OffsetKey> = pending
                .iter()
                .flat_map(|p| p.entries.iter())
                .filter(|(k, v)| k.group == group_id && v.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            let keys = match groups.group(group_id) {
                None if in_flight.is_empty() => {
                    return Err(GroupError::new(
                        GroupErrorCode::GroupIdNotFound,
                        format!("group {group_id:?} does not exist"),
                    ));
                }
                Some(g) if g.has_members() => {
                    return Err(GroupError::new(
                        GroupErrorCode::NonEmptyGroup,
                        format!(
                            "group {group_id:?} has {} members; stop them before deleting it",
                            g.member_count()
                        ),
                    ));
                }
                g => {
                    let mut keys = in_flight;
                    keys.extend(g.into_iter().flat_map(|g| g.offsets.keys()).map(|(topic, partition)| {
                        OffsetKey { group: group_id.to_owned(), topic: topic.clone(), partition: *partition }
                    }));
                    keys
                }
            };
            let entries: Vec<(OffsetKey, Option<OffsetValue>)> =
                keys.into_iter().map(|k| (k, None)).collect();
            let epoch = *epoch;
            let mut end = None;
            for chunk in entries.chunks(TOMBSTONES_PER_BATCH_MAX) {
                let mut batch = encode_batch(chunk, ts, &log_partition)?;
                match append_locked(&log_partition, epoch, &mut batch) {
                    Ok(e) => {
                        pending.push_back(Pending { end: e, entries: chunk.to_vec() });
                        end = Some(e);
                    }
                    Err(Some(e)) => return Err(e),
                    Err(None) => {
                        drop(shards);
                        return Err(self.unavailable(partition));
                    }
                }
            }
            end
        };
        if let Some(end) = end {
            log_partition.wait_committed(end, COMMIT_TIMEOUT).await.map_err(GroupError::from_append)?;
            self.apply_pending(partition, &log_partition);
        }
        Ok(())
    }

    /// Makes visible every pending commit of `partition` the HW now covers, in log order.
    fn apply_pending(&self, partition: u32, log_partition: &Partition) {
        let hw = log_partition.high_watermark();
        let mut shards = lock(&self.shards);
        if let Some(Shard::Loaded { groups, pending, .. }) = shards.get_mut(&partition) {
            while pending.front().is_some_and(|p| p.end <= hw) {
                if let Some(done) = pending.pop_front() {
                    for (key, value) in done.entries {
                        groups.apply_offset(key, value);
                    }
                }
            }
        }
    }

    /// A KIP-848 member's subscription and owned partitions as this coordinator knows them,
    /// for a front-end whose heartbeats send those only when they change (Kafka's
    /// ConsumerGroupHeartbeat sends null for "unchanged"). `None` for an unknown member.
    pub async fn member_subscription(
        &self,
        group_id: &str,
        member_id: &str,
    ) -> Option<(BTreeSet<String>, TpSet)> {
        let partition = self.route(group_id).await.ok()?;
        self.with_groups(partition, |groups| {
            let member = groups.group(group_id)?.members.get(member_id)?;
            Some((member.subscribed.clone(), member.owned.clone()))
        })
        .ok()
        .flatten()
    }

    /// The committed offsets of `group_id`: all of them, or those of `wanted` (-1 where none).
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Vec<Tp>,
    ) -> Result<Vec<CommittedOffset>, GroupError> {
        if wanted.len() > PARTITIONS_PER_REQUEST_MAX {
            return Err(GroupError::invalid(format!(
                "{} partitions in one fetch, over the limit of {PARTITIONS_PER_REQUEST_MAX}",
                wanted.len()
            )));
        }
        let partition = self.route(group_id).await?;
        self.with_groups(partition, |groups| {
            let offsets = groups.group(group_id).map(|g| &g.offsets);
            if wanted.is_empty() {
                offsets.into_iter().flatten().map(|(tp, c)| committed_offset(tp, Some(c))).collect()
            } else {
                wanted.iter().map(|tp| committed_offset(tp, offsets.and_then(|o| o.get(tp)))).collect()
            }
        })
    }

    /// The groups this broker coordinates now.
    pub fn list_groups(&self) -> pb::ListGroupsResponse {
        let shards = lock(&self.shards);
        let mut groups = Vec::new();
        for shard in shards.values() {
            if let Shard::Loaded { groups: g, .. } = shard {
                groups.extend(g.groups().iter().map(|(id, group)| pb::GroupListing {
                    group_id: id.clone(),
                    state: if group.classic.members.is_empty() {
                        group.state().name().to_owned()
                    } else {
                        group.classic.state.name().to_owned()
                    },
                    member_count: group.member_count() as u32,
                }));
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        pb::ListGroupsResponse { broker_id: self.broker_id, groups }
    }

    /// A group's state, members, assignment and offsets.
    pub async fn describe_group(&self, group_id: &str) -> Result<pb::DescribeGroupResponse, GroupError> {
        let partition = self.route(group_id).await?;
        let broker_id = self.broker_id;
        self.with_groups(partition, |groups| match groups.group(group_id) {
            None => pb::DescribeGroupResponse {
                group_id: group_id.to_owned(),
                state: GroupState::Dead.name().to_owned(),
                group_epoch: 0,
                assignor: Assignor::default().name().to_owned(),
                members: Vec::new(),
                offsets: Vec::new(),
                coordinator: broker_id,
            },
            Some(g) if !g.classic.members.is_empty() => describe_classic(group_id, g, broker_id),
            Some(g) => describe(group_id, g, broker_id),
        })
    }

    /// The groups this broker coordinates now, for metrics, in group id order. Read under
    /// the shards' lock, which is never held across I/O; the high watermarks are read after
    /// it is released.
    pub fn group_metrics(&self) -> Vec<GroupMetrics> {
        let mut out: Vec<GroupMetrics> = {
            let shards = lock(&self.shards);
            shards
                .values()
                .filter_map(|shard| match shard {
                    Shard::Loaded { groups, .. } => Some(groups.groups()),
                    Shard::Loading { .. } => None,
                })
                .flatten()
                .map(|(id, g)| GroupMetrics {
                    group_id: id.clone(),
                    members: g.member_count(),
                    // Each moves once per rebalance; neither is persisted, so both restart at 0
                    // when the group's coordinator changes.
                    rebalances: u64::try_from(g.epoch).unwrap_or(0)
                        + u64::try_from(g.classic.generation).unwrap_or(0),
                    lags: g
                        .offsets
                        .iter()
                        .map(|((topic, partition), c)| (topic.clone(), *partition, c.offset, None))
                        .collect(),
                })
                .collect()
        };
        for group in &mut out {
            for (topic, partition, committed, lag) in &mut group.lags {
                if let Some(p) = self.replicas.get(&TopicPartition::new(topic.clone(), *partition))
                    && p.state().hosted
                {
                    let committed = u64::try_from(*committed).unwrap_or(0);
                    *lag = Some(p.high_watermark().saturating_sub(committed));
                }
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// The groups this broker coordinates now, as Kafka's ListGroups lists them.
    pub fn group_overviews(&self) -> Vec<GroupOverview> {
        let shards = lock(&self.shards);
        let mut out: Vec<GroupOverview> = shards
            .values()
            .filter_map(|shard| match shard {
                Shard::Loaded { groups, .. } => Some(groups.groups()),
                Shard::Loading { .. } => None,
            })
            .flatten()
            .map(|(id, g)| {
                let (kind, protocol_type, state) = kafka_kind(g);
                GroupOverview {
                    group_id: id.clone(),
                    kind,
                    protocol_type,
                    state,
                    member_count: g.member_count(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// A group as Kafka's DescribeGroups describes it (an unknown group is "Dead", with no
    /// members).
    pub async fn group_description(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        let partition = self.route(group_id).await?;
        self.with_groups(partition, |groups| match groups.group(group_id) {
            None => GroupDescription {
                group_id: group_id.to_owned(),
                kind: GroupKind::Classic,
                state: ClassicState::Dead.name(),
                protocol_type: String::new(),
                protocol: String::new(),
                generation_id: 0,
                members: Vec::new(),
            },
            Some(g) => describe_kafka(group_id, g),
        })
    }

    /// Follows leadership of the offsets partitions: loads shards this broker now leads,
    /// drops those it no longer leads.
    fn sync_leadership(self: &Arc<Self>, loads: &mut JoinSet<()>) {
        let Some(count) = self.offsets_partitions() else {
            lock(&self.shards).clear();
            return;
        };
        for index in 0..count {
            let tp = TopicPartition::new(OFFSETS_TOPIC, index);
            let hosted = self.replicas.get(&tp);
            let leading = hosted.as_ref().and_then(|p| p.check_leader().ok());
            let mut shards = lock(&self.shards);
            match (leading, shards.get(&index).map(Shard::epoch)) {
                (Some(epoch), Some(have)) if epoch == have => {}
                (Some(epoch), _) => {
                    tracing::info!(partition = %tp, epoch, "coordinating the groups of this partition: loading");
                    shards.insert(index, Shard::Loading { epoch });
                    if let Some(p) = hosted {
                        loads.spawn(load(Arc::clone(self), index, epoch, p));
                    }
                }
                (None, Some(_)) => {
                    tracing::info!(partition = %tp, "no longer coordinating the groups of this partition");
                    shards.remove(&index);
                }
                (None, None) => {}
            }
        }
        lock(&self.shards).retain(|index, _| *index < count);
    }

    /// Removes silent members and applies commits the HW now covers.
    fn tick(&self) {
        let now = self.now_ms();
        let indexes: Vec<u32> = {
            let mut shards = lock(&self.shards);
            let mut loaded = Vec::new();
            for (index, shard) in shards.iter_mut() {
                if let Shard::Loaded { groups, waiters, .. } = shard {
                    for (group, member, why) in groups.expire(now) {
                        tracing::info!(group, member, reason = ?why, "removed a group member");
                    }
                    waiters.deliver(groups.take_replies());
                    loaded.push(*index);
                }
            }
            loaded
        };
        for index in indexes {
            if let Some(p) = self.replicas.get(&TopicPartition::new(OFFSETS_TOPIC, index)) {
                self.apply_pending(index, &p);
            }
        }
    }
}

/// One uncompressed batch of offsets records (a tombstone where the value is `None`),
/// refused if over the offsets topic's `max.message.bytes`.
fn encode_batch(
    entries: &[(OffsetKey, Option<OffsetValue>)],
    ts: i64,
    log_partition: &Partition,
) -> Result<Vec<u8>, GroupError> {
    let mut builder = BatchBuilder::new(Compression::None);
    for (key, value) in entries {
        builder.push(NewRecord {
            key: Some(record::encode_key(key).into()),
            value: value.as_ref().map(|v| record::encode_value(v).into()),
            headers: Vec::new(),
            timestamp_ms: ts,
        });
    }
    let max = log_partition.limits().max_message_bytes;
    if builder.estimated_size() > max {
        return Err(GroupError::invalid(format!(
            "the commit makes a batch of about {} bytes, over {OFFSETS_TOPIC}'s max.message.bytes={max}; \
             commit fewer partitions at once",
            builder.estimated_size()
        )));
    }
    builder.build().map_err(|e| GroupError::invalid(format!("cannot encode the commit: {e}")))
}

/// Appends `batch` with acks=all while leading in `epoch`; answers the offset after it.
/// Called under the shards lock, so no load of a later epoch starts between the check and
/// the append. `Err(None)`: not leading in `epoch` (the caller says who is);
/// `Err(Some(_))`: the append failed, or leadership moved during it.
fn append_locked(log_partition: &Partition, epoch: i32, batch: &mut [u8]) -> Result<u64, Option<GroupError>> {
    let leading = |p: &Partition| p.check_leader().ok() == Some(epoch);
    if !leading(log_partition) {
        return Err(None);
    }
    let info = log_partition.append(batch, true).map_err(|e| Some(GroupError::from_append(e)))?;
    // Leader epochs only grow: the same epoch after the append means the batch carries it.
    if !leading(log_partition) {
        return Err(Some(GroupError::new(
            GroupErrorCode::NotCoordinator,
            "leadership of the group's partition moved during the commit; find the coordinator again",
        )));
    }
    Ok(info.last_offset + 1)
}

/// Waits until the HW covers the log end this leadership began with, then reads the shard's
/// groups from the log; retries while the leadership lasts.
async fn load(coordinator: Arc<GroupCoordinator>, index: u32, epoch: i32, partition: Arc<Partition>) {
    let still_loading = |c: &GroupCoordinator| matches!(lock(&c.shards).get(&index), Some(Shard::Loading { epoch: e }) if *e == epoch);
    loop {
        // Nothing is appended to a loading shard, so this end covers every earlier commit.
        let end = {
            let shards = lock(&coordinator.shards);
            if !matches!(shards.get(&index), Some(Shard::Loading { epoch: e }) if *e == epoch) {
                return;
            }
            partition.log().log_end()
        };
        let mut progress = partition.subscribe();
        loop {
            progress.borrow_and_update();
            if partition.check_leader().ok() != Some(epoch) || !still_loading(&coordinator) {
                return;
            }
            if partition.high_watermark() >= end {
                break;
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
        let hw = partition.high_watermark();
        let reader = Arc::clone(&partition);
        let started = Instant::now();
        let read = tokio::task::spawn_blocking(move || read_groups(&reader, hw)).await;
        match read {
            Ok(Ok((mut groups, stats))) => {
                // Leader epoch 0 is the partition's first leadership: no coordinator ran
                // before this one, so no member can own anything it does not know of.
                if epoch > 0 {
                    groups.taken_over_at(coordinator.now_ms());
                }
                let delay = coordinator.config.initial_rebalance_delay;
                groups.set_initial_rebalance_delay_ms(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                let mut shards = lock(&coordinator.shards);
                if matches!(shards.get(&index), Some(Shard::Loading { epoch: e }) if *e == epoch) {
                    tracing::info!(
                        partition = %partition.topic_partition(),
                        epoch,
                        groups = groups.groups().len(),
                        records = stats.records,
                        skipped = stats.skipped,
                        ms = started.elapsed().as_millis() as u64,
                        "loaded the groups"
                    );
                    shards.insert(
                        index,
                        Shard::Loaded {
                            epoch,
                            groups,
                            pending: VecDeque::new(),
                            waiters: Waiters::default(),
                        },
                    );
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(partition = %partition.topic_partition(), "loading the groups failed: {e}; retrying")
            }
            Err(e) => {
                tracing::error!(partition = %partition.topic_partition(), "loading the groups panicked: {e}; retrying")
            }
        }
        tokio::time::sleep(LOAD_RETRY).await;
    }
}

/// What a load read.
#[derive(Debug, Default)]
struct LoadStats {
    records: u64,
    skipped: u64,
}

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("reading the log: {0}")]
    Log(#[from] runnel_storage::LogError),
    #[error("a batch of the log: {0}")]
    Batch(#[from] runnel_storage::BatchError),
    #[error("the log yields nothing at offset {0}, below the high watermark")]
    Stuck(u64),
}

/// Reads every committed record of `partition` (below `hw`) into groups. Blocking.
fn read_groups(partition: &Partition, hw: u64) -> Result<(Groups, LoadStats), LoadError> {
    let log = partition.log();
    let mut groups = Groups::new();
    let mut stats = LoadStats::default();
    let limits =
        DecodeLimits { max_decompressed_bytes: BATCH_BYTES_LIMIT, max_batch_bytes: BATCH_BYTES_LIMIT };
    let mut offset = log.log_start();
    let mut buf = Vec::new();
    while offset < hw {
        let info = log.read_into(offset, LOAD_READ_BYTES, Some(hw), &mut buf)?;
        if info.first_offset.is_none() || info.next_offset <= offset {
            return Err(LoadError::Stuck(offset));
        }
        for batch in BatchIter::new(&buf, BATCH_BYTES_LIMIT) {
            let (header, bytes) = batch?;
            if header.is_control() {
                continue;
            }
            let (_, records) = decode_batch(bytes, &limits)?;
            for r in records {
                if r.offset < offset as i64 {
                    continue;
                }
                stats.records += 1;
                match record::decode(r.key.as_ref(), r.value.as_ref()) {
                    Ok(OffsetsRecord::Offset(key, value)) => groups.apply_offset(key, value),
                    Ok(OffsetsRecord::Unknown { version, kind }) => {
                        stats.skipped += 1;
                        tracing::debug!(
                            offset = r.offset,
                            version,
                            kind,
                            "skipped an offsets record of unknown kind"
                        );
                    }
                    Err(e) => {
                        stats.skipped += 1;
                        tracing::warn!(partition = %partition.topic_partition(), offset = r.offset, "skipped a bad offsets record: {e}");
                    }
                }
            }
        }
        offset = info.next_offset;
    }
    Ok((groups, stats))
}

/// Runs the coordinator until `cancel`: follows leadership after every reconcile, expires
/// members and applies commits every [`EXPIRY_CHECK_INTERVAL`].
pub async fn run(coordinator: Arc<GroupCoordinator>, cancel: CancellationToken) {
    let mut reconciled = coordinator.replicas.subscribe_reconciled();
    let mut ticks = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loads = JoinSet::new();
    loop {
        coordinator.sync_leadership(&mut loads);
        coordinator.tick();
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = reconciled.changed() => if changed.is_err() { break },
            _ = ticks.tick() => {}
            Some(_) = loads.join_next(), if !loads.is_empty() => {}
        }
    }
    loads.shutdown().await;
}

/// Creates a topic through the controller voters in turn (followers forward; a
/// NOT_CONTROLLER hint is followed). `Ok(false)`: it already existed.
async fn create_topic(
    controllers: &crate::ControllerSet,
    request: pb::CreateTopicRequest,
    timeout: Duration,
) -> Result<bool, tonic::Status> {
    const TOPIC_ALREADY_EXISTS: &str = "36";
    let mut picker = Controllers::new(controllers.addrs.clone(), 0);
    let mut last = tonic::Status::unavailable("no controller");
    for _ in 0..controllers.addrs.len() + 1 {
        let addr = picker.current();
        let mut c = controllers.client(&addr, timeout, true)?;
        match c.create_topic(request.clone()).await {
            Ok(_) => return Ok(true),
            Err(e) => {
                let code = e.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
                if code == Some(TOPIC_ALREADY_EXISTS) {
                    return Ok(false);
                }
                if code.is_some()
                    && e.metadata().get(LEADER_KEY).is_none()
                    && e.code() != tonic::Code::Unavailable
                {
                    return Err(e);
                }
                picker.failed(&e);
                last = e;
            }
        }
    }
    Err(last)
}

fn committed_offset(tp: &Tp, c: Option<&Committed>) -> CommittedOffset {
    CommittedOffset {
        topic: tp.0.clone(),
        partition: tp.1,
        offset: c.map_or(-1, |c| c.offset),
        metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
        commit_timestamp_ms: c.map_or(-1, |c| c.commit_timestamp_ms),
    }
}

/// A set of partitions as the wire lists them: one entry per topic, partitions ascending.
pub fn to_topic_partitions(set: &TpSet) -> Vec<pb::TopicPartitions> {
    let mut out: Vec<pb::TopicPartitions> = Vec::new();
    for (topic, p) in set {
        match out.last_mut() {
            Some(last) if last.topic == *topic => last.partitions.push(*p),
            _ => out.push(pb::TopicPartitions { topic: topic.clone(), partitions: vec![*p] }),
        }
    }
    out
}

fn describe(group_id: &str, g: &Group, coordinator: u32) -> pb::DescribeGroupResponse {
    pb::DescribeGroupResponse {
        group_id: group_id.to_owned(),
        state: g.state().name().to_owned(),
        group_epoch: g.epoch,
        assignor: g.assignor.name().to_owned(),
        members: g
            .members
            .values()
            .map(|m| pb::GroupMember {
                member_id: m.id.clone(),
                client_id: m.client_id.clone(),
                host: m.host.clone(),
                member_epoch: m.epoch,
                subscribed_topics: m.subscribed.iter().cloned().collect(),
                assignment: to_topic_partitions(&m.owned),
                target_assignment: to_topic_partitions(g.target.get(&m.id).unwrap_or(&TpSet::new())),
            })
            .collect(),
        offsets: g.offsets.iter().map(|(tp, c)| committed_offset(tp, Some(c)).into()).collect(),
        coordinator,
    }
}

/// A classic group for the gRPC DescribeGroup: the generation as the epoch, the protocol as
/// the assignor; topics and partitions are inside the opaque metadata and assignment, so
/// they are left empty.
fn describe_classic(group_id: &str, g: &Group, coordinator: u32) -> pb::DescribeGroupResponse {
    let c = &g.classic;
    pb::DescribeGroupResponse {
        group_id: group_id.to_owned(),
        state: c.state.name().to_owned(),
        group_epoch: c.generation,
        assignor: c.protocol.clone().unwrap_or_default(),
        members: c
            .members
            .values()
            .map(|m| pb::GroupMember {
                member_id: m.id.clone(),
                client_id: m.client_id.clone(),
                host: m.client_host.clone(),
                member_epoch: c.generation,
                subscribed_topics: Vec::new(),
                assignment: Vec::new(),
                target_assignment: Vec::new(),
            })
            .collect(),
        offsets: g.offsets.iter().map(|(tp, c)| committed_offset(tp, Some(c)).into()).collect(),
        coordinator,
    }
}

/// A group's kind, protocol type and state as Kafka names them.
fn kafka_kind(g: &Group) -> (GroupKind, String, &'static str) {
    if g.members.is_empty() {
        let protocol_type = g.classic.protocol_type.clone().unwrap_or_default();
        (GroupKind::Classic, protocol_type, g.classic.state.name())
    } else {
        (GroupKind::Consumer, "consumer".to_owned(), g.state().kafka_name())
    }
}

fn describe_kafka(group_id: &str, g: &Group) -> GroupDescription {
    let (kind, protocol_type, state) = kafka_kind(g);
    let c = &g.classic;
    let (protocol, generation_id, members) = match kind {
        GroupKind::Classic => {
            // Kafka shows the protocol, metadata and assignments only of a Stable group.
            let stable = c.state == ClassicState::Stable;
            let protocol = if stable { c.protocol.clone().unwrap_or_default() } else { String::new() };
            let members = c
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.protocols
                            .iter()
                            .find(|p| Some(&p.name) == c.protocol.as_ref())
                            .map(|p| p.metadata.clone())
                            .unwrap_or_default()
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable { m.assignment.clone() } else { Bytes::new() },
                })
                .collect();
            (protocol, c.generation, members)
        }
        GroupKind::Consumer => {
            let members = g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: None,
                    client_id: m.client_id.clone(),
                    client_host: m.host.clone(),
                    metadata: Bytes::new(),
                    assignment: Bytes::new(),
                })
                .collect();
            (g.assignor.name().to_owned(), g.epoch, members)
        }
    };
    GroupDescription {
        group_id: group_id.to_owned(),
        kind,
        state,
        protocol_type,
        protocol,
        generation_id,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_java_string_hash_code() {
        // Values from Java: "".hashCode(), "abc".hashCode(), "hello".hashCode(),
        // "Aa".hashCode() == "BB".hashCode(), "polygenelubricants".hashCode() == MIN_VALUE.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("abc"), 96_354);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("Aa"), 2_112);
        assert_eq!(java_string_hash("BB"), 2_112);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        // UTF-16 code units, not bytes or chars: é is one unit (233), 😀 two (D83D DE00).
        assert_eq!(java_string_hash("é"), 233);
        assert_eq!(java_string_hash("😀"), 0xD83D * 31 + 0xDE00);
        assert_eq!(java_string_hash("hello world"), 1_794_106_052);
    }

    #[test]
    fn the_partition_is_abs_hash_mod_count_with_min_value_at_zero() {
        assert_eq!(coordinator_partition("polygenelubricants", 8), 0);
        assert_eq!(coordinator_partition("hello", 50), 99_162_322 % 50);
        // "hello world!" hashes negative in Java: -1 * hash is taken.
        let h = java_string_hash("hello world!");
        assert!(h < 0);
        assert_eq!(coordinator_partition("hello world!", 8), h.unsigned_abs() % 8);
        assert_eq!(coordinator_partition("g", 0), 0, "no partitions: no division by zero");
    }

    #[test]
    fn partitions_are_listed_per_topic_in_order() {
        let set: TpSet = [("a".to_owned(), 2), ("b".to_owned(), 0), ("a".to_owned(), 0)].into();
        let list = to_topic_partitions(&set);
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].topic.as_str(), list[0].partitions.clone()), ("a", vec![0, 2]));
        assert_eq!((list[1].topic.as_str(), list[1].partitions.clone()), ("b", vec![0]));
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod shell_tests;
