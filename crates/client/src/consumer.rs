//! The consumer: reads partitions it was given ([`Consumer::assign`]) or that its group's
//! coordinator hands it ([`Consumer::subscribe`]), and commits how far it got.
//!
//! **Threads of control.** The application drives the consumer by calling
//! [`Consumer::poll`] (or reading [`Consumer::stream`]); everything that changes which
//! partitions it reads happens inside `poll`, on the application's task, as in Kafka's
//! consumer: rebalance callbacks never race the application's processing. Around it run
//! - one fetch task per partition ([`PartitionReader`] over `FetchStream`, following the
//!   leader), feeding one bounded queue of chunks ([`ConsumerConfig::fetch_queue_chunks`]);
//!   `poll` takes a chunk only when the previous one has been handed out, so at most
//!   `fetch_queue_chunks + 1` chunks are in memory;
//! - in a group, the heartbeat task (every `heartbeat_interval_ms` the coordinator gives,
//!   at once after a reconciliation), which keeps the [`Membership`] state machine;
//! - one commit task, which sends commits (sync, async, automatic) in the order they were
//!   asked for, so an older commit never lands after a newer one.
//!
//! **Positions and commits.** A partition's position is the offset after the last record
//! `poll` returned. A commit stores positions, so with auto-commit (the default, every
//! [`ConsumerConfig::auto_commit_interval`], checked in `poll`) a record counts as processed
//! once the application polls again after getting it: at-least-once, and what is processed
//! twice after a crash is at most what came after the last commit. New partitions start at
//! the group's committed offset, else per [`OffsetReset`]; a position outside the log is
//! reset the same way.
//!
//! **Rebalances** ([`RebalanceListener`]): newly assigned partitions are announced
//! (`on_assigned`) before their records; a revoked partition stops being fetched, its
//! position is committed (auto-commit), the listener is told (`on_revoked`, where manual
//! committers commit), and only then is it reported released to the coordinator, which
//! hands it to another member. A fenced member, or one whose heartbeats went unanswered for
//! a session timeout, loses its partitions (`on_lost`, no commit: another member may have
//! them already) and joins again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::{Header, Record};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::coordinator::{Coordinator, group_code};
use crate::error::{ClientError, code, error};
use crate::fetch::{PartitionReader, list_offset};
pub use crate::membership::TopicPartition;
use crate::membership::{AfterError, MemberSettings, Membership, Phase, to_pb};
use crate::router::{Backoff, Router};

/// Where a partition without a committed offset (or with one outside its log) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
}

/// How a [`Consumer`] behaves. [`ConsumerConfig::new`] gives Kafka's defaults.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Broker addresses (`host:port`); any of them answers Metadata and FindCoordinator.
    pub bootstrap: Vec<String>,
    /// TLS to the brokers (their CA), when the cluster serves it.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// A user's credentials, for a cluster with `--auth` (none by default).
    pub credentials: runnel_proto::security::Credentials,
    /// The group: needed by [`Consumer::subscribe`] and for commits.
    pub group_id: Option<String>,
    /// For people and `runnel group describe`.
    pub client_id: String,
    /// Where partitions without a committed offset start.
    pub auto_offset_reset: OffsetReset,
    /// Commit positions every `auto_commit_interval` (in `poll`), before a revocation and on
    /// close.
    pub enable_auto_commit: bool,
    /// How often auto-commit commits the positions (Kafka's `auto.commit.interval.ms`).
    pub auto_commit_interval: Duration,
    /// How long the coordinator waits for a heartbeat before it removes the member.
    pub session_timeout: Duration,
    /// How long the member may take to give up revoked partitions.
    pub rebalance_timeout: Duration,
    /// "uniform" or "range".
    pub assignor: String,
    /// Most records one `poll` returns.
    pub max_poll_records: usize,
    /// About how many bytes one fetch answer carries per partition.
    pub fetch_max_bytes: u32,
    /// Fetched chunks queued between the fetch tasks and `poll`.
    pub fetch_queue_chunks: usize,
}

