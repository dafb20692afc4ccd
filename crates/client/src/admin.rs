//! Topics and the cluster's shape, over the controllers' `ControllerService`
//! (`proto/runnel/v1/controller.proto`).
//!
//! Any controller voter answers (followers forward writes to the leader). [`Admin`] tries its
//! bootstrap addresses in order while one cannot be reached, and follows a NOT_CONTROLLER
//! answer's `runnel-leader` hint once. Answers are validated into the typed results of this
//! module; a malformed answer is an error, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use runnel_proto::security::{AuthChannel, Credentials};

use crate::error::{ClientError, code, unreachable};

/// Deadline of one call: a write waits up to the controller's own 5 s write timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long to try connecting to one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer accepted (a whole cluster's topics).
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Replication factor when [`NewTopic::replication_factor`] is `None`: Kafka's usual
/// production default, capped by the number of live brokers.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// A topic id: 16 bytes, printed as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 16]);

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl TryFrom<&[u8]> for TopicId {
    type Error = ClientError;

    fn try_from(bytes: &[u8]) -> Result<Self, ClientError> {
        <[u8; 16]>::try_from(bytes)
            .map(TopicId)
            .map_err(|_| malformed(format!("a topic id of {} bytes (16 expected)", bytes.len())))
    }
}

/// An answer that breaks the protocol's contract.
fn malformed(what: String) -> ClientError {
    ClientError::new(-1, "UNKNOWN_SERVER_ERROR", format!("malformed answer: {what}"))
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
    pub name: String,
    /// At least 1.
    pub partitions: u32,
    /// Replicas per partition; `None`: [`DEFAULT_REPLICATION_FACTOR`] or the number of live
    /// brokers if fewer.
    pub replication_factor: Option<u32>,
    /// Config overrides, by Kafka name (for example `min.insync.replicas`).
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with the default replication factor and no config overrides.
    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        NewTopic { name: name.into(), partitions, replication_factor: None, configs: BTreeMap::new() }
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, rf: u32) -> Self {
        self.replication_factor = Some(rf);
        self
    }

    /// Adds a config override.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// One partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// The partition index.
    pub partition: u32,
    /// The leader's broker id; `None` while the partition is offline.
    pub leader: Option<u32>,
    /// The replicas in preference order; the first is the preferred leader.
    pub replicas: Vec<u32>,
    /// The in-sync replicas.
    pub isr: Vec<u32>,
    /// Bumped on every change of leader.
    pub leader_epoch: i32,
    /// Bumped on every change of the partition's state.
    pub partition_epoch: i32,
}

/// A topic with its configs and partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The name.
    pub name: String,
    /// The id.
    pub id: TopicId,
    /// Config overrides, in canonical form.
    pub configs: BTreeMap<String, String>,
    /// Partition i at index i.
    pub partitions: Vec<PartitionDescription>,
}

impl TryFrom<pb::TopicInfo> for TopicDescription {
    type Error = ClientError;

