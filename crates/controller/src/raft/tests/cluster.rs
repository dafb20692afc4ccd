//! Real nodes over real sockets: elections, failover, snapshots, restart.

use std::time::Duration;

use anyhow::{Context, ensure};
use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use tokio::time::Instant;

use super::harness::{
    TestNode, fast_config, members, snapshotting_config, wait_for_leader, wait_for_value, write,
};
use super::kv::Kv;
use crate::raft::SledStore;

/// Every test's hard bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_a_new_leader_is_elected_and_accepts_writes() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(12);
        let config = fast_config()?;
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];

        // Phase 1: three voters form a cluster.
        let mut nodes = Vec::new();
        for (id, dir) in (1..).zip(&dirs) {
            nodes.push(TestNode::start(id, dir.path(), &config).await?);
        }
        let all: Vec<&TestNode> = nodes.iter().collect();
        nodes[0].raft.initialize(members(&all)).await?;
        let first_leader = wait_for_leader(&all, deadline).await?;

        // Phase 2: a write through the leader is applied everywhere.
        write(&all, "before", "1", deadline).await?;
        wait_for_value(&all, "before", "1", deadline).await?;

        // Phase 3: the leader dies; the other two elect one of themselves.
        let index = nodes.iter().position(|n| n.id == first_leader).context("leader is a node")?;
        let killed_at = Instant::now();
        nodes.remove(index).kill().await;
        let survivors: Vec<&TestNode> = nodes.iter().collect();
        let second_leader = wait_for_leader(&survivors, deadline).await?;
        ensure!(second_leader != first_leader, "the dead leader cannot lead");
        let failover = killed_at.elapsed();

        // Phase 4: the new leader commits writes with the remaining majority.
        write(&survivors, "after", "2", deadline).await?;
        wait_for_value(&survivors, "after", "2", deadline).await?;
        wait_for_value(&survivors, "before", "1", deadline).await?;

        eprintln!(
            "leader {first_leader} killed; {second_leader} elected in {failover:?}; test took {:?}",
            started.elapsed()
        );
        for node in nodes {
            node.kill().await;
        }
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_a_restart_restores_every_write() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(12);
        let config = snapshotting_config(10)?;
        let dir = tempfile::tempdir()?;
        const WRITES: usize = 35;

        // Phase 1: one voter takes enough writes for several snapshots and purges.
        let node = TestNode::start(1, dir.path(), &config).await?;
        node.raft.initialize(members(&[&node])).await?;
        for i in 0..WRITES {
            write(&[&node], &format!("k{i}"), &i.to_string(), deadline).await?;
        }
        let metrics = node
            .raft
            .wait(Some(deadline - Instant::now()))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= 20), "purged past 20")
            .await?;
        let last_applied = metrics.last_applied.context("applied")?;
        node.kill().await;

        // Phase 2: on disk, the log starts after the purge point.
        let mut store = reopen(dir.path(), deadline).await?;
        let state = store.log.get_log_state().await?;
        let purged = state.last_purged_log_id.context("purge recorded")?;
        ensure!(purged.index >= 20, "purged up to {purged}");
        let early = store.log.try_get_log_entries(0..=purged.index).await?;
        ensure!(early.is_empty(), "{} purged entries are still stored", early.len());
        drop(store);

        // Phase 3: restarted, the node rebuilds the machine from snapshot plus log.
        let node = TestNode::start(1, dir.path(), &config).await?;
        node.raft
            .wait(Some(deadline - Instant::now()))
            .applied_index_at_least(Some(last_applied.index), "re-applied after restart")
            .await?;
        for i in 0..WRITES {
            ensure!(node.get(&format!("k{i}"))? == Some(i.to_string()), "k{i} lost in the restart");
        }
        node.kill().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_behind_the_purged_log_catches_up_by_snapshot() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(12);
        let config = snapshotting_config(10)?;
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
        const WRITES: usize = 30;

        // Phase 1: a single voter writes, snapshots and purges the start of its log.
        let leader = TestNode::start(1, dirs[0].path(), &config).await?;
        leader.raft.initialize(members(&[&leader])).await?;
        for i in 0..WRITES {
            write(&[&leader], &format!("k{i}"), &i.to_string(), deadline).await?;
        }
        leader
            .raft
            .wait(Some(deadline - Instant::now()))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= 20), "purged past 20")
            .await?;

        // Phase 2: an empty learner can only be caught up by InstallSnapshot over gRPC.
        let learner = TestNode::start(2, dirs[1].path(), &config).await?;
        leader.raft.add_learner(2, learner.node(), true).await?;
        let last = (WRITES - 1).to_string();
        wait_for_value(&[&learner], &format!("k{}", WRITES - 1), &last, deadline).await?;
        for i in 0..WRITES {
            ensure!(learner.get(&format!("k{i}"))? == Some(i.to_string()), "learner lacks k{i}");
        }
        ensure!(learner.raft.metrics().borrow().snapshot.is_some(), "learner installed no snapshot");

        learner.kill().await;
        leader.kill().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// Opens the store in `dir` once the killed node's sled database is gone (its last handles
/// drop as openraft's tasks finish).
async fn reopen(dir: &std::path::Path, deadline: Instant) -> anyhow::Result<SledStore<Kv>> {
    loop {
        match SledStore::<Kv>::open(dir) {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() < deadline => {
                tracing::info!("store still locked, retrying: {e}");
                tokio::time::sleep(super::harness::POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
