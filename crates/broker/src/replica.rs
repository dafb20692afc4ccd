//! The replicas this broker hosts: one [`Partition`] per partition the metadata assigns
//! here, each over its own [`Log`].
//!
//! The [`ReplicaManager`] follows the metadata cache ([`ReplicaManager::reconcile`]): it
//! opens a partition's log when the partition is assigned here, passes on every change of
//! leader, leader epoch and ISR, and deletes the log when its topic is deleted.
//!
//! The high watermark (HW) is the first offset not yet known to be on every ISR member,
//! fsynced (unless the topic chose `fsync=never`). A leader that is the only member of its
//! ISR advances it to its own durable end offset. With more members it needs the followers'
//! offsets, which only replication brings; until then it stays where it is.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use runnel_storage::{
    AppendInfo, FsyncPolicy, Log, LogConfig, LogError, LogManager, ReadInfo, TopicPartition, crashsafe,
};
use tokio::sync::watch;

use crate::cache::{MetadataCache, PartitionEntry};
use crate::error::{BrokerError, ErrorCode, LeaderHint};

/// Name of the file, in each partition directory, holding the topic id (32 hex digits). It
/// tells a log of a deleted topic from one of a new topic with the same name.
pub const TOPIC_ID_FILE: &str = "topic-id";

/// Default `min.insync.replicas` when the topic sets none.
pub const MIN_INSYNC_REPLICAS_DEFAULT: usize = 1;

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
    /// Leader and only ISR member: the durable end is the HW. Read by the log's durable
    /// listener, which must not take the state lock (it runs under the log's lock).
    sole_leader: AtomicBool,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Partition {
    fn new(
        tp: TopicPartition,
        topic_id: Vec<u8>,
        broker_id: u32,
        log: Arc<Log>,
        limits: Limits,
    ) -> Arc<Self> {
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
            sole_leader: AtomicBool::new(false),
        });
        let weak: Weak<Partition> = Arc::downgrade(&partition);
        partition.log.set_durable_listener(Arc::new(move |durable| {
            if let Some(p) = weak.upgrade()
                && p.sole_leader.load(Ordering::Acquire)
            {
                p.raise_high_watermark(durable);
            }
        }));
        partition
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
            if changed {
                let was_leader = st.leader == Some(self.broker_id);
                let is_leader = next.leader == Some(self.broker_id);
                if is_leader && (!was_leader || st.leader_epoch != next.leader_epoch) {
                    tracing::info!(partition = %self.tp, epoch = next.leader_epoch, "leading");
                } else if was_leader && !is_leader {
                    tracing::info!(partition = %self.tp, leader = ?next.leader, "no longer leading");
                }
                let sole = is_leader && next.isr == [self.broker_id];
                self.sole_leader.store(sole, Ordering::Release);
                *st = next;
            }
            changed
        };
        if changed {
            self.progress.send_modify(|p| p.generation += 1);
            // Outside the state lock: the log's lock is taken after the state lock elsewhere.
            if self.sole_leader.load(Ordering::Acquire) {
                self.raise_high_watermark(self.log.durable_end());
            }
        }
    }

    /// The partition leaves this broker: every waiter wakes and sees it gone.
    fn remove(&self) {
        {
            let mut st = write(&self.state);
            st.hosted = false;
            st.leader = None;
        }
        self.sole_leader.store(false, Ordering::Release);
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

    /// Appends one batch as leader, stamping the current leader epoch. With `acks_all`, first
    /// checks that the ISR has at least `min.insync.replicas` members.
    pub fn append(&self, batch: &mut [u8], acks_all: bool) -> Result<AppendInfo, BrokerError> {
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
        // The state lock is held across the append, so the epoch stamped is the epoch this
        // broker leads in at the moment the batch enters the log.
        self.log.append(batch, epoch).map_err(|e| BrokerError::from_log(&self.tp, e))
    }

    /// Waits until the HW passes `end` (the offset after a produced batch), as acks=all
    /// requires. Fails with REQUEST_TIMED_OUT after `timeout`, NOT_LEADER_OR_FOLLOWER if
    /// leadership moves, NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrinks below the
    /// minimum meanwhile.
    pub async fn wait_committed(&self, end: u64, timeout: Duration) -> Result<(), BrokerError> {
        let mut progress = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = *progress.borrow_and_update();
            if now.high_watermark >= end {
                return Ok(());
            }
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
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BrokerError::not_leader(&self.tp, LeaderHint::default())),
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
            Err(e) => Err(BrokerError::from_log(&self.tp, e)),
        }
    }
}

/// The log settings and limits a topic's configs ask for, over `defaults`. The controller
/// validated the values; one that does not parse keeps the default.
pub fn topic_settings(configs: &BTreeMap<String, String>, defaults: &LogConfig) -> (LogConfig, Limits) {
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
        log.segment_ms = Some(v);
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
            .unwrap_or(MIN_INSYNC_REPLICAS_DEFAULT)
            .max(1),
    };
    (log, limits)
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
}

impl ReplicaManager {
    /// Locks the log directory `dir`; opens no log until the metadata assigns it.
    pub fn open(broker_id: u32, dir: impl AsRef<Path>, defaults: LogConfig) -> Result<Self, LogError> {
        let logs = LogManager::open_lazily(dir, defaults.clone())?;
        Ok(ReplicaManager {
            broker_id,
            logs,
            defaults,
            partitions: RwLock::new(HashMap::new()),
            failed: RwLock::new(HashMap::new()),
        })
    }

    /// The hosted partition `tp`, if any.
    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        read(&self.partitions).get(tp).cloned()
    }

    /// Why `tp`'s log could not be opened, if it could not.
    pub fn failure(&self, tp: &TopicPartition) -> Option<String> {
        read(&self.failed).get(tp).cloned()
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
        let mut wanted = HashMap::new();
        for (name, topic) in &cache.topics {
            let (config, limits) = topic_settings(&topic.configs, &self.defaults);
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
        Ok(Partition::new(tp.clone(), topic_id.to_vec(), self.broker_id, log, limits))
    }

    /// Runs retention on every hosted log. Blocking.
    pub fn enforce_retention(&self) {
        for partition in self.partitions() {
            if let Err(e) = partition.log.enforce_retention() {
                tracing::warn!(partition = %partition.tp, "retention failed: {e}");
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
    fn topic_configs_become_log_settings() {
        let configs: BTreeMap<String, String> = [
            ("max.message.bytes", "2048"),
            ("min.insync.replicas", "2"),
            ("fsync", "never"),
            ("retention.ms", "-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (log, limits) = topic_settings(&configs, &LogConfig::default());
        assert_eq!(log.max_batch_bytes, 2048);
        assert_eq!(log.fsync, FsyncPolicy::Never);
        assert_eq!(log.retention_ms, None);
        assert_eq!(limits, Limits { max_message_bytes: 2048, min_insync_replicas: 2 });
    }
}
