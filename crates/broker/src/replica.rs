//! The replicas this broker hosts: one [`Partition`] per partition the metadata assigns
//! here, each over its own [`Log`].
//!
//! The [`ReplicaManager`] follows the metadata cache ([`ReplicaManager::reconcile`]): it
//! opens a partition's log when the partition is assigned here, passes on every change of
//! leader, leader epoch and ISR, and deletes the log when its topic is deleted.
//!
//! The high watermark (HW) is the first offset not yet known to be on every ISR member,
//! fsynced (unless the topic chose `fsync=never`). The leader computes it as the minimum of
//! its own durable end and the durable end each other member last reported in a replica
//! fetch ([`Partition::serve_replica_fetch`]), over the committed ISR plus any member whose
//! addition it has asked the controller for (Kafka's "maximal ISR", so the HW never passes
//! a replica the controller may already count as in sync). It never moves back, and it
//! does not move while the committed ISR is smaller than `min.insync.replicas`. A follower
//! takes the leader's HW, capped at its own log end.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::{
    BATCH_BYTES_LIMIT, BatchHeader, FsyncPolicy, Log, LogConfig, LogError, LogManager, ReadInfo,
    TopicPartition, crashsafe,
};
use tokio::sync::watch;

use crate::cache::{MetadataCache, PartitionEntry};
use crate::error::{BrokerError, ErrorCode, LeaderHint};
use crate::health::StorageHealth;
use crate::metrics::ReplicaMetrics;
use crate::producer::{ProducerBatch, ProducerStates, Verdict};

/// Name of the file, in each partition directory, holding the topic id (32 hex digits). It
/// tells a log of a deleted topic from one of a new topic with the same name.
pub const TOPIC_ID_FILE: &str = "topic-id";

/// Default `min.insync.replicas` when the topic sets none: 2, so that an acks=all write
/// is on two replicas before it is acknowledged, or the replication factor if that is
/// smaller (a one-replica topic still takes acks=all writes).
pub const MIN_INSYNC_REPLICAS_DEFAULT: usize = 2;

/// What waiters watch: the high watermark, and a generation bumped by every change of the
/// partition's state (leader, epoch, ISR, removal), so waits end when leadership moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The high watermark.
    pub high_watermark: u64,
    /// Bumped on every state change.
    pub generation: u64,
}

/// A partition's replication state, as this broker last applied it from the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// The leader, if any.
    pub leader: Option<u32>,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch.
    pub partition_epoch: i32,
    /// The replicas, preferred first.
    pub replicas: Vec<u32>,
    /// The in-sync replicas.
    pub isr: Vec<u32>,
    /// False once the partition was removed from this broker.
    pub hosted: bool,
}

/// Per-topic limits read from the topic's configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// `message.timestamp.before.max.ms`: how far in the past a record's create time may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future a record's create time may be.
    pub timestamp_after_max_ms: i64,
}

/// `message.timestamp.before.max.ms` by default: no limit, as in Kafka.
pub const TIMESTAMP_BEFORE_MAX_MS_DEFAULT: i64 = i64::MAX;
/// `message.timestamp.after.max.ms` by default: one hour, Kafka 4.0's default. A record
/// dated further ahead would hold back time retention of its segment until that date.
pub const TIMESTAMP_AFTER_MAX_MS_DEFAULT: i64 = 3_600_000;

/// Where a produced batch is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// True when the batch was an idempotent producer's retry of a batch already in the log:
    /// nothing was appended, and the offsets are the original's.
    pub duplicate: bool,
}

/// What the leader knows of one follower, from its replica fetches.
#[derive(Debug, Clone, Copy)]
pub struct FollowerState {
    /// Where its log ended at its last fetch.
    pub fetch_offset: u64,
    /// Its durable end at its last fetch (what counts toward the HW).
    pub durable_end: u64,
    /// Its broker epoch.
    pub broker_epoch: u64,
    /// The last time it had fetched up to the leader's log end.
    pub caught_up_at: Instant,
}

/// One follower's lag, as its leader sees it (see [`Partition::follower_lags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerLag {
    /// The follower's broker id.
    pub follower: u32,
    /// Records between its last fetch offset and the leader's log end.
    pub records: u64,
    /// Time since it last fetched up to the leader's log end.
    pub since_caught_up: Duration,
}

/// The leader's replication bookkeeping. Kept apart from the state lock: the log's durable
/// listener reads it under the log's lock, and the state lock's holders call into the log.
/// Lock order: state, then view; log, then view; nothing is called while holding the view.
#[derive(Debug)]
struct LeaderView {
    leader: bool,
    /// The committed ISR.
    isr: Vec<u32>,
    /// Members this leader asked the controller to add, not yet seen committed.
    pending_adds: Vec<u32>,
    /// An AlterPartition is in flight.
    altering: bool,
    min_isr: usize,
    followers: HashMap<u32, FollowerState>,
    /// The log end offset when this leadership began: a follower must reach it to rejoin.
    epoch_start_offset: u64,
    /// When this leadership began (followers are given the lag time from then).
    since: Instant,
}

/// One hosted partition.
#[derive(Debug)]
pub struct Partition {
    tp: TopicPartition,
    topic_id: Vec<u8>,
    broker_id: u32,
    log: Arc<Log>,
    state: RwLock<ReplicaState>,
    limits: RwLock<Limits>,
    progress: watch::Sender<Progress>,
    view: Mutex<LeaderView>,
    /// Bumped after every leader append, for replica fetch sessions waiting for data.
    appended: Arc<watch::Sender<u64>>,
    /// The broker's storage health: a write or fsync error here fails it.
    health: StorageHealth,
    /// The log's durable end, as the log's durable listener last reported it: a follower
    /// waits on it, without a blocking thread, before reporting its offsets.
    durable: watch::Sender<u64>,
    /// The idempotent producers of the log, always describing exactly its batches: held
    /// across every change of the log (a leader's check and append, a follower's append or
    /// truncation and the rebuild after it). Lock order: state, then producers, then log.
    producers: Mutex<ProducerStates>,
    /// Where a read found a batch that fails its checks (a bit flipped on disk): the copy
    /// from there on is cut off and fetched again from another replica once one leads
    /// ([`Partition::repair`]).
    damaged_at: Mutex<Option<u64>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The HW the leader's view allows, given the leader's own durable end.
fn allowed_high_watermark(view: &LeaderView, me: u32, own_durable: u64) -> Option<u64> {
    if !view.leader || view.isr.len() < view.min_isr {
        return None;
    }
    let mut hw = own_durable;
    for member in view.isr.iter().chain(&view.pending_adds) {
        if *member == me {
            continue;
        }
        hw = hw.min(view.followers.get(member).map_or(0, |f| f.durable_end));
    }
    Some(hw)
}

impl Partition {
    fn new(
        tp: TopicPartition,
        topic_id: Vec<u8>,
        broker_id: u32,
        log: Arc<Log>,
        limits: Limits,
        appended: Arc<watch::Sender<u64>>,
        health: StorageHealth,
    ) -> Arc<Self> {
        let producers = rebuild_producers(&tp, &log);
        let partition = Arc::new(Partition {
            tp,
            topic_id,
            broker_id,
            log,
            state: RwLock::new(ReplicaState {
                leader: None,
                leader_epoch: -1,
                partition_epoch: -1,
                replicas: Vec::new(),
                isr: Vec::new(),
                hosted: true,
            }),
            limits: RwLock::new(limits),
            progress: watch::Sender::new(Progress::default()),
            view: Mutex::new(LeaderView {
                leader: false,
                isr: Vec::new(),
                pending_adds: Vec::new(),
                altering: false,
                min_isr: limits.min_insync_replicas,
                followers: HashMap::new(),
                epoch_start_offset: 0,
                since: Instant::now(),
            }),
            appended,
            health,
            durable: watch::Sender::new(0),
            producers: Mutex::new(producers),
            damaged_at: Mutex::new(None),
        });
        partition.durable.send_replace(partition.log.durable_end());
        let weak: Weak<Partition> = Arc::downgrade(&partition);
        partition.log.set_durable_listener(Arc::new(move |durable| {
            if let Some(p) = weak.upgrade() {
                p.durable.send_replace(durable);
                p.recompute_high_watermark(durable);
            }
        }));
        partition
    }

