//! Runnel's broker role: it hosts the partition replicas the metadata assigns to it and
//! serves the client API over them (produce, fetch, list offsets, metadata; see
//! [`service`]), registers with the controller (a fresh incarnation id per process),
//! heartbeats it, and keeps a [`MetadataCache`] up to date from `WatchMetadata`, which the
//! [`ReplicaManager`] follows. It talks to the controller only over gRPC (runnel-proto); it
//! never links the controller crate.
//!
//! Every controller voter accepts every call (followers forward to the leader), so the broker
//! may talk to any of them. It prefers the leader a `runnel-leader` hint names, and moves on
//! to the next voter when one cannot be reached.

pub mod admin;
pub mod cache;
pub mod error;
pub mod group;
pub mod health;
pub mod metrics;
pub mod plane;
pub mod producer;
pub mod replica;
pub mod replication;
pub mod service;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use cache::{CacheError, MetadataCache};
pub use error::{BrokerError, ERROR_CODE_KEY, ErrorCode, LEADER_KEY};
pub use plane::DataPlane;
pub use replica::ReplicaManager;
use runnel_storage::{LogConfig, LogError};
pub use service::BrokerGrpc;

/// Largest metadata message accepted from the controller.
pub const METADATA_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker id (the node id).
    pub id: u32,
    /// Advertised gRPC `host:port`.
    pub grpc_addr: String,
    /// The Kafka endpoint registered with the controller: the advertised `host:port`, or
    /// `NAME://host:port,...` for several listeners (see `runnel_kafka::listeners`).
    pub kafka_addr: String,
    /// Advertised HTTP `host:port`.
    pub http_addr: String,
    /// Advertised `host:port` of the internal gRPC listener, where other brokers fetch
    /// replicas, when the node serves it apart from `grpc_addr`; `None` when `grpc_addr`
    /// serves it too.
    pub internal_addr: Option<String>,
    /// The controller voters' gRPC addresses (their internal listeners).
    pub controllers: Vec<String>,
    /// TLS on every channel to the controllers and other brokers, and node identities checked
    /// on replica fetches; `None`: plaintext.
    pub tls: Option<runnel_proto::tls::NodeTls>,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// Deadline of one controller call.
    pub request_timeout: Duration,
    /// Where the partition logs live (one directory per partition).
    pub log_dir: PathBuf,
    /// Log settings for topics that set none of their own.
    pub log_defaults: LogConfig,
    /// How often retention deletes old segments (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_interval: Duration,
    /// An idempotent producer silent this long in a partition is forgotten there, at the next
    /// retention check (Kafka's `producer.id.expiration.ms`, one day by default).
    pub producer_id_expiration: Duration,
    /// A follower that has not caught up with its leader for this long leaves the ISR
    /// (Kafka's `replica.lag.time.max.ms`, 10 s by default).
    pub replica_lag_time: Duration,
    /// Partitions of `__consumer_offsets` when this broker is the one to create it.
    pub offsets_topic_partitions: u32,
    /// When set, the users and ACLs of each metadata update go into this store (the Kafka
    /// listener and the client gRPC API authenticate and authorize against it).
    pub auth: Option<Arc<runnel_auth::AuthStore>>,
}

/// The broker's standing with the controller, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The broker epoch of the current registration; 0 before the first.
    pub epoch: u64,
    /// Whether the controller last said this broker is fenced (true until it says otherwise).
    pub fenced: bool,
    /// The controller that answered the last heartbeat.
    pub controller: Option<String>,
    /// The metadata version the cache is at.
    pub metadata_version: u64,
    /// Why the broker's storage failed, while it is (see [`health`]): it left the cluster.
    pub storage_failure: Option<String>,
}

