//! The client side of the Raft transport: openraft's [`RaftNetworkFactory`] and
//! [`RaftNetwork`] over tonic, calling peers' `runnel.v1.RaftService`.
//!
//! Each RPC carries the openraft message as JSON inside a protobuf `bytes` field (see
//! `proto/runnel/v1/raft.proto`). Failures are reported in the terms openraft acts on:
//!
//! - the peer cannot be reached (connection refused, reset, no route; gRPC `UNAVAILABLE`):
//!   [`Unreachable`], so openraft pauses replication to that peer for [`RaftNetwork::backoff`],
//!   which grows exponentially from [`NetworkConfig::backoff_initial`] to
//!   [`NetworkConfig::backoff_max`] and resets after a success;
//! - the RPC did not finish within openraft's deadline (which is also sent to the peer as the
//!   gRPC deadline): [`Timeout`];
//! - an AppendEntries too large for one message: [`PayloadTooLarge`], so openraft retries at
//!   once with fewer entries;
//! - the peer's Raft refused the request: [`RemoteError`] with its [`RaftError`];
//! - anything else (a malformed response, an unexpected gRPC status): [`NetworkError`].
//!
//! Channels connect lazily on first use and reconnect on the next RPC after a failure. One
//! channel per peer address is shared by all clients the factory hands out (the replication
//! stream and elections to the same peer reuse one HTTP/2 connection).

// openraft's RaftNetwork returns its large RPCError by value; the helpers here build it.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::RPCTypes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::raft_service_client::RaftServiceClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::machine::Machine;
use super::types::{Node, NodeId, TypeConfig};

/// Largest gRPC message the Raft transport sends or accepts, in bytes. Bounds what a peer can
/// make a node allocate; AppendEntries batches are split to fit, and snapshot chunks
/// ([`super::config::SNAPSHOT_CHUNK_BYTES_MAX`]) are far below it.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Settings of the Raft transport's client side.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// How long to wait for a TCP connection to a peer.
    pub connect_timeout: Duration,
    /// First pause after a peer is found unreachable.
    pub backoff_initial: Duration,
    /// Longest pause between attempts to reach an unreachable peer. It must stay well below
    /// the silence after which a follower stands for election (the election timeout's upper
    /// bound plus a margin, 550 ms by default): a peer that comes back has to hear from the
    /// leader before then, or it deposes a healthy leader.
    pub backoff_max: Duration,
    /// Largest message sent or received, in bytes.
    pub message_bytes_max: usize,
    /// TLS to the peers (their CA and this node's certificate), when the node runs TLS.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            message_bytes_max: MESSAGE_BYTES_MAX,
            tls: None,
        }
    }
}

/// Hands openraft one [`GrpcNetwork`] per peer. Cheap to clone.
pub struct GrpcNetworkFactory<M> {
    local: NodeId,
    config: NetworkConfig,
    /// One lazily connected channel per peer address.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    _machine: std::marker::PhantomData<fn() -> M>,
}

impl<M> GrpcNetworkFactory<M> {
    /// A factory for node `local` (its id labels timeouts in openraft's errors and logs).
    pub fn new(local: NodeId, config: NetworkConfig) -> Self {
        Self { local, config, channels: Arc::default(), _machine: std::marker::PhantomData }
    }

    /// The shared channel to `addr`, created (not yet connected) on first use.
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = runnel_proto::tls::endpoint(addr, self.config.tls.as_ref())?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl<M> Clone for GrpcNetworkFactory<M> {
    fn clone(&self) -> Self {
        Self {
            local: self.local,
            config: self.config.clone(),
            channels: Arc::clone(&self.channels),
            _machine: std::marker::PhantomData,
        }
    }
}

impl<M> fmt::Debug for GrpcNetworkFactory<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcNetworkFactory").field("local", &self.local).finish_non_exhaustive()
    }
}

impl<M: Machine> RaftNetworkFactory<TypeConfig<M>> for GrpcNetworkFactory<M> {
    type Network = GrpcNetwork<M>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        // An unusable address is reported by every RPC, as unreachable, rather than here:
        // openraft gives this method no way to fail.
        let client = self.channel(&node.addr).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(self.config.message_bytes_max)
                .max_encoding_message_size(self.config.message_bytes_max)
        });
        let client = client.map_err(|e| Unreachable::new(&e));
        GrpcNetwork {
            local: self.local,
            target,
            node: node.clone(),
            client,
            config: self.config.clone(),
            _machine: std::marker::PhantomData,
        }
    }
}

/// The connection to one peer, as openraft's replication and election tasks use it.
pub struct GrpcNetwork<M> {
    local: NodeId,
    target: NodeId,
    node: Node,
    client: Result<RaftServiceClient<Channel>, Unreachable>,
    config: NetworkConfig,
    _machine: std::marker::PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for GrpcNetwork<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcNetwork")
            .field("local", &self.local)
            .field("target", &self.target)
            .field("addr", &self.node.addr)
            .finish_non_exhaustive()
    }
}

/// The error half of every RPC's result.
type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