    /// Raises the HW to what the leader's view allows, with `own_durable` as the leader's
    /// durable end. Must not be called with the view lock held.
    fn recompute_high_watermark(&self, own_durable: u64) {
        let allowed = allowed_high_watermark(&lock(&self.view), self.broker_id, own_durable);
        if let Some(hw) = allowed {
            self.raise_high_watermark(hw);
        }
    }

    /// The topic and partition.
    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    /// The topic id the log belongs to.
    pub fn topic_id(&self) -> &[u8] {
        &self.topic_id
    }

    /// The log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The state now.
    pub fn state(&self) -> ReplicaState {
        read(&self.state).clone()
    }

    /// The limits now.
    pub fn limits(&self) -> Limits {
        *read(&self.limits)
    }

    /// The high watermark now.
    pub fn high_watermark(&self) -> u64 {
        self.progress.borrow().high_watermark
    }

    /// Waits until every offset below `end` is durable, or `timeout` passes (false).
    pub async fn wait_durable(&self, end: u64, timeout: Duration) -> bool {
        let mut durable = self.durable.subscribe();
        // A truncation lowers the end below `end` without the listener saying so.
        let end = end.min(self.log.log_end());
        matches!(tokio::time::timeout(timeout, durable.wait_for(|d| *d >= end)).await, Ok(Ok(_)))
    }

    /// A receiver of every HW advance and state change.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn raise_high_watermark(&self, to: u64) {
        self.progress.send_if_modified(|p| {
            if to > p.high_watermark {
                p.high_watermark = to;
                true
            } else {
                false
            }
        });
    }

    /// Applies the metadata's view of this partition.
    fn apply(&self, entry: &PartitionEntry, limits: Limits) {
        *write(&self.limits) = limits;
        let log_end = self.log.log_end();
        let changed = {
            let mut st = write(&self.state);
            let next = ReplicaState {
                leader: entry.leader,
                leader_epoch: entry.leader_epoch,
                partition_epoch: entry.partition_epoch,
                replicas: entry.replicas.clone(),
                isr: entry.isr.clone(),
                hosted: true,
            };
            let changed = *st != next;
            let was_leader = st.leader == Some(self.broker_id);
            let is_leader = next.leader == Some(self.broker_id);
            let new_leadership = is_leader && (!was_leader || st.leader_epoch != next.leader_epoch);
            if changed {
                if new_leadership {
                    tracing::info!(partition = %self.tp, epoch = next.leader_epoch, isr = ?next.isr, "leading");
                } else if was_leader && !is_leader {
                    tracing::info!(partition = %self.tp, leader = ?next.leader, "no longer leading");
                }
            }
            let mut view = lock(&self.view);
            view.leader = is_leader;
            view.min_isr = limits.min_insync_replicas;
            view.pending_adds.retain(|m| !next.isr.contains(m) && next.replicas.contains(m));
            if new_leadership {
                // Followers get the whole lag time from the start of this leadership.
                view.followers.clear();
                view.pending_adds.clear();
                view.altering = false;
                view.epoch_start_offset = log_end;
                view.since = Instant::now();
            }
            view.isr = next.isr.clone();
            *st = next;
            changed
        };
        if changed {
            self.progress.send_modify(|p| p.generation += 1);
            // Outside the state lock: the log's lock is taken after the state lock elsewhere.
            self.recompute_high_watermark(self.log.durable_end());
        }
    }

    /// Applies the topic's log settings, as its configs now ask, to the open log: retention,
    /// segment rolling and the batch size limit change at once; the fsync policy when the
    /// log is next opened (see [`Log::update_config`]).
    fn apply_settings(&self, config: &LogConfig) {
        match self.log.update_config(config) {
            Ok(true) => tracing::info!(partition = %self.tp, "applied the topic's new log settings"),
            Ok(false) => {}
            Err(e) => tracing::warn!(partition = %self.tp, "cannot apply the topic's log settings: {e}"),
        }
    }

    /// The partition leaves this broker: every waiter wakes and sees it gone.
    fn remove(&self) {
        {
            let mut st = write(&self.state);
            st.hosted = false;
            st.leader = None;
        }
        lock(&self.view).leader = false;
        self.progress.send_modify(|p| p.generation += 1);
    }

    /// Fails unless this broker leads the partition now; answers the leader epoch.
    pub fn check_leader(&self) -> Result<i32, BrokerError> {
        let st = read(&self.state);
        self.leader_epoch_of(&st)
    }

    fn leader_epoch_of(&self, st: &ReplicaState) -> Result<i32, BrokerError> {
        if st.hosted && st.leader == Some(self.broker_id) {
            Ok(st.leader_epoch)
        } else {
            Err(BrokerError::not_leader(&self.tp, LeaderHint { id: st.leader, address: None }))
        }
    }