impl ConsumerConfig {
    /// Kafka's defaults: no group, `latest` reset, auto-commit every 5 s, a 45 s session and
    /// a 5 min rebalance timeout, the uniform assignor, 500 records per poll.
    pub fn new(bootstrap: Vec<String>) -> Self {
        ConsumerConfig {
            bootstrap,
            tls: None,
            credentials: runnel_proto::security::Credentials::none(),
            group_id: None,
            client_id: "runnel-client".to_owned(),
            auto_offset_reset: OffsetReset::Latest,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            assignor: "uniform".to_owned(),
            max_poll_records: 500,
            fetch_max_bytes: 1024 * 1024,
            fetch_queue_chunks: 16,
        }
    }

    /// The same, in group `group_id`.
    pub fn with_group(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }
}

/// A record as `poll` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerRecord {
    /// The topic it was read from.
    pub topic: String,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key; `None` is a null key.
    pub key: Option<Bytes>,
    /// The value; `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    /// The headers, in order.
    pub headers: Vec<Header>,
}

impl ConsumerRecord {
    fn new(tp: &TopicPartition, r: Record) -> Self {
        ConsumerRecord {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }
    }

    /// The partition it came from.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// A revocation in progress, as [`RebalanceListener::on_revoked`] sees it.
#[derive(Debug)]
pub struct Revocation {
    partitions: BTreeSet<TopicPartition>,
    positions: BTreeMap<TopicPartition, i64>,
    commits: BTreeMap<TopicPartition, i64>,
}

impl Revocation {
    /// The partitions being given up.
    pub fn partitions(&self) -> &BTreeSet<TopicPartition> {
        &self.partitions
    }
    /// A revoked partition's position (the offset after the last record returned).
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions.get(tp).copied()
    }
    /// Commits `offset` for a revoked partition before it is released (for consumers
    /// without auto-commit; with it, positions were committed before the call).
    pub fn commit(&mut self, tp: TopicPartition, offset: i64) {
        if self.partitions.contains(&tp) {
            self.commits.insert(tp, offset);
        }
    }
}

/// Told of rebalances, on the application's task, inside `poll` (or `close`).
pub trait RebalanceListener: Send {
    /// `partitions` are now this consumer's; their records follow.
    fn on_assigned(&mut self, partitions: &BTreeSet<TopicPartition>) {
        let _ = partitions;
    }
    /// The partitions are being taken away: no more of their records will be returned.
    /// They are released to the coordinator once this returns.
    fn on_revoked(&mut self, revocation: &mut Revocation) {
        let _ = revocation;
    }
    /// The partitions were lost (the member was fenced or its session expired): another
    /// member may own them already, so nothing was committed.
    fn on_lost(&mut self, partitions: &BTreeSet<TopicPartition>) {
        let _ = partitions;
    }
}

