//! [`ClusterMetadata`]: the image, the commands' semantics, the queries.
//!
//! Every command is applied in two steps: validate and compute the deltas against the
//! unchanged image, then apply the deltas. So a refused command changes nothing, and a
//! watcher applying the same deltas reaches the same image by construction.

use std::collections::{BTreeMap, BTreeSet};

use runnel_auth::Security;
use serde::{Deserialize, Serialize};

use super::command::{
    Applied, Command, CommandResult, ElectionResult, IsrMember, MetadataDelta, Outcome, PartitionRef,
};
use super::config::{self, validate_topic_config};
use super::error::{CommandError, DeltaError, ErrorCode};
use super::placement::{Candidate, PlacementLoad, place_replicas};
use super::types::{Broker, Endpoints, PartitionState, Topic, TopicId};

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Most partitions in one topic.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Most partition replicas one broker may be assigned: each costs it open files, memory and
/// a replica fetch, and a broker with too many is fenced for slowness rather than refusing.
/// A CreateTopics or CreatePartitions that would put more on any broker is refused with
/// POLICY_VIOLATION (Kafka has no such cap; its guidance is about 4,000 per broker).
pub const REPLICAS_PER_BROKER_MAX: usize = 20_000;
/// Longest advertised `host:port`.
pub const ENDPOINT_LEN_MAX: usize = 512;
/// Longest rack name.
pub const RACK_LEN_MAX: usize = 255;
/// Most partitions one ElectLeaders command may list.
pub const ELECTION_PARTITIONS_MAX: usize = 10_000;
/// Producer ids in one block a broker gets with `AllocateProducerIds` (Kafka's size too): a
/// broker asks the quorum once per this many `InitProducerId` calls.
pub const PRODUCER_ID_BLOCK_SIZE: u32 = 1000;

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_LEN_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Kafka refuses a topic whose name equals an existing one once `.` is read as `_`: the
/// two would share metric names.
fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

type Change = Result<(Outcome, Vec<MetadataDelta>), CommandError>;

fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, CommandError> {
    Err(CommandError::new(code, message))
}

/// The next epoch. Two billion changes of one partition do not happen; if they did, a
/// wrapped epoch would unfence every stale leader, so stopping is the only safe answer.
fn bump(epoch: i32) -> i32 {
    epoch.checked_add(1).expect("epoch overflow")
}

/// The first replica, in preference order, that is in `isr` and `eligible`. Kafka elects
/// the same way, which keeps elections deterministic and favours the preferred leader.
fn elect(replicas: &[u32], isr: &[u32], eligible: impl Fn(u32) -> bool) -> Option<u32> {
    replicas.iter().copied().find(|&r| isr.contains(&r) && eligible(r))
}

/// `current` with a new ISR and leader, epochs bumped; `None` if nothing changes.
fn transition(current: &PartitionState, isr: Vec<u32>, leader: Option<u32>) -> Option<PartitionState> {
    if isr == current.isr && leader == current.leader {
        return None;
    }
    let leader_epoch =
        if leader == current.leader { current.leader_epoch } else { bump(current.leader_epoch) };
    Some(PartitionState {
        replicas: current.replicas.clone(),
        isr,
        leader,
        leader_epoch,
        partition_epoch: bump(current.partition_epoch),
    })
}

fn validate_endpoint(kind: &str, endpoint: &str) -> Result<(), CommandError> {
    let ok = endpoint.len() <= ENDPOINT_LEN_MAX
        && endpoint.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if ok {
        Ok(())
    } else {
        let shown: String = endpoint.chars().take(64).collect();
        err(ErrorCode::InvalidRequest, format!("invalid {kind} endpoint {shown:?}: expected host:port"))
    }
}

/// The cluster metadata image: brokers, topics, partitions, and the version they are at.
///
/// Only [`apply`](Self::apply) (on controllers) and [`apply_deltas`](Self::apply_deltas) (on
/// watchers) change it. It serializes whole as the Raft snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    version: u64,
    brokers: BTreeMap<u32, Broker>,
    topics: BTreeMap<String, Topic>,
    /// The first producer id no broker has been given. Snapshots written before idempotent
    /// producers existed lack it; no id was handed out then, so 0 is right for them.
    #[serde(default)]
    next_producer_id: i64,
    /// Users and ACLs. Snapshots written before they existed lack them: none then.
    #[serde(default)]
    pub(super) security: Security,
}

impl ClusterMetadata {
    /// An empty cluster at version 0.
    pub fn new() -> ClusterMetadata {
        ClusterMetadata::default()
    }

