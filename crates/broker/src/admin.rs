//! Topic administration for client front-ends: create and delete topics through the
//! controller quorum, with Kafka's error codes and no gRPC types in the API, so the Kafka
//! listener's CreateTopics, DeleteTopics and topic auto-creation share one path.

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

/// Creates and deletes topics through the controller voters.
#[derive(Debug, Clone)]
pub struct TopicAdmin {
    controllers: Vec<String>,
    request_timeout: Duration,
    status: watch::Receiver<BrokerStatus>,
}

impl TopicAdmin {
    /// An admin calling `controllers`, each call bounded by `request_timeout`, that waits
    /// for this broker's metadata through `status`.
    pub fn new(
        controllers: Vec<String>,
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
