//! All partition logs under one data directory.
//!
//! The manager takes an exclusive lock on `<data>/.lock` for its lifetime, so a second
//! process (or a second manager in the same process) pointed at the same directory gets
//! [`LogError::Locked`] instead of silently sharing the files.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::crashsafe;
use crate::error::{LogError, Result};
use crate::log::{Log, LogConfig, SyncObserver};

const LOCK_FILE: &str = ".lock";
const DELETE_SUFFIX: &str = ".deleting";

/// A topic partition: the key of a log, and its directory name `<topic>-<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }

    /// The directory name; topic names cannot contain '/', so this is one path component.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses `<topic>-<partition>`; the topic itself may contain '-'.
    pub fn parse_dir_name(name: &str) -> Result<Self> {
        let bad = || LogError::BadPartitionDir(name.to_string());
        let (topic, partition) = name.rsplit_once('-').ok_or_else(bad)?;
        if !is_valid_topic_name(topic) {
            return Err(bad());
        }
        let partition = partition.parse().map_err(|_| bad())?;
        Ok(TopicPartition { topic: topic.to_string(), partition })
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The partition logs of one data directory.
#[derive(Debug)]
pub struct LogManager {
    dir: PathBuf,
    _lock: File,
    default_config: LogConfig,
    logs: Mutex<BTreeMap<TopicPartition, Arc<Log>>>,
    /// Given to every log opened from now on (see [`LogManager::set_sync_observer`]).
    observer: Mutex<Option<Arc<dyn SyncObserver>>>,
}

impl LogManager {
    /// Locks `dir` (creating it if needed) and opens every partition log in it, recovering
    /// each. Directories left half-deleted by a crash are finished off.
    pub fn open(dir: impl AsRef<Path>, default_config: LogConfig) -> Result<Self> {
        Self::open_inner(dir.as_ref(), default_config, true)
    }

    /// Like [`open`](Self::open), but opens no log: each is opened (and recovered) by the
    /// first [`get_or_create`](Self::get_or_create), with the config given there. For a
    /// broker, which learns each partition's config from the metadata only after it starts.
    /// [`on_disk`](Self::on_disk) lists what is there.
    pub fn open_lazily(dir: impl AsRef<Path>, default_config: LogConfig) -> Result<Self> {
        Self::open_inner(dir.as_ref(), default_config, false)
    }

    fn open_inner(dir: &Path, default_config: LogConfig, eager: bool) -> Result<Self> {
        default_config.validate()?;
        let dir = dir.to_path_buf();
        fs::create_dir_all(&dir).map_err(LogError::io("create data directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(LogError::io("open lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LogError::Locked { dir, lock: lock_path }),
            Err(fs::TryLockError::Error(e)) => return Err(LogError::io("lock", &lock_path)(e)),
        }
        let mut logs = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(LogError::io("read data directory", &dir))? {
            let entry = entry.map_err(LogError::io("read data directory", &dir))?;
            if !entry.file_type().map_err(LogError::io("stat", entry.path()))?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(DELETE_SUFFIX) {
                fs::remove_dir_all(entry.path()).map_err(LogError::io("finish deleting", entry.path()))?;
                continue;
            }
            let tp = match TopicPartition::parse_dir_name(&name) {
                Ok(tp) => tp,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring directory that is not a partition log");
                    continue;
                }
            };
            if eager {
                let log = Log::open(entry.path(), default_config.clone())?;
                logs.insert(tp, Arc::new(log));
            }
        }
        Ok(LogManager {
            dir,
            _lock: lock,
            default_config,
            logs: Mutex::new(logs),
            observer: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, Arc<Log>>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `observer` to every open log and to every log opened later: it is told about
    /// each group-commit fsync (for metrics; see [`SyncObserver`]).
    pub fn set_sync_observer(&self, observer: Arc<dyn SyncObserver>) {
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&observer));
        for log in self.logs().values() {
            log.set_sync_observer(Arc::clone(&observer));
        }
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Log>> {
        self.logs().get(tp).cloned()
    }

    /// The log of `tp`, created with `config` (or the default) if it does not exist.
    pub fn get_or_create(&self, tp: &TopicPartition, config: Option<LogConfig>) -> Result<Arc<Log>> {
        if !is_valid_topic_name(&tp.topic) {
            return Err(LogError::BadPartitionDir(tp.dir_name()));
        }
        let mut logs = self.logs();
        if let Some(log) = logs.get(tp) {
            return Ok(Arc::clone(log));
        }
        let log = Arc::new(Log::open(
            self.dir.join(tp.dir_name()),
            config.unwrap_or_else(|| self.default_config.clone()),
        )?);
        crashsafe::fsync_dir(&self.dir)?;
        if let Some(observer) = self.observer.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            log.set_sync_observer(observer);
        }
        logs.insert(tp.clone(), Arc::clone(&log));
        Ok(log)
    }

    /// Every partition with a log directory here, open or not.
    pub fn on_disk(&self) -> Result<Vec<TopicPartition>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(LogError::io("read data directory", &self.dir))? {
            let entry = entry.map_err(LogError::io("read data directory", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(DELETE_SUFFIX) || !entry.path().is_dir() {
                continue;
            }
            if let Ok(tp) = TopicPartition::parse_dir_name(&name) {
                found.push(tp);
            }
        }
        found.sort();
        Ok(found)
    }

    /// The directory a partition's log lives in (whether or not it exists).
    pub fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.dir.join(tp.dir_name())
    }

    /// Every open partition log.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.logs().keys().cloned().collect()
    }

    /// Deletes a partition's log: its directory is renamed out of the way first (atomic),
    /// then removed, so a crash in between is finished off at the next open. Returns false
    /// if there was no such log.
    pub fn delete(&self, tp: &TopicPartition) -> Result<bool> {
        let log = self.logs().remove(tp);
        let from = self.dir.join(tp.dir_name());
        if log.is_none() && !from.exists() {
            return Ok(false);
        }
        let to = self.dir.join(format!("{}{DELETE_SUFFIX}", tp.dir_name()));
        // Other holders of the Arc may still read through open files; that stays safe.
        drop(log);
        fs::rename(&from, &to).map_err(LogError::io("rename for deletion", &from))?;
        crashsafe::fsync_dir(&self.dir)?;
        fs::remove_dir_all(&to).map_err(LogError::io("delete", &to))?;
        Ok(true)
    }

    /// Runs retention on every log; returns the number of segments deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        let logs: Vec<_> = self.logs().values().cloned().collect();
        let mut deleted = 0;
        for log in logs {
            deleted += log.enforce_retention()?.deleted_segments;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip_with_dashes_in_topics() {
        let tp = TopicPartition::new("orders-eu", 7);
        assert_eq!(tp.dir_name(), "orders-eu-7");
        assert_eq!(TopicPartition::parse_dir_name("orders-eu-7").unwrap(), tp);
        for bad in ["orders", "orders-", "-1", "a b-1", "x-y", "..-1"] {
            assert!(TopicPartition::parse_dir_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_name_rules() {
        assert!(is_valid_topic_name("a.b_c-D9"));
        assert!(is_valid_topic_name(&"x".repeat(249)));
        assert!(!is_valid_topic_name(&"x".repeat(250)));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name("."));
        assert!(!is_valid_topic_name(".."));
        assert!(!is_valid_topic_name("a/b"));
    }

    #[test]
    fn second_manager_on_same_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let m = LogManager::open(d.path(), LogConfig::default()).unwrap();
        let err = LogManager::open(d.path(), LogConfig::default()).unwrap_err();
        assert!(matches!(err, LogError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another process"));
        drop(m);
        LogManager::open(d.path(), LogConfig::default()).unwrap();
    }

    #[test]
    fn creates_reopens_and_deletes_partitions() {
        let d = tempfile::tempdir().unwrap();
        let tp = TopicPartition::new("t", 0);
        {
            let m = LogManager::open(d.path(), LogConfig::default()).unwrap();
            m.get_or_create(&tp, None).unwrap();
            m.get_or_create(&TopicPartition::new("t", 1), None).unwrap();
            assert!(m.get_or_create(&TopicPartition::new("bad/name", 0), None).is_err());
        }
        fs::create_dir(d.path().join("t-2.deleting")).unwrap();
        fs::create_dir(d.path().join("not a partition")).unwrap();
        let m = LogManager::open(d.path(), LogConfig::default()).unwrap();
        assert_eq!(m.partitions(), vec![tp.clone(), TopicPartition::new("t", 1)]);
        assert!(!d.path().join("t-2.deleting").exists());
        assert!(m.delete(&tp).unwrap());
        assert!(!m.delete(&tp).unwrap());
        assert!(!d.path().join("t-0").exists());
        assert_eq!(m.partitions(), vec![TopicPartition::new("t", 1)]);
    }
}
