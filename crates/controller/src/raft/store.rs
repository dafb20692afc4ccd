//! openraft's storage (the v2 API: [`RaftLogStorage`] and [`RaftStateMachine`]) on sled.
//!
//! # Layout
//!
//! One sled database holds three trees:
//!
//! | tree            | key                        | value                                   |
//! |-----------------|----------------------------|-----------------------------------------|
//! | `raft/log`      | log index, 8 bytes BE      | JSON of the [`Entry`]                   |
//! | `raft/meta`     | `format`                   | store format version, u32 BE            |
//! |                 | `vote`                     | JSON of the last saved vote             |
//! |                 | `committed`                | JSON of the last saved committed log id |
//! |                 | `last_purged`              | JSON of the last purged log id          |
//! | `raft/snapshot` | `meta`                     | JSON of the current [`SnapshotMeta`]    |
//! |                 | `data`                     | the snapshot: JSON of the [`Machine`]   |
//!
//! # Durability
//!
//! openraft is told a write is durable only after sled has flushed it (`Db::flush`, which
//! fsyncs sled's log): `save_vote` flushes before it returns; `append` flushes before it calls
//! the [`LogFlushed`] callback; `truncate` and `purge` flush before they return; a snapshot is
//! flushed before it is reported built or installed. sled's flush covers every earlier write
//! to any tree, so one flush also carries the writes that did not need their own.
//!
//! `save_committed` does not flush. The committed log id is a hint that lets a restarted node
//! re-apply entries it knows are committed before hearing from a leader; a stale one is safe,
//! and it can never be ahead of the entries it names, because those were flushed before it was
//! written and sled's log is replayed in order.
//!
//! The flush runs on tokio's blocking pool rather than through sled's `flush_async`, which
//! in sled 0.34 can hang forever when several flushes are awaited at once (sled issues #1241,
//! #1308), as happens with several nodes in one process.
//!
//! # State machine
//!
//! The [`Machine`] lives in memory. It is persisted only as snapshots, which carry the last
//! applied log id and membership in their metadata; on restart the machine is restored from
//! the latest snapshot, and openraft re-applies the entries committed after it (that is why
//! the log is purged only up to a snapshot). `apply` therefore needs no fsync.
//!
//! # Subscribers
//!
//! Every applied command's response is also published, in apply order, to the subscribers of
//! [`MachineView::subscribe`] (a bounded broadcast channel, [`EVENTS_CAPACITY`]). This happens
//! on every node that applies the log, followers included, so watchers can be served anywhere.
//! A subscriber that falls behind by more than the capacity, or that hears
//! [`MachineEvent::Replaced`] (a snapshot was installed), must reread the whole machine.

use std::fmt;
use std::fmt::Debug;
use std::io::Cursor;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{IntoStorage, StoreError};
use super::machine::Machine;
use super::types::{Entry, LogId, NodeId, SnapshotMeta, StoredMembership, TypeConfig};

/// The on-disk format this build reads and writes; bumped on any incompatible layout change.
pub const FORMAT_VERSION: u32 = 1;

/// Events buffered per subscriber before the slowest one is told it lagged.
pub const EVENTS_CAPACITY: usize = 1024;

const TREE_LOG: &str = "raft/log";
const TREE_META: &str = "raft/meta";
const TREE_SNAPSHOT: &str = "raft/snapshot";

const KEY_FORMAT: &[u8] = b"format";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

type Storage<T> = Result<T, StorageError<NodeId>>;

/// Both halves of a node's Raft storage, opened from one sled database. Hand them to
/// `openraft::Raft::new`; keep a [`StateMachineStore::view`] first to read the machine.
pub struct SledStore<M: Machine> {
    /// The log, the vote and the committed and purge markers.
    pub log: LogStore<M>,
    /// The applied state and its snapshots.
    pub state_machine: StateMachineStore<M>,
}

