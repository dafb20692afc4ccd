//! The server side of the Raft transport: `runnel.v1.RaftService` forwarding to a local
//! openraft node.
//!
//! A request whose JSON does not decode is answered with `INVALID_ARGUMENT`. A request the
//! local Raft refuses is answered normally, with `error_json` set, so the caller sees openraft's
//! own error rather than a transport failure (see `proto/runnel/v1/raft.proto`).

use std::fmt;
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::raft_service_server::{RaftService, RaftServiceServer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::elector::Contact;
use super::machine::Machine;
use super::network::MESSAGE_BYTES_MAX;
use super::types::{Raft, TypeConfig};

/// Serves a node's `RaftService`: every RPC is handed to the node's [`Raft`].
pub struct RaftGrpcService<M: Machine> {
    raft: Raft<M>,
    message_bytes_max: usize,
    contact: Arc<Contact>,
    peers: runnel_proto::tls::PeerCheck,
}

impl<M: Machine> RaftGrpcService<M> {
    /// A service for `raft`, accepting messages up to [`MESSAGE_BYTES_MAX`].
    pub fn new(raft: Raft<M>) -> Self {
        Self {
            raft,
            message_bytes_max: MESSAGE_BYTES_MAX,
            contact: Arc::default(),
            peers: runnel_proto::tls::PeerCheck::Off,
        }
    }

    /// Checks every call against the caller's certificate: a vote must come from its
    /// candidate, entries and snapshots from their leader.
    pub fn with_peer_check(mut self, peers: runnel_proto::tls::PeerCheck) -> Self {
        self.peers = peers;
        self
    }

    /// Records into `contact` every time a leader is heard from (an AppendEntries or
    /// InstallSnapshot not refused for a stale vote) or a vote is granted, for the
    /// [`super::elector`].
    pub fn with_contact(mut self, contact: Arc<Contact>) -> Self {
        self.contact = contact;
        self
    }

    /// Changes the largest message accepted or sent, in bytes. It must be at least the
    /// clients' [`super::network::NetworkConfig::message_bytes_max`].
    pub fn with_message_bytes_max(mut self, bytes: usize) -> Self {
        self.message_bytes_max = bytes;
        self
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> RaftServiceServer<Self> {
        let limit = self.message_bytes_max;
        RaftServiceServer::new(self).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }
}

impl<M: Machine> fmt::Debug for RaftGrpcService<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftGrpcService").field("message_bytes_max", &self.message_bytes_max).finish()
    }
}

fn decode<T: DeserializeOwned>(json: &[u8], what: &str) -> Result<T, Status> {
    if json.is_empty() {
        return Err(Status::invalid_argument(format!("missing {what}")));
    }
    serde_json::from_slice(json).map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

/// Encodes a Raft result as `(is_ok, json)`, the shape of every response's `oneof result`.
fn encode<T: Serialize, E: Serialize>(result: &Result<T, E>) -> Result<(bool, Vec<u8>), Status> {
    let encoded = match result {
        Ok(ok) => serde_json::to_vec(ok).map(|json| (true, json)),
        Err(err) => serde_json::to_vec(err).map(|json| (false, json)),
    };
    encoded.map_err(|e| Status::internal(format!("cannot encode the raft result: {e}")))
}

#[tonic::async_trait]
impl<M: Machine> RaftService for RaftGrpcService<M> {
    async fn append_entries(
        &self,
        request: Request<pb::RaftAppendEntriesRequest>,
    ) -> Result<Response<pb::RaftAppendEntriesResponse>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig<M>> =
            decode(&request.get_ref().request_json, "append-entries request")?;
        self.peers.check(&request, rpc.vote.leader_id.node_id, "an AppendEntries")?;
        // A leader is alive now, however long storing the entries takes; a request from a
        // deposed leader is refused below, and it learns so from the answer at once.
        self.contact.touch();
        let answer = self.raft.append_entries(rpc).await;
        if matches!(answer, Ok(ref r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        let (ok, json) = encode(&answer)?;
        use pb::raft_append_entries_response::Result as R;
        let result = if ok { R::ResponseJson(json) } else { R::ErrorJson(json) };
        Ok(Response::new(pb::RaftAppendEntriesResponse { result: Some(result) }))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftVoteRequest>,
    ) -> Result<Response<pb::RaftVoteResponse>, Status> {
        let rpc: VoteRequest<u64> = decode(&request.get_ref().request_json, "vote request")?;
        self.peers.check(&request, rpc.vote.leader_id.node_id, "a vote")?;
        let answer = self.raft.vote(rpc).await;
        if matches!(answer, Ok(ref r) if r.vote_granted) {
            self.contact.touch();
        }
        let (ok, json) = encode(&answer)?;
        use pb::raft_vote_response::Result as R;
        let result = if ok { R::ResponseJson(json) } else { R::ErrorJson(json) };
        Ok(Response::new(pb::RaftVoteResponse { result: Some(result) }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftInstallSnapshotRequest>,
    ) -> Result<Response<pb::RaftInstallSnapshotResponse>, Status> {
        let mut rpc: InstallSnapshotRequest<TypeConfig<M>> =
            decode(&request.get_ref().header_json, "install-snapshot request")?;
        self.peers.check(&request, rpc.vote.leader_id.node_id, "an InstallSnapshot")?;
        let message = request.into_inner();
        rpc.data = message.data;
        let sent_vote = rpc.vote;
        let answer = self.raft.install_snapshot(rpc).await;
        if matches!(answer, Ok(ref r) if r.vote == sent_vote) {
            self.contact.touch();
        }
        let (ok, json) = encode(&answer)?;
        use pb::raft_install_snapshot_response::Result as R;
        let result = if ok { R::ResponseJson(json) } else { R::ErrorJson(json) };
        Ok(Response::new(pb::RaftInstallSnapshotResponse { result: Some(result) }))
    }
}