/// Deadline of one heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one OffsetCommit attempt (an acks=all write on the coordinator).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a commit refused with STALE_MEMBER_EPOCH is retried (the next heartbeat
/// brings the member's new epoch).
const STALE_EPOCH_RETRY: Duration = Duration::from_secs(10);
/// Commits queued for the commit task; `commit_async` waits when it is full.
const COMMITS_QUEUED_MAX: usize = 64;
/// How long `close` waits for the leave heartbeat and the last commits.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a fetch task retries a partition its reader gave up on.
const FETCH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// State shared between the application's task and the heartbeat task.
#[derive(Debug)]
struct GroupShared {
    membership: Mutex<Membership>,
    /// Application → heartbeat task: send a heartbeat now (a reconciliation finished, or
    /// the member is leaving).
    wake: Notify,
    /// Heartbeat task → application: the assignment may have changed, or the member was
    /// fenced, or a fatal error is waiting.
    changed: Notify,
    fatal: Mutex<Option<ClientError>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One partition the consumer reads.
#[derive(Debug)]
struct PartState {
    /// The offset after the last record returned; `None` until looked up.
    position: Option<i64>,
    /// Which fetch task's chunks count (chunks of an older one, before a seek, are dropped).
    fetch_id: u64,
    task: Option<JoinHandle<()>>,
}

impl Drop for PartState {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A chunk from a fetch task.
#[derive(Debug)]
struct Fetched {
    tp: TopicPartition,
    fetch_id: u64,
    records: Result<Vec<Record>, ClientError>,
}

/// Records of one chunk not handed out yet.
#[derive(Debug)]
struct Buffered {
    tp: TopicPartition,
    fetch_id: u64,
    records: VecDeque<Record>,
}

/// A commit for the commit task.
#[derive(Debug)]
struct CommitJob {
    offsets: BTreeMap<TopicPartition, i64>,
    reply: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// How the consumer got its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    None,
    Assigned,
    Subscribed(Vec<String>),
}

/// A consumer. See the module docs.
pub struct Consumer {
    config: ConsumerConfig,
    router: Arc<Router>,
    coordinator: Option<Arc<Coordinator>>,
    mode: Mode,
    parts: BTreeMap<TopicPartition, PartState>,
    next_fetch_id: u64,
    fetched_tx: mpsc::Sender<Fetched>,
    fetched_rx: mpsc::Receiver<Fetched>,
    buffered: VecDeque<Buffered>,
    group: Option<Arc<GroupShared>>,
    heartbeat: Option<JoinHandle<()>>,
    commits: Option<mpsc::Sender<CommitJob>>,
    committer: Option<JoinHandle<()>>,
    /// Positions last handed to the commit task, so auto-commit skips unchanged ones.
    last_commit: HashMap<TopicPartition, i64>,
    next_auto_commit: Instant,
    /// In a mutex only so the consumer is `Sync` (its futures `Send`); `poll` has it by
    /// `&mut self` and never locks.
    listener: Option<Mutex<Box<dyn RebalanceListener>>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group_id", &self.config.group_id)
            .field("mode", &self.mode)
            .field("partitions", &self.parts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Without `close`, the member just stops heartbeating: the coordinator removes it
        // after its session timeout.
        for task in [self.heartbeat.take(), self.committer.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

impl Consumer {
    /// A consumer that reads nothing until [`assign`](Self::assign) or
    /// [`subscribe`](Self::subscribe). Needs a Tokio runtime.
    pub fn new(config: ConsumerConfig) -> Result<Self, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(error(code::INVALID_REQUEST, "INVALID_REQUEST", "no bootstrap address"));
        }
        if config.group_id.as_deref() == Some("") {
            return Err(error(group_code::INVALID_GROUP_ID, "INVALID_GROUP_ID", "the group id is empty"));
        }
        let router = Arc::new(
            Router::new(config.bootstrap.clone())
                .with_tls(config.tls.clone())
                .with_credentials(config.credentials.clone()),
        );
        let coordinator = config.group_id.as_ref().map(|g| {
            Arc::new(
                Coordinator::new(config.bootstrap.clone(), g.clone())
                    .with_tls(config.tls.clone())
                    .with_credentials(config.credentials.clone()),
            )
        });
        let (fetched_tx, fetched_rx) = mpsc::channel(config.fetch_queue_chunks.max(1));
        let next_auto_commit = Instant::now() + config.auto_commit_interval;
        Ok(Consumer {
            config,
            router,
            coordinator,
            mode: Mode::None,
            parts: BTreeMap::new(),
            next_fetch_id: 0,
            fetched_tx,
            fetched_rx,
            buffered: VecDeque::new(),
            group: None,
            heartbeat: None,
            commits: None,
            committer: None,
            last_commit: HashMap::new(),
            next_auto_commit,
            listener: None,
        })
    }

    /// Sets the rebalance listener.
    pub fn set_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(Mutex::new(listener));
    }

    /// Reads exactly `partitions`, without group membership (commits still go to the
    /// group, if one is configured, while it has no members). Replaces an earlier
    /// assignment.
    pub fn assign(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) -> Result<(), ClientError> {
        if matches!(self.mode, Mode::Subscribed(_)) {
            return Err(error(
                code::INVALID_REQUEST,
                "INVALID_REQUEST",
                "the consumer is subscribed to a group",
            ));
        }
        let wanted: BTreeSet<TopicPartition> = partitions.into_iter().collect();
        self.parts.retain(|tp, _| wanted.contains(tp));
        for tp in wanted {
            self.parts.entry(tp).or_insert(PartState { position: None, fetch_id: 0, task: None });
        }
        self.mode = Mode::Assigned;
        Ok(())
    }

