//! How transport failures reach openraft: the error kind decides whether it backs off,
//! retries or gives up.

use std::time::Duration;

use anyhow::Context;
use openraft::Vote;
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, VoteRequest};

use super::harness::{TestNode, fast_config};
use super::kv::{Kv, Set};
use crate::raft::{GrpcNetwork, GrpcNetworkFactory, NetworkConfig, Node};

/// A vote from candidate 9 in term 1.
fn vote_request() -> VoteRequest<u64> {
    VoteRequest::new(Vote::new(1, 9), None)
}

async fn client(addr: String) -> GrpcNetwork<Kv> {
    GrpcNetworkFactory::<Kv>::new(9, NetworkConfig::default()).new_client(1, &Node { addr }).await
}

#[tokio::test]
async fn a_peer_with_nothing_listening_is_unreachable() -> anyhow::Result<()> {
    // A port that was free a moment ago and has no listener now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let result = client(addr).await.vote(vote_request(), RPCOption::new(Duration::from_secs(5))).await;
    let err = result.err().context("a vote to nobody cannot succeed")?;
    assert!(matches!(err, RPCError::Unreachable(_)), "want Unreachable, got {err}");
    Ok(())
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() -> anyhow::Result<()> {
    // Accepts connections and never speaks, like a peer stopped with SIGSTOP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let ttl = Duration::from_millis(300);
    let result = client(addr).await.vote(vote_request(), RPCOption::new(ttl)).await;
    silent.abort();
    let err = result.err().context("a vote to a silent peer cannot succeed")?;
    assert!(
        matches!(&err, RPCError::Timeout(t) if t.target == 1 && t.id == 9 && t.timeout == ttl),
        "want Timeout, got {err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_raft_answers_with_its_own_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = TestNode::start(1, dir.path(), &fast_config()?).await?;
    // The server stays up; only Raft stops.
    let _ = node.raft.shutdown().await;
    let result =
        client(node.addr.clone()).await.vote(vote_request(), RPCOption::new(Duration::from_secs(5))).await;
    let err = result.err().context("a stopped Raft cannot vote")?;
    assert!(
        matches!(&err, RPCError::RemoteError(remote) if remote.target == 1 && matches!(remote.source, RaftError::Fatal(_))),
        "want RemoteError(Fatal), got {err}"
    );
    node.kill().await;
    Ok(())
}

#[tokio::test]
async fn an_oversized_batch_asks_openraft_for_fewer_entries() -> anyhow::Result<()> {
    let config = NetworkConfig { message_bytes_max: 2_000, ..NetworkConfig::default() };
    // Nothing listens: the batch must be refused before anything is sent.
    let mut network =
        GrpcNetworkFactory::<Kv>::new(9, config).new_client(1, &Node { addr: "127.0.0.1:9".into() }).await;
    let entries = (1..=10)
        .map(|index| openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 9), index),
            payload: openraft::EntryPayload::Normal(Set { key: format!("k{index}"), value: "v".repeat(500) }),
        })
        .collect();
    let rpc = AppendEntriesRequest { vote: Vote::new(1, 9), prev_log_id: None, entries, leader_commit: None };
    let result = network.append_entries(rpc, RPCOption::new(Duration::from_secs(1))).await;
    let err = result.err().context("an oversized batch cannot be sent")?;
    match &err {
        RPCError::PayloadTooLarge(too_large) => {
            let hint = too_large.entries_hint();
            assert!((1..10).contains(&hint), "hint {hint} should shrink the batch of 10");
        }
        other => panic!("want PayloadTooLarge, got {other}"),
    }
    Ok(())
}