/// A running broker role.
#[derive(Debug)]
pub struct Broker {
    status: watch::Receiver<BrokerStatus>,
    cache: Arc<RwLock<MetadataCache>>,
    replicas: Arc<ReplicaManager>,
    plane: Arc<DataPlane>,
    groups: Arc<group::GroupCoordinator>,
    admin: admin::TopicAdmin,
    peers: runnel_proto::tls::PeerCheck,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

/// The controller voters' addresses and how to reach them: cheap to clone, shared by every
/// task that calls the controller.
#[derive(Debug, Clone)]
pub struct ControllerSet {
    addrs: Vec<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ControllerSet {
    /// The voters at `addrs`, reached over TLS with `tls` when set.
    pub fn new(addrs: Vec<String>, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        ControllerSet { addrs, tls }
    }

    fn of(config: &BrokerConfig) -> Self {
        ControllerSet { addrs: config.controllers.clone(), tls: config.tls.as_ref().map(|t| t.client()) }
    }

    /// A client of the voter at `addr` (see [`client`]).
    fn client(
        &self,
        addr: &str,
        timeout: Duration,
        unary: bool,
    ) -> Result<ControllerServiceClient<Channel>, tonic::Status> {
        client(addr, self.tls.as_ref(), timeout, unary)
    }
}

/// Picks a controller to call: the leader when a hint named one, else the voters in turn.
#[derive(Debug)]
struct Controllers {
    addrs: Vec<String>,
    next: usize,
    hint: Option<String>,
}

impl Controllers {
    fn new(addrs: Vec<String>, start: usize) -> Self {
        let next = if addrs.is_empty() { 0 } else { start % addrs.len() };
        Self { addrs, next, hint: None }
    }

    fn current(&self) -> String {
        self.hint.clone().unwrap_or_else(|| self.addrs[self.next].clone())
    }

    /// The call failed: follow the status's leader hint, or move to the next voter.
    fn failed(&mut self, status: &tonic::Status) {
        let hint = status.metadata().get(LEADER_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if hint.is_some() && hint != self.hint {
            self.hint = hint;
        } else {
            self.hint = None;
            self.next = (self.next + 1) % self.addrs.len();
        }
    }
}

/// A client of the controller at `addr`. Unary clients get `timeout` as each call's deadline;
/// streams must outlive it, so they get none (only the connect timeout).
fn client(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    timeout: Duration,
    unary: bool,
) -> Result<ControllerServiceClient<Channel>, tonic::Status> {
    let mut endpoint = runnel_proto::tls::endpoint(addr, tls)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad controller address {addr:?}: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if unary {
        endpoint = endpoint.timeout(timeout);
    }
    let channel = endpoint.connect_lazy();
    Ok(ControllerServiceClient::new(channel).max_decoding_message_size(METADATA_BYTES_MAX))
}

impl Broker {
    /// Locks the log directory, then starts registration, heartbeats, the metadata watch and
    /// the replica manager that follows it. Serve [`Broker::service`] to take requests.
    /// Fails if the log directory cannot be locked (another process uses it). Panics if
    /// `controllers` is empty.
    pub fn start(config: BrokerConfig) -> Result<Self, LogError> {
        assert!(!config.controllers.is_empty(), "a broker needs at least one controller address");
        let replicas =
            Arc::new(ReplicaManager::open(config.id, &config.log_dir, config.log_defaults.clone())?);
        let cancel = CancellationToken::new();
        let cache = Arc::new(RwLock::new(MetadataCache::default()));
        let (status_tx, status) = watch::channel(BrokerStatus { fenced: true, ..BrokerStatus::default() });
        let producer_ids =
            ProducerIds::new(config.id, ControllerSet::of(&config), config.request_timeout, status.clone());
        let plane = Arc::new(
            DataPlane::new(config.id, Arc::clone(&replicas), Arc::clone(&cache))
                .with_producer_ids(Arc::new(producer_ids)),
        );
        let status_tx = Arc::new(status_tx);
        let mut tasks = JoinSet::new();
        tasks.spawn(reconcile_task(
            Arc::clone(&replicas),
            Arc::clone(&cache),
            status.clone(),
            cancel.clone(),
        ));
        tasks.spawn(retention_task(
            Arc::clone(&replicas),
            config.retention_check_interval,
            config.producer_id_expiration,
            cancel.clone(),
        ));
        tasks.spawn(replication::follow_manager_task(
            Arc::clone(&replicas),
            Arc::clone(&cache),
            status.clone(),
            config.tls.as_ref().map(runnel_proto::tls::NodeTls::client),
            cancel.clone(),
        ));
        tasks.spawn(replication::isr_task(
            Arc::clone(&replicas),
            Arc::clone(&cache),
            status.clone(),
            ControllerSet::of(&config),
            config.replica_lag_time,
            config.request_timeout,
            cancel.clone(),
        ));
        let groups = Arc::new(group::GroupCoordinator::new(
            config.id,
            group::GroupConfig {
                offsets_topic_partitions: config.offsets_topic_partitions,
                controllers: ControllerSet::of(&config),
                request_timeout: config.request_timeout,
                initial_rebalance_delay: group::INITIAL_REBALANCE_DELAY_DEFAULT,
            },
            Arc::clone(&replicas),
            Arc::clone(&cache),
            status.clone(),
        ));
        tasks.spawn(group::coordinator::run(Arc::clone(&groups), cancel.clone()));
        let admin =
            admin::TopicAdmin::new(ControllerSet::of(&config), config.request_timeout, status.clone());
        tasks.spawn(watch_task(config.clone(), Arc::clone(&cache), Arc::clone(&status_tx), cancel.clone()));
        let peers = runnel_proto::tls::PeerCheck::for_tls(config.tls.is_some());
        let health = replicas.health().clone();
        tasks.spawn(health::probe_task(health.clone(), Arc::clone(&replicas), cancel.clone()));
        tasks.spawn(liveness_task(config, status_tx, health, cancel.clone()));
        Ok(Self { status, cache, replicas, plane, groups, admin, peers, cancel, tasks })
    }

