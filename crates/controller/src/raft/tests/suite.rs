//! openraft's storage conformance suite against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

use super::kv::Kv;
use crate::raft::{LogStore, NodeId, SledStore, StateMachineStore, TypeConfig};

/// A fresh store in a fresh temporary directory per case; the directory is the guard.
struct SledBuilder;

impl StoreBuilder<TypeConfig<Kv>, LogStore<Kv>, StateMachineStore<Kv>, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore<Kv>, StateMachineStore<Kv>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let store =
            SledStore::<Kv>::open(dir.path()).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, store.log, store.state_machine))
    }
}

/// The acceptance test of the store. Not a `#[tokio::test]`: the suite starts a runtime per case.
#[test]
fn sled_store_passes_the_openraft_storage_suite() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    Suite::test_all(SledBuilder)?;
    eprintln!("openraft storage suite passed in {:?}", started.elapsed());
    Ok(())
}
