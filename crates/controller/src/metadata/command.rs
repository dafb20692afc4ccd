//! What goes into the Raft log ([`Command`]) and what applying it yields ([`Applied`]:
//! an [`Outcome`] for the caller and the [`MetadataDelta`]s for watchers).

use std::collections::BTreeMap;

use runnel_auth::Security;
use runnel_auth::acl::{AclBinding, AclFilter};
use runnel_auth::scram::{Mechanism, ScramCredential};
use serde::{Deserialize, Serialize};

use super::error::CommandError;
use super::types::{Broker, Endpoints, PartitionState, Topic, TopicId};

/// A member of the ISR an AlterPartition proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrMember {
    /// The broker id.
    pub id: u32,
    /// The broker epoch the leader saw this follower fetch with, if it knows it. When given,
    /// it must be the broker's current epoch: a follower that restarted since (and may have
    /// lost its unflushed tail) cannot be let back in on the strength of its previous life's
    /// fetches (Kafka's KIP-903).
    pub broker_epoch: Option<u64>,
}

/// A (topic, partition) named in an election.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionRef {
    /// The topic name.
    pub topic: String,
    /// The partition index.
    pub partition: u32,
}

/// A change to the cluster metadata, committed through Raft and applied by
/// [`ClusterMetadata::apply`](super::ClusterMetadata::apply) on every controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker starts (or restarts) and announces itself. It gets a new broker epoch, the
    /// Raft index of this command, and is fenced until [`Command::UnfenceBroker`].
    ///
    /// A registration repeating the current `incarnation_id`, endpoints and rack is a retry
    /// by the same process and changes nothing. Any other registration of a known id is a
    /// restart: the old incarnation is fenced, exactly as by [`Command::FenceBroker`]
    /// (the broker leaves the ISRs and loses leadership, since a restarted process may have
    /// lost unflushed data), and its replica assignments stay as they were.
    RegisterBroker {
        /// The broker id.
        id: u32,
        /// Its listeners.
        endpoints: Endpoints,
        /// Its rack.
        rack: Option<String>,
        /// A value unique to the broker process, to recognize retried registrations.
        incarnation_id: Option<u128>,
    },
    /// The broker stopped heartbeating: fence it. It leaves every ISR it is in (unless it is
    /// the last member: the ISR never empties, so the data is not declared lost), and every
    /// partition it led gets a new leader from the rest of the ISR, or none.
    FenceBroker {
        /// The broker id.
        id: u32,
        /// The epoch the decision was made about; a newer registration is left alone.
        epoch: u64,
    },
    /// The broker has caught up with the metadata and may lead again. Offline partitions
    /// whose ISR holds it get it as leader; it rejoins other ISRs through AlterPartition.
    UnfenceBroker {
        /// The broker id.
        id: u32,
        /// The broker's current epoch.
        epoch: u64,
    },
    /// Create a topic.
    CreateTopic {
        /// The name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
        name: String,
        /// The partition count, 1 to [`PARTITIONS_MAX`](super::PARTITIONS_MAX).
        partitions: u32,
        /// Replicas per partition, 1 to the number of unfenced brokers.
        replication_factor: u16,
        /// Config overrides (Kafka names).
        config: BTreeMap<String, String>,
        /// Explicit replica lists, one per partition, preferred leader first; when absent
        /// the controller places replicas. When given, `partitions` and
        /// `replication_factor` must match its shape.
        assignments: Option<Vec<Vec<u32>>>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// The topic name.
        name: String,
    },
    /// Change a topic's config overrides.
    AlterTopicConfig {
        /// The topic name.
        name: String,
        /// Keys to set.
        set: BTreeMap<String, String>,
        /// Keys to remove (back to the broker default).
        delete: Vec<String>,
    },
    /// Grow a topic to `count` partitions (Kafka's CreatePartitions: the new total, which
    /// must be above the current count and at most [`PARTITIONS_MAX`](super::PARTITIONS_MAX);
    /// INVALID_PARTITIONS otherwise). The new partitions' replicas are placed like a new
    /// topic's, with the topic's replication factor, on the unfenced brokers, and each is led
    /// by its first unfenced replica at epoch 0. Existing partitions are untouched.
    CreatePartitions {
        /// The topic name.
        name: String,
        /// The partition count after the change.
        count: u32,
    },
    /// A partition leader asks to change the ISR (shrink a lagging follower out, or expand a
    /// caught-up one in): a compare-and-swap on the partition epoch.
    AlterPartition {
        /// The topic name.
        topic: String,
        /// The topic id, so a request about a deleted topic never applies to a new topic
        /// of the same name.
        topic_id: TopicId,
        /// The partition index.
        partition: u32,
        /// The sender, which must be the leader.
        leader_id: u32,
        /// The sender's broker epoch.
        broker_epoch: u64,
        /// The leader epoch the sender leads in.
        leader_epoch: i32,
        /// The partition epoch of the state the sender changes.
        partition_epoch: i32,
        /// The proposed ISR; it must hold the leader.
        new_isr: Vec<IsrMember>,
    },
    /// A broker asks for the next block of [`PRODUCER_ID_BLOCK_SIZE`](super::PRODUCER_ID_BLOCK_SIZE)
    /// producer ids, to hand out to idempotent producers. The next free id is part of the
    /// image, so blocks never overlap, across controller failovers included.
    AllocateProducerIds {
        /// The asking broker, which must be registered.
        broker_id: u32,
        /// Its current broker epoch: a broker process that restarted since asks again with
        /// its new epoch.
        broker_epoch: u64,
    },
    /// Move leadership: to the preferred replica (`preferred`), or to any eligible ISR member
    /// for partitions without a leader.
    ElectLeaders {
        /// The partitions to consider; `None` for all.
        partitions: Option<Vec<PartitionRef>>,
        /// Preferred election when true; otherwise a clean election for leaderless
        /// partitions (Kafka's unclean election is off in Runnel).
        preferred: bool,
    },
    /// Create user `name`, or replace its SCRAM credentials for the mechanisms given (at most
    /// one each; the others stay). The caller computed them (salt, stored and server keys): no
    /// password reaches the metadata.
    UpsertUser {
        /// The user name.
        name: String,
        /// The credentials, one to each mechanism.
        credentials: Vec<ScramCredential>,
        /// Refuse (CLUSTER_AUTHORIZATION_FAILED) unless the cluster has no user at all: the
        /// first administrator, let in without credentials, is checked here against the
        /// committed state, not against a node's possibly lagging view.
        #[serde(default)]
        only_if_no_users: bool,
    },
    /// Delete user `name`: one mechanism's credential, or (with `None`) the whole user. A
    /// user left without credentials is gone. Its ACLs stay, as Kafka's do.
    DeleteUser {
        /// The user name.
        name: String,
        /// The one credential to delete, or all.
        mechanism: Option<Mechanism>,
    },
    /// Add ACL bindings (those already present are left as they are).
    CreateAcls {
        /// The bindings.
        acls: Vec<AclBinding>,
    },
    /// Delete every ACL binding that any of `filters` matches.
    DeleteAcls {
        /// The filters.
        filters: Vec<AclFilter>,
    },
}