    /// Joins the group (`group_id` must be set) to read `topics`: the coordinator assigns
    /// partitions, which arrive (and move) inside `poll`.
    pub fn subscribe(
        &mut self,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<(), ClientError> {
        if self.mode != Mode::None {
            return Err(error(
                code::INVALID_REQUEST,
                "INVALID_REQUEST",
                "the consumer already has partitions or a subscription",
            ));
        }
        let Some(coordinator) = self.coordinator.clone() else {
            return Err(error(
                group_code::INVALID_GROUP_ID,
                "INVALID_GROUP_ID",
                "subscribe needs a group_id",
            ));
        };
        let mut topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        topics.sort();
        topics.dedup();
        let settings = MemberSettings {
            group_id: coordinator.group_id().to_owned(),
            client_id: self.config.client_id.clone(),
            topics: topics.clone(),
            assignor: self.config.assignor.clone(),
            session_timeout: self.config.session_timeout,
            rebalance_timeout: self.config.rebalance_timeout,
        };
        let shared = Arc::new(GroupShared {
            membership: Mutex::new(Membership::new(settings)),
            wake: Notify::new(),
            changed: Notify::new(),
            fatal: Mutex::new(None),
        });
        self.heartbeat = Some(tokio::spawn(heartbeat_task(shared.clone(), coordinator)));
        self.group = Some(shared);
        self.mode = Mode::Subscribed(topics);
        Ok(())
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        self.parts.keys().cloned().collect()
    }

    /// The group member id, once joined.
    pub fn member_id(&self) -> Option<String> {
        let group = self.group.as_ref()?;
        let m = lock(&group.membership);
        (!m.member_id().is_empty()).then(|| m.member_id().to_owned())
    }

    /// The offset after the last record returned from `tp`, once known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.parts.get(tp)?.position
    }

    /// Continues `tp` at `offset` from the next `poll` on.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<(), ClientError> {
        if offset < 0 {
            return Err(error(
                code::INVALID_REQUEST,
                "INVALID_REQUEST",
                format!("offset {offset} is negative"),
            ));
        }
        if !self.parts.contains_key(tp) {
            return Err(error(
                code::INVALID_REQUEST,
                "INVALID_REQUEST",
                format!("partition {tp} is not assigned to this consumer"),
            ));
        }
        self.buffered.retain(|b| &b.tp != tp);
        self.start_fetch(tp, offset);
        Ok(())
    }

    /// The group's committed offsets of `partitions` (partitions without one are left out).
    pub async fn committed(
        &self,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let coordinator = self.coordinator()?;
        let offsets = coordinator.offset_fetch(to_pb(partitions)).await?;
        Ok(offsets
            .into_iter()
            .filter(|o| o.offset >= 0)
            .map(|o| (TopicPartition::new(o.topic, o.partition), o.offset))
            .collect())
    }

    fn coordinator(&self) -> Result<&Arc<Coordinator>, ClientError> {
        self.coordinator.as_ref().ok_or_else(|| {
            error(group_code::INVALID_GROUP_ID, "INVALID_GROUP_ID", "commits need a group_id in the config")
        })
    }

    /// The current positions of every partition that has one.
    fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.parts.iter().filter_map(|(tp, p)| Some((tp.clone(), p.position?))).collect()
    }

    /// Commits every partition's position and waits for the answer.
    pub async fn commit_sync(&mut self) -> Result<(), ClientError> {
        let offsets = self.positions();
        self.commit_offsets_sync(offsets).await
    }