    /// The Raft index of the last command that changed the image (0 for none). Commands that
    /// were refused or changed nothing leave it where it was, so one version always names
    /// one image.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Broker `id`, if registered.
    pub fn broker(&self, id: u32) -> Option<&Broker> {
        self.brokers.get(&id)
    }

    /// Every registered broker, by id.
    pub fn brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values()
    }

    /// The unfenced brokers, by id: those that may lead, join ISRs and get new replicas.
    pub fn live_brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Topic `name`, if it exists.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.values()
    }

    /// The first producer id not yet allocated to any broker.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Partition `partition` of topic `topic`, if both exist.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionState> {
        self.topics.get(topic)?.partition(partition)
    }

    /// The partitions `broker` currently leads, by topic name then index.
    pub fn partitions_led_by(&self, broker: u32) -> impl Iterator<Item = (&Topic, u32, &PartitionState)> {
        self.topics.values().flat_map(move |topic| {
            topic
                .partitions
                .iter()
                .zip(0u32..)
                .filter(move |(p, _)| p.leader == Some(broker))
                .map(move |(p, i)| (topic, i, p))
        })
    }

    fn is_unfenced(&self, id: u32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// Applies `command`, committed at Raft log index `index`. On success the outcome and
    /// the deltas; the version becomes `index` if anything changed. On error the image is
    /// unchanged.
    ///
    /// `index` must be above the current version; applying an index twice is a bug in the
    /// caller and is refused with UNKNOWN_SERVER_ERROR.
    pub fn apply(&mut self, index: u64, command: &Command) -> CommandResult {
        if index <= self.version {
            return err(
                ErrorCode::UnknownServerError,
                format!("Raft index {index} is not after the metadata version {}", self.version),
            );
        }
        let (outcome, deltas) = self.change(index, command)?;
        if !deltas.is_empty() {
            self.apply_deltas(index, &deltas).expect("deltas computed from this image apply to it");
        }
        Ok(Applied { outcome, deltas })
    }

    /// What applying `command` next would do, without changing the image: the outcome and
    /// deltas it would have if it were committed right after the current version, or its
    /// refusal. For validate-only requests; a later command may still change the answer.
    pub fn dry_run(&self, command: &Command) -> CommandResult {
        let index = self.version.checked_add(1).ok_or_else(|| {
            CommandError::new(ErrorCode::UnknownServerError, "the metadata version is at its maximum")
        })?;
        let (outcome, deltas) = self.change(index, command)?;
        Ok(Applied { outcome, deltas })
    }

    /// Validates `command` against the image and computes its outcome and deltas.
    fn change(&self, index: u64, command: &Command) -> Change {
        match command {
            Command::RegisterBroker { id, endpoints, rack, incarnation_id } => {
                self.register_broker(index, *id, endpoints, rack, *incarnation_id)
            }
            Command::FenceBroker { id, epoch } => self.fence_broker(*id, *epoch),
            Command::UnfenceBroker { id, epoch } => self.unfence_broker(*id, *epoch),
            Command::CreateTopic { name, partitions, replication_factor, config, assignments } => self
                .create_topic(index, name, *partitions, *replication_factor, config, assignments.as_deref()),
            Command::DeleteTopic { name } => self.delete_topic(name),
            Command::AlterTopicConfig { name, set, delete } => self.alter_topic_config(name, set, delete),
            Command::CreatePartitions { name, count } => self.create_partitions(name, *count),
            Command::AlterPartition {
                topic,
                topic_id,
                partition,
                leader_id,
                broker_epoch,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => self.alter_partition(
                topic,
                *topic_id,
                *partition,
                *leader_id,
                *broker_epoch,
                *leader_epoch,
                *partition_epoch,
                new_isr,
            ),
            Command::ElectLeaders { partitions, preferred } => {
                self.elect_leaders(partitions.as_deref(), *preferred)
            }
            Command::AllocateProducerIds { broker_id, broker_epoch } => {
                self.allocate_producer_ids(*broker_id, *broker_epoch)
            }
            Command::UpsertUser { name, credentials, only_if_no_users } => {
                self.upsert_user(name, credentials, *only_if_no_users)
            }
            Command::DeleteUser { name, mechanism } => self.delete_user(name, *mechanism),
            Command::CreateAcls { acls } => self.create_acls(acls),
            Command::DeleteAcls { filters } => self.delete_acls(filters),
        }
    }

    /// Applies a watched update: the deltas one command made, at `version`. Empty deltas
    /// change nothing (not even the version). On error the image has diverged from the
    /// controller's and may be partly updated: start again from a full image.
    pub fn apply_deltas(&mut self, version: u64, deltas: &[MetadataDelta]) -> Result<(), DeltaError> {
        if version <= self.version {
            return Err(DeltaError::OutOfOrder { version, current: self.version });
        }
        for delta in deltas {
            self.apply_delta(delta)?;
        }
        if !deltas.is_empty() {
            self.version = version;
        }
        Ok(())
    }

    fn apply_delta(&mut self, delta: &MetadataDelta) -> Result<(), DeltaError> {
        match delta {
            MetadataDelta::BrokerChanged(broker) => {
                self.brokers.insert(broker.id, broker.clone());
            }
            MetadataDelta::TopicCreated(topic) => {
                if self.topics.contains_key(&topic.name) {
                    return Err(DeltaError::TopicExists { name: topic.name.clone() });
                }
                self.topics.insert(topic.name.clone(), topic.clone());
            }
            MetadataDelta::TopicDeleted { name, id } => {
                if self.topics.get(name).is_none_or(|t| t.id != *id) {
                    return Err(DeltaError::UnknownTopic { name: name.clone() });
                }
                self.topics.remove(name);
            }
            MetadataDelta::TopicConfigChanged { name, config } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| DeltaError::UnknownTopic { name: name.clone() })?;
                topic.config = config.clone();
            }
            MetadataDelta::PartitionsCreated { topic, topic_id, first, partitions } => {
                let t = self
                    .topics
                    .get_mut(topic)
                    .filter(|t| t.id == *topic_id)
                    .ok_or_else(|| DeltaError::UnknownTopic { name: topic.clone() })?;
                if *first != t.partition_count() {
                    // Not the partitions that come next: the watcher missed or repeated a change.
                    return Err(DeltaError::UnknownPartition { topic: topic.clone(), partition: *first });
                }
                t.partitions.extend(partitions.iter().cloned());
            }
            MetadataDelta::PartitionChanged { topic, topic_id, partition, state } => {
                let t = self
                    .topics
                    .get_mut(topic)
                    .filter(|t| t.id == *topic_id)
                    .ok_or_else(|| DeltaError::UnknownTopic { name: topic.clone() })?;
                let slot =
                    usize::try_from(*partition).ok().and_then(|p| t.partitions.get_mut(p)).ok_or_else(
                        || DeltaError::UnknownPartition { topic: topic.clone(), partition: *partition },
                    )?;
                *slot = state.clone();
            }
            MetadataDelta::ProducerIdsAllocated { first_id, next_producer_id, .. } => {
                if *first_id != self.next_producer_id || next_producer_id <= first_id {
                    return Err(DeltaError::ProducerIdsOutOfOrder {
                        first_id: *first_id,
                        next: self.next_producer_id,
                    });
                }
                self.next_producer_id = *next_producer_id;
            }
            MetadataDelta::SecurityChanged(security) => self.security = security.clone(),
        }
        Ok(())
    }

    // ----- brokers -----

    fn register_broker(
        &self,
        index: u64,
        id: u32,
        endpoints: &Endpoints,
        rack: &Option<String>,
        incarnation_id: Option<u128>,
    ) -> Change {
        validate_endpoint("grpc", &endpoints.grpc)?;
        validate_endpoint("kafka", &endpoints.kafka)?;
        validate_endpoint("http", &endpoints.http)?;
        if !endpoints.internal.is_empty() {
            validate_endpoint("internal", &endpoints.internal)?;
        }
        if let Some(rack) = rack
            && (rack.is_empty() || rack.len() > RACK_LEN_MAX)
        {
            return err(ErrorCode::InvalidRequest, format!("rack names are 1 to {RACK_LEN_MAX} bytes"));
        }
        let existing = self.brokers.get(&id);
        if let Some(existing) = existing
            && incarnation_id.is_some()
            && existing.incarnation_id == incarnation_id
            && existing.endpoints == *endpoints
            && existing.rack == *rack
        {
            // The same process asking again (its first answer was lost): same epoch.
            return Ok((Outcome::BrokerRegistered { id, epoch: existing.epoch }, Vec::new()));
        }
        let broker = Broker {
            id,
            epoch: index,
            endpoints: endpoints.clone(),
            rack: rack.clone(),
            incarnation_id,
            fenced: true,
        };
        let mut deltas = vec![MetadataDelta::BrokerChanged(broker)];
        if existing.is_some_and(|b| !b.fenced) {
            // A restart the liveness check has not noticed yet: the old incarnation's
            // ISR memberships and leaderships end here.
            deltas.extend(self.fencing_changes(id));
        }
        Ok((Outcome::BrokerRegistered { id, epoch: index }, deltas))
    }

    fn current_broker(&self, id: u32, epoch: u64) -> Result<&Broker, CommandError> {
        let broker = self.brokers.get(&id).ok_or_else(|| {
            CommandError::new(ErrorCode::BrokerIdNotRegistered, format!("broker {id} is not registered"))
        })?;
        if broker.epoch != epoch {
            return err(
                ErrorCode::StaleBrokerEpoch,
                format!("broker {id} is at epoch {}, not {epoch}", broker.epoch),
            );
        }
        Ok(broker)
    }

    fn fence_broker(&self, id: u32, epoch: u64) -> Change {
        let broker = self.current_broker(id, epoch)?;
        if broker.fenced {
            return Ok((Outcome::BrokerFenced { id, already: true }, Vec::new()));
        }
        let mut deltas = vec![MetadataDelta::BrokerChanged(Broker { fenced: true, ..broker.clone() })];
        deltas.extend(self.fencing_changes(id));
        Ok((Outcome::BrokerFenced { id, already: false }, deltas))
    }

    /// The partition changes that fencing `id` makes: out of every ISR (but never the last
    /// member), and a new leader wherever it led.
    fn fencing_changes(&self, id: u32) -> Vec<MetadataDelta> {
        let mut deltas = Vec::new();
        for topic in self.topics.values() {
            for (p, index) in topic.partitions.iter().zip(0u32..) {
                if !p.in_isr(id) {
                    continue;
                }
                let mut isr = p.isr.clone();
                if isr.len() > 1 {
                    isr.retain(|&b| b != id);
                }
                let leader = if p.leader == Some(id) {
                    elect(&p.replicas, &isr, |b| b != id && self.is_unfenced(b))
                } else {
                    p.leader
                };
                if let Some(state) = transition(p, isr, leader) {
                    deltas.push(MetadataDelta::PartitionChanged {
                        topic: topic.name.clone(),
                        topic_id: topic.id,
                        partition: index,
                        state,
                    });
                }
            }
        }
        deltas
    }

    fn unfence_broker(&self, id: u32, epoch: u64) -> Change {
        let broker = self.current_broker(id, epoch)?;
        if !broker.fenced {
            return Ok((Outcome::BrokerUnfenced { id, already: true }, Vec::new()));
        }
        let mut deltas = vec![MetadataDelta::BrokerChanged(Broker { fenced: false, ..broker.clone() })];
        for topic in self.topics.values() {
            for (p, index) in topic.partitions.iter().zip(0u32..) {
                if p.leader.is_some() || !p.in_isr(id) {
                    continue;
                }
                let leader = elect(&p.replicas, &p.isr, |b| b == id || self.is_unfenced(b));
                if let Some(state) = transition(p, p.isr.clone(), leader) {
                    deltas.push(MetadataDelta::PartitionChanged {
                        topic: topic.name.clone(),
                        topic_id: topic.id,
                        partition: index,
                        state,
                    });
                }
            }
        }
        Ok((Outcome::BrokerUnfenced { id, already: false }, deltas))
    }

    // ----- producer ids -----

    fn allocate_producer_ids(&self, broker_id: u32, broker_epoch: u64) -> Change {
        self.current_broker(broker_id, broker_epoch)?;
        let first_id = self.next_producer_id;
        let Some(next_producer_id) = first_id.checked_add(i64::from(PRODUCER_ID_BLOCK_SIZE)) else {
            return err(ErrorCode::UnknownServerError, "the producer id space is exhausted");
        };
        Ok((
            Outcome::ProducerIdsAllocated { broker_id, first_id, count: PRODUCER_ID_BLOCK_SIZE },
            vec![MetadataDelta::ProducerIdsAllocated { broker_id, first_id, next_producer_id }],
        ))
    }

    // ----- topics -----

    fn create_topic(
        &self,
        index: u64,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        config: &BTreeMap<String, String>,
        assignments: Option<&[Vec<u32>]>,
    ) -> Change {
        if !is_valid_topic_name(name) {
            let shown: String = name.chars().take(TOPIC_NAME_LEN_MAX + 1).collect();
            return err(
                ErrorCode::InvalidTopicException,
                format!(
                    "invalid topic name {shown:?}: 1 to {TOPIC_NAME_LEN_MAX} of letters, digits, '.', '_', '-', \
                     and not '.' or '..'"
                ),
            );
        }
        if self.topics.contains_key(name) {
            return err(ErrorCode::TopicAlreadyExists, format!("topic {name} already exists"));
        }
        let key = collision_key(name);
        if let Some(other) = self.topics.keys().find(|t| collision_key(t) == key) {
            return err(
                ErrorCode::InvalidTopicException,
                format!(
                    "topic {name} collides with existing topic {other} ('.' and '_' are interchangeable in metric names)"
                ),
            );
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return err(
                ErrorCode::InvalidPartitions,
                format!("partitions must be 1 to {PARTITIONS_MAX}, not {partitions}"),
            );
        }
        if replication_factor < 1 {
            return err(ErrorCode::InvalidReplicationFactor, "replication factor must be at least 1");
        }
        let replica_lists = match assignments {
            Some(assignments) => {
                self.validate_assignments(assignments, partitions, replication_factor)?;
                assignments.to_vec()
            }
            None => self.place(partitions, replication_factor)?,
        };
        let config = validate_topic_config(config, replication_factor)?;
        self.check_replicas_per_broker(&replica_lists)?;
        let partitions = replica_lists.into_iter().map(|replicas| self.new_partition(replicas)).collect();
        let topic = Topic { name: name.to_owned(), id: TopicId::derive(index, name), config, partitions };
        Ok((Outcome::TopicCreated(topic.clone()), vec![MetadataDelta::TopicCreated(topic)]))
    }

    /// A new partition on `replicas`: the unfenced ones form the ISR, the first of them
    /// leads, at epoch 0.
    fn new_partition(&self, replicas: Vec<u32>) -> PartitionState {
        let isr: Vec<u32> = replicas.iter().copied().filter(|&r| self.is_unfenced(r)).collect();
        PartitionState { leader: isr.first().copied(), isr, replicas, leader_epoch: 0, partition_epoch: 0 }
    }

    /// Refuses `new` replica lists that would put more than [`REPLICAS_PER_BROKER_MAX`]
    /// replicas on any broker, counting every existing partition's.
    fn check_replicas_per_broker(&self, new: &[Vec<u32>]) -> Result<(), CommandError> {
        let mut count: BTreeMap<u32, usize> = BTreeMap::new();
        let existing = self.topics.values().flat_map(|t| t.partitions.iter().map(|p| &p.replicas));
        for replicas in existing.chain(new.iter()) {
            for &broker in replicas {
                *count.entry(broker).or_default() += 1;
            }
        }
        match count.into_iter().find(|&(_, n)| n > REPLICAS_PER_BROKER_MAX) {
            Some((broker, n)) => err(
                ErrorCode::PolicyViolation,
                format!(
                    "broker {broker} would host {n} partition replicas, over the limit of {REPLICAS_PER_BROKER_MAX} \
                     per broker: add brokers or delete topics"
                ),
            ),
            None => Ok(()),
        }
    }

    /// Places `partitions` new partitions of `replication_factor` replicas on the unfenced
    /// brokers, given the load every existing partition puts on them.
    fn place(&self, partitions: u32, replication_factor: u16) -> Result<Vec<Vec<u32>>, CommandError> {
        let candidates: Vec<Candidate> =
            self.live_brokers().map(|b| Candidate { id: b.id, rack: b.rack.clone() }).collect();
        if usize::from(replication_factor) > candidates.len() {
            return err(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} is larger than the {} unfenced brokers",
                    candidates.len()
                ),
            );
        }
        let mut load = PlacementLoad::default();
        for topic in self.topics.values() {
            for p in &topic.partitions {
                load.add(&p.replicas);
            }
        }
        place_replicas(&candidates, &load, partitions, replication_factor)
            .map_err(|e| CommandError::new(ErrorCode::InvalidReplicationFactor, e.to_string()))
    }

    /// Explicit assignments, as Kafka checks them: the right shape, distinct registered
    /// brokers, and at least one unfenced broker per partition to lead. Fenced brokers may
    /// hold replicas; they start outside the ISR.
    fn validate_assignments(
        &self,
        assignments: &[Vec<u32>],
        partitions: u32,
        replication_factor: u16,
    ) -> Result<(), CommandError> {
        let bad = |message: String| err(ErrorCode::InvalidReplicaAssignment, message);
        if assignments.len() != partitions as usize {
            return bad(format!("{} replica lists given for {partitions} partitions", assignments.len()));
        }
        for (partition, replicas) in assignments.iter().enumerate() {
            if replicas.len() != usize::from(replication_factor) {
                return bad(format!(
                    "partition {partition} has {} replicas; the replication factor is {replication_factor}",
                    replicas.len()
                ));
            }
            let distinct: BTreeSet<u32> = replicas.iter().copied().collect();
            if distinct.len() != replicas.len() {
                return bad(format!("partition {partition} lists a broker twice: {replicas:?}"));
            }
            if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return bad(format!("partition {partition} names broker {unknown}, which is not registered"));
            }
            if !replicas.iter().any(|&r| self.is_unfenced(r)) {
                return bad(format!("every broker assigned to partition {partition} is fenced"));
            }
        }
        Ok(())
    }

    fn delete_topic(&self, name: &str) -> Change {
        let topic = self.topics.get(name).ok_or_else(|| unknown_topic(name))?;
        let (name, id) = (topic.name.clone(), topic.id);
        Ok((Outcome::TopicDeleted { name: name.clone(), id }, vec![MetadataDelta::TopicDeleted { name, id }]))
    }

    fn alter_topic_config(&self, name: &str, set: &BTreeMap<String, String>, delete: &[String]) -> Change {
        let topic = self.topics.get(name).ok_or_else(|| unknown_topic(name))?;
        let mut config = topic.config.clone();
        for key in delete {
            if !config::SUPPORTED_KEYS.contains(&key.as_str()) {
                return err(ErrorCode::InvalidConfig, format!("unknown topic config {key:?}"));
            }
            if set.contains_key(key) {
                return err(ErrorCode::InvalidConfig, format!("config {key} is both set and deleted"));
            }
            config.remove(key);
        }
        config.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        // The whole result is checked: min.insync.replicas against the replication factor.
        let config = validate_topic_config(&config, topic.replication_factor())?;
        let deltas = if config == topic.config {
            Vec::new()
        } else {
            vec![MetadataDelta::TopicConfigChanged { name: name.to_owned(), config: config.clone() }]
        };
        Ok((Outcome::TopicConfigAltered { name: name.to_owned(), config }, deltas))
    }

    /// Kafka's CreatePartitions: the count only grows, the new partitions get the topic's
    /// replication factor and are placed and led as a new topic's would be.
    fn create_partitions(&self, name: &str, count: u32) -> Change {
        let topic = self.topics.get(name).ok_or_else(|| unknown_topic(name))?;
        let current = topic.partition_count();
        if count > PARTITIONS_MAX {
            return err(
                ErrorCode::InvalidPartitions,
                format!("topic {name} may have at most {PARTITIONS_MAX} partitions, not {count}"),
            );
        }
        if count < current {
            return err(
                ErrorCode::InvalidPartitions,
                format!(
                    "topic {name} has {current} partitions, more than the {count} asked for: partitions \
                     cannot be removed"
                ),
            );
        }
        if count == current {
            return err(ErrorCode::InvalidPartitions, format!("topic {name} already has {count} partitions"));
        }
        let placed = self.place(count - current, topic.replication_factor())?;
        self.check_replicas_per_broker(&placed)?;
        let partitions: Vec<PartitionState> =
            placed.into_iter().map(|replicas| self.new_partition(replicas)).collect();
        let mut grown = topic.clone();
        grown.partitions.extend(partitions.iter().cloned());
        Ok((
            Outcome::PartitionsCreated(grown),
            vec![MetadataDelta::PartitionsCreated {
                topic: topic.name.clone(),
                topic_id: topic.id,
                first: current,
                partitions,
            }],
        ))
    }

    // ----- partitions -----

    /// Checks in Kafka's order (KRaft's `validateAlterPartitionData`), so each error tells
    /// the leader the most useful thing first: it is an old incarnation; the controller is
    /// behind; it lost leadership; its view of the ISR is stale; its request is wrong.
    #[allow(clippy::too_many_arguments)]
    fn alter_partition(
        &self,
        topic_name: &str,
        topic_id: TopicId,
        partition: u32,
        leader_id: u32,
        broker_epoch: u64,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: &[IsrMember],
    ) -> Change {
        match self.brokers.get(&leader_id) {
            Some(b) if b.epoch == broker_epoch => {}
            Some(b) => {
                return err(
                    ErrorCode::StaleBrokerEpoch,
                    format!("broker {leader_id} is at epoch {}, not {broker_epoch}", b.epoch),
                );
            }
            // Kafka answers an unregistered sender the same way: it is no current incarnation.
            None => return err(ErrorCode::StaleBrokerEpoch, format!("broker {leader_id} is not registered")),
        }
        let topic = self.topics.get(topic_name).filter(|t| t.id == topic_id).ok_or_else(|| {
            CommandError::new(
                ErrorCode::UnknownTopicId,
                format!("topic id {topic_id} ({topic_name}) does not exist"),
            )
        })?;
        let current = topic.partition(partition).ok_or_else(|| {
            CommandError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("{topic_name} has no partition {partition}"),
            )
        })?;
        let here = format!("{topic_name}-{partition}");
        if leader_epoch > current.leader_epoch || partition_epoch > current.partition_epoch {
            return err(
                ErrorCode::NotController,
                format!(
                    "{here}: request at leader epoch {leader_epoch}, partition epoch {partition_epoch} is ahead of \
                     this image ({}, {})",
                    current.leader_epoch, current.partition_epoch
                ),
            );
        }
        if leader_epoch < current.leader_epoch {
            return err(
                ErrorCode::FencedLeaderEpoch,
                format!("{here}: leader epoch {leader_epoch} is older than {}", current.leader_epoch),
            );
        }
        if current.leader != Some(leader_id) {
            return err(
                ErrorCode::NotLeaderOrFollower,
                format!("{here}: broker {leader_id} is not the leader ({:?})", current.leader),
            );
        }
        if partition_epoch < current.partition_epoch {
            return err(
                ErrorCode::InvalidUpdateVersion,
                format!(
                    "{here}: partition epoch {partition_epoch} is older than {}",
                    current.partition_epoch
                ),
            );
        }
        let proposed: BTreeSet<u32> = new_isr.iter().map(|m| m.id).collect();
        if proposed.len() != new_isr.len() {
            return err(ErrorCode::InvalidRequest, format!("{here}: the new ISR lists a broker twice"));
        }
        if let Some(stranger) = proposed.iter().find(|&&b| !current.is_replica(b)) {
            return err(ErrorCode::InvalidRequest, format!("{here}: broker {stranger} is not a replica"));
        }
        if !proposed.contains(&leader_id) {
            return err(
                ErrorCode::InvalidRequest,
                format!("{here}: the new ISR must contain the leader {leader_id}"),
            );
        }
        for member in new_isr {
            let why = match self.brokers.get(&member.id) {
                None => Some("is not registered".to_owned()),
                Some(b) if b.fenced => Some("is fenced".to_owned()),
                Some(b) if member.broker_epoch.is_some_and(|e| e != b.epoch) => Some(format!(
                    "was seen at epoch {}, but is at epoch {}",
                    member.broker_epoch.unwrap_or_default(),
                    b.epoch
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                return err(ErrorCode::IneligibleReplica, format!("{here}: broker {} {why}", member.id));
            }
        }
        // Kept in replica order, so equal sets are equal lists.
        let isr: Vec<u32> = current.replicas.iter().copied().filter(|r| proposed.contains(r)).collect();
        let outcome_state = transition(current, isr, current.leader);
        let (state, deltas) = match outcome_state {
            // The ISR is already what the leader asks for (a retry whose answer was lost).
            None => (current.clone(), Vec::new()),
            Some(state) => (
                state.clone(),
                vec![MetadataDelta::PartitionChanged {
                    topic: topic.name.clone(),
                    topic_id: topic.id,
                    partition,
                    state,
                }],
            ),
        };
        Ok((Outcome::PartitionAltered { topic: topic.name.clone(), partition, state }, deltas))
    }

    fn elect_leaders(&self, partitions: Option<&[PartitionRef]>, preferred: bool) -> Change {
        let targets: Vec<PartitionRef> = match partitions {
            Some(list) => {
                if list.len() > ELECTION_PARTITIONS_MAX {
                    return err(
                        ErrorCode::InvalidRequest,
                        format!("{} partitions listed; at most {ELECTION_PARTITIONS_MAX}", list.len()),
                    );
                }
                list.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect()
            }
            None => self
                .topics
                .values()
                .flat_map(|t| {
                    (0..t.partition_count())
                        .map(|partition| PartitionRef { topic: t.name.clone(), partition })
                })
                .collect(),
        };
        let mut results = Vec::new();
        let mut deltas = Vec::new();
        for PartitionRef { topic, partition } in targets {
            let result = match self.topics.get(&topic).and_then(|t| Some((t, t.partition(partition)?))) {
                None => {
                    err(ErrorCode::UnknownTopicOrPartition, format!("unknown partition {topic}-{partition}"))
                }
                Some((t, current)) => {
                    let elected = if preferred {
                        self.preferred_election(current)
                    } else {
                        self.clean_election(current)
                    };
                    elected.inspect(|state| {
                        deltas.push(MetadataDelta::PartitionChanged {
                            topic: t.name.clone(),
                            topic_id: t.id,
                            partition,
                            state: state.clone(),
                        });
                    })
                }
            };
            let not_needed = matches!(&result, Err(e) if e.code == ErrorCode::ElectionNotNeeded);
            if partitions.is_some() || !not_needed {
                results.push(ElectionResult { topic, partition, result });
            }
        }
        Ok((Outcome::LeadersElected(results), deltas))
    }

    fn preferred_election(&self, current: &PartitionState) -> Result<PartitionState, CommandError> {
        let preferred = current.preferred_leader();
        if current.leader == Some(preferred) {
            return err(
                ErrorCode::ElectionNotNeeded,
                format!("the preferred replica {preferred} already leads"),
            );
        }
        if !current.in_isr(preferred) || !self.is_unfenced(preferred) {
            return err(
                ErrorCode::PreferredLeaderNotAvailable,
                format!("the preferred replica {preferred} is not an unfenced ISR member"),
            );
        }
        Ok(transition(current, current.isr.clone(), Some(preferred)).expect("the leader changes"))
    }

    fn clean_election(&self, current: &PartitionState) -> Result<PartitionState, CommandError> {
        if let Some(leader) = current.leader {
            return err(ErrorCode::ElectionNotNeeded, format!("broker {leader} leads"));
        }
        match elect(&current.replicas, &current.isr, |b| self.is_unfenced(b)) {
            Some(leader) => {
                Ok(transition(current, current.isr.clone(), Some(leader)).expect("the leader changes"))
            }
            None => err(
                ErrorCode::EligibleLeadersNotAvailable,
                format!("no ISR member of {:?} is unfenced, and unclean election is off", current.isr),
            ),
        }
    }

    // ----- invariants -----

    /// Checks every invariant the state machine maintains; a description of the first one
    /// broken. Run on images from outside (snapshots) and in tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_security()?;
        if self.next_producer_id < 0 {
            return Err(format!("the next producer id {} is negative", self.next_producer_id));
        }
        for (&id, broker) in &self.brokers {
            if broker.id != id {
                return Err(format!("broker {} filed under id {id}", broker.id));
            }
            if broker.epoch > self.version {
                return Err(format!("broker {id} epoch {} is after version {}", broker.epoch, self.version));
            }
        }
        let mut ids = BTreeSet::new();
        for (name, topic) in &self.topics {
            if topic.name != *name || !is_valid_topic_name(name) {
                return Err(format!("topic {:?} filed under {name:?}", topic.name));
            }
            if !ids.insert(topic.id) {
                return Err(format!("topic id {} used twice", topic.id));
            }
            if topic.partitions.is_empty() || topic.partitions.len() > PARTITIONS_MAX as usize {
                return Err(format!("topic {name} has {} partitions", topic.partitions.len()));
            }
            let rf = topic.replication_factor();
            if let Err(e) = validate_topic_config(&topic.config, rf) {
                return Err(format!("topic {name}: {e}"));
            }
            for (p, index) in topic.partitions.iter().zip(0u32..) {
                if p.replicas.len() != usize::from(rf) {
                    return Err(format!("{name}-{index}: replication factor differs from partition 0"));
                }
                self.check_partition(p).map_err(|e| format!("{name}-{index}: {e}"))?;
            }
        }
        Ok(())
    }

    fn check_partition(&self, p: &PartitionState) -> Result<(), String> {
        let replicas: BTreeSet<u32> = p.replicas.iter().copied().collect();
        if replicas.is_empty() || replicas.len() != p.replicas.len() {
            return Err(format!("bad replica list {:?}", p.replicas));
        }
        if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
            return Err(format!("replica {unknown} is not a registered broker"));
        }
        let in_replica_order: Vec<u32> = p.replicas.iter().copied().filter(|r| p.isr.contains(r)).collect();
        if p.isr.is_empty() || in_replica_order != p.isr {
            return Err(format!(
                "ISR {:?} is not a non-empty subset of {:?} in replica order",
                p.isr, p.replicas
            ));
        }
        match p.leader {
            Some(leader) => {
                if !p.in_isr(leader) {
                    return Err(format!("leader {leader} is not in the ISR {:?}", p.isr));
                }
                // The leader among them: a fenced broker never leads.
                if let Some(fenced) = p.isr.iter().find(|&&b| !self.is_unfenced(b)) {
                    return Err(format!("broker {fenced} is fenced but in the ISR of a led partition"));
                }
            }
            None => {
                if let Some(eligible) = p.isr.iter().find(|&&b| self.is_unfenced(b)) {
                    return Err(format!("offline although ISR member {eligible} is unfenced"));
                }
            }
        }
        if p.leader_epoch < 0 || p.partition_epoch < 0 {
            return Err(format!("negative epoch ({}, {})", p.leader_epoch, p.partition_epoch));
        }
        Ok(())
    }
}

fn unknown_topic(name: &str) -> CommandError {
    CommandError::new(ErrorCode::UnknownTopicOrPartition, format!("topic {name} does not exist"))
}