    fn try_from(t: pb::TopicInfo) -> Result<Self, ClientError> {
        let id = TopicId::try_from(t.topic_id.as_slice())?;
        let partitions = t
            .partitions
            .into_iter()
            .map(|p| {
                // -1 means offline; anything else must be a broker id.
                let leader = match p.leader {
                    -1 => None,
                    l => Some(u32::try_from(l).map_err(|_| malformed(format!("leader {l}")))?),
                };
                Ok(PartitionDescription {
                    partition: p.partition,
                    leader,
                    replicas: p.replicas,
                    isr: p.isr,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(TopicDescription { name: t.name, id, configs: t.configs.into_iter().collect(), partitions })
    }
}

/// A topic's name and shape, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    /// The name.
    pub name: String,
    /// The id.
    pub id: TopicId,
    /// The partition count.
    pub partitions: u32,
    /// The replication factor.
    pub replication_factor: u32,
}

/// A controller voter, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// The node id.
    pub id: u64,
    /// The address of its controller services.
    pub address: String,
    /// Whether the answering node believes it leads.
    pub is_leader: bool,
    /// Its Raft term; exact only when the voter describes itself (0: unknown).
    pub term: u64,
    /// The highest log index known to be stored on it (0: unknown).
    pub matched_index: u64,
    /// The highest log index applied; known only when the voter describes itself.
    pub applied_index: u64,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    /// The broker id.
    pub id: u32,
    /// The broker epoch (the Raft index of its registration).
    pub epoch: u64,
    /// Whether the controller fenced it (no session).
    pub fenced: bool,
    /// Its rack; empty for none.
    pub rack: String,
    /// Its gRPC address (clients, replication).
    pub grpc: String,
    /// Its Kafka wire protocol listener.
    pub kafka: String,
    /// Its health and metrics address.
    pub http: String,
}

/// The controller quorum and the brokers, as one node sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// The controller leader's node id, when one is known.
    pub leader_id: Option<u64>,
    /// The controller leader's address, when known.
    pub leader_address: Option<String>,
    /// Every voter.
    pub voters: Vec<Voter>,
    /// Every registered broker.
    pub brokers: Vec<BrokerDescription>,
    /// The node that answered.
    pub answered_by: u64,
    /// The metadata version of the answering node's image (it may lag the leader's).
    pub metadata_version: u64,
}

impl From<pb::DescribeClusterResponse> for ClusterDescription {
    fn from(c: pb::DescribeClusterResponse) -> Self {
        let voters = c
            .voters
            .into_iter()
            .map(|v| Voter {
                id: v.node_id,
                address: v.address,
                is_leader: v.is_leader,
                term: v.term,
                matched_index: v.matched_index,
                applied_index: v.applied_index,
            })
            .collect();
        let brokers = c
            .brokers
            .into_iter()
            .map(|b| {
                let e = b.endpoints.unwrap_or_default();
                BrokerDescription {
                    id: b.broker_id,
                    epoch: b.broker_epoch,
                    fenced: b.fenced,
                    rack: b.rack,
                    grpc: e.grpc,
                    kafka: e.kafka,
                    http: e.http,
                }
            })
            .collect();
        ClusterDescription {
            leader_id: (c.leader_id != 0).then_some(c.leader_id),
            leader_address: (!c.leader_address.is_empty()).then_some(c.leader_address),
            voters,
            brokers,
            answered_by: c.answered_by,
            metadata_version: c.metadata_version,
        }
    }
}

/// Topics and cluster description over the controllers. Cheap to share (`Arc<Admin>`); one
/// lazily connected channel per controller address.
#[derive(Debug)]
pub struct Admin {
    bootstrap: Vec<String>,
    clients: Mutex<HashMap<String, ControllerServiceClient<AuthChannel>>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Sent with every call.
    credentials: Credentials,
}

impl Admin {
    /// An admin client for the controllers at `bootstrap` (`host:port`), tried in order.
    pub fn new(bootstrap: Vec<String>) -> Self {
        Admin { bootstrap, clients: Mutex::new(HashMap::new()), tls: None, credentials: Credentials::none() }
    }

    /// The same admin, reaching the controllers over TLS with `tls` (their CA).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The same, sending `credentials` with every call (a cluster with `--auth`).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    fn client(&self, addr: &str) -> Result<ControllerServiceClient<AuthChannel>, tonic::Status> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = runnel_proto::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| tonic::Status::invalid_argument(format!("bad address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        let client = ControllerServiceClient::with_interceptor(channel, self.credentials.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Runs `op` against `addrs` in turn, each attempt bounded by `timeout`, until one
    /// answers: an unreachable address moves on to the next, a `runnel-leader` hint is followed
    /// once, any other error is the answer.
    async fn call<T, F, Fut>(&self, addrs: &[String], timeout: Duration, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut(ControllerServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut addrs = addrs.to_vec();
        let mut last = tonic::Status::unavailable("no bootstrap address");
        let mut followed = false;
        let mut i = 0;
        while let Some(addr) = addrs.get(i).cloned() {
            i += 1;
            let answer = match self.client(&addr) {
                Ok(client) => match tokio::time::timeout(timeout, op(client)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
                },
                Err(status) => Err(status),
            };
            match answer {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if unreachable(&status) => {
                    last = tonic::Status::unavailable(format!("{addr}: {}", status.message()));
                }
                Err(status) => {
                    let hint = status.metadata().get("runnel-leader").and_then(|v| v.to_str().ok());
                    match hint.filter(|h| !h.is_empty()) {
                        Some(leader) if !followed => {
                            followed = true;
                            addrs.insert(i, leader.to_owned());
                            last = status;
                        }
                        _ => return Err(ClientError::from(status)),
                    }
                }
            }
        }
        Err(ClientError::from(last))
    }

    /// The cluster as the first reachable controller sees it.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription, ClientError> {
        self.describe_cluster_at(&self.bootstrap, CALL_TIMEOUT).await
    }

    /// The cluster as the first reachable node of `addrs` sees it, each attempt bounded by
    /// `timeout`. Asking a voter at its own address gives its exact term and indexes.
    pub async fn describe_cluster_at(
        &self,
        addrs: &[String],
        timeout: Duration,
    ) -> Result<ClusterDescription, ClientError> {
        let answer =
            self.call(addrs, timeout, |mut c| async move {
                c.describe_cluster(pb::DescribeClusterRequest {}).await
            })
            .await?;
        Ok(ClusterDescription::from(answer))
    }