impl<M: Machine> SledStore<M> {
    /// Opens (or creates) the store in directory `dir`.
    ///
    /// Blocking I/O (sled's recovery and one flush): call it before the node starts serving,
    /// or from `tokio::task::spawn_blocking`. sled locks the directory, so a second open in the
    /// same or another process fails until the first store and all its clones are dropped.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::with_db(sled::open(dir)?)
    }

    /// Opens the store inside an already open sled database, which may hold other trees.
    ///
    /// Checks the format version, finishes a purge that a crash interrupted, and restores the
    /// state machine from the latest snapshot.
    pub fn with_db(db: sled::Db) -> Result<Self, StoreError> {
        let log = db.open_tree(TREE_LOG)?;
        let meta = db.open_tree(TREE_META)?;
        let snapshot = db.open_tree(TREE_SNAPSHOT)?;

        match meta.get(KEY_FORMAT)? {
            None => {
                meta.insert(KEY_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::UnsupportedFormat { found: 0, supported: FORMAT_VERSION })?;
                if found != FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat { found, supported: FORMAT_VERSION });
                }
            }
        }

        let log = LogStore { db: db.clone(), log, meta, _machine: PhantomData };
        // `purge` records the purge point before deleting entries; a crash in between leaves
        // entries the log state already counts as gone. Delete them now.
        if let Some(purged) = log.last_purged()? {
            log.remove_up_to(purged.index)?;
        }

        let snapshots = SnapshotStore { db: db.clone(), tree: snapshot, write: Arc::default() };
        let applied = match snapshots.load()? {
            Some((meta, data)) => Applied {
                machine: decode(&data, "snapshot data")?,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership,
            },
            None => Applied::default(),
        };
        db.flush()?;
        let (events, _) = tokio::sync::broadcast::channel(EVENTS_CAPACITY);
        let state_machine = StateMachineStore { state: Arc::new(RwLock::new(applied)), snapshots, events };
        Ok(Self { log, state_machine })
    }
}

impl<M: Machine> Debug for SledStore<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Makes every earlier write to `db` durable. See the module documentation for why this is a
/// blocking flush on tokio's blocking pool.
async fn flush(db: &sled::Db) -> Result<(), StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush()).await??;
    Ok(())
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(raw: &[u8], what: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|source| StoreError::Decode { what, source })
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| StoreError::CorruptLogKey { len: key.len() })
}

/// The Raft log, the vote, and the committed and purge markers ([`RaftLogStorage`]).
///
/// Cheap to clone: clones share the sled trees. A clone is also the log reader openraft's
/// replication tasks use.
pub struct LogStore<M> {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    _machine: PhantomData<fn() -> M>,
}

impl<M> Clone for LogStore<M> {
    fn clone(&self) -> Self {
        Self { db: self.db.clone(), log: self.log.clone(), meta: self.meta.clone(), _machine: PhantomData }
    }
}

impl<M> Debug for LogStore<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").field("entries", &self.log.len()).finish_non_exhaustive()
    }
}

impl<M: Machine> LogStore<M> {
    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        self.meta.get(key)?.map(|raw| decode(&raw, what)).transpose()
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T, what: &'static str) -> Result<(), StoreError> {
        self.meta.insert(key, encode(value, what)?)?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        self.read_meta(KEY_LAST_PURGED, "last purged log id")
    }

    /// The entries whose index is in `range`, in order.
    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<M>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item?;
            if !range.contains(&key_index(&key)?) {
                break;
            }
            entries.push(decode(&value, "log entry")?);
        }
        Ok(entries)
    }

    /// Deletes the entries with index `index` and above.
    fn remove_from(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(index)..).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Deletes the entries with index `index` and below.
    fn remove_up_to(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(index)).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn log_state(&self) -> Result<LogState<TypeConfig<M>>, StoreError> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = match self.log.last()? {
            Some((_, value)) => Some(*decode::<Entry<M>>(&value, "log entry")?.get_log_id()),
            None => None,
        };
        // With no entries after the purge point the last log id is the purge point itself.
        let last_log_id = match (last_entry, last_purged_log_id) {
            (Some(last), Some(purged)) if last.index <= purged.index => Some(purged),
            (Some(last), _) => Some(last),
            (None, purged) => purged,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }
}