/// Why a response could not be understood.
#[derive(Debug, thiserror::Error)]
enum MalformedResponse {
    #[error("the response carries neither a result nor an error")]
    Empty,
    #[error("undecodable {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a request was not sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the {what}: {source}")]
struct EncodeRequest {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

impl<M: Machine> GrpcNetwork<M> {
    /// Runs one RPC under openraft's deadline and maps transport failures.
    async fn call<T, F, Fut, E>(
        &mut self,
        action: RPCTypes,
        option: &RPCOption,
        rpc: F,
    ) -> Result<T, RpcError<E>>
    where
        F: FnOnce(RaftServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
        E: std::error::Error,
    {
        let client = self.client.clone().map_err(RPCError::Unreachable)?;
        let deadline = option.hard_ttl();
        let timeout = || Timeout { action, id: self.local, target: self.target, timeout: deadline };
        match tokio::time::timeout(deadline, rpc(client, deadline)).await {
            Err(_elapsed) => Err(RPCError::Timeout(timeout())),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(status)) => Err(match status.code() {
                // tonic reports connect failures and broken connections as UNAVAILABLE.
                tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
                tonic::Code::DeadlineExceeded => RPCError::Timeout(timeout()),
                // tonic enforces the request's own deadline too, and reports it as CANCELLED.
                tonic::Code::Cancelled if deadline_expired(&status) => RPCError::Timeout(timeout()),
                _ => RPCError::Network(NetworkError::new(&status)),
            }),
        }
    }

    /// Turns a response's `oneof result` into openraft's result.
    fn decode_result<T, E>(
        &self,
        result: Option<(bool, Vec<u8>)>,
        what: &'static str,
    ) -> Result<T, RpcError<E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let malformed = |e: MalformedResponse| RPCError::Network(NetworkError::new(&e));
        let json = |source| malformed(MalformedResponse::Json { what, source });
        match result {
            None => Err(malformed(MalformedResponse::Empty)),
            Some((true, ok)) => serde_json::from_slice(&ok).map_err(json),
            Some((false, err)) => {
                let err: RaftError<NodeId, E> = serde_json::from_slice(&err).map_err(json)?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), err)))
            }
        }
    }
}

fn to_json<T: Serialize, E: std::error::Error>(
    value: &T,
    what: &'static str,
) -> Result<Vec<u8>, RpcError<E>> {
    serde_json::to_vec(value)
        .map_err(|source| RPCError::Network(NetworkError::new(&EncodeRequest { what, source })))
}

/// Whether tonic gave up on the request because its deadline passed.
fn deadline_expired(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A request that tells the peer how long the caller will wait, so it can give up too.
fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

impl<M: Machine> RaftNetwork<TypeConfig<M>> for GrpcNetwork<M> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<M>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let request_json = to_json(&rpc, "append-entries request")?;
        // The protobuf framing adds a tag and a length varint: at most 11 bytes.
        let limit = self.config.message_bytes_max.saturating_sub(16);
        if request_json.len() > limit && rpc.entries.len() > 1 {
            // Ask openraft for a batch that fits, estimated from the average entry size. A
            // single entry over the limit cannot be sent at all (the encoder refuses it, and
            // replication to this peer stalls), so commands must be bounded where proposed.
            let len = rpc.entries.len() as u64;
            let fitting = (len as u128 * limit as u128 / request_json.len() as u128) as u64;
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                fitting.clamp(1, len - 1),
            )));
        }
        let message = pb::RaftAppendEntriesRequest { request_json };
        let response = self
            .call(RPCTypes::AppendEntries, &option, |mut client, deadline| async move {
                client.append_entries(request(message, deadline)).await
            })
            .await?;
        let result = response.into_inner().result.map(|r| match r {
            pb::raft_append_entries_response::Result::ResponseJson(ok) => (true, ok),
            pb::raft_append_entries_response::Result::ErrorJson(err) => (false, err),
        });
        self.decode_result(result, "append-entries result")
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig<M>>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        // The chunk travels as raw bytes beside the JSON header, not inside it.
        let data = std::mem::take(&mut rpc.data);
        let header_json = to_json(&rpc, "install-snapshot request")?;
        let message = pb::RaftInstallSnapshotRequest { header_json, data };
        let response = self
            .call(RPCTypes::InstallSnapshot, &option, |mut client, deadline| async move {
                client.install_snapshot(request(message, deadline)).await
            })
            .await?;
        let result = response.into_inner().result.map(|r| match r {
            pb::raft_install_snapshot_response::Result::ResponseJson(ok) => (true, ok),
            pb::raft_install_snapshot_response::Result::ErrorJson(err) => (false, err),
        });
        self.decode_result(result, "install-snapshot result")
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let message = pb::RaftVoteRequest { request_json: to_json(&rpc, "vote request")? };
        let response = self
            .call(RPCTypes::Vote, &option, |mut client, deadline| async move {
                client.vote(request(message, deadline)).await
            })
            .await?;
        let result = response.into_inner().result.map(|r| match r {
            pb::raft_vote_response::Result::ResponseJson(ok) => (true, ok),
            pb::raft_vote_response::Result::ErrorJson(err) => (false, err),
        });
        self.decode_result(result, "vote result")
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(exponential_backoff(self.config.backoff_initial, self.config.backoff_max))
    }
}

/// `initial`, then doubling each step up to `max`, forever.
fn exponential_backoff(initial: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(initial.min(max)), move |&d| Some(d.saturating_mul(2).min(max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let steps: Vec<_> =
            exponential_backoff(Duration::from_millis(50), Duration::from_millis(300)).take(5).collect();
        let ms: Vec<_> = steps.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 300, 300]);
    }
}
