//! `runnel.v1.ControllerService`, served by every controller node.
//!
//! - **Writes** are proposed with `client_write` on the Raft leader. A follower forwards the
//!   call to the leader's ControllerService (the leader's Raft membership address: one gRPC
//!   port serves both services), marked with [`FORWARDED_KEY`] so it is forwarded at most
//!   once; a forwarded call that reaches a non-leader, or a leader that cannot be reached,
//!   is answered NOT_CONTROLLER with the leader's address. Each write has a deadline
//!   ([`ServiceConfig::write_timeout`]): without a quorum it fails with REQUEST_TIMED_OUT
//!   ("no quorum") rather than hang. A write that timed out may still commit later.
//! - **Validate-only writes** (AlterTopicConfig and CreatePartitions with `validate_only`)
//!   are routed like writes and checked on the leader against its image after
//!   `ensure_linearizable` ([`ClusterMetadata::dry_run`]); nothing is proposed.
//! - **ListTopics and DescribeTopic** are linearizable: served on the leader after
//!   `ensure_linearizable` (forwarded like writes).
//! - **DescribeCluster** is served from the answering node's own view (Raft metrics and
//!   applied image), which may lag the leader: it is for operators, and it must work when
//!   there is no leader.
//! - **WatchMetadata** is served from the node's own applied image (every node applies the
//!   log), so brokers can watch any controller; the stream's versions never go back.
//! - **Broker liveness** runs on the leader ([`liveness_task`]): heartbeat arrival times are
//!   kept in memory, not in the state machine (time is not deterministic). A broker silent
//!   past the session timeout is fenced. A broker's `BrokerSession` stream ending (its
//!   process died, its connection dropped, or it shut down) fences it at once: fencing a
//!   live broker is always safe, its next heartbeat unfences it. A new leader starts every
//!   clock afresh and fences brokers that have not reached it within
//!   [`ServiceConfig::session_grace`] (they follow a new leader within a few heartbeats; one
//!   that does not is most likely on the old leader's dead host).

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState};
use runnel_auth::Principal;
use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use runnel_proto::pb::runnel::v1::controller_service_server::{ControllerService, ControllerServiceServer};
use runnel_proto::security::{self as wire, check};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::convert::{self, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use super::error::{ControllerError, status_error_code};
use super::machine::{MetadataMachine, MetadataResponse};
use super::metrics::ControllerMetrics;
use crate::metadata::{Applied, ClusterMetadata, Command, ErrorCode, Outcome, PartitionRef};
use crate::raft::{MachineEvent, MachineView, Node, NodeId, Raft};

/// gRPC metadata key marking a call one controller forwarded to another.
pub const FORWARDED_KEY: &str = "runnel-forwarded";

/// Updates buffered per watcher before the node stops reading its applied events for it;
/// a watcher that stays behind is resynced with a full image.
pub const WATCH_BUFFER: usize = 64;

/// How often a call waiting for a leader to be known looks again.
const LEADER_POLL: Duration = Duration::from_millis(20);

/// The service's timeouts and switches.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Deadline of one write (or linearizable read) on the leader.
    pub write_timeout: Duration,
    /// A broker whose last heartbeat is older than this is fenced.
    pub session_timeout: Duration,
    /// After unfencing a broker, move leadership back to preferred replicas.
    pub restore_preferred_leaders: bool,
    /// How long a new leader waits for a broker to reach it (by session or heartbeat) before
    /// fencing it; at most `session_timeout` matters.
    pub session_grace: Duration,
    /// Who may make the calls only brokers make: with TLS, the broker the call names (or,
    /// for a call a controller forwarded, any node).
    pub peers: runnel_proto::tls::PeerCheck,
    /// TLS to the leader when forwarding, when the node runs TLS.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Whether WatchMetadata may carry the users' credentials: only on a node whose planes
    /// are apart, and there only on the internal listener. A node serving clients and nodes
    /// on one listener cannot tell them apart, so it never sends them.
    pub send_security: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(3),
            restore_preferred_leaders: true,
            // Two heartbeat intervals at the default 500 ms, plus 300 ms to find the leader.
            session_grace: Duration::from_millis(1_300),
            peers: runnel_proto::tls::PeerCheck::Off,
            tls: None,
            send_security: false,
        }
    }
}