impl<M: Machine> RaftLogReader<TypeConfig<M>> for LogStore<M> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Storage<Vec<Entry<M>>> {
        self.entries(range).or_storage(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

impl<M: Machine> RaftLogStorage<TypeConfig<M>> for LogStore<M> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Storage<LogState<TypeConfig<M>>> {
        self.log_state().or_storage(ErrorSubject::Logs, ErrorVerb::Read)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Storage<()> {
        let write = async {
            self.write_meta(KEY_VOTE, vote, "vote")?;
            flush(&self.db).await
        };
        write.await.or_storage(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> Storage<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE, "vote").or_storage(ErrorSubject::Vote, ErrorVerb::Read)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Storage<()> {
        // No flush: see "Durability" in the module documentation.
        self.write_meta(KEY_COMMITTED, &committed, "committed log id")
            .or_storage(ErrorSubject::Store, ErrorVerb::Write)
    }

    async fn read_committed(&mut self) -> Storage<Option<LogId>> {
        let committed: Option<Option<LogId>> = self
            .read_meta(KEY_COMMITTED, "committed log id")
            .or_storage(ErrorSubject::Store, ErrorVerb::Read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig<M>>) -> Storage<()>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let value = encode(&entry, "log entry").or_storage(ErrorSubject::Logs, ErrorVerb::Write)?;
            batch.insert(&index_key(entry.get_log_id().index), value);
        }
        // Readable once applied; durable, and reported so, only after the flush.
        self.log
            .apply_batch(batch)
            .map_err(StoreError::from)
            .or_storage(ErrorSubject::Logs, ErrorVerb::Write)?;
        match flush(&self.db).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Storage<()> {
        let write = async {
            self.remove_from(log_id.index)?;
            flush(&self.db).await
        };
        write.await.or_storage(ErrorSubject::Logs, ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: LogId) -> Storage<()> {
        let write = async {
            // The marker first: if a crash comes before the deletions, `SledStore::with_db`
            // finishes them, and the log never looks as if it had a hole.
            self.write_meta(KEY_LAST_PURGED, &log_id, "last purged log id")?;
            self.remove_up_to(log_id.index)?;
            flush(&self.db).await
        };
        write.await.or_storage(ErrorSubject::Logs, ErrorVerb::Delete)
    }
}

/// The in-memory state machine and what openraft must know about it.
#[derive(Clone, Default)]
struct Applied<M> {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    machine: M,
}

/// What a subscriber of [`MachineView::subscribe`] hears, in apply order.
#[derive(Debug, Clone)]
pub enum MachineEvent<R> {
    /// The log entry at `index`, which carried a command, was applied and answered `response`.
    Applied {
        /// The entry's Raft log index.
        index: u64,
        /// What [`Machine::apply`] returned.
        response: R,
    },
    /// The machine was replaced wholesale by an installed snapshot: reread it.
    Replaced,
}

/// A subscription to a machine's [`MachineEvent`]s.
pub type MachineEvents<R> = tokio::sync::broadcast::Receiver<MachineEvent<R>>;

type Events<M> = tokio::sync::broadcast::Sender<MachineEvent<<M as Machine>::Response>>;

/// The applied state and its snapshots ([`RaftStateMachine`]).
pub struct StateMachineStore<M: Machine> {
    state: Arc<RwLock<Applied<M>>>,
    snapshots: SnapshotStore,
    events: Events<M>,
}

impl<M: Machine> Debug for StateMachineStore<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

impl<M: Machine> StateMachineStore<M> {
    /// A handle for reading the machine while openraft owns this store.
    pub fn view(&self) -> MachineView<M> {
        MachineView { state: Arc::clone(&self.state), events: self.events.clone() }
    }

    fn applied(&self) -> Result<std::sync::RwLockReadGuard<'_, Applied<M>>, StoreError> {
        self.state.read().map_err(|_| StoreError::Poisoned)
    }

    fn applied_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Applied<M>>, StoreError> {
        self.state.write().map_err(|_| StoreError::Poisoned)
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig<M>> for StateMachineStore<M> {
    type SnapshotBuilder = SnapshotBuilder<M>;

    async fn applied_state(&mut self) -> Storage<(Option<LogId>, StoredMembership)> {
        let applied = self.applied().or_storage(ErrorSubject::StateMachine, ErrorVerb::Read)?;
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Storage<Vec<M::Response>>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied_mut().or_storage(ErrorSubject::StateMachine, ErrorVerb::Write)?;
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let log_id = entry.log_id;
            let response = match entry.payload {
                EntryPayload::Blank => M::Response::default(),
                EntryPayload::Normal(command) => {
                    let response = applied.machine.apply(log_id.index, &command);
                    // Sent under the write lock, so a subscriber that read the machine under
                    // the read lock hears exactly the entries applied after its read.
                    if self.events.receiver_count() > 0 {
                        let event = MachineEvent::Applied { index: log_id.index, response: response.clone() };
                        let _ = self.events.send(event);
                    }
                    response
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(log_id), membership);
                    M::Response::default()
                }
            };
            applied.last_applied = Some(log_id);
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A copy taken now: the snapshot is built off the critical path while applying goes on.
        // `get_snapshot_builder` cannot fail, so a poisoned lock yields a builder that fails.
        let image = self.state.read().ok().map(|applied| applied.clone());
        SnapshotBuilder { image, snapshots: self.snapshots.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Storage<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Storage<()> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let machine: M = decode(&data, "received snapshot").or_storage(subject.clone(), ErrorVerb::Read)?;
        // Durable first, then visible: a crash in between restarts from this snapshot.
        self.snapshots
            .save(meta, &data, Replace::Always)
            .await
            .or_storage(subject.clone(), ErrorVerb::Write)?;
        let mut applied = self.applied_mut().or_storage(subject, ErrorVerb::Write)?;
        *applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            machine,
        };
        let _ = self.events.send(MachineEvent::Replaced);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Storage<Option<Snapshot<TypeConfig<M>>>> {
        let current = self.snapshots.load().or_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read)?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Read access to the state machine from outside openraft (for queries and watches).
///
/// It sees every command as soon as it is applied, which on a follower or a deposed leader
/// may lag the cluster: reads that must be linearizable go through the leader
/// (`Raft::ensure_linearizable`) first.
pub struct MachineView<M: Machine> {
    state: Arc<RwLock<Applied<M>>>,
    events: Events<M>,
}

impl<M: Machine> Clone for MachineView<M> {
    fn clone(&self) -> Self {
        Self { state: Arc::clone(&self.state), events: self.events.clone() }
    }
}

impl<M: Machine> Debug for MachineView<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineView").finish_non_exhaustive()
    }
}

impl<M: Machine> MachineView<M> {
    /// Runs `f` on the machine and the id of the last log entry applied to it. Keep `f`
    /// short: applying waits while it runs.
    pub fn read<R>(&self, f: impl FnOnce(&M, Option<LogId>) -> R) -> Result<R, StoreError> {
        let applied = self.state.read().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&applied.machine, applied.last_applied))
    }

    /// Like [`read`](Self::read), and subscribes to the events that follow that read: the
    /// receiver yields exactly the entries applied after the state `f` saw, with no gap and
    /// no overlap.
    pub fn subscribe<R>(
        &self,
        f: impl FnOnce(&M, Option<LogId>) -> R,
    ) -> Result<(R, MachineEvents<M::Response>), StoreError> {
        let applied = self.state.read().map_err(|_| StoreError::Poisoned)?;
        let events = self.events.subscribe();
        Ok((f(&applied.machine, applied.last_applied), events))
    }
}

/// Whether [`SnapshotStore::save`] may replace a newer snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replace {
    /// Keep the stored snapshot if it covers more of the log: a snapshot built from an older
    /// copy of the machine must not overwrite one installed meanwhile.
    IfNotOlder,
    /// An installed snapshot replaces whatever is there.
    Always,
}

/// The current snapshot in sled.
#[derive(Clone)]
struct SnapshotStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Serializes snapshot writes, so the compare in [`Replace::IfNotOlder`] and the write that
    /// follows it are atomic.
    write: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotStore {
    fn load(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let Some(meta) = self.tree.get(KEY_SNAPSHOT_META)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = decode(&meta, "snapshot metadata")?;
        let data = self.tree.get(KEY_SNAPSHOT_DATA)?.map(|data| data.to_vec()).unwrap_or_default();
        Ok(Some((meta, data)))
    }

    /// Stores `meta` and `data` as the current snapshot and flushes. Returns whether it did;
    /// with [`Replace::IfNotOlder`] it declines when the stored snapshot is newer.
    async fn save(&self, meta: &SnapshotMeta, data: &[u8], replace: Replace) -> Result<bool, StoreError> {
        let _write = self.write.lock().await;
        if replace == Replace::IfNotOlder
            && let Some(current) = self.tree.get(KEY_SNAPSHOT_META)?
        {
            let current: SnapshotMeta = decode(&current, "snapshot metadata")?;
            if current.last_log_id > meta.last_log_id {
                return Ok(false);
            }
        }
        let mut batch = sled::Batch::default();
        batch.insert(KEY_SNAPSHOT_META, encode(meta, "snapshot metadata")?);
        batch.insert(KEY_SNAPSHOT_DATA, data);
        // One batch, so the metadata never describes other data.
        self.tree.apply_batch(batch)?;
        flush(&self.db).await?;
        Ok(true)
    }
}

/// Builds a snapshot from a copy of the machine taken when openraft asked for the builder.
pub struct SnapshotBuilder<M> {
    /// `None` when the state machine lock was poisoned.
    image: Option<Applied<M>>,
    snapshots: SnapshotStore,
}

impl<M> Debug for SnapshotBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder").finish_non_exhaustive()
    }
}

/// Distinguishes snapshots built at the same log id within one process.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

impl<M: Machine> RaftSnapshotBuilder<TypeConfig<M>> for SnapshotBuilder<M> {
    async fn build_snapshot(&mut self) -> Storage<Snapshot<TypeConfig<M>>> {
        let image = self
            .image
            .as_ref()
            .ok_or(StoreError::Poisoned)
            .or_storage(ErrorSubject::StateMachine, ErrorVerb::Read)?;
        let data = encode(&image.machine, "snapshot data")
            .or_storage(ErrorSubject::StateMachine, ErrorVerb::Read)?;
        // Unique across restarts too (a follower keys a snapshot in transfer by this id).
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &image.last_applied {
            Some(last) => format!("{}-{}-{millis}-{seq}", last.leader_id, last.index),
            None => format!("empty-{millis}-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: image.last_applied,
            last_membership: image.last_membership.clone(),
            snapshot_id,
        };
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let saved = self
            .snapshots
            .save(&meta, &data, Replace::IfNotOlder)
            .await
            .or_storage(subject, ErrorVerb::Write)?;
        if !saved {
            tracing::debug!(snapshot = %meta, "a newer snapshot was installed meanwhile; keeping it");
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}
