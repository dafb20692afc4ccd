//! Whether the broker's log directory works.
//!
//! The first storage error of any hosted log (a failed write or fsync: a full or broken disk)
//! marks the broker's storage failed, with the reason. From then on its partitions refuse
//! appends with KAFKA_STORAGE_ERROR, producers waiting for acks=all get that error at once,
//! `/readyz` says why, and the broker ends its controller session, so the controller fences
//! it and moves its leaderships to in-sync replicas. [`probe_task`] then writes and fsyncs a
//! probe file in the log directory every second; once that works again and no log is broken
//! (a failed fsync leaves a log refusing writes until it is reopened: that needs a restart),
//! the failure clears, the broker registers again and its replicas catch up from the leaders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::replica::ReplicaManager;

/// How often a failed broker probes its log directory.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The probe file's size: enough to need real free space, not just an inode.
const PROBE_BYTES: usize = 256 * 1024;

/// The broker's storage health, shared by its partitions and tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StorageHealth {
    failure: Arc<watch::Sender<Option<String>>>,
}

impl Default for StorageHealth {
    fn default() -> Self {
        StorageHealth { failure: Arc::new(watch::Sender::new(None)) }
    }
}

impl StorageHealth {
    /// Marks the storage failed with `reason`, unless it already is.
    pub fn fail(&self, reason: String) {
        self.failure.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            tracing::error!(%reason, "storage failed: this broker stops serving its partitions and leaves the cluster until its log directory works again");
            *failure = Some(reason);
            true
        });
    }

    /// Why the storage failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Changes of the failure.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    fn clear(&self) {
        self.failure.send_if_modified(|failure| {
            let was = failure.take();
            if let Some(reason) = &was {
                tracing::info!(%reason, "storage works again: this broker rejoins the cluster");
            }
            was.is_some()
        });
    }
}

/// Writes, fsyncs and removes a probe file in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path: PathBuf = dir.join(".runnel-storage-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_data()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// While the storage is failed, probes the log directory every [`PROBE_INTERVAL`] and clears
/// the failure once the probe works and no hosted log is broken.
pub(crate) async fn probe_task(
    health: StorageHealth,
    replicas: Arc<ReplicaManager>,
    cancel: CancellationToken,
) {
    let mut changes = health.subscribe();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = changes.wait_for(Option::is_some) => if changed.is_err() { return },
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            let replicas_now = Arc::clone(&replicas);
            let checked = tokio::task::spawn_blocking(move || {
                probe(replicas_now.log_dir())?;
                if let Some(waiting) = replicas_now.repair_damaged() {
                    return Err(std::io::Error::other(waiting));
                }
                match replicas_now.broken_log() {
                    Some(reason) => {
                        Err(std::io::Error::other(format!("{reason} (restart the node to recover it)")))
                    }
                    None => Ok(()),
                }
            })
            .await;
            match checked {
                Ok(Ok(())) => {
                    health.clear();
                    break;
                }
                Ok(Err(e)) => tracing::debug!("storage still failing: {e}"),
                Err(e) => tracing::warn!("storage probe panicked: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_sticks_until_cleared() {
        let health = StorageHealth::default();
        let mut changes = health.subscribe();
        assert_eq!(health.failure(), None);
        health.fail("disk full".into());
        health.fail("later".into());
        assert_eq!(health.failure().as_deref(), Some("disk full"));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        health.clear();
        assert_eq!(health.failure(), None);
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn the_probe_needs_a_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path()).unwrap();
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the probe file is removed");
        assert!(probe(&dir.path().join("missing")).is_err());
    }
}