/// Heartbeat clocks, valid for one leadership term.
#[derive(Debug)]
struct Liveness {
    /// The term the clocks belong to; `None` while this node does not lead.
    term: Option<u64>,
    /// When this node started leading in `term`: a broker not heard from since counts from here.
    started: Instant,
    /// The last heartbeat of each broker in `term`.
    last_seen: HashMap<u32, Instant>,
    /// The last other node this node saw leading, while it did not lead itself.
    last_other_leader: Option<NodeId>,
    /// In `term`: the node that led before this one took over. Its broker (the same id in
    /// a Runnel node) most likely died with it, so it gets no grace.
    predecessor: Option<NodeId>,
}

impl Liveness {
    fn restart_if_new(&mut self, term: u64) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.started = Instant::now();
            self.last_seen.clear();
            self.predecessor = self.last_other_leader.take();
        }
    }
}

/// What one node's service shares between calls and its liveness task.
pub(crate) struct Shared {
    id: NodeId,
    raft: Raft<MetadataMachine>,
    view: MachineView<MetadataMachine>,
    config: ServiceConfig,
    cancel: CancellationToken,
    peers: Mutex<HashMap<String, ControllerServiceClient<Channel>>>,
    liveness: Mutex<Liveness>,
    metrics: ControllerMetrics,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("id", &self.id).field("config", &self.config).finish_non_exhaustive()
    }
}

/// Where a call is served.
enum Route {
    Local,
    Forward { client: ControllerServiceClient<Channel>, addr: String },
}

impl Shared {
    pub(crate) fn new(
        id: NodeId,
        raft: Raft<MetadataMachine>,
        view: MachineView<MetadataMachine>,
        config: ServiceConfig,
        cancel: CancellationToken,
        metrics: ControllerMetrics,
    ) -> Arc<Self> {
        let liveness = Liveness {
            term: None,
            started: Instant::now(),
            last_seen: HashMap::new(),
            last_other_leader: None,
            predecessor: None,
        };
        Arc::new(Self {
            id,
            raft,
            view,
            config,
            cancel,
            peers: Mutex::default(),
            liveness: Mutex::new(liveness),
            metrics,
        })
    }

    fn metrics(&self) -> RaftMetrics<NodeId, Node> {
        self.raft.metrics().borrow().clone()
    }

    fn read<R>(&self, f: impl FnOnce(&ClusterMetadata) -> R) -> Result<R, ControllerError> {
        self.view.read(|m, _| f(&m.image)).map_err(|e| ControllerError::Unavailable(e.to_string()))
    }