    /// Forgets the idempotent producers whose last batch here is `expiration_ms` or more
    /// older than `now_ms`; how many.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: u64) -> usize {
        lock(&self.producers).expire(now_ms, expiration_ms)
    }

    /// How many idempotent producers this replica remembers.
    pub fn producer_count(&self) -> usize {
        lock(&self.producers).len()
    }

    /// The latest epoch and remembered batches of an idempotent producer, if known here.
    pub fn producer_state(&self, producer_id: i64) -> Option<(i16, Vec<crate::producer::BatchEntry>)> {
        lock(&self.producers).producer(producer_id)
    }

    /// Appends one batch as leader, stamping the current leader epoch. With `acks_all`, first
    /// checks that the ISR has at least `min.insync.replicas` members.
    ///
    /// A batch of an idempotent producer (producer id >= 0 in its header) is checked against
    /// the producer state first: a retry of one of the producer's last batches is answered
    /// with the original's offsets and not appended; an older epoch is INVALID_PRODUCER_EPOCH,
    /// a sequence that does not follow OUT_OF_ORDER_SEQUENCE_NUMBER.
    pub fn append(&self, batch: &mut [u8], acks_all: bool) -> Result<Appended, BrokerError> {
        self.check_storage()?;
        let st = read(&self.state);
        let epoch = self.leader_epoch_of(&st)?;
        let min = read(&self.limits).min_insync_replicas;
        if acks_all && st.isr.len() < min {
            return Err(BrokerError::new(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "{} has {} in-sync replicas {:?}, fewer than min.insync.replicas={min}",
                    self.tp,
                    st.isr.len(),
                    st.isr
                ),
            ));
        }
        // A header that does not parse is refused by the log below, with the reason.
        let producer = match BatchHeader::parse(batch, BATCH_BYTES_LIMIT) {
            Ok(header) => ProducerBatch::of(&header).map_err(|e| BrokerError::from_producer(&self.tp, e))?,
            Err(_) => None,
        };
        // The producer lock is held from the check to the record, so two copies of one batch
        // (a retry racing its original) cannot both pass the check.
        let mut producers = lock(&self.producers);
        if let Some(p) = &producer
            && let Verdict::Duplicate { first_offset, last_offset } =
                producers.check(p).map_err(|e| BrokerError::from_producer(&self.tp, e))?
        {
            return Ok(Appended { base_offset: first_offset, last_offset, duplicate: true });
        }
        // The state lock is held across the append, so the epoch stamped is the epoch this
        // broker leads in at the moment the batch enters the log.
        let info = self.log.append(batch, epoch).map_err(|e| self.log_error(e))?;
        if let Some(p) = &producer {
            producers.record(p, info.base_offset, info.last_offset, info.max_timestamp);
        }
        drop(producers);
        drop(st);
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Appended { base_offset: info.base_offset, last_offset: info.last_offset, duplicate: false })
    }

    /// `error` from a write to the log (append, truncation) as the client's error; a write or
    /// fsync failure (a full or broken disk) also fails the broker's storage. Read errors
    /// do not: retention racing a read is not a broken disk.
    fn log_error(&self, error: LogError) -> BrokerError {
        if matches!(error, LogError::Io { .. } | LogError::Failed { .. }) {
            self.health.fail(format!("{}: {error}", self.tp));
        }
        BrokerError::from_log(&self.tp, error)
    }

    /// `error` from a read of the log as the client's error. Corrupt data (a batch whose CRC
    /// or framing fails where the log holds it) is this copy's damage, not the client's: the
    /// offset is remembered for [`Partition::repair`], and the broker's storage is failed, so
    /// that it leaves the cluster and its leaderships move to in-sync replicas (as Kafka takes
    /// a log directory offline); the reader gets KAFKA_STORAGE_ERROR, which clients retry
    /// against the new leader.
    fn read_error(&self, error: LogError) -> BrokerError {
        let LogError::Corrupt { offset, .. } = &error else {
            return BrokerError::from_log(&self.tp, error);
        };
        let at = {
            let mut damaged = lock(&self.damaged_at);
            let at = damaged.map_or(*offset, |d| d.min(*offset));
            *damaged = Some(at);
            at
        };
        tracing::error!(partition = %self.tp, offset = at, "corrupt data in the log: {error}");
        self.health.fail(format!(
            "{}: corrupt data at offset {at} ({error}); the copy from there is fetched again from another replica",
            self.tp
        ));
        BrokerError::new(
            ErrorCode::KafkaStorageError,
            format!("{}: corrupt data on this broker's disk: {error}", self.tp),
        )
    }

    /// Repairs a copy a read found damaged ([`Partition::read_error`]): once another replica
    /// leads the partition, cuts the log off where the damage starts (whole batches), and
    /// the follower fetches the rest again from the leader. `Ok(true)` if there was damage
    /// and it is cut off, `Ok(false)` if there was none; `Err` with why not yet (no other
    /// replica leads: the only good copy may be elsewhere, or nowhere, so nothing is cut).
    /// Blocking.
    pub fn repair(&self) -> Result<bool, String> {
        let Some(at) = *lock(&self.damaged_at) else { return Ok(false) };
        {
            let st = read(&self.state);
            match st.leader {
                Some(leader) if leader != self.broker_id => {}
                _ => {
                    return Err(format!(
                        "{}: corrupt data at offset {at}, kept until another replica leads the partition",
                        self.tp
                    ));
                }
            }
        }
        let mut producers = lock(&self.producers);
        let end = self
            .log
            .truncate_to(at)
            .map_err(|e| format!("{}: cutting off the damaged copy: {e}", self.tp))?;
        *producers = rebuild_producers(&self.tp, &self.log);
        drop(producers);
        *lock(&self.damaged_at) = None;
        tracing::warn!(partition = %self.tp, from = at, log_end = end,
            "cut the damaged copy off; fetching it again from the leader");
        Ok(true)
    }

    /// Refuses with KAFKA_STORAGE_ERROR while the broker's storage is failed.
    fn check_storage(&self) -> Result<(), BrokerError> {
        match self.health.failure() {
            Some(reason) => Err(BrokerError::new(
                ErrorCode::KafkaStorageError,
                format!(
                    "{}: this broker's storage failed ({reason}); its partitions move to other replicas",
                    self.tp
                ),
            )),
            None => Ok(()),
        }
    }

    /// Waits until the HW passes `end` (the offset after a produced batch), as acks=all
    /// requires. Fails with REQUEST_TIMED_OUT after `timeout`, NOT_LEADER_OR_FOLLOWER if
    /// leadership moves, NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrinks below the
    /// minimum meanwhile.
    pub async fn wait_committed(&self, end: u64, timeout: Duration) -> Result<(), BrokerError> {
        let mut progress = self.subscribe();
        let mut health = self.health.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = *progress.borrow_and_update();
            if now.high_watermark >= end {
                return Ok(());
            }
            health.borrow_and_update();
            self.check_storage()?;
            {
                let st = read(&self.state);
                self.leader_epoch_of(&st)?;
                let min = read(&self.limits).min_insync_replicas;
                if st.isr.len() < min {
                    return Err(BrokerError::new(
                        ErrorCode::NotEnoughReplicasAfterAppend,
                        format!(
                            "the batch ending at offset {end} of {} was appended, but the ISR shrank to {:?}, \
                             below min.insync.replicas={min}, before it was replicated",
                            self.tp, st.isr
                        ),
                    ));
                }
            }
            let changed = async {
                tokio::select! {
                    changed = progress.changed() => changed.is_ok(),
                    // A storage failure answers at once, as KAFKA_STORAGE_ERROR above.
                    _ = health.changed() => true,
                }
            };
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(true) => {}
                Ok(false) => return Err(BrokerError::not_leader(&self.tp, LeaderHint::default())),
                Err(_) => {
                    return Err(BrokerError::new(
                        ErrorCode::RequestTimedOut,
                        format!(
                            "acks=all: the batch ending at offset {end} of {} was appended but not \
                             committed within {} ms (high watermark {})",
                            self.tp,
                            timeout.as_millis(),
                            now.high_watermark
                        ),
                    ));
                }
            }
        }
    }

    /// Answers one partition of a follower's replica fetch, as leader: checks epochs, finds
    /// a divergence, records the follower's offsets (raising the HW), and reads up to
    /// `max_bytes` of batches from its fetch offset (at least one batch; none, offsets
    /// only, when `max_bytes` is 0). Blocking: it reads the log.
    pub fn serve_replica_fetch(
        &self,
        request: &pb::ReplicaFetchPartition,
        follower: u32,
        follower_epoch: u64,
        max_bytes: usize,
    ) -> pb::ReplicaFetchPartitionData {
        let mut out = pb::ReplicaFetchPartitionData {
            topic: self.tp.topic.clone(),
            partition: self.tp.partition,
            ..Default::default()
        };
        let fail = |mut out: pb::ReplicaFetchPartitionData, code: i32, message: String| {
            out.error_code = code;
            out.error_message = message;
            out
        };
        {
            let st = read(&self.state);
            if !st.hosted || st.leader != Some(self.broker_id) {
                return fail(out, 6, format!("broker {} does not lead {}", self.broker_id, self.tp));
            }
            if !st.replicas.contains(&follower) {
                return fail(out, 6, format!("broker {follower} is not a replica of {}", self.tp));
            }
            if request.current_leader_epoch < st.leader_epoch {
                return fail(
                    out,
                    74,
                    format!(
                        "leader epoch {} is fenced: {} is at {}",
                        request.current_leader_epoch, self.tp, st.leader_epoch
                    ),
                );
            }
            if request.current_leader_epoch > st.leader_epoch {
                return fail(
                    out,
                    76,
                    format!(
                        "leader epoch {} is unknown here: {} is at {}",
                        request.current_leader_epoch, self.tp, st.leader_epoch
                    ),
                );
            }
        }
        let offsets = self.log.offsets();
        out.log_start_offset = offsets.log_start;
        out.log_end_offset = offsets.log_end;
        out.high_watermark = self.high_watermark();
        let fetch_offset = request.fetch_offset;
        // KIP-279: the follower's last epoch must end, on the leader, at or after its fetch offset.
        if request.last_fetched_epoch >= 0 && fetch_offset > offsets.log_start {
            let diverged = match self.log.end_offset_for_epoch(request.last_fetched_epoch) {
                Some((epoch, end)) if epoch == request.last_fetched_epoch && end >= fetch_offset => None,
                Some((epoch, end)) => Some((epoch, end.min(fetch_offset))),
                None => Some((-1, offsets.log_start)),
            };
            if let Some((epoch, end)) = diverged {
                out.diverging = true;
                out.diverging_epoch = epoch;
                out.diverging_end_offset = end;
                return out;
            }
        }
        if fetch_offset < offsets.log_start || fetch_offset > offsets.log_end {
            return fail(
                out,
                1,
                format!(
                    "fetch offset {fetch_offset} is outside the leader's log [{}, {}]",
                    offsets.log_start, offsets.log_end
                ),
            );
        }
        let mut buf = Vec::new();
        // No room left in the answer: offsets only (the read would return a batch anyway).
        if max_bytes > 0
            && let Err(e) = self.log.read_into(fetch_offset, max_bytes, None, &mut buf)
        {
            // A read error is this request's, not the disk's verdict (writes decide that),
            // except corrupt data, which this copy must not serve or keep.
            let e = self.read_error(e);
            return fail(out, e.code.code(), e.message);
        }
        {
            let mut view = lock(&self.view);
            let now = Instant::now();
            let caught_up_at = if fetch_offset >= offsets.log_end {
                now
            } else {
                view.followers.get(&follower).map_or(view.since, |f| f.caught_up_at)
            };
            view.followers.insert(
                follower,
                FollowerState {
                    fetch_offset,
                    durable_end: request.durable_end.min(fetch_offset),
                    broker_epoch: follower_epoch,
                    caught_up_at,
                },
            );
        }
        self.recompute_high_watermark(offsets.durable_end);
        out.high_watermark = self.high_watermark();
        out.batches = bytes::Bytes::from(buf);
        out
    }

    /// The fetch request a follower sends for this partition, or `None` when this broker
    /// does not follow `leader` for it now.
    pub fn replica_fetch_request(&self, leader: u32) -> Option<pb::ReplicaFetchPartition> {
        let epoch = {
            let st = read(&self.state);
            if !st.hosted || st.leader != Some(leader) || leader == self.broker_id {
                return None;
            }
            st.leader_epoch
        };
        let offsets = self.log.offsets();
        Some(pb::ReplicaFetchPartition {
            topic: self.tp.topic.clone(),
            topic_id: self.topic_id.clone(),
            partition: self.tp.partition,
            fetch_offset: offsets.log_end,
            last_fetched_epoch: self.log.latest_epoch().unwrap_or(-1),
            current_leader_epoch: epoch,
            durable_end: offsets.durable_end,
        })
    }

    /// Applies the leader's answer as a follower: appends its batches, truncates where the
    /// logs diverged, takes its HW. Answers whether anything was appended. Blocking.
    pub fn apply_replica_fetch(&self, data: &pb::ReplicaFetchPartitionData) -> Result<bool, BrokerError> {
        // Held across every change of the log below, so the producer state follows it: a
        // follower that becomes leader already deduplicates its predecessor's batches.
        let mut producers = lock(&self.producers);
        if data.diverging {
            let own = self.log.end_offset_for_epoch(data.diverging_epoch).map_or(0, |(_, end)| end);
            let to = data.diverging_end_offset.min(own).max(self.log.log_start());
            let before = self.log.log_end();
            let end = self.log.truncate_to(to).map_err(|e| self.log_error(e))?;
            if end < before {
                *producers = rebuild_producers(&self.tp, &self.log);
            }
            tracing::info!(partition = %self.tp, epoch = data.diverging_epoch, to = end, "truncated where the log diverged from the leader's");
            return Ok(false);
        }
        match data.error_code {
            0 => {}
            1 => {
                let offsets = self.log.offsets();
                if offsets.log_end < data.log_start_offset {
                    // Everything the follower has was deleted on the leader: start over there.
                    self.log
                        .truncate_fully_and_start_at(data.log_start_offset)
                        .map_err(|e| self.log_error(e))?;
                    *producers = ProducerStates::new();
                } else if offsets.log_end > data.log_end_offset {
                    self.log.truncate_to(data.log_end_offset).map_err(|e| self.log_error(e))?;
                    *producers = rebuild_producers(&self.tp, &self.log);
                }
                return Ok(false);
            }
            code => {
                return Err(BrokerError::new(
                    if code == 6 { ErrorCode::NotLeaderOrFollower } else { ErrorCode::UnknownServerError },
                    format!("{}: the leader answered {code}: {}", self.tp, data.error_message),
                ));
            }
        }
        let appended = if data.batches.is_empty() {
            false
        } else {
            self.log.append_replicated(&data.batches).map_err(|e| self.log_error(e))?;
            // append_replicated checked every batch (CRCs included): only headers are read here.
            let mut rest: &[u8] = &data.batches;
            while let Ok(header) = BatchHeader::parse(rest, BATCH_BYTES_LIMIT) {
                producers.record_header(&header);
                rest = rest.get(header.total_len()..).unwrap_or_default();
            }
            true
        };
        drop(producers);
        self.raise_high_watermark(data.high_watermark.min(self.log.log_end()));
        Ok(appended)
    }

    /// As leader: the ISR change to ask the controller for now, if any: followers that
    /// have not caught up within `lag` leave; replicas that reached the HW (and the start of
    /// this leadership) and are not fenced join. Marks the request in flight; call
    /// [`Partition::alter_done`] with its outcome.
    pub fn propose_isr(
        &self,
        lag: Duration,
        live: &dyn Fn(u32) -> bool,
    ) -> Option<pb::AlterPartitionRequest> {
        let st = read(&self.state);
        if !st.hosted || st.leader != Some(self.broker_id) {
            return None;
        }
        let hw = self.high_watermark();
        let mut view = lock(&self.view);
        if view.altering {
            return None;
        }
        let now = Instant::now();
        let mut isr: Vec<u32> = st
            .isr
            .iter()
            .copied()
            .filter(|&m| {
                m == self.broker_id
                    || view.followers.get(&m).map_or(view.since, |f| f.caught_up_at) + lag > now
            })
            .collect();
        let mut added = Vec::new();
        for &r in &st.replicas {
            // Only replicas outside the committed ISR join (one just dropped for lag stays out).
            if st.isr.contains(&r) || r == self.broker_id || !live(r) {
                continue;
            }
            if let Some(f) = view.followers.get(&r)
                && f.durable_end >= hw
                && f.fetch_offset >= view.epoch_start_offset
            {
                isr.push(r);
                added.push(r);
            }
        }
        if isr.len() == st.isr.len() && added.is_empty() {
            return None;
        }
        isr.sort_by_key(|m| st.replicas.iter().position(|r| r == m));
        view.altering = true;
        view.pending_adds.extend(&added);
        let new_isr = isr
            .iter()
            .map(|&m| pb::IsrMember {
                broker_id: m,
                broker_epoch: view.followers.get(&m).map_or(0, |f| f.broker_epoch),
            })
            .collect();
        Some(pb::AlterPartitionRequest {
            topic: self.tp.topic.clone(),
            topic_id: self.topic_id.clone(),
            partition: self.tp.partition,
            leader_id: self.broker_id,
            broker_epoch: 0,
            leader_epoch: st.leader_epoch,
            partition_epoch: st.partition_epoch,
            new_isr,
        })
    }

    /// As leader, each other assigned replica's lag: the records between its last fetch
    /// offset and this log's end (all of them for one that never fetched in this
    /// leadership), and the time since it was last caught up (fetched up to the log end; for
    /// one that never did, since this leadership began), the clock the ISR's lag time runs
    /// on. Empty when this broker does not lead the partition.
    pub fn follower_lags(&self) -> Vec<FollowerLag> {
        let st = read(&self.state);
        if !st.hosted || st.leader != Some(self.broker_id) {
            return Vec::new();
        }
        let log_end = self.log.log_end();
        let view = lock(&self.view);
        let now = Instant::now();
        st.replicas
            .iter()
            .filter(|&&r| r != self.broker_id)
            .map(|&follower| {
                let known = view.followers.get(&follower);
                let fetched = known.map_or(view.epoch_start_offset.min(log_end), |f| f.fetch_offset);
                let caught_up_at = known.map_or(view.since, |f| f.caught_up_at);
                FollowerLag {
                    follower,
                    records: log_end.saturating_sub(fetched),
                    since_caught_up: now.saturating_duration_since(caught_up_at),
                }
            })
            .collect()
    }

    /// An AlterPartition this leader sent has been answered (`ok`) or failed. A failed
    /// addition no longer holds the HW back.
    pub fn alter_done(&self, ok: bool) {
        let mut view = lock(&self.view);
        view.altering = false;
        if !ok {
            view.pending_adds.clear();
        }
    }

    /// Checks a consumer's fetch offset against the fetchable range [log start, HW].
    pub fn check_fetch_offset(&self, offset: i64) -> Result<u64, BrokerError> {
        let hw = self.high_watermark();
        let start = self.log.log_start();
        match u64::try_from(offset) {
            Ok(o) if o >= start && o <= hw => Ok(o),
            _ => Err(BrokerError::offset_out_of_range(offset, start, hw)),
        }
    }

    /// Reads committed batches (below the HW) from `offset` into `buf`.
    pub fn read_committed(
        &self,
        offset: u64,
        max_bytes: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(ReadInfo, u64), BrokerError> {
        let hw = self.high_watermark();
        match self.log.read_into(offset, max_bytes, Some(hw), buf) {
            Ok(info) => Ok((info, hw)),
            Err(LogError::OffsetOutOfRange { requested, log_start, .. }) => {
                Err(BrokerError::offset_out_of_range(requested as i64, log_start, hw))
            }
            Err(e) => Err(self.read_error(e)),
        }
    }
}

