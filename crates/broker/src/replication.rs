//! Replication between brokers (`proto/runnel/v1/replication.proto`): followers pull.
//!
//! - As leader, [`ReplicationGrpc`] serves each follower's `ReplicaFetch` stream: per
//!   request it answers every partition ([`Partition::serve_replica_fetch`]), waiting up to
//!   the request's `max_wait_ms` for an append when nothing is new.
//! - As follower, [`follow_task`] runs one session per leader broker, covering every
//!   partition this broker follows there. After applying an answer it waits until what it
//!   appended is durable, so the durable end it reports next (the only offset the leader
//!   counts toward the HW) includes it.
//! - [`isr_task`] has each leader propose ISR changes to the controller: followers that
//!   have not caught up within the replica lag time leave, replicas that reached the HW
//!   join. A change counts once the controller committed it and the metadata brought it
//!   back.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::replication_service_client::ReplicationServiceClient;
use runnel_proto::pb::runnel::v1::replication_service_server::{
    ReplicationService, ReplicationServiceServer,
};
use runnel_storage::TopicPartition;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;
use tonic::{Request, Response, Status, Streaming};

use crate::BrokerStatus;
use crate::cache::MetadataCache;
use crate::replica::{Partition, ReplicaManager};
use crate::service::{FETCH_BYTES_DEFAULT, FETCH_BYTES_MAX, HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};

/// Longest wait a replica fetch may ask for.
pub const REPLICA_FETCH_WAIT_MAX: Duration = Duration::from_secs(5);
/// How long a follower asks the leader to wait when it has nothing new.
pub const REPLICA_FETCH_WAIT: Duration = Duration::from_millis(500);
/// Bytes per partition a follower asks for.
pub const REPLICA_FETCH_BYTES: u32 = 8 << 20;
/// How long a follower waits for what it appended to become durable before fetching again.
const DURABLE_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed session before the next.
const RETRY_DELAY: Duration = Duration::from_millis(200);

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn read_cache(cache: &RwLock<MetadataCache>) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
    cache.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The leader side: serves followers' fetch sessions.
#[derive(Debug, Clone)]
pub struct ReplicationGrpc {
    replicas: Arc<ReplicaManager>,
    peers: runnel_proto::tls::PeerCheck,
}

impl ReplicationGrpc {
    /// The service over `replicas`; with TLS (`peers`), a follower's certificate must name
    /// the follower its requests claim to be.
    pub fn new(replicas: Arc<ReplicaManager>, peers: runnel_proto::tls::PeerCheck) -> Self {
        ReplicationGrpc { replicas, peers }
    }

