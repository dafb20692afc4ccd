//! The broker's metadata cache: its own model of the controller's image, built from the
//! `WatchMetadata` stream (a full image, then deltas tagged with the metadata version).

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_auth::Security;
use runnel_proto::pb::runnel::v1 as pb;

/// A broker as this broker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEntry {
    /// The broker epoch.
    pub epoch: u64,
    /// Its gRPC address (clients).
    pub grpc: String,
    /// Where other brokers fetch its replicas: its internal gRPC address, or `grpc` when it
    /// serves both planes on one listener.
    pub replication: String,
    /// Its Kafka listener address.
    pub kafka: String,
    /// Its HTTP listener address (probes, metrics, the console); empty when not advertised.
    pub http: String,
    /// Its rack; empty for none.
    pub rack: String,
    /// Whether the controller fenced it.
    pub fenced: bool,
}

/// One partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    /// Replicas in preference order.
    pub replicas: Vec<u32>,
    /// In-sync replicas.
    pub isr: Vec<u32>,
    /// The leader, `None` when offline.
    pub leader: Option<u32>,
    /// Bumped on each leader change.
    pub leader_epoch: i32,
    /// Bumped on each change of this state.
    pub partition_epoch: i32,
}

/// A topic and its partitions (partition `i` at index `i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEntry {
    /// The topic id, 16 bytes.
    pub id: Vec<u8>,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
    /// The partitions.
    pub partitions: Vec<PartitionEntry>,
}

/// Why an update could not be applied; the watcher resyncs from a fresh image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The update is malformed.
    #[error("malformed metadata update: {0}")]
    Malformed(String),
    /// A delta arrived before any image, or went back in version.
    #[error("metadata update out of order: at version {have}, got {got}")]
    OutOfOrder {
        /// The cache's version.
        have: u64,
        /// The update's version.
        got: u64,
    },
}

/// The cached image. `version == 0` with `loaded == false` means nothing arrived yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataCache {
    /// Whether a full image was received.
    pub loaded: bool,
    /// The metadata version (Raft log index) the cache is at.
    pub version: u64,
    /// Brokers by id.
    pub brokers: BTreeMap<u32, BrokerEntry>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicEntry>,
    /// The users and ACLs (shared: replaced whole, never changed in place).
    pub security: Arc<Security>,
}

fn broker(info: &pb::BrokerInfo) -> BrokerEntry {
    BrokerEntry {
        epoch: info.broker_epoch,
        grpc: info.endpoints.as_ref().map(|e| e.grpc.clone()).unwrap_or_default(),
        replication: info
            .endpoints
            .as_ref()
            .map(|e| if e.internal.is_empty() { e.grpc.clone() } else { e.internal.clone() })
            .unwrap_or_default(),
        kafka: info.endpoints.as_ref().map(|e| e.kafka.clone()).unwrap_or_default(),
        http: info.endpoints.as_ref().map(|e| e.http.clone()).unwrap_or_default(),
        rack: info.rack.clone(),
        fenced: info.fenced,
    }
}

fn security(state: &pb::SecurityState) -> Result<Security, CacheError> {
    runnel_proto::security::security_from_pb(state.clone())
        .map_err(|e| CacheError::Malformed(format!("users and ACLs: {e}")))
}

fn partition(info: &pb::PartitionInfo) -> PartitionEntry {
    PartitionEntry {
        replicas: info.replicas.clone(),
        isr: info.isr.clone(),
        leader: u32::try_from(info.leader).ok(),
        leader_epoch: info.leader_epoch,
        partition_epoch: info.partition_epoch,
    }
}

fn topic(info: &pb::TopicInfo) -> TopicEntry {
    TopicEntry {
        id: info.topic_id.clone(),
        configs: info.configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        partitions: info.partitions.iter().map(partition).collect(),
    }
}

impl MetadataCache {
    /// Applies one update: an image replaces everything, deltas must follow the version held.
    pub fn apply(&mut self, update: &pb::MetadataUpdate) -> Result<(), CacheError> {
        use pb::metadata_update::Update;
        match &update.update {
            Some(Update::Image(image)) => {
                self.brokers = image.brokers.iter().map(|b| (b.broker_id, broker(b))).collect();
                self.topics = image.topics.iter().map(|t| (t.name.clone(), topic(t))).collect();
                self.security = match &image.security {
                    Some(state) => Arc::new(security(state)?),
                    None => Arc::default(),
                };
                self.version = update.version;
                self.loaded = true;
                Ok(())
            }
            Some(Update::Deltas(deltas)) => {
                if !self.loaded || update.version <= self.version {
                    return Err(CacheError::OutOfOrder { have: self.version, got: update.version });
                }
                for delta in &deltas.deltas {
                    self.apply_delta(delta)?;
                }
                self.version = update.version;
                Ok(())
            }
            None => Err(CacheError::Malformed("an update with neither image nor deltas".into())),
        }
    }

