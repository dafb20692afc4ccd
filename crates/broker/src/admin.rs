//! Topic administration for client front-ends: create and delete topics, change their
//! configs and grow their partition counts, and create and delete ACLs, through the
//! controller quorum, with Kafka's error codes and no gRPC types in the API, so the Kafka
//! listener's CreateTopics, DeleteTopics, IncrementalAlterConfigs, CreatePartitions,
//! CreateAcls, DeleteAcls and topic auto-creation share one path. What a topic's configs are
//! now, defaults included, is the data plane's to say
//! ([`crate::DataPlane::describe_topic_configs`]).

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use tokio::sync::watch;

use crate::error::ERROR_NAME_KEY;
use crate::{BrokerStatus, ERROR_CODE_KEY, call_controller};

/// A refused or failed admin request, with Kafka's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} ({code}): {message}")]
pub struct AdminError {
    /// Kafka's error code (for example 36, TOPIC_ALREADY_EXISTS).
    pub code: i16,
    /// Kafka's name for it.
    pub name: String,
    /// For people.
    pub message: String,
}

impl AdminError {
    /// Kafka's REQUEST_TIMED_OUT (7), retriable.
    fn timed_out(message: impl Into<String>) -> Self {
        AdminError { code: 7, name: "REQUEST_TIMED_OUT".into(), message: message.into() }
    }

    fn from_status(status: &tonic::Status) -> Self {
        let code = status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok()?.parse::<i16>().ok());
        let name = status.metadata().get(ERROR_NAME_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
        match code {
            Some(code) => AdminError {
                code,
                name: name.unwrap_or_else(|| "UNKNOWN".into()),
                message: status.message().to_owned(),
            },
            // No controller answered: Kafka's clients retry REQUEST_TIMED_OUT.
            None => AdminError::timed_out(format!("no controller answered: {}", status.message())),
        }
    }
}

/// A new topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// 1 to 249 of `[a-zA-Z0-9._-]`.
    pub name: String,
    /// At least 1.
    pub partitions: u32,
    /// 1 to the number of unfenced brokers.
    pub replication_factor: u32,
    /// Config overrides, Kafka's names.
    pub configs: BTreeMap<String, String>,
}

/// Creates, alters and deletes topics, and creates and deletes ACLs, through the controller
/// voters.
#[derive(Debug, Clone)]
pub struct TopicAdmin {
    controllers: crate::ControllerSet,
    request_timeout: Duration,
    status: watch::Receiver<BrokerStatus>,
}

impl TopicAdmin {
    /// An admin calling `controllers`, each call bounded by `request_timeout`, that waits
    /// for this broker's metadata through `status`.
    pub fn new(
        controllers: crate::ControllerSet,
        request_timeout: Duration,
        status: watch::Receiver<BrokerStatus>,
    ) -> Self {
        TopicAdmin { controllers, request_timeout, status }
    }