/// What happened to one partition in an election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionResult {
    /// The topic name.
    pub topic: String,
    /// The partition index.
    pub partition: u32,
    /// The partition's new state, or why it kept its leader.
    pub result: Result<PartitionState, CommandError>,
}

/// What a command did, for its caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The broker is registered (or the registration was a retry) with this epoch.
    BrokerRegistered {
        /// The broker id.
        id: u32,
        /// Its epoch; the broker sends it with every later request.
        epoch: u64,
    },
    /// The broker is fenced.
    BrokerFenced {
        /// The broker id.
        id: u32,
        /// True if it already was (nothing changed).
        already: bool,
    },
    /// The broker is unfenced.
    BrokerUnfenced {
        /// The broker id.
        id: u32,
        /// True if it already was (nothing changed).
        already: bool,
    },
    /// The topic exists now.
    TopicCreated(Topic),
    /// The topic is gone.
    TopicDeleted {
        /// The topic name.
        name: String,
        /// The topic id.
        id: TopicId,
    },
    /// The topic's config overrides are now these.
    TopicConfigAltered {
        /// The topic name.
        name: String,
        /// The full set of overrides.
        config: BTreeMap<String, String>,
    },
    /// The topic gained partitions; this is the whole topic after the change.
    PartitionsCreated(Topic),
    /// The partition's state after an AlterPartition. The partition epoch is unchanged if
    /// the proposed ISR was the current one.
    PartitionAltered {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: u32,
        /// The state now.
        state: PartitionState,
    },
    /// One result per partition considered. With `partitions: None`, partitions that
    /// already had the leader the election would pick are left out, as Kafka does.
    LeadersElected(Vec<ElectionResult>),
    /// The broker owns the producer ids `[first_id, first_id + count)`.
    ProducerIdsAllocated {
        /// The broker id.
        broker_id: u32,
        /// The first id of the block.
        first_id: i64,
        /// How many ids the block holds.
        count: u32,
    },
    /// The user's credentials are in place.
    UserUpserted {
        /// The user name.
        name: String,
    },
    /// The user (or one credential of it) is gone.
    UserDeleted {
        /// The user name.
        name: String,
    },
    /// `created` bindings were added (the others were there already).
    AclsCreated {
        /// How many were new.
        created: usize,
    },
    /// What each filter deleted, in the filters' order (a binding two filters match is
    /// listed under both).
    AclsDeleted {
        /// The deleted bindings, one list per filter.
        deleted: Vec<Vec<AclBinding>>,
    },
}