    /// Creates a topic; the controller places its replicas.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<TopicDescription, ClientError> {
        let replication_factor = match topic.replication_factor {
            Some(rf) => rf,
            None => {
                let cluster = self.describe_cluster().await?;
                let live = cluster.brokers.iter().filter(|b| !b.fenced).count();
                DEFAULT_REPLICATION_FACTOR.min(u32::try_from(live).unwrap_or(u32::MAX).max(1))
            }
        };
        let request = pb::CreateTopicRequest {
            name: topic.name.clone(),
            partitions: topic.partitions,
            replication_factor,
            configs: topic.configs.into_iter().collect(),
        };
        let created = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.create_topic(request).await }
            })
            .await?;
        let info = created
            .topic
            .ok_or_else(|| malformed(format!("no topic in the answer to creating {:?}", topic.name)))?;
        TopicDescription::try_from(info)
    }

    /// Describes a topic: every partition's leader, replicas, ISR and epochs.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = pb::DescribeTopicRequest { name: name.to_owned() };
        let described = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.describe_topic(request).await }
            })
            .await?;
        let info =
            described.topic.ok_or_else(|| malformed(format!("no topic in the answer about {name:?}")))?;
        TopicDescription::try_from(info)
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>, ClientError> {
        let listed = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| async move {
                c.list_topics(pb::ListTopicsRequest {}).await
            })
            .await?;
        listed
            .topics
            .into_iter()
            .map(|t| {
                Ok(TopicListing {
                    id: TopicId::try_from(t.topic_id.as_slice())?,
                    name: t.name,
                    partitions: t.partitions,
                    replication_factor: t.replication_factor,
                })
            })
            .collect()
    }

    /// Creates user `name`, or replaces its credentials for `mechanisms`, from `password`:
    /// the SCRAM credentials (a random salt, the stored and server keys) are computed here, so
    /// the password never leaves this process.
    pub async fn upsert_user(
        &self,
        name: &str,
        mechanisms: &[runnel_auth::Mechanism],
        password: &str,
        iterations: u32,
    ) -> Result<(), ClientError> {
        let credentials = mechanisms
            .iter()
            .map(|m| {
                let credential = runnel_auth::ScramCredential::generate(*m, password, iterations);
                runnel_proto::security::credential_to_pb(&credential)
            })
            .collect();
        let request = pb::UpsertUserRequest { name: name.to_owned(), credentials, only_if_no_users: false };
        self.call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
            let request = request.clone();
            async move { c.upsert_user(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Deletes user `name`, or only its credential for `mechanism`.
    pub async fn delete_user(
        &self,
        name: &str,
        mechanism: Option<runnel_auth::Mechanism>,
    ) -> Result<(), ClientError> {
        let request = pb::DeleteUserRequest {
            name: name.to_owned(),
            mechanism: mechanism.map(|m| m.name().to_owned()),
        };
        self.call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
            let request = request.clone();
            async move { c.delete_user(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Every user, with its mechanisms and their iteration counts.
    pub async fn list_users(&self) -> Result<Vec<pb::UserSummary>, ClientError> {
        self.call(&self.bootstrap, CALL_TIMEOUT, |mut c| async move {
            c.list_users(pb::ListUsersRequest {}).await
        })
        .await
        .map(|r| r.users)
    }

    /// Adds ACL bindings; answers how many were new.
    pub async fn create_acls(&self, acls: &[runnel_auth::AclBinding]) -> Result<u32, ClientError> {
        let request =
            pb::CreateAclsRequest { acls: acls.iter().map(runnel_proto::security::acl_to_pb).collect() };
        self.call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
            let request = request.clone();
            async move { c.create_acls(request).await }
        })
        .await
        .map(|r| r.created)
    }

    /// Deletes the ACL bindings `filter` matches; answers them.
    pub async fn delete_acls(
        &self,
        filter: &runnel_auth::AclFilter,
    ) -> Result<Vec<runnel_auth::AclBinding>, ClientError> {
        let request = pb::DeleteAclsRequest { filters: vec![runnel_proto::security::filter_to_pb(filter)] };
        let deleted = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.delete_acls(request).await }
            })
            .await?;
        bindings(deleted.deleted)
    }

    /// The ACL bindings `filter` matches.
    pub async fn list_acls(
        &self,
        filter: &runnel_auth::AclFilter,
    ) -> Result<Vec<runnel_auth::AclBinding>, ClientError> {
        let request = pb::ListAclsRequest { filter: Some(runnel_proto::security::filter_to_pb(filter)) };
        let listed = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.list_acls(request).await }
            })
            .await?;
        bindings(listed.acls)
    }

    /// Deletes a topic; answers the id it had.
    pub async fn delete_topic(&self, name: &str) -> Result<TopicId, ClientError> {
        let request = pb::DeleteTopicRequest { name: name.to_owned() };
        let deleted = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.delete_topic(request).await }
            })
            .await?;
        TopicId::try_from(deleted.topic_id.as_slice())
    }

    /// Changes a topic's config overrides: `set` takes the given values, `delete` goes back
    /// to the broker defaults. With `validate_only`, checks the change and makes none.
    /// Answers every override in force after the change (or that would be). Refused with
    /// INVALID_CONFIG (40) or UNKNOWN_TOPIC_OR_PARTITION (3).
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    ) -> Result<BTreeMap<String, String>, ClientError> {
        let request = pb::AlterTopicConfigRequest {
            name: name.to_owned(),
            set: set.into_iter().collect(),
            delete,
            validate_only,
        };
        let altered = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.alter_topic_config(request).await }
            })
            .await?;
        Ok(altered.configs.into_iter().collect())
    }

    /// Grows a topic to `count` partitions (the new total; existing partitions are
    /// untouched). With `validate_only`, checks the change and makes none. Answers the topic
    /// after the change (or as it would be). Refused with INVALID_PARTITIONS (37) when
    /// `count` does not grow the topic, INVALID_REPLICATION_FACTOR (38) or
    /// UNKNOWN_TOPIC_OR_PARTITION (3).
    pub async fn create_partitions(
        &self,
        name: &str,
        count: u32,
        validate_only: bool,
    ) -> Result<TopicDescription, ClientError> {
        let request = pb::CreatePartitionsRequest { name: name.to_owned(), count, validate_only };
        let grown = self
            .call(&self.bootstrap, CALL_TIMEOUT, |mut c| {
                let request = request.clone();
                async move { c.create_partitions(request).await }
            })
            .await?;
        let info =
            grown.topic.ok_or_else(|| malformed(format!("no topic in the answer to growing {name:?}")))?;
        TopicDescription::try_from(info)
    }

    /// Whether `name` exists (a describe that answers UNKNOWN_TOPIC_OR_PARTITION says no).
    pub async fn topic_exists(&self, name: &str) -> Result<bool, ClientError> {
        match self.describe_topic(name).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == code::UNKNOWN_TOPIC_OR_PARTITION => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Bindings off the wire; one the server should never send is a protocol error.
fn bindings(acls: Vec<pb::AclBinding>) -> Result<Vec<runnel_auth::AclBinding>, ClientError> {
    acls.into_iter()
        .map(|a| {
            runnel_proto::security::acl_from_pb(a).map_err(|e| ClientError {
                name: "UNKNOWN_SERVER_ERROR".into(),
                code: -1,
                message: format!("the server sent an ACL binding that is not valid: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_are_sixteen_bytes_in_hex() {
        let id = TopicId::try_from(&[0xab; 16][..]).unwrap();
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(TopicId::try_from(&[1, 2, 3][..]).unwrap_err().code, -1);
    }

    #[test]
    fn topic_answers_are_validated() {
        let info = pb::TopicInfo {
            name: "t".into(),
            topic_id: vec![0; 16],
            configs: [("retention.ms".to_owned(), "1000".to_owned())].into_iter().collect(),
            partitions: vec![
                pb::PartitionInfo {
                    partition: 0,
                    replicas: vec![1, 2],
                    isr: vec![1],
                    leader: 1,
                    leader_epoch: 3,
                    partition_epoch: 4,
                },
                pb::PartitionInfo { partition: 1, leader: -1, ..Default::default() },
            ],
        };
        let t = TopicDescription::try_from(info.clone()).unwrap();
        assert_eq!(t.partitions[0].leader, Some(1));
        assert_eq!(t.partitions[1].leader, None);
        assert_eq!(t.configs["retention.ms"], "1000");
        let mut bad = info;
        bad.partitions[1].leader = -7;
        assert!(TopicDescription::try_from(bad).is_err());
    }

    #[tokio::test]
    async fn nothing_reachable_is_a_network_error_naming_the_address() {
        // A port nobody listens on: connection refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let admin = Admin::new(vec![addr.clone()]);
        let e = admin.list_topics().await.unwrap_err();
        assert_eq!(e.code, code::NETWORK_EXCEPTION, "{e}");
        assert!(e.message.starts_with(&addr), "{e}");
    }
}
