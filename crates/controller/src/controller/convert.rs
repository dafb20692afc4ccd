//! The edge: raw protobuf requests validated into [`Command`]s (with named limits), and the
//! metadata model rendered as protobuf.

use std::collections::BTreeMap;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::security as wire;

use super::error::ControllerError;
use crate::metadata::{
    ACLS_MAX, Broker, ClusterMetadata, Command, CommandError, ENDPOINT_LEN_MAX, Endpoints, ErrorCode,
    IsrMember, MetadataDelta, PARTITIONS_MAX, PartitionState, RACK_LEN_MAX, TOPIC_NAME_LEN_MAX, Topic,
    TopicId,
};

/// Largest gRPC request the controller service accepts, in bytes. Metadata requests are
/// small; this bounds what a client can make a node allocate.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// Largest message the controller service sends (a full metadata image), in bytes.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most config overrides in one request.
pub const CONFIGS_MAX: usize = 64;
/// Longest config key, in bytes (the values are bounded by the metadata config rules).
pub const CONFIG_KEY_LEN_MAX: usize = 128;
/// Largest replication factor a request may ask for.
pub const REPLICATION_FACTOR_MAX: u32 = 16;
/// Most members in a proposed ISR.
pub const ISR_MEMBERS_MAX: usize = REPLICATION_FACTOR_MAX as usize;

fn invalid<T>(message: impl Into<String>) -> Result<T, ControllerError> {
    Err(ControllerError::Invalid(message.into()))
}

fn check_topic_name(name: &str) -> Result<(), ControllerError> {
    if name.is_empty() || name.len() > TOPIC_NAME_LEN_MAX {
        return invalid(format!("topic names are 1 to {TOPIC_NAME_LEN_MAX} bytes, not {}", name.len()));
    }
    Ok(())
}

fn topic_id(bytes: &[u8]) -> Result<TopicId, ControllerError> {
    <[u8; 16]>::try_from(bytes)
        .map(TopicId)
        .or_else(|_| invalid(format!("a topic id is 16 bytes, not {}", bytes.len())))
}

fn endpoints(endpoints: Option<pb::BrokerEndpoints>) -> Result<Endpoints, ControllerError> {
    let Some(e) = endpoints else { return invalid("endpoints are required") };
    for (kind, value) in [("grpc", &e.grpc), ("kafka", &e.kafka), ("http", &e.http)] {
        if value.is_empty() || value.len() > ENDPOINT_LEN_MAX {
            return invalid(format!("the {kind} endpoint must be 1 to {ENDPOINT_LEN_MAX} bytes"));
        }
    }
    Ok(Endpoints { grpc: e.grpc, kafka: e.kafka, http: e.http, internal: e.internal })
}

impl TryFrom<pb::CreateTopicRequest> for Command {
    type Error = ControllerError;

    fn try_from(request: pb::CreateTopicRequest) -> Result<Command, ControllerError> {
        check_topic_name(&request.name)?;
        if !(1..=PARTITIONS_MAX).contains(&request.partitions) {
            return invalid(format!("partitions must be 1 to {PARTITIONS_MAX}, not {}", request.partitions));
        }
        if !(1..=REPLICATION_FACTOR_MAX).contains(&request.replication_factor) {
            return invalid(format!(
                "replication factor must be 1 to {REPLICATION_FACTOR_MAX}, not {}",
                request.replication_factor
            ));
        }
        check_config_keys(request.configs.keys())?;
        Ok(Command::CreateTopic {
            name: request.name,
            partitions: request.partitions,
            replication_factor: u16::try_from(request.replication_factor).expect("bounded above"),
            config: request.configs.into_iter().collect(),
            assignments: None,
        })
    }
}

fn check_config_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), ControllerError> {
    let mut count = 0;
    for key in keys {
        count += 1;
        if key.is_empty() || key.len() > CONFIG_KEY_LEN_MAX {
            let shown: String = key.chars().take(32).collect();
            return invalid(format!("config key {shown:?} must be 1 to {CONFIG_KEY_LEN_MAX} bytes"));
        }
    }
    if count > CONFIGS_MAX {
        return invalid(format!("at most {CONFIGS_MAX} configs, not {count}"));
    }
    Ok(())
}

impl TryFrom<pb::AlterTopicConfigRequest> for Command {
    type Error = ControllerError;