    /// Creates a topic; returns the metadata version that has it.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<u64, AdminError> {
        let request = pb::CreateTopicRequest {
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: topic.configs.into_iter().collect(),
        };
        call_controller(&self.controllers, self.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.create_topic(request).await }
        })
        .await
        .map_err(|e| AdminError::from_status(&e))?;
        Ok(self.status.borrow().metadata_version)
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), AdminError> {
        let request = pb::DeleteTopicRequest { name: name.to_owned() };
        call_controller(&self.controllers, self.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.delete_topic(request).await }
        })
        .await
        .map(|_| ())
        .map_err(|e| AdminError::from_status(&e))
    }

    /// Changes topic `name`'s config overrides: the keys in `set` take their values, the
    /// keys in `delete` go back to the broker defaults (Kafka's IncrementalAlterConfigs SET
    /// and DELETE). With `validate_only`, checks the change against the controller's current
    /// metadata and changes nothing. Refusals: INVALID_CONFIG (40) for an unknown key, a
    /// value out of range or a key both set and deleted; UNKNOWN_TOPIC_OR_PARTITION (3).
    /// The brokers apply the new settings as the change reaches their metadata.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let request = pb::AlterTopicConfigRequest {
            name: name.to_owned(),
            set: set.into_iter().collect(),
            delete,
            validate_only,
        };
        call_controller(&self.controllers, self.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.alter_topic_config(request).await }
        })
        .await
        .map(|_| ())
        .map_err(|e| AdminError::from_status(&e))
    }

    /// Grows topic `name` to `count` partitions (Kafka's CreatePartitions: the new total).
    /// With `validate_only`, checks the change and changes nothing. Refusals:
    /// INVALID_PARTITIONS (37) when `count` is not above the current count or over the
    /// limit; INVALID_REPLICATION_FACTOR (38) when fewer brokers are unfenced than the
    /// topic's replication factor; UNKNOWN_TOPIC_OR_PARTITION (3). The new partitions are
    /// usable once this broker's metadata has them ([`TopicAdmin::wait_for_metadata`]).
    pub async fn create_partitions(
        &self,
        name: &str,
        count: u32,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let request = pb::CreatePartitionsRequest { name: name.to_owned(), count, validate_only };
        call_controller(&self.controllers, self.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.create_partitions(request).await }
        })
        .await
        .map(|_| ())
        .map_err(|e| AdminError::from_status(&e))
    }

    /// Adds ACL bindings (Kafka's CreateAcls), all in one controller call: bindings that
    /// exist already stay as they are. The controller refuses the call whole with
    /// INVALID_REQUEST (42) if a binding is invalid, or if there are none or too many. The
    /// brokers authorize with the new bindings as they reach their metadata.
    pub async fn create_acls(&self, acls: Vec<runnel_auth::AclBinding>) -> Result<(), AdminError> {
        let request =
            pb::CreateAclsRequest { acls: acls.iter().map(runnel_proto::security::acl_to_pb).collect() };
        call_controller(&self.controllers, self.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.create_acls(request).await }
        })
        .await
        .map(|_: pb::CreateAclsResponse| ())
        .map_err(|e| AdminError::from_status(&e))
    }

    /// Deletes every ACL binding one of `filters` matches (Kafka's DeleteAcls), all in one
    /// controller call; returns the bindings deleted (each once, whichever filters matched
    /// it). The controller refuses the call whole with INVALID_REQUEST (42) if there are no
    /// filters or too many.
    pub async fn delete_acls(
        &self,
        filters: Vec<runnel_auth::AclFilter>,
    ) -> Result<Vec<runnel_auth::AclBinding>, AdminError> {
        let request = pb::DeleteAclsRequest {
            filters: filters.iter().map(runnel_proto::security::filter_to_pb).collect(),
        };
        let response = call_controller(&self.controllers, self.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.delete_acls(request).await }
        })
        .await
        .map_err(|e| AdminError::from_status(&e))?;
        response
            .deleted
            .into_iter()
            .map(|binding| {
                runnel_proto::security::acl_from_pb(binding).map_err(|e| AdminError {
                    code: -1,
                    name: "UNKNOWN_SERVER_ERROR".into(),
                    message: format!("the controller answered an invalid ACL binding: {e}"),
                })
            })
            .collect()
    }

    /// Waits until this broker's metadata satisfies `ready`, up to `timeout`; says whether
    /// it did.
    pub async fn wait_for_metadata(&self, timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let mut status = self.status.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            status.borrow_and_update();
            if ready() {
                return true;
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                _ => return ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_controller_the_admin_calls_answer_request_timed_out() {
        // Port 1 on loopback: nothing listens, so each attempt is refused at once.
        let (_tx, status) = watch::channel(BrokerStatus::default());
        let admin = TopicAdmin::new(
            crate::ControllerSet::new(vec!["127.0.0.1:1".into()], None),
            Duration::from_secs(2),
            status,
        );
        let set = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
        let e = admin.alter_topic_config("t", set, vec![], false).await.unwrap_err();
        assert_eq!((e.code, e.name.as_str()), (7, "REQUEST_TIMED_OUT"), "{e}");
        let e = admin.create_partitions("t", 3, true).await.unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        let acl = runnel_auth::AclBinding::any_host(
            "User:alice",
            runnel_auth::ResourceType::Topic,
            "orders",
            runnel_auth::PatternType::Literal,
            runnel_auth::Operation::Read,
            runnel_auth::Permission::Allow,
        );
        let e = admin.create_acls(vec![acl]).await.unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        let e = admin.delete_acls(vec![runnel_auth::AclFilter::default()]).await.unwrap_err();
        assert_eq!(e.code, 7, "{e}");
    }
}