/// One change to the image. Applying a command's deltas, in order, to the image before the
/// command gives the image after it ([`ClusterMetadata::apply_deltas`](super::ClusterMetadata::apply_deltas)),
/// so a watcher sends a full image once and then only deltas tagged with the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataDelta {
    /// A broker registered, or its registration changed (fenced, unfenced): this is the
    /// whole new registration.
    BrokerChanged(Broker),
    /// A topic was created, partitions included.
    TopicCreated(Topic),
    /// A topic was deleted.
    TopicDeleted {
        /// The topic name.
        name: String,
        /// The topic id.
        id: TopicId,
    },
    /// A topic's config overrides are now `config`.
    TopicConfigChanged {
        /// The topic name.
        name: String,
        /// The full set of overrides.
        config: BTreeMap<String, String>,
    },
    /// A topic gained partitions: `partitions` are its new partitions `first`,
    /// `first + 1`, ..., appended after its existing ones (`first` is the old count).
    PartitionsCreated {
        /// The topic name.
        topic: String,
        /// The topic id.
        topic_id: TopicId,
        /// The index of the first new partition: the topic's partition count before.
        first: u32,
        /// The new partitions' states, in index order.
        partitions: Vec<PartitionState>,
    },
    /// A partition's state is now `state`.
    PartitionChanged {
        /// The topic name.
        topic: String,
        /// The topic id, to tell a partition of a recreated topic from the old one's.
        topic_id: TopicId,
        /// The partition index.
        partition: u32,
        /// The whole new state.
        state: PartitionState,
    },
    /// Producer ids below `next_producer_id` are handed out; the block
    /// `[first_id, next_producer_id)` went to `broker_id`. Brokers do not watch this (the
    /// gRPC watch has no form for it), but it moves the version like any change.
    ProducerIdsAllocated {
        /// The broker the block went to.
        broker_id: u32,
        /// The first id of the block: the image's next free id before this change.
        first_id: i64,
        /// The next free id after it.
        next_producer_id: i64,
    },
    /// The users or ACLs changed: this is the whole new state.
    SecurityChanged(Security),
}

/// A command that applied: what it did, and the changes it made (none if it was a no-op).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// For the caller.
    pub outcome: Outcome,
    /// For watchers, in order. When not empty, the image's version is now the command's
    /// Raft index.
    pub deltas: Vec<MetadataDelta>,
}

/// The result of applying a command: committed either way, and the same on every replica.
pub type CommandResult = Result<Applied, CommandError>;