/// The idempotent-producer state of `log`, rebuilt from its batch headers from the log
/// start: one 61-byte `pread` per batch, records untouched, so about a second per million
/// batches from the page cache (more from a cold disk), paid when the log is opened and
/// after a follower truncates. A damaged segment is skipped with a warning: its producers
/// may then see a retry appended again or an OUT_OF_ORDER_SEQUENCE_NUMBER.
fn rebuild_producers(tp: &TopicPartition, log: &Log) -> ProducerStates {
    let started = Instant::now();
    let headers = match log.batch_headers(log.log_start()) {
        Ok(headers) => headers,
        Err(e) => {
            tracing::warn!(partition = %tp, "cannot read the log to rebuild the producer state: {e}");
            return ProducerStates::new();
        }
    };
    let mut batches = 0u64;
    let states = ProducerStates::rebuild(headers.filter_map(|header| match header {
        Ok(header) => {
            batches += 1;
            Some(header)
        }
        Err(e) => {
            tracing::warn!(partition = %tp, "skipping a damaged segment while rebuilding the producer state: {e}");
            None
        }
    }));
    if batches > 0 {
        tracing::info!(
            partition = %tp,
            batches,
            producers = states.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the idempotent producer state from the log"
        );
    }
    states
}

/// The log settings and limits a topic's configs ask for, over `defaults`. The controller
/// validated the values; one that does not parse keeps the default.
pub fn topic_settings(
    configs: &BTreeMap<String, String>,
    replication_factor: usize,
    defaults: &LogConfig,
) -> (LogConfig, Limits) {
    let mut log = defaults.clone();
    let num = |key: &str| configs.get(key).and_then(|v| v.parse::<i64>().ok());
    let positive = |v: i64| u64::try_from(v).ok();
    if let Some(v) = num("retention.ms") {
        log.retention_ms = positive(v);
    }
    if let Some(v) = num("retention.bytes") {
        log.retention_bytes = positive(v);
    }
    if let Some(v) = num("segment.bytes").and_then(positive) {
        log.segment_bytes = v;
    }
    if let Some(v) = num("segment.ms").and_then(positive) {
        // The largest value is "never", as the defaults list it.
        log.segment_ms = (v != i64::MAX as u64).then_some(v);
    }
    if let Some(v) = num("max.message.bytes").and_then(|v| usize::try_from(v).ok()) {
        log.max_batch_bytes = v;
    }
    if let Some(policy) = configs.get("fsync").and_then(|v| v.parse::<FsyncPolicy>().ok()) {
        log.fsync = policy;
    }
    if log.validate().is_err() {
        log = defaults.clone();
    }
    let limits = Limits {
        max_message_bytes: log.max_batch_bytes,
        min_insync_replicas: num("min.insync.replicas")
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or_else(|| MIN_INSYNC_REPLICAS_DEFAULT.min(replication_factor))
            .max(1),
        timestamp_before_max_ms: num("message.timestamp.before.max.ms")
            .filter(|v| *v >= 0)
            .unwrap_or(TIMESTAMP_BEFORE_MAX_MS_DEFAULT),
        timestamp_after_max_ms: num("message.timestamp.after.max.ms")
            .filter(|v| *v >= 0)
            .unwrap_or(TIMESTAMP_AFTER_MAX_MS_DEFAULT),
    };
    (log, limits)
}