    fn client(&self, addr: &str) -> Result<ControllerServiceClient<Channel>, ControllerError> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let channel = runnel_proto::tls::endpoint(addr, self.config.tls.as_ref())
            .map_err(|e| ControllerError::Unavailable(format!("bad leader address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = ControllerServiceClient::new(channel)
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
            .max_encoding_message_size(REQUEST_BYTES_MAX);
        peers.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Serve here if this node leads; otherwise forward to the leader, waiting up to the
    /// write timeout for one to be elected.
    async fn route<T>(&self, request: &Request<T>, deadline: Instant) -> Result<Route, ControllerError> {
        let forwarded = request.metadata().contains_key(FORWARDED_KEY);
        loop {
            let metrics = self.metrics();
            if metrics.state == ServerState::Leader {
                return Ok(Route::Local);
            }
            if let Some(leader) = metrics.current_leader
                && leader != self.id
            {
                let addr = metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone());
                return match addr {
                    Some(addr) if !forwarded => Ok(Route::Forward { client: self.client(&addr)?, addr }),
                    leader => Err(ControllerError::NotController { leader }),
                };
            }
            if Instant::now() >= deadline {
                return Err(ControllerError::NoQuorum { timeout: self.config.write_timeout });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Commits `command` through this node's Raft, which must lead.
    pub(crate) async fn propose(&self, command: Command) -> Result<Applied, ControllerError> {
        let timeout = self.config.write_timeout;
        let started = Instant::now();
        let written = match tokio::time::timeout(timeout, self.raft.client_write(command)).await {
            Err(_elapsed) => return Err(ControllerError::NoQuorum { timeout }),
            Ok(written) => written,
        };
        match written {
            Ok(response) => match response.data {
                // Committed and applied, whether the command succeeded or was refused.
                MetadataResponse::Command(result) => {
                    self.metrics.committed(started.elapsed());
                    Ok(result?)
                }
                MetadataResponse::None => {
                    Err(ControllerError::Unavailable("the entry carried no command".into()))
                }
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                Err(ControllerError::NotController { leader: to.leader_node.map(|n| n.addr) })
            }
            Err(e) => Err(ControllerError::Unavailable(e.to_string())),
        }
    }

    /// Commits `command` (this node must lead), or with `validate_only` checks it against
    /// the image as of now (after confirming leadership, so the check sees every committed
    /// change) and answers what it would do, changing nothing.
    async fn write_or_check(
        &self,
        command: Command,
        validate_only: bool,
    ) -> Result<Applied, ControllerError> {
        if !validate_only {
            return self.propose(command).await;
        }
        self.linearize().await?;
        Ok(self.read(|image| image.dry_run(&command))??)
    }

    /// Confirms this node still leads and has applied everything committed before now.
    async fn linearize(&self) -> Result<(), ControllerError> {
        let timeout = self.config.write_timeout;
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_elapsed) => Err(ControllerError::NoQuorum { timeout }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to)))) => {
                Err(ControllerError::NotController { leader: to.leader_node.map(|n| n.addr) })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ControllerError::NoQuorum { timeout })
            }
            Ok(Err(e)) => Err(ControllerError::Unavailable(e.to_string())),
        }
    }

    /// The current term if this node leads.
    fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.state == ServerState::Leader).then_some(metrics.current_term)
    }

    /// NOT_CONTROLLER naming the leader this node knows, if any.
    fn not_controller(&self) -> ControllerError {
        let metrics = self.metrics();
        let leader = metrics.current_leader.filter(|l| *l != self.id);
        let addr =
            leader.and_then(|l| metrics.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        ControllerError::NotController { leader: addr }
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn heartbeat(
        &self,
        request: pb::BrokerHeartbeatRequest,
    ) -> Result<pb::BrokerHeartbeatResponse, ControllerError> {
        let term = self.leader_term().ok_or(ControllerError::NotController { leader: None })?;
        {
            let mut liveness = self.liveness();
            liveness.restart_if_new(term);
            liveness.last_seen.insert(request.broker_id, Instant::now());
        }
        let reregister = pb::BrokerHeartbeatResponse { fenced: true, should_reregister: true };
        let Some(broker) = self.read(|image| image.broker(request.broker_id).cloned())? else {
            return Ok(reregister);
        };
        if broker.epoch != request.broker_epoch {
            return Ok(reregister);
        }
        if broker.fenced && request.metadata_version >= broker.epoch {
            match self.propose(Command::UnfenceBroker { id: broker.id, epoch: broker.epoch }).await {
                Ok(_) => {}
                Err(ControllerError::Command(e)) if e.code == ErrorCode::StaleBrokerEpoch => {
                    return Ok(reregister);
                }
                Err(e) => return Err(e),
            }
            tracing::info!(broker = broker.id, epoch = broker.epoch, "broker unfenced");
            if self.config.restore_preferred_leaders {
                let elect = Command::ElectLeaders { partitions: None, preferred: true };
                if let Err(e) = self.propose(elect).await {
                    tracing::warn!("preferred leader election after unfencing {}: {e}", broker.id);
                }
            }
            return Ok(pb::BrokerHeartbeatResponse { fenced: false, should_reregister: false });
        }
        Ok(pb::BrokerHeartbeatResponse { fenced: broker.fenced, should_reregister: false })
    }

    /// One liveness check: fences every unfenced broker silent past the session timeout.
    async fn check_liveness(&self) {
        let Some(term) = self.leader_term() else {
            let leader = self.metrics().current_leader.filter(|l| *l != self.id);
            let mut liveness = self.liveness();
            liveness.term = None;
            if leader.is_some() {
                liveness.last_other_leader = leader;
            }
            return;
        };
        let expired = {
            let mut liveness = self.liveness();
            liveness.restart_if_new(term);
            let now = Instant::now();
            let session = self.config.session_timeout;
            let grace = self.config.session_grace.min(session);
            self.read(|image| {
                image
                    .live_brokers()
                    .filter(|b| match liveness.last_seen.get(&b.id) {
                        Some(seen) => now.duration_since(*seen) > session,
                        // Fencing a live broker is safe (its next heartbeat unfences it), and
                        // the previous leader's own broker would otherwise hold its
                        // partitions for the whole grace.
                        None if liveness.predecessor == Some(NodeId::from(b.id)) => true,
                        None => now.duration_since(liveness.started) > grace,
                    })
                    .map(|b| (b.id, b.epoch))
                    .collect::<Vec<_>>()
            })
        };
        let expired = match expired {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!("liveness check cannot read the metadata: {e}");
                return;
            }
        };
        for (id, epoch) in expired {
            match self.propose(Command::FenceBroker { id, epoch }).await {
                Ok(_) => tracing::warn!(broker = id, epoch, "broker missed its heartbeats; fenced"),
                Err(e) => tracing::warn!(broker = id, "fencing failed: {e}"),
            }
        }
    }
}