    /// The client API over this broker's partitions, for a gRPC server to serve.
    pub fn service(
        &self,
    ) -> runnel_proto::pb::runnel::v1::broker_service_server::BrokerServiceServer<BrokerGrpc> {
        BrokerGrpc::new(Arc::clone(&self.plane)).into_server()
    }

    /// The consumer-group API (`GroupService`), for a gRPC server to serve.
    pub fn group_service(
        &self,
    ) -> runnel_proto::pb::runnel::v1::group_service_server::GroupServiceServer<group::GroupGrpc> {
        group::GroupGrpc::new(Arc::clone(&self.groups)).into_server()
    }

    /// The leader side of replication (followers' fetch sessions), for a gRPC server.
    pub fn replication_service(
        &self,
    ) -> runnel_proto::pb::runnel::v1::replication_service_server::ReplicationServiceServer<
        replication::ReplicationGrpc,
    > {
        replication::ReplicationGrpc::new(Arc::clone(&self.replicas), self.peers).into_server()
    }

    /// The transport-free data plane, for other front-ends (the Kafka listener).
    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    /// The group coordinator, for other front-ends.
    pub fn groups(&self) -> &Arc<group::GroupCoordinator> {
        &self.groups
    }

    /// Topic administration through the controller, for other front-ends.
    pub fn admin(&self) -> &admin::TopicAdmin {
        &self.admin
    }

    /// The hosted partitions.
    pub fn replicas(&self) -> &Arc<ReplicaManager> {
        &self.replicas
    }

    /// The broker's standing now.
    pub fn status(&self) -> BrokerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of the broker's standing.
    pub fn subscribe(&self) -> watch::Receiver<BrokerStatus> {
        self.status.clone()
    }

