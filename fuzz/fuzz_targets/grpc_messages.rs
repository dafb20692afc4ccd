//! The gRPC request messages of `proto/runnel/v1/*.proto` (`runnel_proto::pb`), decoded
//! from arbitrary bytes with prost and handed to the code that serves them, short of a
//! network: an input is a sequence of messages, each `[kind u8][length u16 BE][bytes]`.
//!
//! Controller side (against a `MetadataMachine` seeded with three brokers and two topics,
//! fresh per input):
//! - RegisterBroker, AlterPartition, AllocateProducerIds, CreateTopic, DeleteTopic,
//!   AlterTopicConfig and CreatePartitions requests go through their `Command` conversion
//!   (the service's validation, `controller/convert.rs`), then through `dry_run` and
//!   `apply` of the state machine, as a committed command is;
//! - a BrokerHeartbeatRequest is turned (by this harness, not the service) into the fence,
//!   unfence or preferred election commands the controller's liveness logic proposes;
//! - Raft AppendEntries, Vote and InstallSnapshot requests have their JSON decoded as
//!   `raft/service.rs` does, the commands of AppendEntries are applied, and InstallSnapshot
//!   data goes through `decode_snapshot` and replaces the image; a last kind patches the
//!   encoded image (`runnel_fuzz::patch`) before `decode_snapshot`, to reach the snapshot
//!   checks with nearly valid JSON.
//!
//! Checked there: `dry_run` and `apply` agree, the image's invariants hold after every
//! command, and the image survives a snapshot round trip.
//!
//! Broker side (an in-process broker core in a scratch directory, built at the first broker
//! message of an input and removed at its end: a `ReplicaManager` leading `t-0` and
//! `__consumer_offsets-0` and following `f-0`, a `DataPlane`, a `GroupCoordinator` with
//! its run task, and no controller; tokio's clock is paused, so waits end at once):
//! - Produce, Fetch, FetchStream (first answer), ListOffsets, Metadata and InitProducerId
//!   requests through `BrokerGrpc`'s service methods;
//! - FindCoordinator, ConsumerGroupHeartbeat, OffsetCommit, OffsetFetch, ListGroups,
//!   DescribeGroup and ResetOffsets requests through `GroupGrpc`'s service methods;
//! - a ReplicaFetchRequest through `replication::answer_replica_fetch` (the leader's
//!   answer), a ReplicaFetchPartitionData through `Partition::apply_replica_fetch` on the
//!   followed partition (the follower applying its leader's answer);
//! - a MetadataUpdate through `MetadataCache::apply`, then `ReplicaManager::reconcile`
//!   when it assigns this broker at most 8 partitions.
//!
//! Checked there: every batch in every hosted log still reads back whole and CRC-checked.

#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use openraft::EntryPayload;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;
use runnel_broker::cache::{BrokerEntry, PartitionEntry, TopicEntry};
use runnel_broker::group::{GroupConfig, GroupCoordinator, GroupGrpc};
use runnel_broker::{BrokerGrpc, BrokerStatus, DataPlane, MetadataCache, ReplicaManager, replication};
use runnel_controller::controller::MetadataMachine;
use runnel_controller::metadata::{ClusterMetadata, Command, Endpoints, decode_snapshot, encode_snapshot};
use runnel_controller::raft::TypeConfig;
use runnel_fuzz::{patch, scratch_dir};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_server::BrokerService;
use runnel_proto::pb::runnel::v1::group_service_server::GroupService;
use runnel_storage::batch::BatchIter;
use runnel_storage::{FsyncPolicy, LogConfig, TopicPartition};
use tokio_util::sync::CancellationToken;
use tonic::Request;

type Config = TypeConfig<MetadataMachine>;

// ---- controller side -------------------------------------------------------------------