    /// The command; `validate_only` is the caller's to read.
    fn try_from(request: pb::AlterTopicConfigRequest) -> Result<Command, ControllerError> {
        check_topic_name(&request.name)?;
        check_config_keys(request.set.keys().chain(&request.delete))?;
        Ok(Command::AlterTopicConfig {
            name: request.name,
            set: request.set.into_iter().collect(),
            delete: request.delete,
        })
    }
}

impl TryFrom<pb::CreatePartitionsRequest> for Command {
    type Error = ControllerError;

    /// The command; `validate_only` is the caller's to read. The count's bounds are the
    /// state machine's to check (INVALID_PARTITIONS, as Kafka answers).
    fn try_from(request: pb::CreatePartitionsRequest) -> Result<Command, ControllerError> {
        check_topic_name(&request.name)?;
        Ok(Command::CreatePartitions { name: request.name, count: request.count })
    }
}

impl TryFrom<pb::DeleteTopicRequest> for Command {
    type Error = ControllerError;

    fn try_from(request: pb::DeleteTopicRequest) -> Result<Command, ControllerError> {
        check_topic_name(&request.name)?;
        Ok(Command::DeleteTopic { name: request.name })
    }
}

impl TryFrom<pb::RegisterBrokerRequest> for Command {
    type Error = ControllerError;

    fn try_from(request: pb::RegisterBrokerRequest) -> Result<Command, ControllerError> {
        let endpoints = endpoints(request.endpoints)?;
        if request.rack.len() > RACK_LEN_MAX {
            return invalid(format!("rack names are at most {RACK_LEN_MAX} bytes"));
        }
        let incarnation_id = match request.incarnation_id.len() {
            0 => None,
            16 => Some(u128::from_be_bytes(request.incarnation_id.as_slice().try_into().expect("16 bytes"))),
            n => return invalid(format!("an incarnation id is 16 bytes, not {n}")),
        };
        let rack = if request.rack.is_empty() { None } else { Some(request.rack) };
        Ok(Command::RegisterBroker { id: request.broker_id, endpoints, rack, incarnation_id })
    }
}

impl From<pb::AllocateProducerIdsRequest> for Command {
    fn from(request: pb::AllocateProducerIdsRequest) -> Command {
        Command::AllocateProducerIds { broker_id: request.broker_id, broker_epoch: request.broker_epoch }
    }
}

impl TryFrom<pb::AlterPartitionRequest> for Command {
    type Error = ControllerError;

    fn try_from(request: pb::AlterPartitionRequest) -> Result<Command, ControllerError> {
        check_topic_name(&request.topic)?;
        if request.new_isr.is_empty() || request.new_isr.len() > ISR_MEMBERS_MAX {
            return invalid(format!("the new ISR must have 1 to {ISR_MEMBERS_MAX} members"));
        }
        Ok(Command::AlterPartition {
            topic: request.topic,
            topic_id: topic_id(&request.topic_id)?,
            partition: request.partition,
            leader_id: request.leader_id,
            broker_epoch: request.broker_epoch,
            leader_epoch: request.leader_epoch,
            partition_epoch: request.partition_epoch,
            new_isr: request
                .new_isr
                .into_iter()
                .map(|m| IsrMember {
                    id: m.broker_id,
                    broker_epoch: (m.broker_epoch != 0).then_some(m.broker_epoch),
                })
                .collect(),
        })
    }
}

/// A broker as protobuf.
pub(crate) fn broker_info(broker: &Broker) -> pb::BrokerInfo {
    pb::BrokerInfo {
        broker_id: broker.id,
        broker_epoch: broker.epoch,
        endpoints: Some(pb::BrokerEndpoints {
            grpc: broker.endpoints.grpc.clone(),
            kafka: broker.endpoints.kafka.clone(),
            http: broker.endpoints.http.clone(),
            internal: broker.endpoints.internal.clone(),
        }),
        rack: broker.rack.clone().unwrap_or_default(),
        fenced: broker.fenced,
    }
}

/// Partition `partition`'s state as protobuf.
pub(crate) fn partition_info(partition: u32, state: &PartitionState) -> pb::PartitionInfo {
    pb::PartitionInfo {
        partition,
        replicas: state.replicas.clone(),
        isr: state.isr.clone(),
        leader: state.leader.map_or(-1, i64::from),
        leader_epoch: state.leader_epoch,
        partition_epoch: state.partition_epoch,
    }
}