/// Every topic config Runnel knows, in Kafka's names: the keys the controller accepts as
/// overrides (its `metadata::config::SUPPORTED_KEYS`, which this list must follow).
pub const TOPIC_CONFIG_KEYS: [&str; 11] = [
    "cleanup.policy",
    "fsync",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// One topic config as Kafka's DescribeConfigs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigEntry {
    /// Kafka's name, one of [`TOPIC_CONFIG_KEYS`].
    pub name: &'static str,
    /// The value in force, in the form an override takes.
    pub value: String,
    /// True when the topic does not override it, so the value is the broker's default
    /// (Kafka's source DEFAULT_CONFIG); false for a topic override (TOPIC_CONFIG).
    pub is_default: bool,
}

/// The broker's default of every topic config (in [`TOPIC_CONFIG_KEYS`] order) for a topic
/// with `replication_factor` replicas (min.insync.replicas' default depends on it), given
/// the broker's log `defaults`, each in the form an override takes: -1 for no retention
/// limit, the largest i64 for a segment.ms of never. Set as overrides, these values give the
/// same settings as no override ([`topic_settings`]).
pub fn topic_config_defaults(defaults: &LogConfig, replication_factor: usize) -> Vec<(&'static str, String)> {
    let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |v| v.to_string());
    let min_insync = MIN_INSYNC_REPLICAS_DEFAULT.min(replication_factor).max(1);
    let values = [
        "delete".to_owned(),
        defaults.fsync.to_string(),
        defaults.max_batch_bytes.to_string(),
        TIMESTAMP_AFTER_MAX_MS_DEFAULT.to_string(),
        TIMESTAMP_BEFORE_MAX_MS_DEFAULT.to_string(),
        min_insync.to_string(),
        limit(defaults.retention_bytes),
        limit(defaults.retention_ms),
        defaults.segment_bytes.to_string(),
        defaults.segment_ms.unwrap_or(i64::MAX as u64).to_string(),
        "false".to_owned(),
    ];
    TOPIC_CONFIG_KEYS.into_iter().zip(values).collect()
}