/// The seeded image: brokers 1 to 3 registered and unfenced, `orders` (3 partitions, 3
/// replicas) and `logs` (1 partition, 1 replica).
fn seed_image() -> &'static ClusterMetadata {
    static SEED: OnceLock<ClusterMetadata> = OnceLock::new();
    SEED.get_or_init(|| {
        let mut image = ClusterMetadata::new();
        let mut index = 0;
        let mut apply = |image: &mut ClusterMetadata, command: Command| {
            index += 1;
            image.apply(index, &command).expect("seed command applies");
        };
        for id in 1..=3 {
            let endpoints = Endpoints {
                grpc: format!("b{id}:9090"),
                kafka: format!("b{id}:9092"),
                http: format!("b{id}:8080"),
                internal: String::new(),
            };
            apply(&mut image, Command::RegisterBroker { id, endpoints, rack: None, incarnation_id: Some(7) });
            let epoch = image.broker(id).expect("registered").epoch;
            apply(&mut image, Command::UnfenceBroker { id, epoch });
        }
        for (name, partitions, rf) in [("orders", 3, 3), ("logs", 1, 1)] {
            let create = pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor: rf,
                configs: Default::default(),
            };
            apply(&mut image, Command::try_from(create).expect("seed topic"));
        }
        image
    })
}

/// A command as the state machine takes it: `dry_run` must foresee `apply`, and the image
/// must hold together afterwards and survive a snapshot round trip.
fn apply(image: &mut ClusterMetadata, command: &Command) {
    let Some(index) = image.version().checked_add(1) else { return };
    let foreseen = image.dry_run(command);
    let before = image.clone();
    let applied = image.apply(index, command);
    assert_eq!(foreseen, applied, "dry_run and apply disagree on {command:?}");
    if applied.is_err() {
        assert_eq!(*image, before, "a refused command changed the image");
    }
    if let Err(e) = image.check_invariants() {
        panic!("{command:?} broke an invariant: {e}");
    }
    let round = decode_snapshot(&encode_snapshot(image)).expect("an image decodes from its own snapshot");
    assert_eq!(&round, image, "snapshot round trip");
}

/// A request decoded and converted as the controller service does.
fn convert<T: Message + Default>(bytes: &[u8]) -> Option<Command>
where
    Command: TryFrom<T>,
{
    T::decode(bytes).ok().and_then(|r| Command::try_from(r).ok())
}

fn controller_message(image: &mut ClusterMetadata, kind: u8, bytes: &[u8]) {
    let command = match kind {
        0 => convert::<pb::RegisterBrokerRequest>(bytes),
        1 => convert::<pb::AlterPartitionRequest>(bytes),
        2 => pb::AllocateProducerIdsRequest::decode(bytes).ok().map(Command::from),
        3 => convert::<pb::CreateTopicRequest>(bytes),
        4 => convert::<pb::DeleteTopicRequest>(bytes),
        5 => convert::<pb::AlterTopicConfigRequest>(bytes),
        6 => convert::<pb::CreatePartitionsRequest>(bytes),
        7 => {
            // What the controller's heartbeat and liveness checks propose (harness-made).
            let Ok(r) = pb::BrokerHeartbeatRequest::decode(bytes) else { return };
            let (id, epoch) = (r.broker_id, r.broker_epoch);
            Some(match r.metadata_version % 3 {
                0 => Command::UnfenceBroker { id, epoch },
                1 => Command::FenceBroker { id, epoch },
                _ => Command::ElectLeaders { partitions: None, preferred: r.metadata_version % 2 == 0 },
            })
        }
        8 => {
            let Ok(r) = pb::RaftAppendEntriesRequest::decode(bytes) else { return };
            let Some(rpc) = raft_json::<AppendEntriesRequest<Config>>(&r.request_json) else { return };
            for entry in &rpc.entries {
                if let EntryPayload::Normal(command) = &entry.payload {
                    apply(image, command);
                }
            }
            None
        }
        9 => {
            let Ok(r) = pb::RaftVoteRequest::decode(bytes) else { return };
            let _ = raft_json::<VoteRequest<u64>>(&r.request_json);
            None
        }
        10 => {
            let Ok(r) = pb::RaftInstallSnapshotRequest::decode(bytes) else { return };
            if raft_json::<InstallSnapshotRequest<Config>>(&r.header_json).is_some()
                && let Ok(snapshot) = decode_snapshot(&r.data)
            {
                install(image, snapshot);
            }
            None
        }
        _ => {
            if let Ok(snapshot) = decode_snapshot(&patch(&encode_snapshot(image), bytes)) {
                install(image, snapshot);
            }
            None
        }
    };
    if let Some(command) = command {
        apply(image, &command);
    }
}

