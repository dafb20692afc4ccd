//! In-process Raft nodes on 127.0.0.1, each with a sled store in its own temporary directory
//! and a tonic server on a port the OS picked.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::kv::{Kv, Set};
use crate::raft::{
    GrpcNetworkFactory, MachineView, NetworkConfig, Node, NodeId, Raft, RaftGrpcService, SledStore,
    controller_config,
};

/// How often a waiting test looks again.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// The controller's settings with timers short enough for tests: a leader is elected within
/// about a second of the last one dying.
pub(crate) fn fast_config() -> anyhow::Result<Config> {
    let mut config = controller_config("test")?;
    config.heartbeat_interval = 100;
    config.election_timeout_min = 400;
    config.election_timeout_max = 800;
    Ok(config.validate()?)
}

/// [`fast_config`] that snapshots every `every` entries and keeps no entry a snapshot covers.
pub(crate) fn snapshotting_config(every: u64) -> anyhow::Result<Config> {
    let mut config = fast_config()?;
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(every);
    config.max_in_snapshot_log_to_keep = 0;
    config.purge_batch_size = 1;
    Ok(config.validate()?)
}

/// One running node.
pub(crate) struct TestNode {
    pub(crate) id: NodeId,
    pub(crate) addr: String,
    pub(crate) raft: Raft<Kv>,
    pub(crate) view: MachineView<Kv>,
    server: JoinHandle<()>,
}

impl TestNode {
    /// Opens the store in `dir`, starts Raft and serves its `RaftService` on a fresh port.
    pub(crate) async fn start(id: NodeId, dir: &Path, config: &Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let store = SledStore::<Kv>::open(dir)?;
        let view = store.state_machine.view();
        let network = GrpcNetworkFactory::new(id, NetworkConfig::default());
        let raft = openraft::Raft::new(id, Arc::new(config.clone()), network, store.log, store.state_machine)
            .await?;
        let service = RaftGrpcService::new(raft.clone()).into_server();
        let server = tokio::spawn(async move {
            let served =
                Server::builder().add_service(service).serve_with_incoming(TcpIncoming::from(listener));
            if let Err(e) = served.await {
                tracing::warn!("raft server {id} stopped: {e}");
            }
        });
        Ok(Self { id, addr, raft, view, server })
    }

    pub(crate) fn node(&self) -> Node {
        Node { addr: self.addr.clone() }
    }

    /// Stops serving and stops Raft, as a crash would (nothing is flushed beyond what Raft
    /// already flushed).
    pub(crate) async fn kill(self) {
        self.server.abort();
        let _ = self.server.await;
        // The core's join error, if any, is about the task being gone, which is the point.
        let _ = self.raft.shutdown().await;
    }

    /// The value of `key` in this node's machine.
    pub(crate) fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self.view.read(|kv, _| kv.map.get(key).cloned())?)
    }
}

/// The members map that initializes a cluster of `nodes`.
pub(crate) fn members(nodes: &[&TestNode]) -> BTreeMap<NodeId, Node> {
    nodes.iter().map(|n| (n.id, n.node())).collect()
}

/// Waits until every node in `nodes` names the same leader, one of `nodes`, and that node
/// says it leads. Returns its id.
pub(crate) async fn wait_for_leader(nodes: &[&TestNode], deadline: Instant) -> anyhow::Result<NodeId> {
    loop {
        let leaders: Vec<_> = nodes.iter().map(|n| n.raft.metrics().borrow().current_leader).collect();
        if let Some(Some(leader)) = leaders.first().copied()
            && leaders.iter().all(|l| *l == Some(leader))
            && let Some(node) = nodes.iter().find(|n| n.id == leader)
            && node.raft.metrics().borrow().state == ServerState::Leader
        {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            bail!("no agreed leader among {:?} by the deadline; they name {leaders:?}", ids(nodes));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes `key = value` through the leader of `nodes`, retrying (through whichever node leads
/// then) until it commits or the deadline passes. Returns the leader that took it.
pub(crate) async fn write(
    nodes: &[&TestNode],
    key: &str,
    value: &str,
    deadline: Instant,
) -> anyhow::Result<NodeId> {
    loop {
        let leader = wait_for_leader(nodes, deadline).await?;
        let node = nodes.iter().find(|n| n.id == leader).context("leader is one of the nodes")?;
        let command = Set { key: key.to_owned(), value: value.to_owned() };
        match node.raft.client_write(command).await {
            Ok(_) => return Ok(leader),
            Err(e) if Instant::now() < deadline => {
                tracing::info!("write through {leader} failed, retrying: {e}");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e).context(format!("write {key} through {leader}")),
        }
    }
}

/// Waits until every node in `nodes` has applied `key = value`.
pub(crate) async fn wait_for_value(
    nodes: &[&TestNode],
    key: &str,
    value: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        let mut missing = Vec::new();
        for node in nodes {
            if node.get(key)?.as_deref() != Some(value) {
                missing.push(node.id);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{key}={value} not applied on {missing:?} by the deadline");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn ids(nodes: &[&TestNode]) -> Vec<NodeId> {
    nodes.iter().map(|n| n.id).collect()
}