fn configs(config: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A topic as protobuf.
pub(crate) fn topic_info(topic: &Topic) -> pb::TopicInfo {
    pb::TopicInfo {
        name: topic.name.clone(),
        topic_id: topic.id.0.to_vec(),
        configs: configs(&topic.config),
        partitions: topic.partitions.iter().zip(0u32..).map(|(p, i)| partition_info(i, p)).collect(),
    }
}

/// An UpsertUser request as a command: a known mechanism and a user name that may be one.
pub(crate) fn upsert_user(request: pb::UpsertUserRequest) -> Result<Command, ControllerError> {
    crate::metadata::check_user_name(&request.name)?;
    if request.credentials.is_empty() || request.credentials.len() > runnel_auth::Mechanism::ALL.len() {
        return invalid(format!("give one credential per mechanism, not {}", request.credentials.len()));
    }
    let credentials = request
        .credentials
        .into_iter()
        .map(wire::credential_from_pb)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ControllerError::Command(CommandError::new(
                ErrorCode::UnsupportedSaslMechanism,
                format!("user {}: {e}", request.name),
            ))
        })?;
    Ok(Command::UpsertUser { name: request.name, credentials, only_if_no_users: request.only_if_no_users })
}

/// A DeleteUser request as a command.
pub(crate) fn delete_user(request: pb::DeleteUserRequest) -> Result<Command, ControllerError> {
    let mechanism =
        request.mechanism.map(|m| wire::mechanism_from_name(&m)).transpose().map_err(|e| {
            ControllerError::Command(CommandError::new(ErrorCode::UnsupportedSaslMechanism, e))
        })?;
    Ok(Command::DeleteUser { name: request.name, mechanism })
}

/// A CreateAcls request as a command: every binding valid, at most [`ACLS_MAX`] of them.
pub(crate) fn create_acls(request: pb::CreateAclsRequest) -> Result<Command, ControllerError> {
    if request.acls.is_empty() || request.acls.len() > ACLS_MAX {
        return invalid(format!("give 1 to {ACLS_MAX} ACL bindings, not {}", request.acls.len()));
    }
    let acls = request
        .acls
        .into_iter()
        .map(wire::acl_from_pb)
        .collect::<Result<_, _>>()
        .map_err(ControllerError::Invalid)?;
    Ok(Command::CreateAcls { acls })
}

/// A DeleteAcls request as a command.
pub(crate) fn delete_acls(request: pb::DeleteAclsRequest) -> Result<Command, ControllerError> {
    if request.filters.is_empty() || request.filters.len() > ACLS_MAX {
        return invalid(format!("give 1 to {ACLS_MAX} ACL filters, not {}", request.filters.len()));
    }
    let filters = request
        .filters
        .into_iter()
        .map(wire::filter_from_pb)
        .collect::<Result<_, _>>()
        .map_err(ControllerError::Invalid)?;
    Ok(Command::DeleteAcls { filters })
}

/// The whole image as protobuf.
pub(crate) fn image(image: &ClusterMetadata, with_security: bool) -> pb::MetadataImage {
    pb::MetadataImage {
        brokers: image.brokers().map(broker_info).collect(),
        topics: image.topics().map(topic_info).collect(),
        security: with_security.then(|| wire::security_to_pb(image.security())),
    }
}