/// As `raft/service.rs` decodes a request's JSON: empty is missing, else serde_json.
fn raft_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    if json.is_empty() { None } else { serde_json::from_slice(json).ok() }
}

fn install(image: &mut ClusterMetadata, snapshot: ClusterMetadata) {
    if let Err(e) = snapshot.check_invariants() {
        panic!("decode_snapshot returned an image that breaks an invariant: {e}");
    }
    *image = snapshot;
}

// ---- broker side -----------------------------------------------------------------------

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

fn base_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("grpc"))
}

const LEADS: &str = "t";
const FOLLOWS: &str = "f";
const OFFSETS: &str = "__consumer_offsets";

fn broker_cache() -> MetadataCache {
    let broker = |id: u32| BrokerEntry {
        epoch: 5,
        grpc: format!("b{id}:9090"),
        replication: format!("b{id}:9090"),
        kafka: format!("b{id}:9092"),
        http: String::new(),
        rack: String::new(),
        fenced: false,
    };
    let topic = |id: u8, replicas: Vec<u32>, isr: Vec<u32>, leader: u32, leader_epoch: i32| TopicEntry {
        id: vec![id; 16],
        configs: Default::default(),
        partitions: vec![PartitionEntry {
            isr,
            replicas,
            leader: Some(leader),
            leader_epoch,
            partition_epoch: 1,
        }],
    };
    let mut leads = topic(1, vec![1, 2], vec![1], 1, 3);
    leads.configs.insert("min.insync.replicas".into(), "1".into());
    MetadataCache {
        loaded: true,
        version: 10,
        brokers: (1..=3).map(|id| (id, broker(id))).collect(),
        topics: [
            // Broker 2 follows t-0 but is out of the ISR (and min.insync.replicas is 1), so
            // what this broker appends commits at once; broker 2's fetches are still served.
            (LEADS.to_owned(), leads),
            (FOLLOWS.to_owned(), topic(2, vec![2, 1], vec![2, 1], 2, 4)),
            (OFFSETS.to_owned(), topic(3, vec![1], vec![1], 1, 1)),
        ]
        .into(),
    }
}

struct Broker {
    dir: PathBuf,
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    plane: BrokerGrpc,
    groups: GroupGrpc,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

impl Broker {
    fn start() -> Broker {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let dir = base_dir().join(COUNT.fetch_add(1, Ordering::Relaxed).to_string());
        let defaults = LogConfig { fsync: FsyncPolicy::Never, preallocate_bytes: 0, ..LogConfig::default() };
        let replicas = Arc::new(ReplicaManager::open(1, &dir, defaults).expect("open the log directory"));
        let cache = Arc::new(RwLock::new(broker_cache()));
        replicas.reconcile(&cache.read().expect("cache"));
        let plane = Arc::new(DataPlane::new(1, Arc::clone(&replicas), Arc::clone(&cache)));
        let (_, status) = tokio::sync::watch::channel(BrokerStatus::default());
        let groups = Arc::new(GroupCoordinator::new(
            1,
            GroupConfig {
                offsets_topic_partitions: 1,
                controllers: runnel_broker::ControllerSet::new(vec!["127.0.0.1:1".to_owned()], None),
                request_timeout: Duration::from_millis(100),
                initial_rebalance_delay: Duration::from_millis(10),
            },
            Arc::clone(&replicas),
            Arc::clone(&cache),
            status,
        ));
        let cancel = CancellationToken::new();
        let run =
            runtime().spawn(runnel_broker::group::coordinator::run(Arc::clone(&groups), cancel.clone()));
        // Let the coordinator load its (empty) offsets partition.
        runtime().block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
        Broker {
            dir,
            replicas,
            cache,
            plane: BrokerGrpc::new(plane),
            groups: GroupGrpc::new(groups),
            cancel,
            run,
        }
    }

