//! Test harness: a Raft log in a vector. Every command it applies is checked against the
//! properties every command must keep, whatever it is.

use std::collections::BTreeMap;

use super::*;

pub(super) fn endpoints(id: u32) -> Endpoints {
    Endpoints {
        grpc: format!("node{id}.runnel:{}", 50050 + id),
        kafka: format!("node{id}.runnel:{}", 9091 + id),
        http: format!("node{id}.runnel:{}", 8080 + id),
        internal: String::new(),
    }
}

pub(super) fn register(id: u32, rack: Option<&str>) -> Command {
    Command::RegisterBroker {
        id,
        endpoints: endpoints(id),
        rack: rack.map(str::to_owned),
        incarnation_id: None,
    }
}

pub(super) fn create(name: &str, partitions: u32, replication_factor: u16) -> Command {
    Command::CreateTopic {
        name: name.to_owned(),
        partitions,
        replication_factor,
        config: BTreeMap::new(),
        assignments: None,
    }
}

pub(super) fn isr(ids: &[u32]) -> Vec<IsrMember> {
    ids.iter().map(|&id| IsrMember { id, broker_epoch: None }).collect()
}

/// An image and the log that built it.
#[derive(Debug, Default)]
pub(super) struct Cluster {
    pub(super) image: ClusterMetadata,
    pub(super) log: Vec<(u64, Command)>,
    index: u64,
}

impl Cluster {
    pub(super) fn new() -> Cluster {
        Cluster::default()
    }

    /// `brokers` registered and unfenced, racks as given (`None` for all rackless).
    pub(super) fn with_brokers(ids: &[u32], racks: Option<&[&str]>) -> Cluster {
        let mut cluster = Cluster::new();
        for (i, &id) in ids.iter().enumerate() {
            let epoch = cluster.register(id, racks.map(|r| r[i]));
            cluster.ok(Command::UnfenceBroker { id, epoch });
        }
        cluster
    }

    /// Applies `command` at the next index and checks, whatever the command:
    /// - a refusal leaves the image exactly as it was (version included);
    /// - a success keeps every invariant, bumps the version to the index iff it changed
    ///   something, and its deltas turn the previous image into the new one;
    /// - epochs never go back, and the leader epoch moves with every change of leader.
    pub(super) fn apply(&mut self, command: Command) -> CommandResult {
        self.index += 1;
        let before = self.image.clone();
        let result = self.image.apply(self.index, &command);
        match &result {
            Err(_) => assert_eq!(self.image, before, "a refused command changed the image"),
            Ok(applied) => {
                self.image.check_invariants().unwrap_or_else(|e| panic!("after {command:?}: {e}"));
                let expected_version = if applied.deltas.is_empty() { before.version() } else { self.index };
                assert_eq!(self.image.version(), expected_version);
                let mut watcher = before.clone();
                watcher
                    .apply_deltas(self.index, &applied.deltas)
                    .expect("deltas apply to the previous image");
                assert_eq!(watcher, self.image, "deltas of {command:?} do not reproduce the image");
                assert_epochs_move_forward(&before, &self.image);
            }
        }
        self.log.push((self.index, command));
        result
    }

    /// Applies a command that must succeed.
    pub(super) fn ok(&mut self, command: Command) -> Applied {
        let shown = format!("{command:?}");
        self.apply(command).unwrap_or_else(|e| panic!("{shown} failed: {e}"))
    }

    /// Applies a command that must fail, and returns its error code.
    pub(super) fn refused(&mut self, command: Command) -> ErrorCode {
        let shown = format!("{command:?}");
        match self.apply(command) {
            Ok(applied) => panic!("{shown} succeeded: {applied:?}"),
            Err(e) => e.code,
        }
    }

    /// Registers broker `id`; returns its new epoch.
    pub(super) fn register(&mut self, id: u32, rack: Option<&str>) -> u64 {
        match self.ok(register(id, rack)).outcome {
            Outcome::BrokerRegistered { epoch, .. } => epoch,
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    pub(super) fn epoch(&self, id: u32) -> u64 {
        self.image.broker(id).expect("registered").epoch
    }

    pub(super) fn partition(&self, topic: &str, partition: u32) -> PartitionState {
        self.image.partition(topic, partition).expect("partition exists").clone()
    }

    pub(super) fn fence(&mut self, id: u32) -> Applied {
        let epoch = self.epoch(id);
        self.ok(Command::FenceBroker { id, epoch })
    }

    pub(super) fn unfence(&mut self, id: u32) -> Applied {
        let epoch = self.epoch(id);
        self.ok(Command::UnfenceBroker { id, epoch })
    }

    /// An AlterPartition from the current leader, with current epochs, proposing `new_isr`.
    pub(super) fn alter_isr(&self, topic: &str, partition: u32, new_isr: &[u32]) -> Command {
        let state = self.partition(topic, partition);
        let leader = state.leader.expect("the partition has a leader");
        Command::AlterPartition {
            topic: topic.to_owned(),
            topic_id: self.image.topic(topic).expect("topic").id,
            partition,
            leader_id: leader,
            broker_epoch: self.epoch(leader),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            new_isr: isr(new_isr),
        }
    }

    /// Replays the log into a fresh image.
    pub(super) fn replay(&self) -> ClusterMetadata {
        let mut image = ClusterMetadata::new();
        for (index, command) in &self.log {
            let _ = image.apply(*index, command);
        }
        image
    }
}

/// Partition epochs never decrease; the leader epoch rises with each change of leader
/// (and only then); a surviving topic keeps its id and replicas.
pub(super) fn assert_epochs_move_forward(before: &ClusterMetadata, after: &ClusterMetadata) {
    for old in before.topics() {
        let Some(new) = after.topic(&old.name).filter(|t| t.id == old.id) else { continue };
        for (i, (p, q)) in old.partitions.iter().zip(&new.partitions).enumerate() {
            let at = format!("{}-{i}", old.name);
            assert_eq!(p.replicas, q.replicas, "{at}: replicas changed");
            assert!(q.partition_epoch >= p.partition_epoch, "{at}: partition epoch went back");
            assert!(q.leader_epoch >= p.leader_epoch, "{at}: leader epoch went back");
            if p.leader != q.leader {
                assert!(q.leader_epoch > p.leader_epoch, "{at}: leader changed without a new epoch");
            } else {
                assert_eq!(q.leader_epoch, p.leader_epoch, "{at}: leader epoch moved without a new leader");
            }
            if p != q {
                assert!(
                    q.partition_epoch > p.partition_epoch,
                    "{at}: state changed, partition epoch did not"
                );
            }
        }
    }
    for b in before.brokers() {
        let now = after.broker(b.id).expect("brokers are never removed");
        assert!(now.epoch >= b.epoch, "broker {} epoch went back", b.id);
    }
}