/// One delta as protobuf; `None` for a change brokers do not watch (producer-id blocks), and
/// for users and ACLs unless `with_security`.
pub(crate) fn delta(delta: &MetadataDelta, with_security: bool) -> Option<pb::MetadataDelta> {
    use pb::metadata_delta::Change;
    let change = match delta {
        MetadataDelta::BrokerChanged(broker) => Change::BrokerChanged(broker_info(broker)),
        MetadataDelta::TopicCreated(topic) => Change::TopicCreated(topic_info(topic)),
        MetadataDelta::TopicDeleted { name, id } => {
            Change::TopicDeleted(pb::TopicRef { name: name.clone(), topic_id: id.0.to_vec() })
        }
        MetadataDelta::TopicConfigChanged { name, config } => {
            Change::TopicConfigChanged(pb::TopicConfigChanged {
                name: name.clone(),
                configs: configs(config),
            })
        }
        MetadataDelta::PartitionsCreated { topic, topic_id, first, partitions } => {
            Change::PartitionsCreated(pb::PartitionsCreated {
                topic: Some(pb::TopicRef { name: topic.clone(), topic_id: topic_id.0.to_vec() }),
                partitions: partitions.iter().zip(*first..).map(|(p, i)| partition_info(i, p)).collect(),
            })
        }
        MetadataDelta::PartitionChanged { topic, topic_id, partition, state } => {
            Change::PartitionChanged(pb::PartitionChanged {
                topic: Some(pb::TopicRef { name: topic.clone(), topic_id: topic_id.0.to_vec() }),
                state: Some(partition_info(*partition, state)),
            })
        }
        MetadataDelta::ProducerIdsAllocated { .. } => return None,
        MetadataDelta::SecurityChanged(security) => {
            if !with_security {
                return None;
            }
            Change::SecurityChanged(wire::security_to_pb(security))
        }
    };
    Some(pb::MetadataDelta { change: Some(change) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32, rf: u32) -> pb::CreateTopicRequest {
        pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor: rf,
            configs: Default::default(),
        }
    }

    #[test]
    fn create_topic_requests_are_checked_against_the_limits() {
        assert!(Command::try_from(create("orders", 3, 3)).is_ok());
        assert!(Command::try_from(create("", 3, 3)).is_err());
        assert!(Command::try_from(create(&"x".repeat(TOPIC_NAME_LEN_MAX + 1), 3, 3)).is_err());
        assert!(Command::try_from(create("orders", 0, 3)).is_err());
        assert!(Command::try_from(create("orders", PARTITIONS_MAX + 1, 3)).is_err());
        assert!(Command::try_from(create("orders", 1, REPLICATION_FACTOR_MAX + 1)).is_err());
        let mut many = create("orders", 1, 1);
        many.configs = (0..=CONFIGS_MAX).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Command::try_from(many).is_err());
    }

    #[test]
    fn alter_config_and_create_partitions_requests_are_checked_against_the_limits() {
        let alter = |set: &[(&str, &str)], delete: &[&str]| pb::AlterTopicConfigRequest {
            name: "orders".into(),
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            delete: delete.iter().map(|k| k.to_string()).collect(),
            validate_only: false,
        };
        assert!(matches!(
            Command::try_from(alter(&[("retention.ms", "1")], &["segment.ms"])),
            Ok(Command::AlterTopicConfig { set, delete, .. }) if set.len() == 1 && delete == ["segment.ms"]
        ));
        assert!(Command::try_from(alter(&[("", "1")], &[])).is_err());
        assert!(Command::try_from(alter(&[], &[""])).is_err());
        assert!(Command::try_from(alter(&[], &[&"k".repeat(CONFIG_KEY_LEN_MAX + 1)])).is_err());
        let many: Vec<String> = (0..=CONFIGS_MAX).map(|i| format!("k{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(Command::try_from(alter(&[], &many)).is_err());
        assert!(
            Command::try_from(pb::AlterTopicConfigRequest { name: String::new(), ..alter(&[], &[]) })
                .is_err()
        );

        let grow = pb::CreatePartitionsRequest { name: "orders".into(), count: 4, validate_only: true };
        assert_eq!(
            Command::try_from(grow.clone()).unwrap(),
            Command::CreatePartitions { name: "orders".into(), count: 4 }
        );
        assert!(Command::try_from(pb::CreatePartitionsRequest { name: String::new(), ..grow }).is_err());
    }

    #[test]
    fn register_requests_need_endpoints_and_a_16_byte_incarnation() {
        let endpoints = pb::BrokerEndpoints {
            grpc: "h:1".into(),
            kafka: "h:2".into(),
            http: "h:3".into(),
            internal: String::new(),
        };
        let ok = pb::RegisterBrokerRequest {
            broker_id: 1,
            endpoints: Some(endpoints),
            rack: String::new(),
            incarnation_id: vec![7; 16],
        };
        assert!(matches!(
            Command::try_from(ok.clone()),
            Ok(Command::RegisterBroker { rack: None, incarnation_id: Some(_), .. })
        ));
        assert!(Command::try_from(pb::RegisterBrokerRequest { endpoints: None, ..ok.clone() }).is_err());
        assert!(Command::try_from(pb::RegisterBrokerRequest { incarnation_id: vec![1; 3], ..ok }).is_err());
    }
}