    fn stop(self) {
        self.cancel.cancel();
        let _ = runtime().block_on(self.run);
        // Every hosted log must still read back whole: nothing invalid was ever written.
        for partition in self.replicas.partitions() {
            let log = partition.log();
            let mut offset = log.log_start();
            while offset < log.log_end() {
                let (bytes, info) = log.read(offset, 1 << 20).expect("a hosted log reads back");
                for batch in BatchIter::new(&bytes, usize::MAX) {
                    batch.expect("a stored batch is whole and CRC-valid");
                }
                assert!(info.next_offset > offset, "reads make progress");
                offset = info.next_offset;
            }
        }
        drop((self.plane, self.groups, self.replicas, self.cache));
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn message(&self, kind: u8, bytes: &[u8]) {
        macro_rules! call {
            ($service:expr, $method:ident, $ty:ty) => {{
                let Ok(request) = <$ty>::decode(bytes) else { return };
                runtime().block_on(bounded(async move {
                    let answer = $service.$method(Request::new(request)).await;
                    if debug() {
                        eprintln!("{}: {:?}", stringify!($method), answer.map(|r| r.into_inner()));
                    }
                }));
            }};
        }
        match kind {
            0 => call!(self.plane, produce, pb::ProduceRequest),
            1 => call!(self.plane, fetch, pb::FetchRequest),
            2 => {
                let Ok(request) = pb::FetchStreamRequest::decode(bytes) else { return };
                runtime().block_on(bounded(async move {
                    if let Ok(stream) = self.plane.fetch_stream(Request::new(request)).await {
                        let _ = stream.into_inner().next().await;
                    }
                }));
            }
            3 => call!(self.plane, list_offsets, pb::ListOffsetsRequest),
            4 => call!(self.plane, metadata, pb::MetadataRequest),
            5 => call!(self.plane, init_producer_id, pb::InitProducerIdRequest),
            6 => call!(self.groups, find_coordinator, pb::FindCoordinatorRequest),
            7 => call!(self.groups, consumer_group_heartbeat, pb::ConsumerGroupHeartbeatRequest),
            8 => call!(self.groups, offset_commit, pb::OffsetCommitRequest),
            9 => call!(self.groups, offset_fetch, pb::OffsetFetchRequest),
            10 => call!(self.groups, list_groups, pb::ListGroupsRequest),
            11 => call!(self.groups, describe_group, pb::DescribeGroupRequest),
            12 => call!(self.groups, reset_offsets, pb::ResetOffsetsRequest),
            13 => {
                let Ok(request) = pb::ReplicaFetchRequest::decode(bytes) else { return };
                let answer = replication::answer_replica_fetch(&self.replicas, &request);
                if debug() {
                    eprintln!("answer_replica_fetch: {answer:?}");
                }
            }
            14 => {
                let Ok(data) = pb::ReplicaFetchPartitionData::decode(bytes) else { return };
                if let Some(p) = self.replicas.get(&TopicPartition::new(FOLLOWS, 0)) {
                    let applied = p.apply_replica_fetch(&data);
                    if debug() {
                        eprintln!("apply_replica_fetch: {applied:?}");
                    }
                }
            }
            _ => {
                let Ok(update) = pb::MetadataUpdate::decode(bytes) else { return };
                let mut cache = self.cache.write().expect("cache");
                let applied = cache.apply(&update);
                if debug() {
                    eprintln!("MetadataCache::apply: {applied:?}");
                }
                if applied.is_ok() {
                    let assigned: usize = cache
                        .topics
                        .values()
                        .flat_map(|t| &t.partitions)
                        .filter(|p| p.replicas.contains(&1))
                        .count();
                    if assigned <= 8 {
                        self.replicas.reconcile(&cache);
                    }
                }
            }
        }
    }
}

/// `RUNNEL_FUZZ_DEBUG=1` prints what each broker call answered (to see what an input reaches).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("RUNNEL_FUZZ_DEBUG").is_some())
}

/// Runs `f` to its end or for ten minutes of tokio time. The clock is paused, so a wait (an
/// acks=all, a long poll, a rebalance delay) ends as soon as nothing else can run: the bound
/// costs no real time.
async fn bounded(f: impl Future<Output = ()>) {
    let _ = tokio::time::timeout(Duration::from_secs(600), f).await;
}

/// Controller kinds first, then broker kinds.
const CONTROLLER_KINDS: u8 = 12;
const BROKER_KINDS: u8 = 16;

fn message(kind: u8, m: &impl Message) -> Vec<u8> {
    let bytes = m.encode_to_vec();
    let mut out = vec![kind];
    out.extend_from_slice(&u16::try_from(bytes.len()).expect("a small seed").to_be_bytes());
    out.extend(bytes);
    out
}

/// One valid message of every kind, and a few conversations (produce, fetch, commit).
fn seeds() -> Vec<Vec<u8>> {
    use openraft::{CommittedLeaderId, Entry, LogId, SnapshotMeta, StoredMembership, Vote};
    let image = seed_image();
    let epoch = |id| image.broker(id).expect("seeded broker").epoch;
    let orders = image.topic("orders").expect("seeded topic");
    let p0 = &orders.partitions[0];
    let leader = p0.leader.expect("a leader");
    let endpoints = |id: u32| pb::BrokerEndpoints {
        grpc: format!("b{id}:1"),
        kafka: format!("b{id}:2"),
        http: format!("b{id}:3"),
        internal: if id == 4 { format!("b{id}:4") } else { String::new() },
    };
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 20);
    let create = Command::CreateTopic {
        name: "raft".into(),
        partitions: 2,
        replication_factor: 2,
        config: Default::default(),
        assignments: Some(vec![vec![1, 2], vec![2, 3]]),
    };
    let append = AppendEntriesRequest::<Config> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: None,
        entries: vec![Entry { log_id, payload: EntryPayload::Normal(create) }],
        leader_commit: Some(log_id),
    };
    let install = InstallSnapshotRequest::<Config> {
        vote: Vote::new_committed(3, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: "s".into(),
        },
        offset: 0,
        data: Vec::new(),
        done: true,
    };
    let now = runnel_fuzz::now_ms();
    let batch = runnel_fuzz::sample_batch(runnel_storage::Compression::Snappy, 3, now);
    // Two batches as a leader sends them: offsets 0-1 then 2-4, leader epoch 4.
    let mut replicated = runnel_fuzz::sample_batch(runnel_storage::Compression::None, 2, now);
    runnel_storage::batch::set_partition_leader_epoch(&mut replicated, 4);
    let mut second = runnel_fuzz::sample_batch(runnel_storage::Compression::Gzip, 3, now);
    runnel_storage::batch::set_base_offset(&mut second, 2);
    runnel_storage::batch::set_partition_leader_epoch(&mut second, 4);
    replicated.extend(second);
    let produce = pb::ProduceRequest {
        topic: LEADS.into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        timeout_ms: 100,
        data: Some(pb::produce_request::Data::Records(pb::RecordList {
            records: vec![pb::Record {
                key: Some("k".into()),
                value: Some("v".into()),
                headers: vec![pb::RecordHeader { key: "h".into(), value: None }],
                timestamp_ms: None,
                offset: 0,
            }],
        })),
        producer: Some(pb::ProducerBatch { producer_id: 7, producer_epoch: 0, base_sequence: 0 }),
    };
    let produce_batch = pb::ProduceRequest {
        data: Some(pb::produce_request::Data::Batch(batch.into())),
        producer: None,
        ..produce.clone()
    };
    let fetch = pb::FetchRequest {
        topic: LEADS.into(),
        partition: 0,
        offset: 0,
        max_bytes: 0,
        max_wait_ms: 100,
        min_bytes: 1,
        format: pb::RecordFormat::Records as i32,
    };
    let join = pb::ConsumerGroupHeartbeatRequest {
        group_id: "g".into(),
        member_id: String::new(),
        member_epoch: 0,
        subscribed_topics: vec![LEADS.into()],
        assignor: String::new(),
        session_timeout_ms: 0,
        rebalance_timeout_ms: 0,
        owned_partitions: Vec::new(),
        client_id: "c".into(),
    };
    let offsets = vec![pb::OffsetCommitPartition {
        topic: LEADS.into(),
        partition: 0,
        offset: 1,
        metadata: "m".into(),
    }];
    let wanted = vec![pb::TopicPartitions { topic: LEADS.into(), partitions: vec![0] }];
    let cache = broker_cache();
    let update = pb::MetadataUpdate {
        version: 11,
        update: Some(pb::metadata_update::Update::Image(pb::MetadataImage {
            brokers: cache
                .brokers
                .iter()
                .map(|(&id, b)| pb::BrokerInfo {
                    broker_id: id,
                    broker_epoch: b.epoch,
                    endpoints: Some(endpoints(id)),
                    rack: String::new(),
                    fenced: id == 3,
                })
                .collect(),
            topics: cache
                .topics
                .iter()
                .map(|(name, t)| pb::TopicInfo {
                    name: name.clone(),
                    topic_id: t.id.clone(),
                    configs: [("max.message.bytes".to_owned(), "4096".to_owned())].into(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| pb::PartitionInfo {
                            partition: 0,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            leader: p.leader.map_or(-1, i64::from),
                            leader_epoch: p.leader_epoch + 1,
                            partition_epoch: p.partition_epoch + 1,
                        })
                        .collect(),
                })
                .collect(),
        })),
    };
    let b = CONTROLLER_KINDS;
    let singles = vec![
        message(
            0,
            &pb::RegisterBrokerRequest {
                broker_id: 4,
                endpoints: Some(endpoints(4)),
                rack: "r".into(),
                incarnation_id: vec![9; 16],
            },
        ),
        message(
            1,
            &pb::AlterPartitionRequest {
                topic: "orders".into(),
                topic_id: orders.id.0.to_vec(),
                partition: 0,
                leader_id: leader,
                broker_epoch: epoch(leader),
                leader_epoch: p0.leader_epoch,
                partition_epoch: p0.partition_epoch,
                new_isr: vec![pb::IsrMember { broker_id: leader, broker_epoch: epoch(leader) }],
            },
        ),
        message(2, &pb::AllocateProducerIdsRequest { broker_id: 1, broker_epoch: epoch(1) }),
        message(
            3,
            &pb::CreateTopicRequest {
                name: "new".into(),
                partitions: 2,
                replication_factor: 2,
                configs: [("retention.ms".to_owned(), "1000".to_owned())].into(),
            },
        ),
        message(4, &pb::DeleteTopicRequest { name: "logs".into() }),
        message(
            5,
            &pb::AlterTopicConfigRequest {
                name: "orders".into(),
                set: [("cleanup.policy".to_owned(), "compact".to_owned())].into(),
                delete: vec!["retention.ms".into()],
                validate_only: false,
            },
        ),
        message(6, &pb::CreatePartitionsRequest { name: "orders".into(), count: 5, validate_only: false }),
        message(7, &pb::BrokerHeartbeatRequest { broker_id: 2, broker_epoch: epoch(2), metadata_version: 1 }),
        message(
            8,
            &pb::RaftAppendEntriesRequest { request_json: serde_json::to_vec(&append).expect("json") },
        ),
        message(
            9,
            &pb::RaftVoteRequest {
                request_json: serde_json::to_vec(&VoteRequest::new(Vote::new(4, 2), Some(log_id)))
                    .expect("json"),
            },
        ),
        message(
            10,
            &pb::RaftInstallSnapshotRequest {
                header_json: serde_json::to_vec(&install).expect("json"),
                data: encode_snapshot(image),
            },
        ),
        vec![11, 0, 0],
        message(b, &produce),
        message(b, &produce_batch),
        message(b + 1, &fetch),
        message(
            b + 2,
            &pb::FetchStreamRequest {
                topic: LEADS.into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
                format: pb::RecordFormat::Batches as i32,
            },
        ),
        message(
            b + 3,
            &pb::ListOffsetsRequest {
                topic: LEADS.into(),
                partition: 0,
                spec: pb::OffsetSpec::Timestamp as i32,
                timestamp_ms: 0,
            },
        ),
        message(b + 4, &pb::MetadataRequest { topics: vec![LEADS.into(), "nope".into()] }),
        message(b + 5, &pb::InitProducerIdRequest {}),
        message(b + 6, &pb::FindCoordinatorRequest { group_id: "g".into() }),
        message(b + 7, &join),
        message(
            b + 8,
            &pb::OffsetCommitRequest {
                group_id: "g".into(),
                member_id: "m".into(),
                member_epoch: 1,
                offsets: offsets.clone(),
            },
        ),
        message(b + 9, &pb::OffsetFetchRequest { group_id: "g".into(), partitions: wanted.clone() }),
        message(b + 10, &pb::ListGroupsRequest {}),
        message(b + 11, &pb::DescribeGroupRequest { group_id: "g".into() }),
        message(b + 12, &pb::ResetOffsetsRequest { group_id: "g".into(), offsets: offsets.clone() }),
        message(
            b + 13,
            &pb::ReplicaFetchRequest {
                follower_id: 2,
                follower_epoch: 5,
                partitions: vec![pb::ReplicaFetchPartition {
                    topic: LEADS.into(),
                    topic_id: vec![1; 16],
                    partition: 0,
                    fetch_offset: 0,
                    last_fetched_epoch: -1,
                    current_leader_epoch: 3,
                    durable_end: 0,
                }],
                max_wait_ms: 0,
                max_bytes: 0,
            },
        ),
        message(
            b + 14,
            &pb::ReplicaFetchPartitionData {
                topic: FOLLOWS.into(),
                partition: 0,
                high_watermark: 2,
                log_end_offset: 2,
                batches: replicated.into(),
                ..Default::default()
            },
        ),
        message(b + 15, &update),
    ];
    let mut seeds = singles.clone();
    // Conversations: produce then read back; join, commit, fetch offsets, describe.
    seeds.push([&singles[12][..], &singles[13], &singles[14], &singles[16]].concat());
    seeds.push([&singles[12][..], &singles[25]].concat());
    seeds.push([&singles[19][..], &singles[20], &singles[22], &singles[21], &singles[23]].concat());
    seeds.push([&singles[2][..], &singles[3], &singles[1], &singles[7], &singles[5]].concat());
    seeds
}

fuzz_target!(init: runnel_fuzz::write_seeds(seeds), |data: &[u8]| {
    // Some of the broker's synchronous calls look for a runtime (timers, spawns).
    let _runtime = runtime().enter();
    let mut image = seed_image().clone();
    let mut broker: Option<Broker> = None;
    let mut rest = data;
    for _ in 0..8 {
        let [kind, hi, lo, tail @ ..] = rest else { break };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let kind = kind % (CONTROLLER_KINDS + BROKER_KINDS);
        if kind < CONTROLLER_KINDS {
            controller_message(&mut image, kind, bytes);
        } else {
            broker.get_or_insert_with(Broker::start).message(kind - CONTROLLER_KINDS, bytes);
        }
    }
    if let Some(broker) = broker {
        broker.stop();
    }
});