    /// Commits these offsets (the next offset to read, per partition) and waits.
    pub async fn commit_offsets_sync(
        &mut self,
        offsets: BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue_commit(offsets, Some(tx)).await?;
        rx.await.unwrap_or_else(|_| {
            Err(error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", "the commit task stopped"))
        })
    }

    /// Commits every partition's position without waiting; a failure is logged. Commits
    /// are sent in the order asked for.
    pub async fn commit_async(&mut self) -> Result<(), ClientError> {
        let offsets = self.positions();
        if offsets.is_empty() {
            return Ok(());
        }
        self.enqueue_commit(offsets, None).await
    }

    async fn enqueue_commit(
        &mut self,
        offsets: BTreeMap<TopicPartition, i64>,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Result<(), ClientError> {
        let coordinator = self.coordinator()?.clone();
        if self.commits.is_none() {
            let (tx, rx) = mpsc::channel(COMMITS_QUEUED_MAX);
            self.committer = Some(tokio::spawn(commit_task(coordinator, self.group.clone(), rx)));
            self.commits = Some(tx);
        }
        for (tp, &o) in &offsets {
            self.last_commit.insert(tp.clone(), o);
        }
        let sender = self.commits.as_ref().expect("the commit task was just started");
        sender
            .send(CommitJob { offsets, reply })
            .await
            .map_err(|_| error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", "the commit task stopped"))
    }

    /// Up to `max_poll_records` records, waiting up to `timeout` for some. Rebalances,
    /// position lookups and automatic commits happen here.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.reconcile().await?;
            self.resolve_positions().await?;
            self.maybe_auto_commit().await?;
            let out = self.take_buffered();
            if !out.is_empty() {
                return Ok(out);
            }
            let changed = self.group.clone();
            let auto_commit_due = tokio::time::Instant::from_std(self.next_auto_commit);
            let wake_at = if self.auto_committing() { deadline.min(auto_commit_due) } else { deadline };
            let fetched = tokio::select! {
                fetched = self.fetched_rx.recv() => fetched,
                () = async { match &changed { Some(g) => g.changed.notified().await, None => std::future::pending().await } } => None,
                () = tokio::time::sleep_until(wake_at) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(Vec::new());
                    }
                    None
                }
            };
            if let Some(fetched) = fetched {
                self.accept(fetched).await?;
            }
        }
    }

    /// Records one at a time, polling as needed (one second at a time, forever).
    pub fn stream(&mut self) -> impl futures::Stream<Item = Result<ConsumerRecord, ClientError>> + '_ {
        futures::stream::unfold((self, VecDeque::new()), |(consumer, mut queue)| async move {
            loop {
                if let Some(record) = queue.pop_front() {
                    return Some((Ok(record), (consumer, queue)));
                }
                match consumer.poll(Duration::from_secs(1)).await {
                    Ok(records) => queue.extend(records),
                    Err(e) => return Some((Err(e), (consumer, queue))),
                }
            }
        })
    }

    /// Commits (with auto-commit on), leaves the group (its partitions go to the other
    /// members at once) and stops every task.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut result = Ok(());
        if let Some(group) = self.group.clone() {
            let owned: BTreeSet<TopicPartition> = self.parts.keys().cloned().collect();
            let fenced = lock(&group.membership).phase() == Phase::Fenced;
            if !owned.is_empty() && !fenced {
                result = self.revoke(&group, owned).await;
            }
            lock(&group.membership).leave();
            group.wake.notify_one();
            if let Some(mut task) = self.heartbeat.take()
                && tokio::time::timeout(CLOSE_TIMEOUT, &mut task).await.is_err()
            {
                // The coordinator did not answer the leave: it removes the member after
                // its session timeout instead.
                task.abort();
            }
        } else if self.auto_committing() {
            result = self.commit_sync().await;
        }
        self.parts.clear();
        // The commit task ends once its queue is closed and drained.
        self.commits = None;
        if let Some(mut task) = self.committer.take()
            && tokio::time::timeout(CLOSE_TIMEOUT, &mut task).await.is_err()
        {
            task.abort();
        }
        result
    }

    fn listener(&mut self) -> Option<&mut Box<dyn RebalanceListener>> {
        Some(self.listener.as_mut()?.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn auto_committing(&self) -> bool {
        self.config.enable_auto_commit && self.coordinator.is_some()
    }

    async fn maybe_auto_commit(&mut self) -> Result<(), ClientError> {
        if !self.auto_committing() || Instant::now() < self.next_auto_commit {
            return Ok(());
        }
        self.next_auto_commit = Instant::now() + self.config.auto_commit_interval;
        let changed: BTreeMap<TopicPartition, i64> =
            self.positions().into_iter().filter(|(tp, o)| self.last_commit.get(tp) != Some(o)).collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.enqueue_commit(changed, None).await
    }

    /// Catches up with the coordinator: drops lost partitions, revokes, takes new ones.
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.group.clone() else { return Ok(()) };
        if let Some(e) = lock(&group.fatal).take() {
            return Err(e);
        }
        let (plan, phase) = {
            let m = lock(&group.membership);
            (m.plan(), m.phase())
        };
        if phase == Phase::Fenced {
            for tp in &plan.lost {
                self.parts.remove(tp);
            }
            self.buffered.retain(|b| !plan.lost.contains(&b.tp));
            if !plan.lost.is_empty() {
                tracing::warn!(partitions = %list(&plan.lost), "partitions lost: the member was fenced or its session expired");
                if let Some(l) = self.listener() {
                    l.on_lost(&plan.lost);
                }
            }
            lock(&group.membership).lost_done();
            group.wake.notify_one();
            return Ok(());
        }
        if !plan.revoke.is_empty() {
            self.revoke(&group, plan.revoke.clone()).await?;
        }
        if !plan.assign.is_empty() {
            let taken = lock(&group.membership).acquired(&plan.assign);
            if !taken.is_empty() {
                for tp in &taken {
                    self.parts.entry(tp.clone()).or_insert(PartState {
                        position: None,
                        fetch_id: 0,
                        task: None,
                    });
                }
                tracing::info!(partitions = %list(&taken), "partitions assigned");
                group.wake.notify_one();
                if let Some(l) = self.listener() {
                    l.on_assigned(&taken);
                }
            }
        }
        Ok(())
    }

    /// Gives up `partitions`: stop fetching, commit (auto), tell the listener, report them
    /// released.
    async fn revoke(
        &mut self,
        group: &GroupShared,
        partitions: BTreeSet<TopicPartition>,
    ) -> Result<(), ClientError> {
        let mut positions = BTreeMap::new();
        for tp in &partitions {
            if let Some(mut part) = self.parts.remove(tp) {
                if let Some(task) = part.task.take() {
                    task.abort();
                }
                if let Some(p) = part.position {
                    positions.insert(tp.clone(), p);
                }
            }
        }
        self.buffered.retain(|b| !partitions.contains(&b.tp));
        if self.config.enable_auto_commit
            && !positions.is_empty()
            && let Err(e) = self.commit_offsets_sync(positions.clone()).await
        {
            tracing::warn!(error = %e, "commit before a revocation failed");
        }
        let mut revocation =
            Revocation { partitions: partitions.clone(), positions, commits: BTreeMap::new() };
        if let Some(l) = self.listener() {
            l.on_revoked(&mut revocation);
        }
        if !revocation.commits.is_empty()
            && let Err(e) = self.commit_offsets_sync(std::mem::take(&mut revocation.commits)).await
        {
            tracing::warn!(error = %e, "the listener's commit before a revocation failed");
        }
        for tp in &partitions {
            self.last_commit.remove(tp);
        }
        tracing::info!(partitions = %list(&partitions), "partitions revoked");
        lock(&group.membership).released(&partitions);
        group.wake.notify_one();
        Ok(())
    }

    /// Looks up where partitions without a position start, and starts fetching them.
    async fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let missing: BTreeSet<TopicPartition> =
            self.parts.iter().filter(|(_, p)| p.position.is_none()).map(|(tp, _)| tp.clone()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let committed = match &self.coordinator {
            Some(_) => self.committed(&missing).await?,
            None => BTreeMap::new(),
        };
        for tp in missing {
            let offset = match committed.get(&tp) {
                Some(&o) => o,
                None => self.reset_offset(&tp).await?,
            };
            // A rebalance cannot happen in between (it runs on this task), but be sure.
            if self.parts.contains_key(&tp) {
                tracing::debug!(partition = %tp, offset, "starting to fetch");
                self.start_fetch(&tp, offset);
            }
        }
        Ok(())
    }

    async fn reset_offset(&self, tp: &TopicPartition) -> Result<i64, ClientError> {
        let spec = match self.config.auto_offset_reset {
            OffsetReset::Earliest => pb::OffsetSpec::Earliest,
            OffsetReset::Latest => pb::OffsetSpec::Latest,
        };
        list_offset(&self.router, &tp.topic, tp.partition, spec).await
    }

    /// (Re)starts `tp`'s fetch task at `offset`.
    fn start_fetch(&mut self, tp: &TopicPartition, offset: i64) {
        self.next_fetch_id += 1;
        let fetch_id = self.next_fetch_id;
        let reader = PartitionReader::new(self.router.clone(), tp.topic.clone(), tp.partition, offset, None)
            .with_max_bytes(self.config.fetch_max_bytes);
        let task = tokio::spawn(fetch_task(reader, tp.clone(), fetch_id, self.fetched_tx.clone()));
        let part =
            self.parts.entry(tp.clone()).or_insert(PartState { position: None, fetch_id: 0, task: None });
        if let Some(old) = part.task.replace(task) {
            old.abort();
        }
        part.fetch_id = fetch_id;
        part.position = Some(offset);
    }

    /// Takes a chunk from a fetch task.
    async fn accept(&mut self, fetched: Fetched) -> Result<(), ClientError> {
        let current = self.parts.get(&fetched.tp).is_some_and(|p| p.fetch_id == fetched.fetch_id);
        if !current {
            return Ok(());
        }
        match fetched.records {
            Ok(records) => {
                self.buffered.push_back(Buffered {
                    tp: fetched.tp,
                    fetch_id: fetched.fetch_id,
                    records: records.into(),
                });
            }
            Err(e) if e.code == code::OFFSET_OUT_OF_RANGE => {
                let offset = self.reset_offset(&fetched.tp).await?;
                tracing::warn!(partition = %fetched.tp, error = %e, offset, "position out of range: reset");
                self.start_fetch(&fetched.tp, offset);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Hands out buffered records, up to `max_poll_records`, advancing positions.
    fn take_buffered(&mut self) -> Vec<ConsumerRecord> {
        let max = self.config.max_poll_records.max(1);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(front) = self.buffered.front_mut() else { break };
            match self.parts.get_mut(&front.tp) {
                Some(part) if part.fetch_id == front.fetch_id => {
                    while out.len() < max {
                        let Some(record) = front.records.pop_front() else { break };
                        if part.position.is_some_and(|p| record.offset < p) {
                            continue;
                        }
                        part.position = Some(record.offset + 1);
                        out.push(ConsumerRecord::new(&front.tp, record));
                    }
                    if front.records.is_empty() {
                        self.buffered.pop_front();
                    }
                }
                _ => {
                    self.buffered.pop_front();
                }
            }
        }
        out
    }
}

fn list(partitions: &BTreeSet<TopicPartition>) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Fetches one partition into the consumer's queue until aborted. A reader that gives up
/// (its retry deadline passed) is retried after a pause, from where it was; an offset out
/// of range goes to the consumer, which resets it.
async fn fetch_task(
    mut reader: PartitionReader,
    tp: TopicPartition,
    fetch_id: u64,
    tx: mpsc::Sender<Fetched>,
) {
    loop {
        match reader.next_chunk().await {
            Ok(Some(chunk)) => {
                let fetched = Fetched { tp: tp.clone(), fetch_id, records: Ok(chunk.records) };
                if tx.send(fetched).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) if e.code == code::OFFSET_OUT_OF_RANGE => {
                let _ = tx.send(Fetched { tp, fetch_id, records: Err(e) }).await;
                return;
            }
            Err(e) => {
                tracing::warn!(partition = %tp, error = %e, "fetching failed; retrying");
                tokio::time::sleep(FETCH_RETRY_PAUSE).await;
            }
        }
    }
}

/// Keeps the member in its group: heartbeats, and the membership's reaction to answers.
async fn heartbeat_task(shared: Arc<GroupShared>, coordinator: Arc<Coordinator>) {
    let mut backoff = Backoff::new();
    let mut last_answer = Instant::now();
    // When the last answered heartbeat was sent, and whether the coordinator failed or moved
    // since (see `Membership::on_error`).
    let mut last_answered_sent = Instant::now();
    let mut coordinator_trouble = false;
    let mut delay = Duration::ZERO;
    loop {
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.wake.notified() => {}
            }
        }
        let (request, session_timeout) = {
            let mut m = lock(&shared.membership);
            if m.phase() == Phase::Fenced && m.owned().is_empty() {
                m.lost_done();
            }
            if m.phase() == Phase::Done {
                return;
            }
            (m.request(), m.settings().session_timeout)
        };
        let Some(request) = request else {
            // Fenced: the application drops its partitions, then wakes us to rejoin.
            shared.wake.notified().await;
            delay = Duration::ZERO;
            continue;
        };
        let timeout = HEARTBEAT_TIMEOUT.min(session_timeout / 2);
        let sent_at = Instant::now();
        let answer = coordinator
            .attempt(timeout, |mut c| {
                let request = request.clone();
                async move { c.consumer_group_heartbeat(request).await.map(tonic::Response::into_inner) }
            })
            .await;
        match answer {
            Ok(answer) => {
                last_answer = Instant::now();
                last_answered_sent = sent_at;
                coordinator_trouble = false;
                backoff.reset();
                let mut m = lock(&shared.membership);
                if m.on_answer(&request, answer) {
                    shared.changed.notify_one();
                }
                if m.phase() == Phase::Done {
                    return;
                }
                delay = m.heartbeat_interval();
            }
            Err(e) => {
                let failed_over = coordinator_trouble && last_answered_sent.elapsed() < session_timeout;
                let after = lock(&shared.membership).on_error(&e, failed_over);
                match after {
                    AfterError::FindCoordinator => {
                        coordinator_trouble = true;
                        delay = backoff.next_delay();
                        tracing::debug!(error = %e, ?delay, "heartbeat failed; finding the coordinator again");
                        let mut m = lock(&shared.membership);
                        if m.phase() == Phase::Leaving && last_answer.elapsed() >= session_timeout {
                            // The coordinator will drop the member anyway.
                            return;
                        }
                        if last_answer.elapsed() >= session_timeout && !m.owned().is_empty() {
                            // The coordinator has surely given our partitions away by now.
                            tracing::warn!(error = %e, "no heartbeat answered for a session timeout");
                            m.fence();
                            shared.changed.notify_one();
                        }
                    }
                    AfterError::Rejoin if failed_over => {
                        tracing::info!(error = %e, "the new coordinator does not know this member; rejoining with its partitions");
                        delay = Duration::ZERO;
                    }
                    AfterError::Rejoin => {
                        tracing::warn!(error = %e, "fenced by the coordinator; rejoining");
                        shared.changed.notify_one();
                        delay = Duration::ZERO;
                    }
                    AfterError::Fatal => {
                        tracing::error!(error = %e, "the group refused this member");
                        *lock(&shared.fatal) = Some(e);
                        shared.changed.notify_one();
                        return;
                    }
                }
            }
        }
    }
}

