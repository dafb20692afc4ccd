//! The openraft type configuration for a [`Machine`].

use std::cmp::Ordering;
use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

use openraft::RaftTypeConfig;
use openraft::impls::OneshotResponder;

use super::machine::Machine;

/// A Raft node id. Node ids are chosen by the operator (`runnel node --id N`) and never reused
/// for a different node.
pub type NodeId = u64;

/// What the cluster knows about a node: the address (`host:port`) of its `RaftService`.
pub type Node = openraft::BasicNode;

/// The openraft [`RaftTypeConfig`] for a cluster replicating the machine `M`.
///
/// A zero-sized marker: commands are `M::Command`, responses `M::Response`, node ids `u64`,
/// nodes [`Node`], snapshots an in-memory byte buffer and the runtime tokio.
///
/// openraft's `declare_raft_types!` cannot declare a generic type, so the impl is written out;
/// the comparison traits openraft demands of a type config are implemented by hand because
/// derives would demand them of `M` too, and all values of this type are equal.
pub struct TypeConfig<M>(PhantomData<fn() -> M>);

impl<M: Machine> RaftTypeConfig for TypeConfig<M> {
    type D = M::Command;
    type R = M::Response;
    type NodeId = NodeId;
    type Node = Node;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = Cursor<Vec<u8>>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = OneshotResponder<Self>;
}

/// A running Raft node replicating `M`.
pub type Raft<M> = openraft::Raft<TypeConfig<M>>;

/// A Raft log entry carrying `M`'s commands.
pub type Entry<M> = openraft::Entry<TypeConfig<M>>;

/// A log id (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;

/// The cluster membership as of some log id.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;

/// A snapshot's metadata: last included log id, membership, snapshot id.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

impl<M> fmt::Debug for TypeConfig<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypeConfig<{}>", std::any::type_name::<M>())
    }
}

impl<M> Clone for TypeConfig<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for TypeConfig<M> {}

impl<M> Default for TypeConfig<M> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<M> PartialEq for TypeConfig<M> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<M> Eq for TypeConfig<M> {}

impl<M> PartialOrd for TypeConfig<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<M> Ord for TypeConfig<M> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}