/// Every topic config of a topic with overrides `configs` and `replication_factor`
/// replicas, on a broker whose log defaults are `defaults`: the override where the topic
/// has one, the default otherwise. For Kafka's DescribeConfigs.
pub fn describe_topic_configs(
    configs: &BTreeMap<String, String>,
    replication_factor: usize,
    defaults: &LogConfig,
) -> Vec<TopicConfigEntry> {
    topic_config_defaults(defaults, replication_factor)
        .into_iter()
        .map(|(name, default)| match configs.get(name) {
            Some(value) => TopicConfigEntry { name, value: value.clone(), is_default: false },
            None => TopicConfigEntry { name, value: default, is_default: true },
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The topic id recorded in a partition directory, if any.
fn recorded_topic_id(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(TOPIC_ID_FILE)).ok().map(|s| s.trim().to_owned())
}

/// The partitions this broker hosts.
#[derive(Debug)]
pub struct ReplicaManager {
    broker_id: u32,
    logs: LogManager,
    defaults: LogConfig,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Partitions whose log could not be opened, with why; retried at each reconcile.
    failed: RwLock<HashMap<TopicPartition, String>>,
    /// Bumped after every leader append (replica fetch sessions wait on it).
    appended: Arc<watch::Sender<u64>>,
    /// Bumped after every reconcile (the follower manager waits on it).
    reconciled: watch::Sender<u64>,
    /// Whether the log directory works (see [`crate::health`]).
    health: StorageHealth,
    /// fsync and ISR-change metrics; the log manager tells it about every fsync.
    metrics: ReplicaMetrics,
}

impl ReplicaManager {
    /// Locks the log directory `dir`; opens no log until the metadata assigns it.
    pub fn open(broker_id: u32, dir: impl AsRef<Path>, defaults: LogConfig) -> Result<Self, LogError> {
        let logs = LogManager::open_lazily(dir, defaults.clone())?;
        let metrics = ReplicaMetrics::default();
        logs.set_sync_observer(Arc::new(metrics.clone()));
        Ok(ReplicaManager {
            broker_id,
            logs,
            defaults,
            partitions: RwLock::new(HashMap::new()),
            failed: RwLock::new(HashMap::new()),
            appended: Arc::new(watch::Sender::new(0)),
            reconciled: watch::Sender::new(0),
            health: StorageHealth::default(),
            metrics,
        })
    }

    /// The fsync and ISR-change metrics of this broker's logs and partitions.
    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    /// The hosted partition `tp`, if any.
    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        read(&self.partitions).get(tp).cloned()
    }

    /// Why `tp`'s log could not be opened, if it could not.
    pub fn failure(&self, tp: &TopicPartition) -> Option<String> {
        read(&self.failed).get(tp).cloned()
    }

    /// A receiver woken after every leader append on this broker.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// This broker's id.
    pub fn broker_id(&self) -> u32 {
        self.broker_id
    }

    /// The log settings of topics that override nothing.
    pub fn log_defaults(&self) -> &LogConfig {
        &self.defaults
    }

    /// Every hosted partition.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        read(&self.partitions).values().cloned().collect()
    }

    /// Brings the hosted partitions in line with `cache`: opens the logs of partitions
    /// assigned here, applies leader and ISR changes, and deletes the logs of deleted topics
    /// (and of a topic's earlier incarnation when one with the same name is created). Blocking:
    /// it opens and deletes files.
    pub fn reconcile(&self, cache: &MetadataCache) {
        if !cache.loaded {
            return;
        }
        self.apply_metadata(cache);
        self.reconciled.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The broker's storage health.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// The log directory.
    pub fn log_dir(&self) -> &Path {
        self.logs.dir()
    }

    /// The first hosted log that refuses writes until reopened, with why.
    pub fn broken_log(&self) -> Option<String> {
        self.partitions().iter().find_map(|p| p.log.failure().map(|why| format!("{}: {why}", p.tp)))
    }

    /// Repairs every copy a read found damaged ([`Partition::repair`]); the first that
    /// cannot be repaired yet, with why. Blocking.
    pub fn repair_damaged(&self) -> Option<String> {
        self.partitions().iter().find_map(|p| p.repair().err())
    }

    /// A receiver woken after every [`reconcile`](Self::reconcile), when the hosted
    /// partitions reflect a new metadata version.
    pub fn subscribe_reconciled(&self) -> watch::Receiver<u64> {
        self.reconciled.subscribe()
    }

    fn apply_metadata(&self, cache: &MetadataCache) {
        let mut wanted = HashMap::new();
        for (name, topic) in &cache.topics {
            let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
            let (config, limits) = topic_settings(&topic.configs, rf, &self.defaults);
            for (index, entry) in topic.partitions.iter().enumerate() {
                if entry.replicas.contains(&self.broker_id) {
                    let tp = TopicPartition::new(name.clone(), index as u32);
                    wanted.insert(tp, (topic.id.clone(), entry, config.clone(), limits));
                }
            }
        }

        // Partitions that left: their topic was deleted (or recreated under a new id).
        let gone: Vec<Arc<Partition>> = read(&self.partitions)
            .iter()
            .filter(|(tp, p)| wanted.get(*tp).is_none_or(|(id, ..)| *id != p.topic_id))
            .map(|(_, p)| Arc::clone(p))
            .collect();
        for partition in gone {
            let tp = partition.tp.clone();
            write(&self.partitions).remove(&tp);
            partition.remove();
            match self.logs.delete(&tp) {
                Ok(_) => {
                    tracing::info!(partition = %tp, "deleted the log of a partition no longer assigned here")
                }
                Err(e) => tracing::error!(partition = %tp, "deleting the log failed: {e}"),
            }
        }
        write(&self.failed).retain(|tp, _| wanted.contains_key(tp));

        for (tp, (topic_id, entry, config, limits)) in wanted {
            if let Some(partition) = self.get(&tp) {
                partition.apply_settings(&config);
                partition.apply(entry, limits);
                continue;
            }
            match self.host(&tp, &topic_id, config, limits) {
                Ok(partition) => {
                    partition.apply(entry, limits);
                    write(&self.partitions).insert(tp.clone(), partition);
                    write(&self.failed).remove(&tp);
                }
                Err(e) => {
                    tracing::error!(partition = %tp, "cannot host the partition: {e}");
                    write(&self.failed).insert(tp, e.to_string());
                }
            }
        }
    }

    /// Opens (creating if needed) the log of `tp` for topic `topic_id`. A directory left by
    /// an earlier topic of the same name is deleted first.
    fn host(
        &self,
        tp: &TopicPartition,
        topic_id: &[u8],
        config: LogConfig,
        limits: Limits,
    ) -> Result<Arc<Partition>, LogError> {
        let dir = self.logs.partition_dir(tp);
        let id = hex(topic_id);
        if dir.exists() && recorded_topic_id(&dir).as_deref() != Some(id.as_str()) {
            tracing::info!(partition = %tp, "deleting the log of an earlier topic with the same name");
            self.logs.delete(tp)?;
        }
        if !dir.exists() {
            // The id goes in before any record, so a directory with records always has one.
            std::fs::create_dir_all(&dir).map_err(|source| LogError::Io {
                op: "create partition directory",
                path: dir.clone(),
                source,
            })?;
            crashsafe::write_atomic(&dir.join(TOPIC_ID_FILE), format!("{id}\n").as_bytes())?;
            crashsafe::fsync_dir(self.logs.dir())?;
        }
        let log = self.logs.get_or_create(tp, Some(config))?;
        Ok(Partition::new(
            tp.clone(),
            topic_id.to_vec(),
            self.broker_id,
            log,
            limits,
            Arc::clone(&self.appended),
            self.health.clone(),
        ))
    }

    /// Runs retention on every hosted log, and forgets producers silent for
    /// `producer_id_expiration` (Kafka's `producer.id.expiration.ms`). Blocking.
    pub fn enforce_retention(&self, producer_id_expiration: Duration) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let expiration_ms = u64::try_from(producer_id_expiration.as_millis()).unwrap_or(u64::MAX);
        for partition in self.partitions() {
            if let Err(e) = partition.log.enforce_retention() {
                tracing::warn!(partition = %partition.tp, "retention failed: {e}");
            }
            let expired = partition.expire_producers(now_ms, expiration_ms);
            if expired > 0 {
                tracing::debug!(partition = %partition.tp, expired, "forgot idle idempotent producers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use runnel_storage::{BatchBuilder, Compression, NewRecord};

    use super::*;
    use crate::cache::TopicEntry;

    fn cache_with(topic: &str, id: u8, partitions: Vec<PartitionEntry>) -> MetadataCache {
        let mut cache = MetadataCache { loaded: true, version: 1, ..MetadataCache::default() };
        cache
            .topics
            .insert(topic.to_owned(), TopicEntry { id: vec![id; 16], configs: BTreeMap::new(), partitions });
        cache
    }

    fn entry(leader: u32, isr: Vec<u32>, epoch: i32) -> PartitionEntry {
        PartitionEntry {
            replicas: isr.clone(),
            isr,
            leader: Some(leader),
            leader_epoch: epoch,
            partition_epoch: epoch,
        }
    }

    fn batch(values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for v in values {
            b.push(NewRecord::with_value(v.as_bytes().to_vec(), 1_000));
        }
        b.build().unwrap()
    }

    fn defaults() -> LogConfig {
        LogConfig { fsync: FsyncPolicy::Never, preallocate_bytes: 0, ..LogConfig::default() }
    }

    #[tokio::test]
    async fn a_sole_leader_commits_what_it_appends() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        manager.reconcile(&cache_with("t", 7, vec![entry(1, vec![1], 0)]));
        let p = manager.get(&TopicPartition::new("t", 0)).expect("hosted");
        let info = p.append(&mut batch(&["a", "b"]), true).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (0, 1));
        p.wait_committed(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p.high_watermark(), 2);
        let mut buf = Vec::new();
        let (read, hw) = p.read_committed(0, 1 << 20, &mut buf).unwrap();
        assert_eq!((read.next_offset, hw), (2, 2));
    }

    #[tokio::test]
    async fn with_followers_in_the_isr_nothing_commits_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        manager.reconcile(&cache_with("t", 7, vec![entry(1, vec![1, 2], 3)]));
        let p = manager.get(&TopicPartition::new("t", 0)).unwrap();
        p.append(&mut batch(&["a"]), false).unwrap();
        let err = p.wait_committed(1, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::RequestTimedOut);
        assert_eq!(p.high_watermark(), 0);
        let mut buf = Vec::new();
        let (read, _) = p.read_committed(0, 1 << 20, &mut buf).unwrap();
        assert!(buf.is_empty() && read.first_offset.is_none(), "nothing above the HW is served");
    }

    #[tokio::test]
    async fn a_follower_refuses_appends_and_waiters_see_leadership_move() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        manager.reconcile(&cache_with("t", 7, vec![entry(1, vec![1, 2], 1)]));
        let p = manager.get(&TopicPartition::new("t", 0)).unwrap();
        p.append(&mut batch(&["a"]), false).unwrap();
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.wait_committed(1, Duration::from_secs(30)).await })
        };
        let mut moved = entry(2, vec![2], 2);
        moved.replicas = vec![1, 2];
        manager.reconcile(&cache_with("t", 7, vec![moved]));
        let err = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::NotLeaderOrFollower);
        let err = p.append(&mut batch(&["b"]), false).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotLeaderOrFollower);
        assert_eq!(err.leader.unwrap().id, Some(2));
    }

    #[tokio::test]
    async fn below_min_insync_acks_all_is_refused_before_the_append() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        let mut cache = cache_with("t", 7, vec![entry(1, vec![1], 1)]);
        cache.topics.get_mut("t").unwrap().configs.insert("min.insync.replicas".into(), "2".into());
        cache.topics.get_mut("t").unwrap().partitions[0].replicas = vec![1, 2];
        manager.reconcile(&cache);
        let p = manager.get(&TopicPartition::new("t", 0)).unwrap();
        let err = p.append(&mut batch(&["a"]), true).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotEnoughReplicas);
        assert_eq!(p.log().log_end(), 0, "nothing was appended");
        p.append(&mut batch(&["a"]), false).expect("acks=1 does not need the ISR");
    }

    #[test]
    fn a_deleted_and_recreated_topic_starts_with_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        manager.reconcile(&cache_with("t", 7, vec![entry(1, vec![1], 0)]));
        let tp = TopicPartition::new("t", 0);
        manager.get(&tp).unwrap().append(&mut batch(&["old"]), false).unwrap();
        manager.reconcile(&cache_with("t", 8, vec![entry(1, vec![1], 0)]));
        let p = manager.get(&tp).unwrap();
        assert_eq!(p.topic_id(), &[8; 16]);
        assert_eq!(p.log().log_end(), 0);
        manager.reconcile(&MetadataCache { loaded: true, ..MetadataCache::default() });
        assert!(manager.get(&tp).is_none());
        assert!(!dir.path().join("t-0").exists(), "the log directory is gone");
    }

    #[test]
    fn a_restarted_broker_reopens_its_logs_and_keeps_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let tp = TopicPartition::new("t", 0);
        {
            let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
            manager.reconcile(&cache_with("t", 7, vec![entry(1, vec![1], 0)]));
            manager.get(&tp).unwrap().append(&mut batch(&["a", "b", "c"]), false).unwrap();
        }
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        manager.reconcile(&cache_with("t", 7, vec![entry(1, vec![1], 1)]));
        let p = manager.get(&tp).unwrap();
        assert_eq!(p.log().log_end(), 3);
        assert_eq!(p.high_watermark(), 3, "a sole leader's HW starts at its durable end");
    }

    #[test]
    fn config_changes_reach_the_hosted_logs() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        let mut cache = cache_with("t", 7, vec![entry(1, vec![1], 0)]);
        manager.reconcile(&cache);
        let p = manager.get(&TopicPartition::new("t", 0)).unwrap();
        assert_eq!(p.log().config().retention_ms, defaults().retention_ms);
        let big = batch(&[&"x".repeat(500)]);

        let configs = &mut cache.topics.get_mut("t").unwrap().configs;
        configs.insert("retention.ms".into(), "-1".into());
        configs.insert("max.message.bytes".into(), (big.len() - 1).to_string());
        configs.insert("segment.bytes".into(), "4096".into());
        cache.version += 1;
        manager.reconcile(&cache);
        let p = manager.get(&TopicPartition::new("t", 0)).unwrap();
        let log = p.log().config();
        assert_eq!((log.retention_ms, log.segment_bytes, log.max_batch_bytes), (None, 4096, big.len() - 1));
        assert_eq!(p.limits().max_message_bytes, big.len() - 1);
        let err = p.append(&mut big.clone(), false).unwrap_err();
        assert_eq!(err.code, ErrorCode::MessageTooLarge);

        // Raised above what the log was opened with, and back to the default.
        cache.topics.get_mut("t").unwrap().configs.insert("max.message.bytes".into(), "2000000".into());
        cache.version += 1;
        manager.reconcile(&cache);
        assert_eq!(p.log().config().max_batch_bytes, 2_000_000);
        p.append(&mut batch(&[&"y".repeat(1_500_000)]), false).expect("the new limit is in force");
        cache.topics.get_mut("t").unwrap().configs.clear();
        cache.version += 1;
        manager.reconcile(&cache);
        assert_eq!(p.log().config(), defaults());
        assert_eq!(p.limits().max_message_bytes, defaults().max_batch_bytes);
    }

    #[test]
    fn new_partitions_of_a_topic_are_hosted_when_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let manager = ReplicaManager::open(1, dir.path(), defaults()).unwrap();
        let mut cache = cache_with("t", 7, vec![entry(1, vec![1], 0)]);
        manager.reconcile(&cache);
        manager.get(&TopicPartition::new("t", 0)).unwrap().append(&mut batch(&["kept"]), false).unwrap();
        let mut elsewhere = entry(2, vec![2], 0);
        elsewhere.replicas = vec![2, 3];
        let partitions = &mut cache.topics.get_mut("t").unwrap().partitions;
        partitions.push(entry(1, vec![1, 2], 0));
        partitions.push(elsewhere);
        cache.version += 1;
        manager.reconcile(&cache);
        assert_eq!(manager.get(&TopicPartition::new("t", 0)).unwrap().log().log_end(), 1, "untouched");
        let p1 = manager.get(&TopicPartition::new("t", 1)).expect("the new partition is hosted here");
        assert_eq!(p1.state().leader, Some(1));
        p1.append(&mut batch(&["new"]), false).unwrap();
        assert!(manager.get(&TopicPartition::new("t", 2)).is_none(), "not a replica of partition 2");
    }

    #[test]
    fn described_configs_are_the_defaults_or_the_overrides_and_defaults_round_trip() {
        let log = LogConfig { retention_bytes: Some(1 << 30), segment_ms: None, ..defaults() };
        for rf in [1, 3] {
            let listed = topic_config_defaults(&log, rf);
            assert_eq!(listed.iter().map(|(k, _)| *k).collect::<Vec<_>>(), TOPIC_CONFIG_KEYS);
            // The defaults, set as overrides, are no change at all.
            let as_overrides: BTreeMap<String, String> =
                listed.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            let none = BTreeMap::new();
            assert_eq!(topic_settings(&as_overrides, rf, &log), topic_settings(&none, rf, &log), "rf {rf}");
        }
        let listed: BTreeMap<&str, String> = topic_config_defaults(&defaults(), 3).into_iter().collect();
        assert_eq!(listed["retention.ms"], "604800000");
        assert_eq!(listed["retention.bytes"], "-1");
        assert_eq!(listed["fsync"], "never");
        assert_eq!(listed["min.insync.replicas"], "2");
        assert_eq!(listed["max.message.bytes"], "1048588");

        let overrides = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
        let described = describe_topic_configs(&overrides, 3, &defaults());
        assert_eq!(described.len(), TOPIC_CONFIG_KEYS.len());
        for entry in described {
            if entry.name == "retention.ms" {
                assert_eq!((entry.value.as_str(), entry.is_default), ("1000", false));
            } else {
                assert!(entry.is_default, "{entry:?}");
                assert_eq!(entry.value, listed[entry.name]);
            }
        }
    }

    #[test]
    fn topic_configs_become_log_settings() {
        let configs: BTreeMap<String, String> = [
            ("max.message.bytes", "2048"),
            ("min.insync.replicas", "2"),
            ("fsync", "never"),
            ("retention.ms", "-1"),
            ("message.timestamp.after.max.ms", "60000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (log, limits) = topic_settings(&configs, 3, &LogConfig::default());
        assert_eq!(log.max_batch_bytes, 2048);
        assert_eq!(log.fsync, FsyncPolicy::Never);
        assert_eq!(log.retention_ms, None);
        assert_eq!(
            limits,
            Limits {
                max_message_bytes: 2048,
                min_insync_replicas: 2,
                timestamp_before_max_ms: TIMESTAMP_BEFORE_MAX_MS_DEFAULT,
                timestamp_after_max_ms: 60_000,
            }
        );
        let none = BTreeMap::new();
        assert_eq!(topic_settings(&none, 3, &LogConfig::default()).1.min_insync_replicas, 2);
        assert_eq!(
            topic_settings(&none, 1, &LogConfig::default()).1.min_insync_replicas,
            1,
            "capped by the RF"
        );
    }
}

#[cfg(test)]
#[path = "replica_invariants.rs"]
mod invariants;