/// Sends commits in order until its queue closes.
async fn commit_task(
    coordinator: Arc<Coordinator>,
    group: Option<Arc<GroupShared>>,
    mut jobs: mpsc::Receiver<CommitJob>,
) {
    while let Some(job) = jobs.recv().await {
        let result = commit(&coordinator, group.as_deref(), &job.offsets).await;
        match &result {
            Ok(()) => {
                tracing::info!(group = coordinator.group_id(), offsets = %offsets_text(&job.offsets), "committed")
            }
            Err(e) if job.reply.is_none() => {
                tracing::warn!(group = coordinator.group_id(), error = %e, "commit failed")
            }
            Err(_) => {}
        }
        if let Some(reply) = job.reply {
            let _ = reply.send(result);
        }
    }
}

/// `t-0@42,t-1@7`: the offsets of a commit, as logged.
fn offsets_text(offsets: &BTreeMap<TopicPartition, i64>) -> String {
    offsets.iter().map(|(tp, o)| format!("{tp}@{o}")).collect::<Vec<_>>().join(",")
}

/// One commit: as the member (its id and epoch now), or as no member (assign mode).
async fn commit(
    coordinator: &Coordinator,
    group: Option<&GroupShared>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), ClientError> {
    let started = Instant::now();
    loop {
        let (member_id, member_epoch) = match group {
            None => (String::new(), -1),
            Some(g) => {
                let m = lock(&g.membership);
                if !matches!(m.phase(), Phase::Member | Phase::Leaving) {
                    return Err(error(
                        group_code::UNKNOWN_MEMBER_ID,
                        "UNKNOWN_MEMBER_ID",
                        "not a member of the group right now (joining, or fenced)",
                    ));
                }
                (m.member_id().to_owned(), m.epoch())
            }
        };
        let request = pb::OffsetCommitRequest {
            group_id: coordinator.group_id().to_owned(),
            member_id,
            member_epoch,
            offsets: offsets
                .iter()
                .map(|(tp, &offset)| pb::OffsetCommitPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        let result = coordinator
            .call(COMMIT_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.offset_commit(request).await.map(|_| ()) }
            })
            .await;
        match result {
            Err(e) if e.code == group_code::STALE_MEMBER_EPOCH && started.elapsed() < STALE_EPOCH_RETRY => {
                let pause =
                    group.map_or(Duration::from_millis(100), |g| lock(&g.membership).heartbeat_interval());
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
#[path = "consumer_tests.rs"]
mod tests;