    /// A copy of the metadata cache.
    pub fn metadata(&self) -> MetadataCache {
        self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stops every task, waiting up to `patience` before aborting them.
    pub async fn shutdown(mut self, patience: Duration) {
        self.cancel.cancel();
        let drained =
            tokio::time::timeout(patience, async { while self.tasks.join_next().await.is_some() {} });
        if drained.await.is_err() {
            self.tasks.shutdown().await;
        }
    }
}

/// Pause before trying the next controller after a failure: short, so that after a leader
/// dies the broker reaches the new one well within the controller's session grace.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why a session ended.
enum SessionEnd {
    /// Shutting down: dropping the session tells the leader to fence this broker.
    Cancelled,
    /// The controller wants a new registration.
    Reregister,
    /// The broker's storage failed: dropping the session has the controller fence it.
    StorageFailed,
    /// The leader moved or went away; the status names where to go next.
    Failed(tonic::Status),
}

/// Registers, then heartbeats over a `BrokerSession` stream to the controller leader (whose
/// end fences this broker at once); registers again when told to.
async fn liveness_task(
    config: BrokerConfig,
    status: Arc<watch::Sender<BrokerStatus>>,
    health: health::StorageHealth,
    cancel: CancellationToken,
) {
    let incarnation_id: [u8; 16] = rand::random();
    let mut controllers = Controllers::new(config.controllers.clone(), config.id as usize);
    let mut epoch = 0u64;
    let mut failures = health.subscribe();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        // Out of the cluster while the storage is failed; back with a new registration.
        if let Some(reason) = health.failure() {
            status.send_modify(|s| {
                s.storage_failure = Some(reason);
                s.fenced = true;
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = failures.wait_for(Option::is_none) => {}
            }
            status.send_modify(|s| s.storage_failure = None);
            epoch = 0;
            continue;
        }
        let addr = controllers.current();
        if epoch == 0 {
            match register(&config, &addr, incarnation_id).await {
                Ok(registered) => {
                    epoch = registered;
                    tracing::info!(broker = config.id, epoch, controller = %addr, "registered");
                    status.send_modify(|s| {
                        s.epoch = epoch;
                        s.fenced = true;
                    });
                    continue;
                }
                Err(e) => {
                    tracing::debug!(broker = config.id, controller = %addr, "registration failed: {e}");
                    controllers.failed(&e);
                }
            }
        } else {
            match run_session(&config, &addr, epoch, &status, &mut failures, &cancel).await {
                SessionEnd::Cancelled => return,
                SessionEnd::StorageFailed => {
                    tracing::warn!(
                        broker = config.id,
                        epoch,
                        "storage failed: leaving the cluster (session closed)"
                    );
                    continue;
                }
                SessionEnd::Reregister => {
                    tracing::warn!(broker = config.id, epoch, "the controller asks for a new registration");
                    epoch = 0;
                    continue;
                }
                SessionEnd::Failed(e) => {
                    tracing::debug!(broker = config.id, controller = %addr, "session ended: {e}");
                    status.send_modify(|s| s.controller = None);
                    controllers.failed(&e);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

async fn register(config: &BrokerConfig, addr: &str, incarnation_id: [u8; 16]) -> Result<u64, tonic::Status> {
    let request = pb::RegisterBrokerRequest {
        broker_id: config.id,
        endpoints: Some(pb::BrokerEndpoints {
            grpc: config.grpc_addr.clone(),
            kafka: config.kafka_addr.clone(),
            http: config.http_addr.clone(),
            internal: config.internal_addr.clone().unwrap_or_default(),
        }),
        rack: String::new(),
        incarnation_id: incarnation_id.to_vec(),
    };
    let tls = config.tls.as_ref().map(runnel_proto::tls::NodeTls::client);
    let mut client = client(addr, tls.as_ref(), config.request_timeout, true)?;
    Ok(client.register_broker(request).await?.into_inner().broker_epoch)
}

/// One session with the controller at `addr`: a heartbeat every interval, each answered
/// within two intervals (a paused leader is left for the next controller).
async fn run_session(
    config: &BrokerConfig,
    addr: &str,
    epoch: u64,
    status: &watch::Sender<BrokerStatus>,
    failures: &mut watch::Receiver<Option<String>>,
    cancel: &CancellationToken,
) -> SessionEnd {
    let answer_timeout = (config.heartbeat_interval * 2).max(Duration::from_millis(200));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let tls = config.tls.as_ref().map(runnel_proto::tls::NodeTls::client);
    let mut client = match client(addr, tls.as_ref(), config.request_timeout, false) {
        Ok(client) => client,
        Err(e) => return SessionEnd::Failed(e),
    };
    let mut interval = tokio::time::interval(config.heartbeat_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat = || pb::BrokerHeartbeatRequest {
        broker_id: config.id,
        broker_epoch: epoch,
        metadata_version: status.borrow().metadata_version,
    };
    // The first heartbeat goes with the request, so a follower's refusal comes back at once.
    if tx.try_send(beat()).is_err() {
        return SessionEnd::Failed(tonic::Status::internal("session channel full"));
    }
    interval.tick().await;
    let call = client.broker_session(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut answers = tokio::select! {
        _ = cancel.cancelled() => return SessionEnd::Cancelled,
        // Short: a paused controller must not hold this broker past a new leader's grace.
        opened = tokio::time::timeout(answer_timeout, call) => match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(e)) => return SessionEnd::Failed(e),
            Err(_) => return SessionEnd::Failed(tonic::Status::deadline_exceeded("opening the session")),
        },
    };
    loop {
        let answer = tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            _ = failures.wait_for(Option::is_some) => return SessionEnd::StorageFailed,
            answer = tokio::time::timeout(answer_timeout, answers.message()) => answer,
        };
        let response = match answer {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => return SessionEnd::Failed(tonic::Status::unavailable("the session ended")),
            Ok(Err(e)) => return SessionEnd::Failed(e),
            Err(_) => return SessionEnd::Failed(tonic::Status::deadline_exceeded("no heartbeat answer")),
        };
        if response.should_reregister {
            return SessionEnd::Reregister;
        }
        status.send_modify(|s| {
            if s.fenced != response.fenced {
                tracing::info!(broker = config.id, fenced = response.fenced, "fencing changed");
            }
            s.fenced = response.fenced;
            s.controller = Some(addr.to_owned());
        });
        tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            _ = failures.wait_for(Option::is_some) => return SessionEnd::StorageFailed,
            _ = interval.tick() => {}
        }
        if tx.send(beat()).await.is_err() {
            return SessionEnd::Failed(tonic::Status::unavailable("the session closed"));
        }
    }
}

/// Sends one AlterPartition to the controller voters in turn (followers forward to the
/// leader; a NOT_CONTROLLER hint is followed), until one answers or all failed.
pub(crate) async fn alter_partition(
    controllers: &ControllerSet,
    request: pb::AlterPartitionRequest,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    call_controller(controllers, timeout, |mut c| {
        let request = request.clone();
        async move { c.alter_partition(request).await }
    })
    .await
    .map(|_| ())
}

/// Calls the controller leader with `call`, trying the voters in turn (followers forward to
/// the leader; a NOT_CONTROLLER hint is followed), until one answers or all failed. A
/// refusal with Kafka's code is the controller's answer and is not retried.
async fn call_controller<T, F, Fut>(
    controllers: &ControllerSet,
    timeout: Duration,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut(ControllerServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut picker = Controllers::new(controllers.addrs.clone(), 0);
    let mut last = tonic::Status::unavailable("no controller");
    for _ in 0..controllers.addrs.len() + 1 {
        let addr = picker.current();
        match call(controllers.client(&addr, timeout, true)?).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(e) => {
                if e.metadata().get(ERROR_CODE_KEY).is_some()
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

/// Hands out producer ids for `InitProducerId` from blocks the controller quorum allocates
/// to this broker (`AllocateProducerIds`), so no id is handed out twice in the cluster. Ids
/// left in a block when the process stops are never used: a restarted broker asks for a
/// new block.
#[derive(Debug)]
pub struct ProducerIds {
    broker_id: u32,
    controllers: ControllerSet,
    request_timeout: Duration,
    status: watch::Receiver<BrokerStatus>,
    /// The unused rest of the current block. The async lock is held across a block fetch, so
    /// concurrent callers wait for one fetch instead of each fetching a block.
    block: tokio::sync::Mutex<std::ops::Range<i64>>,
}

impl ProducerIds {
    /// Ids for broker `broker_id` (its epoch read from `status`), from `controllers`.
    pub fn new(
        broker_id: u32,
        controllers: ControllerSet,
        request_timeout: Duration,
        status: watch::Receiver<BrokerStatus>,
    ) -> Self {
        ProducerIds { broker_id, controllers, request_timeout, status, block: tokio::sync::Mutex::new(0..0) }
    }

    /// The next unused producer id. Fails with LEADER_NOT_AVAILABLE before the broker has
    /// registered, and REQUEST_TIMED_OUT when the controller quorum cannot allocate a block
    /// now; both are retriable.
    pub async fn next(&self) -> Result<i64, BrokerError> {
        let mut block = self.block.lock().await;
        if let Some(id) = block.next() {
            return Ok(id);
        }
        let broker_epoch = self.status.borrow().epoch;
        if broker_epoch == 0 {
            return Err(BrokerError::new(
                ErrorCode::LeaderNotAvailable,
                "this broker has not registered with the controller yet; retry",
            ));
        }
        let request = pb::AllocateProducerIdsRequest { broker_id: self.broker_id, broker_epoch };
        let answer = call_controller(&self.controllers, self.request_timeout, |mut c| async move {
            c.allocate_producer_ids(request).await
        })
        .await
        .map_err(|e| {
            tracing::warn!(broker = self.broker_id, "allocating producer ids failed: {e}");
            BrokerError::new(
                ErrorCode::RequestTimedOut,
                format!("the controller quorum could not allocate producer ids now; retry ({})", e.message()),
            )
        })?;
        let end = answer.first_id.checked_add(i64::from(answer.count));
        match end {
            Some(end) if answer.first_id >= 0 && answer.count > 0 => {
                tracing::info!(
                    broker = self.broker_id,
                    first = answer.first_id,
                    end,
                    "got a block of producer ids"
                );
                *block = answer.first_id + 1..end;
                Ok(answer.first_id)
            }
            _ => Err(BrokerError::new(
                ErrorCode::UnknownServerError,
                format!("the controller answered an invalid producer id block {answer:?}"),
            )),
        }
    }
}

/// Follows the metadata: after every change of the cache's version, brings the hosted
/// partitions in line (on a blocking thread: it opens and deletes files).
async fn reconcile_task(
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    mut status: watch::Receiver<BrokerStatus>,
    cancel: CancellationToken,
) {
    let mut applied = None;
    loop {
        let version = status.borrow_and_update().metadata_version;
        if applied != Some(version) {
            let snapshot = cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let replicas = Arc::clone(&replicas);
            if let Err(e) = tokio::task::spawn_blocking(move || replicas.reconcile(&snapshot)).await {
                tracing::error!("reconciling the hosted partitions panicked: {e}");
            }
            applied = Some(version);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Deletes expired segments and forgets expired producers every `interval`.
async fn retention_task(
    replicas: Arc<ReplicaManager>,
    interval: Duration,
    producer_id_expiration: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let replicas = Arc::clone(&replicas);
        if let Err(e) =
            tokio::task::spawn_blocking(move || replicas.enforce_retention(producer_id_expiration)).await
        {
            tracing::error!("retention panicked: {e}");
        }
    }
}

/// Keeps the cache current: watch one voter; on a stream failure or a bad update, watch the
/// next one, which starts with a full image.
async fn watch_task(
    config: BrokerConfig,
    cache: Arc<RwLock<MetadataCache>>,
    status: Arc<watch::Sender<BrokerStatus>>,
    cancel: CancellationToken,
) {
    // Prefer this node's own controller when it is one (same address), else start at id.
    let own = config.internal_addr.as_ref().unwrap_or(&config.grpc_addr);
    let start = config.controllers.iter().position(|a| a == own).unwrap_or(config.id as usize);
    let mut controllers = Controllers::new(config.controllers.clone(), start);
    let reach = ControllerSet::of(&config);
    let retry = config.heartbeat_interval.min(Duration::from_millis(200));
    // The users and ACLs last put in the store.
    let mut fed: Arc<runnel_auth::Security> = Arc::default();
    loop {
        let addr = controllers.addrs[controllers.next].clone();
        let watched = async {
            let mut client = reach.client(&addr, config.request_timeout, false)?;
            let mut stream = client.watch_metadata(pb::WatchMetadataRequest {}).await?.into_inner();
            while let Some(update) = stream.next().await {
                let update = update?;
                let (version, security) = {
                    let mut cache = cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    cache.apply(&update).map_err(|e| tonic::Status::data_loss(e.to_string()))?;
                    (cache.version, Arc::clone(&cache.security))
                };
                if let Some(store) = &config.auth
                    && !Arc::ptr_eq(&security, &fed)
                {
                    store.set((*security).clone());
                    fed = security;
                }
                status.send_modify(|s| s.metadata_version = version);
            }
            Err::<(), _>(tonic::Status::unavailable("the metadata stream ended"))
        };
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            ended = watched => ended,
        };
        if let Err(e) = ended {
            tracing::debug!(broker = config.id, controller = %addr, "metadata watch ended: {e}");
        }
        controllers.next = (controllers.next + 1) % controllers.addrs.len();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Runs `f`, which blocks (file I/O, or CPU-heavy work such as inflating a batch), so that it
/// does not hold up the other tasks of its async worker (heartbeats, Raft, sessions share
/// them, and a slow disk must not get the broker fenced): on a multi-threaded runtime through
/// `block_in_place` (the worker's other tasks move to another thread meanwhile); elsewhere (a
/// current-thread test runtime) in place.
pub fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// Blocks until `ticks` passes `from + 3` or `within` passes; whether it did.
    fn wait_for_ticks(ticks: &AtomicU64, within: Duration) -> bool {
        let from = ticks.load(Ordering::SeqCst);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if ticks.load(Ordering::SeqCst) >= from + 3 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// On a runtime with one worker, a task ticking every millisecond keeps ticking while
    /// another blocks through `off_the_workers` (as a heartbeat must while a read waits on a
    /// slow disk), and stops while one blocks in place.
    #[test]
    fn blocking_work_off_the_workers_leaves_the_other_tasks_running() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = Arc::clone(&ticks);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticker.fetch_add(1, Ordering::SeqCst);
            }
        });
        let (moved, in_place) = runtime.block_on(async {
            // Let the ticker start.
            while ticks.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let t = Arc::clone(&ticks);
            let moved = tokio::spawn(async move {
                super::off_the_workers(|| wait_for_ticks(&t, Duration::from_secs(10)))
            })
            .await
            .unwrap();
            let t = Arc::clone(&ticks);
            let in_place =
                tokio::spawn(async move { wait_for_ticks(&t, Duration::from_millis(300)) }).await.unwrap();
            (moved, in_place)
        });
        assert!(moved, "the ticker stopped while a task blocked off the workers");
        assert!(!in_place, "the ticker ran while the only worker was blocked: the test shows nothing");
        runtime.shutdown_background();
    }
}