/// Fences brokers that stop heartbeating, while this node leads. Runs until `cancel`.
pub(crate) async fn liveness_task(shared: Arc<Shared>) {
    // A tenth of the timeout (at most 250 ms): a silent broker is fenced within about 1.1
    // session timeouts (3.3 s at the default 3 s, inside the 4 s a SIGSTOP may take).
    let tick =
        (shared.config.session_timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A node that has just become leader checks at once rather than at its next tick: the
    // broker of the node that led before it is fenced without grace, and a tick of up to
    // 250 ms would add to every controller failover.
    let mut metrics = shared.raft.metrics();
    let mut checked_term = None;
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = interval.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return; // Raft has stopped.
                }
                let m = metrics.borrow_and_update();
                let term = (m.state == ServerState::Leader).then_some(m.current_term);
                if term.is_none() || term == checked_term {
                    continue;
                }
            }
        }
        checked_term = shared.leader_term();
        shared.check_liveness().await;
    }
}

/// The tonic implementation of `runnel.v1.ControllerService`.
#[derive(Debug, Clone)]
pub struct ControllerGrpcService {
    shared: Arc<Shared>,
}

impl ControllerGrpcService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The tonic service to add to a server, with the message limits set.
    pub fn into_server(self) -> ControllerServiceServer<Self> {
        ControllerServiceServer::new(self)
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX)
    }
}

impl ControllerGrpcService {
    /// With TLS, refuses a call only brokers make unless the caller's certificate is broker
    /// `claimed`'s, or, for a call a controller forwarded, any node's (that controller
    /// checked the broker).
    fn check_broker<T>(&self, request: &Request<T>, claimed: u32, what: &str) -> Result<(), Status> {
        let peers = self.shared.config.peers;
        if request.metadata().contains_key(FORWARDED_KEY) {
            peers.any_node(request)
        } else {
            peers.check(request, u64::from(claimed), what)
        }
    }
}

/// Topics the cluster runs on, which no client may delete or grow (Kafka's internal topics):
/// the group coordinators' `__consumer_offsets`.
pub const INTERNAL_TOPICS: [&str; 1] = ["__consumer_offsets"];

/// Refuses a client's change to an internal topic with INVALID_TOPIC_EXCEPTION. Checked where
/// the call arrives, not in the replicated state machine, so replaying old log entries gives
/// the same image as before.
fn refuse_internal(name: &str, what: &str) -> Result<(), Status> {
    if INTERNAL_TOPICS.contains(&name) {
        let refusal = crate::metadata::CommandError::new(
            crate::metadata::ErrorCode::InvalidTopicException,
            format!("{name} is an internal topic: it cannot be {what}"),
        );
        return Err(ControllerError::from(refusal).into());
    }
    Ok(())
}

/// `message` as a forwarded call, with a deadline covering the leader's own.
fn forwarded<T>(message: T, write_timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(FORWARDED_KEY, tonic::metadata::MetadataValue::from_static("1"));
    request.set_timeout(write_timeout + Duration::from_secs(1));
    request
}

/// Whether a forwarded call failed because the leader could not be reached (rather than
/// with the leader's own answer), so routing again may find a new leader.
fn unreachable(status: &Status) -> bool {
    status_error_code(status).is_none() && status.code() == tonic::Code::Unavailable
}

/// A status from a forwarded call: the leader's own answer as it is; a transport failure
/// (the leader is unreachable) as NOT_CONTROLLER naming it.
fn forward_failed(status: Status, addr: String) -> Status {
    if status_error_code(&status).is_none() {
        tracing::debug!("forwarding to {addr} failed: {status}");
        return ControllerError::NotController { leader: Some(addr) }.into();
    }
    status
}