    /// The tonic server.
    pub fn into_server(self) -> ReplicationServiceServer<ReplicationGrpc> {
        ReplicationServiceServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Most partitions one replica fetch may name: far above any real follower's (it names
/// the partitions it follows from one leader), low enough that a forged request costs little.
pub const REPLICA_FETCH_PARTITIONS_MAX: usize = 20_000;
/// Most record bytes one replica fetch answer carries over all its partitions (beyond the
/// first partition's first batch, which always goes so the follower progresses).
pub const REPLICA_FETCH_RESPONSE_BYTES_MAX: usize = FETCH_BYTES_MAX;

/// Checks a replica fetch request's shape: not too many partitions, none named twice (each
/// read costs memory; a partition repeated 100,000 times must not cost 100,000 reads).
fn check_replica_fetch(request: &pb::ReplicaFetchRequest) -> Result<(), Status> {
    if request.partitions.len() > REPLICA_FETCH_PARTITIONS_MAX {
        return Err(Status::invalid_argument(format!(
            "a replica fetch names {} partitions, over the limit of {REPLICA_FETCH_PARTITIONS_MAX}",
            request.partitions.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(request.partitions.len());
    for part in &request.partitions {
        if !seen.insert((part.topic.as_str(), part.partition)) {
            return Err(Status::invalid_argument(format!(
                "a replica fetch names {}-{} twice",
                part.topic, part.partition
            )));
        }
    }
    Ok(())
}

/// The bytes per partition a replica fetch asks for, bounded: 0 means the default.
fn replica_fetch_max_bytes(request: &pb::ReplicaFetchRequest) -> usize {
    match request.max_bytes as usize {
        0 => FETCH_BYTES_DEFAULT,
        n => n.min(FETCH_BYTES_MAX),
    }
}

/// One answer to a follower's replica fetch, as the leader's session gives it first: the
/// request's shape checked, then every partition answered, without waiting for news (the
/// session answers again when nothing was new, until the request's `max_wait_ms`). Public
/// as the handler's entry point without a stream, for fuzzing. Blocking: it reads logs.
pub fn answer_replica_fetch(
    replicas: &ReplicaManager,
    request: &pb::ReplicaFetchRequest,
) -> Result<pb::ReplicaFetchResponse, Status> {
    check_replica_fetch(request)?;
    // Reads of the logs: off the async workers, which heartbeats and Raft share.
    Ok(crate::off_the_workers(|| answer(replicas, request, replica_fetch_max_bytes(request))))
}

/// Answers every partition of one request, within `max_bytes` per partition and
/// [`REPLICA_FETCH_RESPONSE_BYTES_MAX`] in all: once the answer is full, the remaining
/// partitions get their offsets and no records.
fn answer(
    replicas: &ReplicaManager,
    request: &pb::ReplicaFetchRequest,
    max_bytes: usize,
) -> pb::ReplicaFetchResponse {
    let mut room = REPLICA_FETCH_RESPONSE_BYTES_MAX;
    let partitions = request
        .partitions
        .iter()
        .map(|part| {
            let tp = TopicPartition::new(part.topic.clone(), part.partition);
            match replicas.get(&tp) {
                Some(p) if p.topic_id() == part.topic_id.as_slice() => {
                    let data = p.serve_replica_fetch(
                        part,
                        request.follower_id,
                        request.follower_epoch,
                        max_bytes.min(room),
                    );
                    room = room.saturating_sub(data.batches.len());
                    data
                }
                _ => pb::ReplicaFetchPartitionData {
                    topic: part.topic.clone(),
                    partition: part.partition,
                    error_code: 6,
                    error_message: format!("broker {} does not host {tp}", replicas.broker_id()),
                    ..Default::default()
                },
            }
        })
        .collect();
    pb::ReplicaFetchResponse { partitions }
}

#[tonic::async_trait]
impl ReplicationService for ReplicationGrpc {
    type ReplicaFetchStream = BoxStream<pb::ReplicaFetchResponse>;

    async fn replica_fetch(
        &self,
        request: Request<Streaming<pb::ReplicaFetchRequest>>,
    ) -> Result<Response<Self::ReplicaFetchStream>, Status> {
        let caller = self.peers.caller(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        let replicas = Arc::clone(&self.replicas);
        tokio::spawn(async move {
            // The HW last sent per partition: a change is news worth answering at once.
            let mut sent_hw: HashMap<(String, u32), u64> = HashMap::new();
            loop {
                let request = tokio::select! {
                    _ = tx.closed() => return,
                    message = inbound.message() => match message {
                        Ok(Some(request)) => request,
                        _ => return,
                    },
                };
                if let Some(caller) = caller
                    && request.follower_id != caller
                {
                    let why = format!(
                        "a replica fetch for follower {} on a connection with node {caller}'s certificate",
                        request.follower_id
                    );
                    tracing::warn!(follower = request.follower_id, caller, "refused a replica fetch: {why}");
                    let _ = tx.send(Err(Status::permission_denied(why))).await;
                    return;
                }
                if let Err(status) = check_replica_fetch(&request) {
                    tracing::warn!(
                        follower = request.follower_id,
                        "refused a replica fetch: {}",
                        status.message()
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let max_wait =
                    Duration::from_millis(u64::from(request.max_wait_ms)).min(REPLICA_FETCH_WAIT_MAX);
                let max_bytes = replica_fetch_max_bytes(&request);
                let deadline = tokio::time::Instant::now() + max_wait;
                let mut appended = replicas.subscribe_appends();
                let response = loop {
                    appended.borrow_and_update();
                    let response = answer(&replicas, &request, max_bytes);
                    let news = response.partitions.iter().any(|d| {
                        d.error_code != 0
                            || d.diverging
                            || !d.batches.is_empty()
                            || sent_hw.get(&(d.topic.clone(), d.partition)) != Some(&d.high_watermark)
                    });
                    if news || tokio::time::Instant::now() >= deadline {
                        break response;
                    }
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = appended.changed() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                };
                for d in &response.partitions {
                    sent_hw.insert((d.topic.clone(), d.partition), d.high_watermark);
                }
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The follower's request to `leader` now: every partition it follows there.
fn request_to(
    replicas: &ReplicaManager,
    leader: u32,
    broker_epoch: u64,
) -> (pb::ReplicaFetchRequest, Vec<Arc<Partition>>) {
    let mut partitions = Vec::new();
    let mut parts = Vec::new();
    for p in replicas.partitions() {
        if let Some(part) = p.replica_fetch_request(leader) {
            partitions.push(part);
            parts.push(p);
        }
    }
    let request = pb::ReplicaFetchRequest {
        follower_id: replicas.broker_id(),
        follower_epoch: broker_epoch,
        partitions,
        max_wait_ms: REPLICA_FETCH_WAIT.as_millis() as u32,
        max_bytes: REPLICA_FETCH_BYTES,
    };
    (request, parts)
}

/// The leaders this broker follows some partition on now.
pub(crate) fn leaders_followed(replicas: &ReplicaManager) -> Vec<u32> {
    let me = replicas.broker_id();
    let mut leaders: Vec<u32> = replicas
        .partitions()
        .iter()
        .filter_map(|p| {
            let st = p.state();
            st.leader.filter(|&l| st.hosted && l != me)
        })
        .collect();
    leaders.sort_unstable();
    leaders.dedup();
    leaders
}

/// Keeps one fetch session per leader this broker follows, starting and stopping them as
/// leadership moves. Woken after every reconcile of the hosted partitions (so it sees the
/// leaders the new metadata gave them, not the metadata before the replicas apply it).
pub(crate) async fn follow_manager_task(
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    status: watch::Receiver<BrokerStatus>,
    tls: Option<ClientTlsConfig>,
    cancel: CancellationToken,
) {
    let mut reconciled = replicas.subscribe_reconciled();
    let mut sessions: HashMap<u32, CancellationToken> = HashMap::new();
    loop {
        reconciled.borrow_and_update();
        let wanted = leaders_followed(&replicas);
        // A session that found nothing left to follow cancelled its own token.
        sessions.retain(|leader, token| {
            let keep = wanted.contains(leader) && !token.is_cancelled();
            if !keep {
                token.cancel();
            }
            keep
        });
        for leader in wanted {
            sessions.entry(leader).or_insert_with(|| {
                let token = cancel.child_token();
                tokio::spawn(follow_task(
                    leader,
                    Arc::clone(&replicas),
                    Arc::clone(&cache),
                    status.clone(),
                    tls.clone(),
                    token.clone(),
                ));
                token
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = reconciled.changed() => if changed.is_err() { return },
        }
    }
}

/// One follower session with `leader`, reconnecting until cancelled or until this broker
/// follows nothing there any more.
pub(crate) async fn follow_task(
    leader: u32,
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    status: watch::Receiver<BrokerStatus>,
    tls: Option<ClientTlsConfig>,
    cancel: CancellationToken,
) {
    let me = replicas.broker_id();
    loop {
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            ended = session(leader, &replicas, &cache, &status, tls.as_ref()) => ended,
        };
        match ended {
            Ok(()) => {
                cancel.cancel();
                return;
            }
            Err(e) => tracing::debug!(broker = me, leader, "replica fetch session ended: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

/// Runs one session; `Ok` when there is nothing left to follow on `leader`.
async fn session(
    leader: u32,
    replicas: &Arc<ReplicaManager>,
    cache: &RwLock<MetadataCache>,
    status: &watch::Receiver<BrokerStatus>,
    tls: Option<&ClientTlsConfig>,
) -> Result<(), Status> {
    let addr = read_cache(cache)
        .brokers
        .get(&leader)
        .map(|b| b.replication.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Status::unavailable(format!("no address for broker {leader}")))?;
    let channel = runnel_proto::tls::endpoint(&addr, tls)
        .map_err(|e| Status::invalid_argument(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .connect_lazy();
    let mut client = ReplicationServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(1);
    let (request, mut parts) = request_to(replicas, leader, status.borrow().epoch);
    if parts.is_empty() {
        return Ok(());
    }
    tx.send(request).await.map_err(|_| Status::cancelled("session closed"))?;
    let answer_timeout = REPLICA_FETCH_WAIT_MAX + Duration::from_secs(5);
    let mut answers = tokio::time::timeout(answer_timeout, client.replica_fetch(ReceiverStream::new(rx)))
        .await
        .map_err(|_| Status::deadline_exceeded("opening the replica fetch session"))??
        .into_inner();
    loop {
        let response = tokio::time::timeout(answer_timeout, answers.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no replica fetch answer"))??
            .ok_or_else(|| Status::unavailable("the leader ended the session"))?;
        // Appends and truncations of the logs: off the async workers.
        let (appended, failures) = crate::off_the_workers(|| {
            let mut appended = Vec::new();
            let mut failures = 0;
            for data in &response.partitions {
                let Some(p) = parts.iter().find(|p| {
                    let tp = p.topic_partition();
                    tp.topic == data.topic && tp.partition == data.partition
                }) else {
                    continue;
                };
                match p.apply_replica_fetch(data) {
                    Ok(true) => appended.push(Arc::clone(p)),
                    Ok(false) => {}
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(partition = %p.topic_partition(), "replica fetch: {e}");
                    }
                }
            }
            (appended, failures)
        });
        // Report only durable offsets: wait for what was appended to reach the disk.
        for p in appended {
            if !p.wait_durable(p.log().log_end(), DURABLE_WAIT).await {
                tracing::warn!(partition = %p.topic_partition(), "the replica's fsync took over {DURABLE_WAIT:?}");
            }
        }
        if failures > 0 && failures == response.partitions.len() {
            // Every partition was refused (stale metadata on one side): give it a moment.
            tokio::time::sleep(RETRY_DELAY).await;
        }
        let (request, next_parts) = request_to(replicas, leader, status.borrow().epoch);
        if next_parts.is_empty() {
            return Ok(());
        }
        parts = next_parts;
        tx.send(request).await.map_err(|_| Status::cancelled("session closed"))?;
    }
}

/// Asks the controller for ISR changes that this broker's leaderships need, every `every`.
pub(crate) async fn isr_task(
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    status: watch::Receiver<BrokerStatus>,
    controllers: crate::ControllerSet,
    lag: Duration,
    request_timeout: Duration,
    cancel: CancellationToken,
) {
    let every = (lag / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (epoch, fenced) = {
            let s = status.borrow();
            (s.epoch, s.fenced)
        };
        if epoch == 0 || fenced {
            continue;
        }
        let live = {
            let cache = read_cache(&cache);
            let live: Vec<u32> = cache.brokers.iter().filter(|(_, b)| !b.fenced).map(|(&id, _)| id).collect();
            move |b: u32| live.contains(&b)
        };
        for p in replicas.partitions() {
            let Some(mut request) = p.propose_isr(lag, &live) else { continue };
            request.broker_epoch = epoch;
            let controllers = controllers.clone();
            let metrics = replicas.metrics().clone();
            let old_isr = p.state().isr;
            tokio::spawn(async move {
                let new_isr: Vec<u32> = request.new_isr.iter().map(|m| m.broker_id).collect();
                let result = crate::alter_partition(&controllers, request, request_timeout).await;
                match &result {
                    Ok(()) => {
                        metrics.isr_changed(
                            old_isr.iter().any(|m| !new_isr.contains(m)),
                            new_isr.iter().any(|m| !old_isr.contains(m)),
                        );
                        tracing::info!(partition = %p.topic_partition(), isr = ?new_isr, "ISR change committed")
                    }
                    Err(e) => {
                        tracing::info!(partition = %p.topic_partition(), isr = ?new_isr, "ISR change refused: {e}")
                    }
                }
                p.alter_done(result.is_ok());
            });
        }
    }
}