    fn apply_delta(&mut self, delta: &pb::MetadataDelta) -> Result<(), CacheError> {
        use pb::metadata_delta::Change;
        match &delta.change {
            Some(Change::BrokerChanged(b)) => {
                self.brokers.insert(b.broker_id, broker(b));
            }
            Some(Change::TopicCreated(t)) => {
                self.topics.insert(t.name.clone(), topic(t));
            }
            Some(Change::TopicDeleted(t)) => {
                self.topics.remove(&t.name);
            }
            Some(Change::TopicConfigChanged(c)) => {
                let t = self.topic_mut(&c.name)?;
                t.configs = c.configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            Some(Change::PartitionsCreated(p)) => {
                let Some(t) = &p.topic else {
                    return Err(CacheError::Malformed("new partitions without a topic".into()));
                };
                let entry = self.topic_mut(&t.name)?;
                if entry.id != t.topic_id {
                    return Err(CacheError::Malformed(format!(
                        "new partitions for another topic {}",
                        t.name
                    )));
                }
                for state in &p.partitions {
                    // Each must come right after the last: a gap or a repeat means this cache
                    // missed or replayed a change.
                    if state.partition as usize != entry.partitions.len() {
                        return Err(CacheError::Malformed(format!(
                            "new partition {}-{} does not follow the {} there are",
                            t.name,
                            state.partition,
                            entry.partitions.len()
                        )));
                    }
                    entry.partitions.push(partition(state));
                }
            }
            Some(Change::PartitionChanged(p)) => {
                let (Some(t), Some(state)) = (&p.topic, &p.state) else {
                    return Err(CacheError::Malformed("a partition change without topic or state".into()));
                };
                let entry = self.topic_mut(&t.name)?;
                let slot = entry.partitions.get_mut(state.partition as usize).ok_or_else(|| {
                    CacheError::Malformed(format!("partition {}-{} does not exist", t.name, state.partition))
                })?;
                *slot = partition(state);
            }
            Some(Change::SecurityChanged(state)) => self.security = Arc::new(security(state)?),
            None => return Err(CacheError::Malformed("an empty delta".into())),
        }
        Ok(())
    }

    fn topic_mut(&mut self, name: &str) -> Result<&mut TopicEntry, CacheError> {
        self.topics.get_mut(name).ok_or_else(|| CacheError::Malformed(format!("unknown topic {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::metadata_delta::Change;
    use pb::metadata_update::Update;

    fn broker_info(id: u32, epoch: u64, fenced: bool) -> pb::BrokerInfo {
        pb::BrokerInfo { broker_id: id, broker_epoch: epoch, fenced, ..Default::default() }
    }

    fn topic_ref(name: &str) -> pb::TopicRef {
        pb::TopicRef { name: name.into(), topic_id: vec![7; 16] }
    }

    fn deltas(version: u64, changes: Vec<Change>) -> pb::MetadataUpdate {
        let deltas = changes.into_iter().map(|c| pb::MetadataDelta { change: Some(c) }).collect();
        pb::MetadataUpdate { version, update: Some(Update::Deltas(pb::MetadataDeltas { deltas })) }
    }

    #[test]
    fn an_image_then_deltas_then_a_new_image() {
        let mut cache = MetadataCache::default();
        assert!(cache.apply(&deltas(3, vec![])).is_err(), "deltas before an image");
        let image =
            pb::MetadataImage { brokers: vec![broker_info(1, 2, true)], topics: vec![], security: None };
        cache.apply(&pb::MetadataUpdate { version: 2, update: Some(Update::Image(image)) }).unwrap();
        assert!(cache.brokers[&1].fenced);

        let created = pb::TopicInfo {
            name: "t".into(),
            topic_id: vec![7; 16],
            partitions: vec![pb::PartitionInfo {
                partition: 0,
                replicas: vec![1],
                leader: -1,
                ..Default::default()
            }],
            ..Default::default()
        };
        cache
            .apply(&deltas(
                5,
                vec![Change::BrokerChanged(broker_info(1, 2, false)), Change::TopicCreated(created)],
            ))
            .unwrap();
        assert_eq!(cache.version, 5);
        assert!(!cache.brokers[&1].fenced);
        assert_eq!(cache.topics["t"].partitions[0].leader, None);

        let led = pb::PartitionInfo {
            partition: 0,
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            leader_epoch: 1,
            partition_epoch: 1,
        };
        cache
            .apply(&deltas(
                6,
                vec![Change::PartitionChanged(pb::PartitionChanged {
                    topic: Some(topic_ref("t")),
                    state: Some(led),
                })],
            ))
            .unwrap();
        assert_eq!(cache.topics["t"].partitions[0].leader, Some(1));
        assert_eq!(cache.apply(&deltas(6, vec![])), Err(CacheError::OutOfOrder { have: 6, got: 6 }));

        cache.apply(&deltas(7, vec![Change::TopicDeleted(topic_ref("t"))])).unwrap();
        assert!(cache.topics.is_empty());

        let image = pb::MetadataImage { brokers: vec![], topics: vec![], security: None };
        cache.apply(&pb::MetadataUpdate { version: 9, update: Some(Update::Image(image)) }).unwrap();
        assert!(cache.brokers.is_empty() && cache.version == 9);
    }

    #[test]
    fn a_topic_gains_partitions_in_order() {
        let mut cache = MetadataCache::default();
        let one = pb::PartitionInfo {
            partition: 0,
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            ..Default::default()
        };
        let topic = pb::TopicInfo {
            name: "t".into(),
            topic_id: vec![7; 16],
            partitions: vec![one.clone()],
            ..Default::default()
        };
        let image = pb::MetadataImage {
            brokers: vec![broker_info(1, 1, false)],
            topics: vec![topic],
            security: None,
        };
        cache.apply(&pb::MetadataUpdate { version: 2, update: Some(Update::Image(image)) }).unwrap();

        let added = |first: u32, n: u32| {
            Change::PartitionsCreated(pb::PartitionsCreated {
                topic: Some(topic_ref("t")),
                partitions: (first..first + n)
                    .map(|partition| pb::PartitionInfo { partition, ..one.clone() })
                    .collect(),
            })
        };
        cache.apply(&deltas(3, vec![added(1, 2)])).unwrap();
        assert_eq!(cache.topics["t"].partitions.len(), 3);
        assert_eq!(cache.topics["t"].partitions[2].leader, Some(1));
        assert_eq!(cache.version, 3);

        // A repeat, a gap, another incarnation of the topic: the cache has diverged.
        assert!(matches!(cache.apply(&deltas(4, vec![added(1, 1)])), Err(CacheError::Malformed(_))));
        let mut fresh = cache.clone();
        assert!(matches!(fresh.apply(&deltas(4, vec![added(4, 1)])), Err(CacheError::Malformed(_))));
        let other = Change::PartitionsCreated(pb::PartitionsCreated {
            topic: Some(pb::TopicRef { name: "t".into(), topic_id: vec![8; 16] }),
            partitions: vec![pb::PartitionInfo { partition: 3, ..one }],
        });
        let mut fresh = cache.clone();
        assert!(matches!(fresh.apply(&deltas(4, vec![other])), Err(CacheError::Malformed(_))));
    }

    #[test]
    fn users_and_acls_come_with_the_image_and_are_replaced_whole_by_a_delta() {
        use runnel_auth::scram::{Mechanism, ScramCredential};
        let mut security = Security::default();
        let credential = ScramCredential::from_salt(Mechanism::ScramSha256, "pw", b"salt", 4096);
        security.users.entry("alice".into()).or_default().insert(credential.mechanism, credential);
        let state = runnel_proto::security::security_to_pb(&security);
        let mut cache = MetadataCache::default();
        let image = pb::MetadataImage { brokers: vec![], topics: vec![], security: Some(state) };
        cache.apply(&pb::MetadataUpdate { version: 2, update: Some(Update::Image(image)) }).unwrap();
        assert_eq!(*cache.security, security);
        cache.apply(&deltas(3, vec![Change::SecurityChanged(pb::SecurityState::default())])).unwrap();
        assert!(cache.security.users.is_empty(), "the delta is the whole new state");
        // A credential that is not valid is refused, not stored.
        let mut bad = runnel_proto::security::security_to_pb(&security);
        bad.users[0].credentials[0].iterations = 1;
        assert!(cache.apply(&deltas(4, vec![Change::SecurityChanged(bad)])).is_err());
        // A client listener's watch sends no security: an image without it means none.
        let image = pb::MetadataImage { brokers: vec![], topics: vec![], security: None };
        cache.apply(&pb::MetadataUpdate { version: 5, update: Some(Update::Image(image)) }).unwrap();
        assert!(cache.security.users.is_empty());
    }
}