/// Serves the call locally on the leader, or returns the leader's answer to it. A leader
/// that cannot be reached is routed around until the write timeout: a follower keeps naming
/// a dead leader until its election timeout. A call the unreachable leader had received
/// may then be retried (it was never answered), as a client retry would.
macro_rules! forward_unless_leader {
    ($self:ident, $request:ident, $method:ident) => {
        let write_timeout = $self.shared.config.write_timeout;
        let deadline = Instant::now() + write_timeout;
        loop {
            let Route::Forward { mut client, addr } = $self.shared.route(&$request, deadline).await? else {
                break;
            };
            let request = forwarded($request.get_ref().clone(), write_timeout);
            match client.$method(request).await {
                Ok(response) => return Ok(response),
                Err(status) if unreachable(&status) && Instant::now() < deadline => {
                    tracing::debug!("leader {addr} unreachable, routing again: {status}");
                    tokio::time::sleep(LEADER_POLL).await;
                }
                Err(status) => return Err(forward_failed(status, addr)),
            }
        }
    };
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::MetadataUpdate, Status>> + Send>>;
type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BrokerHeartbeatResponse, Status>> + Send>>;

/// Responses buffered per broker session; a broker reads each before sending the next.
const SESSION_BUFFER: usize = 4;

#[tonic::async_trait]
impl ControllerService for ControllerGrpcService {
    async fn register_broker(
        &self,
        request: Request<pb::RegisterBrokerRequest>,
    ) -> Result<Response<pb::RegisterBrokerResponse>, Status> {
        self.check_broker(&request, request.get_ref().broker_id, "RegisterBroker")?;
        forward_unless_leader!(self, request, register_broker);
        let command = Command::try_from(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::BrokerRegistered { epoch, .. } => {
                Ok(Response::new(pb::RegisterBrokerResponse { broker_epoch: epoch }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn broker_heartbeat(
        &self,
        request: Request<pb::BrokerHeartbeatRequest>,
    ) -> Result<Response<pb::BrokerHeartbeatResponse>, Status> {
        self.check_broker(&request, request.get_ref().broker_id, "BrokerHeartbeat")?;
        forward_unless_leader!(self, request, broker_heartbeat);
        Ok(Response::new(self.shared.heartbeat(request.into_inner()).await?))
    }

    type BrokerSessionStream = SessionStream;

    async fn broker_session(
        &self,
        request: Request<tonic::Streaming<pb::BrokerHeartbeatRequest>>,
    ) -> Result<Response<SessionStream>, Status> {
        // Sessions are not forwarded: the caller is the broker itself.
        let caller = self.shared.config.peers.caller(&request)?;
        let term = self.shared.leader_term().ok_or_else(|| self.shared.not_controller())?;
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        tokio::spawn(session(Arc::clone(&self.shared), term, caller, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchMetadataStream = WatchStream;

    async fn watch_metadata(
        &self,
        request: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        // The whole image, every topic whatever its ACLs: for operators (CLUSTER_ACTION on the
        // cluster, Kafka's permission for cluster-internal calls) where authorization is on.
        check(&request, Operation::ClusterAction, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        // Users' credentials go to the other nodes only, never out of a client listener.
        let with_security = self.shared.config.send_security
            && request.extensions().get::<super::planes::ClientPlane>().is_none();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch(Arc::clone(&self.shared), tx, with_security));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn alter_partition(
        &self,
        request: Request<pb::AlterPartitionRequest>,
    ) -> Result<Response<pb::AlterPartitionResponse>, Status> {
        self.check_broker(&request, request.get_ref().leader_id, "AlterPartition")?;
        forward_unless_leader!(self, request, alter_partition);
        let command = Command::try_from(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::PartitionAltered { topic, partition, state } => {
                // A preferred replica that rejoined the ISR takes its leadership back: the
                // end of "when a broker comes back, preferred leaders are restored", since a
                // restarted broker is unfenced before it has caught up and rejoined.
                let preferred = state.replicas.first().copied();
                if self.shared.config.restore_preferred_leaders
                    && preferred.is_some_and(|p| state.isr.contains(&p) && state.leader != Some(p))
                {
                    let elect = Command::ElectLeaders {
                        partitions: Some(vec![PartitionRef { topic: topic.clone(), partition }]),
                        preferred: true,
                    };
                    match self.shared.propose(elect).await {
                        Ok(_) => {
                            tracing::info!(%topic, partition, leader = ?preferred, "preferred leader restored")
                        }
                        Err(e) => tracing::warn!(%topic, partition, "preferred leader election: {e}"),
                    }
                }
                Ok(Response::new(pb::AlterPartitionResponse {
                    state: Some(convert::partition_info(partition, &state)),
                }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn allocate_producer_ids(
        &self,
        request: Request<pb::AllocateProducerIdsRequest>,
    ) -> Result<Response<pb::AllocateProducerIdsResponse>, Status> {
        self.check_broker(&request, request.get_ref().broker_id, "AllocateProducerIds")?;
        forward_unless_leader!(self, request, allocate_producer_ids);
        let command = Command::from(request.into_inner());
        match self.shared.propose(command).await?.outcome {
            Outcome::ProducerIdsAllocated { first_id, count, .. } => {
                Ok(Response::new(pb::AllocateProducerIdsResponse { first_id, count }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        if let Some(caller) = wire::caller(&request)
            && !caller.allowed(Operation::Create, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
        {
            caller.check(Operation::Create, ResourceType::Topic, &request.get_ref().name)?;
        }
        forward_unless_leader!(self, request, create_topic);
        let command = Command::try_from(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::TopicCreated(topic) => {
                Ok(Response::new(pb::CreateTopicResponse { topic: Some(convert::topic_info(&topic)) }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        refuse_internal(&request.get_ref().name, "deleted")?;
        check(&request, Operation::Delete, ResourceType::Topic, &request.get_ref().name)?;
        forward_unless_leader!(self, request, delete_topic);
        let command = Command::try_from(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::TopicDeleted { id, .. } => {
                Ok(Response::new(pb::DeleteTopicResponse { topic_id: id.0.to_vec() }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        check(&request, Operation::AlterConfigs, ResourceType::Topic, &request.get_ref().name)?;
        forward_unless_leader!(self, request, alter_topic_config);
        let request = request.into_inner();
        let validate_only = request.validate_only;
        let command = Command::try_from(request)?;
        match self.shared.write_or_check(command, validate_only).await?.outcome {
            Outcome::TopicConfigAltered { config, .. } => {
                Ok(Response::new(pb::AlterTopicConfigResponse { configs: config.into_iter().collect() }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        // Its partition count decides every group's coordinator: growing it moves groups.
        refuse_internal(&request.get_ref().name, "given more partitions")?;
        check(&request, Operation::Alter, ResourceType::Topic, &request.get_ref().name)?;
        forward_unless_leader!(self, request, create_partitions);
        let request = request.into_inner();
        let validate_only = request.validate_only;
        let command = Command::try_from(request)?;
        match self.shared.write_or_check(command, validate_only).await?.outcome {
            Outcome::PartitionsCreated(topic) => {
                Ok(Response::new(pb::CreatePartitionsResponse { topic: Some(convert::topic_info(&topic)) }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let caller = wire::caller(&request).cloned();
        let listed: Result<Response<pb::ListTopicsResponse>, Status> = async {
            forward_unless_leader!(self, request, list_topics);
            self.shared.linearize().await?;
            let response = self.shared.read(|image| pb::ListTopicsResponse {
                topics: image
                    .topics()
                    .map(|t| pb::TopicListing {
                        name: t.name.clone(),
                        topic_id: t.id.0.to_vec(),
                        partitions: t.partition_count(),
                        replication_factor: u32::from(t.replication_factor()),
                    })
                    .collect(),
                metadata_version: image.version(),
            })?;
            Ok(Response::new(response))
        }
        .await;
        // As Kafka's Metadata: a caller sees the topics it may describe, and no others.
        let mut listed = listed?;
        if let Some(caller) = caller {
            listed
                .get_mut()
                .topics
                .retain(|t| caller.allowed(Operation::Describe, ResourceType::Topic, &t.name));
        }
        Ok(listed)
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Topic, &request.get_ref().name)?;
        // The configs need DESCRIBE_CONFIGS, as Kafka's DescribeConfigs does.
        let may_describe_configs = wire::caller(&request).is_none_or(|c| {
            c.allowed(Operation::DescribeConfigs, ResourceType::Topic, &request.get_ref().name)
        });
        let described: Result<Response<pb::DescribeTopicResponse>, Status> = async {
            forward_unless_leader!(self, request, describe_topic);
            let name = request.into_inner().name;
            self.shared.linearize().await?;
            let (topic, version) =
                self.shared.read(|image| (image.topic(&name).map(convert::topic_info), image.version()))?;
            let Some(topic) = topic else {
                let missing = crate::metadata::CommandError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {name} does not exist"),
                );
                return Err(ControllerError::Command(missing).into());
            };
            Ok(Response::new(pb::DescribeTopicResponse { topic: Some(topic), metadata_version: version }))
        }
        .await;
        let mut described = described?;
        if !may_describe_configs && let Some(topic) = described.get_mut().topic.as_mut() {
            topic.configs.clear();
        }
        Ok(described)
    }

    async fn describe_cluster(
        &self,
        request: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        let metrics = self.shared.metrics();
        let membership = metrics.membership_config.membership();
        let leads = metrics.state == ServerState::Leader;
        let voters = membership
            .voter_ids()
            .map(|id| {
                let address = membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
                let is_self = id == metrics.id;
                let matched = if is_self {
                    metrics.last_log_index
                } else if leads {
                    metrics.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index)
                } else {
                    None
                };
                pb::VoterInfo {
                    node_id: id,
                    address,
                    term: if is_self || (leads && matched.is_some()) { metrics.current_term } else { 0 },
                    matched_index: matched.unwrap_or(0),
                    applied_index: if is_self { metrics.last_applied.map_or(0, |l| l.index) } else { 0 },
                    is_leader: metrics.current_leader == Some(id),
                }
            })
            .collect();
        let leader_address = metrics
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let (brokers, version) = self
            .shared
            .read(|image| (image.brokers().map(convert::broker_info).collect(), image.version()))?;
        Ok(Response::new(pb::DescribeClusterResponse {
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address,
            voters,
            brokers,
            answered_by: metrics.id,
            metadata_version: version,
        }))
    }

    async fn upsert_user(
        &self,
        request: Request<pb::UpsertUserRequest>,
    ) -> Result<Response<pb::UpsertUserResponse>, Status> {
        let mut request = request;
        if let Some(caller) = wire::caller(&request).cloned() {
            let name = &request.get_ref().name;
            // The first administrator: while there is no user at all, a super user may be
            // created from the node's own host without credentials (there are none yet). This
            // node's view may lag the cluster's, so the state machine checks again, when the
            // change is applied, that there is still no user.
            let bootstrap = !caller.authenticated
                && !caller.store.has_users()
                && caller.addr.ip().to_canonical().is_loopback()
                && caller.store.is_super_user(&Principal::user(name));
            if bootstrap {
                request.get_mut().only_if_no_users = true;
            } else {
                if !caller.authenticated && !caller.store.has_users() {
                    return Err(wire::kafka_status(
                        tonic::Code::PermissionDenied,
                        format!(
                            "the cluster has no user yet: the first one must be a super user (--super-users), created from a node's own host (loopback); User:{name} is not one, or this call came from {}",
                            caller.addr.ip()
                        ),
                        31,
                        "CLUSTER_AUTHORIZATION_FAILED",
                    ));
                }
                caller.check(Operation::Alter, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
            }
        }
        forward_unless_leader!(self, request, upsert_user);
        let command = convert::upsert_user(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::UserUpserted { .. } => Ok(Response::new(pb::UpsertUserResponse {})),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        check(&request, Operation::Alter, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        forward_unless_leader!(self, request, delete_user);
        let command = convert::delete_user(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::UserDeleted { .. } => Ok(Response::new(pb::DeleteUserResponse {})),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        forward_unless_leader!(self, request, list_users);
        self.shared.linearize().await?;
        let users = self.shared.read(|image| {
            image
                .security()
                .users
                .iter()
                .map(|(name, credentials)| pb::UserSummary {
                    name: name.clone(),
                    mechanisms: credentials.keys().map(|m| m.name().to_owned()).collect(),
                    iterations: credentials.values().map(|c| c.iterations).collect(),
                })
                .collect()
        })?;
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn create_acls(
        &self,
        request: Request<pb::CreateAclsRequest>,
    ) -> Result<Response<pb::CreateAclsResponse>, Status> {
        check(&request, Operation::Alter, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        forward_unless_leader!(self, request, create_acls);
        let command = convert::create_acls(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::AclsCreated { created } => Ok(Response::new(pb::CreateAclsResponse {
                created: u32::try_from(created).unwrap_or(u32::MAX),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete_acls(
        &self,
        request: Request<pb::DeleteAclsRequest>,
    ) -> Result<Response<pb::DeleteAclsResponse>, Status> {
        check(&request, Operation::Alter, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        forward_unless_leader!(self, request, delete_acls);
        let command = convert::delete_acls(request.into_inner())?;
        match self.shared.propose(command).await?.outcome {
            Outcome::AclsDeleted { deleted } => {
                let mut all: Vec<_> = deleted.into_iter().flatten().collect();
                all.sort();
                all.dedup();
                Ok(Response::new(pb::DeleteAclsResponse {
                    deleted: all.iter().map(wire::acl_to_pb).collect(),
                }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)?;
        forward_unless_leader!(self, request, list_acls);
        let filter = request
            .into_inner()
            .filter
            .map(wire::filter_from_pb)
            .transpose()
            .map_err(Status::invalid_argument)?;
        self.shared.linearize().await?;
        let acls = self.shared.read(|image| {
            image
                .security()
                .acls
                .iter()
                .filter(|acl| filter.as_ref().is_none_or(|f| f.matches(acl)))
                .map(wire::acl_to_pb)
                .collect()
        })?;
        Ok(Response::new(pb::ListAclsResponse { acls }))
    }
}

/// Feeds one watcher: a full image, then each change's deltas; a full image again after a
/// lag or a snapshot install. Ends when the watcher goes away or the node shuts down.
async fn watch(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<pb::MetadataUpdate, Status>>,
    with_security: bool,
) {
    use pb::metadata_update::Update;
    loop {
        let subscribed = shared.view.subscribe(|m, _| m.image.clone());
        let (image, mut events) = match subscribed {
            Ok(subscribed) => subscribed,
            Err(e) => {
                let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                return;
            }
        };
        let first = pb::MetadataUpdate {
            version: image.version(),
            update: Some(Update::Image(convert::image(&image, with_security))),
        };
        drop(image);
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = tx.closed() => return,
                event = events.recv() => event,
            };
            let update = match event {
                Ok(MachineEvent::Applied { index, response: MetadataResponse::Command(Ok(applied)) })
                    if !applied.deltas.is_empty() =>
                {
                    // A change brokers do not watch still moves the version: the update
                    // then carries no delta, and the watcher's version follows the image's
                    // (unfencing waits for a broker to report the version it was given).
                    let deltas =
                        applied.deltas.iter().filter_map(|d| convert::delta(d, with_security)).collect();
                    pb::MetadataUpdate {
                        version: index,
                        update: Some(Update::Deltas(pb::MetadataDeltas { deltas })),
                    }
                }
                Ok(MachineEvent::Applied { .. }) => continue,
                Ok(MachineEvent::Replaced) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
        }
    }
}

/// How often a session checks that this node still leads.
const SESSION_LEADERSHIP_CHECK: Duration = Duration::from_millis(100);

/// Serves one broker's session on the leader: answers each heartbeat; when the broker's
/// stream ends or breaks while this node still leads in `term`, fences the broker at once.
/// When this node stops leading, ends the session with NOT_CONTROLLER and fences nothing.
async fn session(
    shared: Arc<Shared>,
    term: u64,
    caller: Option<u32>,
    mut inbound: tonic::Streaming<pb::BrokerHeartbeatRequest>,
    tx: mpsc::Sender<Result<pb::BrokerHeartbeatResponse, Status>>,
) {
    use tokio_stream::StreamExt;
    let mut broker: Option<(u32, u64)> = None;
    let mut check = tokio::time::interval(SESSION_LEADERSHIP_CHECK);
    let why = loop {
        let next = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = check.tick() => {
                if shared.leader_term() != Some(term) {
                    let _ = tx.send(Err(shared.not_controller().into())).await;
                    return;
                }
                continue;
            }
            next = inbound.next() => next,
        };
        let request = match next {
            Some(Ok(request)) => request,
            Some(Err(status)) => break format!("session broke: {status}"),
            None => break "session closed by the broker".to_owned(),
        };
        let id = request.broker_id;
        if let Some(caller) = caller
            && caller != id
        {
            let why = format!(
                "a session heartbeat names broker {id}, but the caller's certificate is node {caller}'s"
            );
            let _ = tx.send(Err(Status::permission_denied(why))).await;
            return;
        }
        let answer = shared.heartbeat(request).await;
        broker = match &answer {
            Ok(response) if !response.should_reregister => Some((id, request.broker_epoch)),
            _ => None,
        };
        if tx.send(answer.map_err(Status::from)).await.is_err() {
            break "session response stream dropped".to_owned();
        }
    };
    let Some((id, epoch)) = broker else { return };
    if shared.leader_term() != Some(term) || shared.cancel.is_cancelled() {
        return;
    }
    let live = shared.read(|image| image.broker(id).is_some_and(|b| b.epoch == epoch && !b.fenced));
    if !matches!(live, Ok(true)) {
        return;
    }
    match shared.propose(Command::FenceBroker { id, epoch }).await {
        Ok(_) => tracing::warn!(broker = id, epoch, "{why}; broker fenced"),
        Err(e) => tracing::warn!(broker = id, "{why}; fencing failed: {e}"),
    }
}
