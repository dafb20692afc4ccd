//! The request handlers: each maps one Kafka API onto the broker's core and back. They are
//! thin on purpose: validation of records, leadership, producer state, offsets and groups
//! live in the core, which the gRPC API shares.

mod acls;
mod admin;
mod configs;
mod data;
mod groups;
mod membership;
mod metadata;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use runnel_auth::Principal;
use runnel_auth::acl::{Operation, ResourceType};
use runnel_broker::BrokerError;
use runnel_broker::metrics::{PlaneMetrics, Protocol};

use crate::{Context, codec, versions};

/// Kafka's error codes the listener itself answers with (the core's carry their own).
pub mod code {
    /// No error.
    pub const NONE: i16 = 0;
    /// 2: a batch that fails its checks.
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// 3: no such topic or partition.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// 5: no leader yet (a topic just created).
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    /// 15: the coordinator is not available.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// 17: an invalid or internal topic.
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    /// 21: acks other than -1, 0 and 1.
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    /// 35: a version or feature not supported.
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// 36: the topic exists.
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    /// 37: a bad partition count.
    pub const INVALID_PARTITIONS: i16 = 37;
    /// 38: a bad replication factor.
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    /// 39: a manual replica assignment (not supported).
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    /// 29: the client may not do this to the topic.
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    /// 30: the client may not do this to the group.
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    /// 31: the client may not do this to the cluster.
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    /// 42: a request that makes no sense.
    pub const INVALID_REQUEST: i16 = 42;
    /// 54: no authorizer (authorization is off), for the ACL APIs.
    pub const SECURITY_DISABLED: i16 = 54;
    /// 100: no topic has this id.
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

/// A broker error's Kafka code, as the wire carries it.
pub(crate) fn broker_code(e: &BrokerError) -> i16 {
    // Every code the core uses fits an i16 (they are Kafka's).
    i16::try_from(e.code.code()).unwrap_or(-1)
}

/// A request started by the reader; [`Started::run`] finishes it and encodes the answer.
pub struct Started {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    work: BoxFuture<'static, Option<ResponseKind>>,
    /// When it arrived, and where its latency goes.
    timer: Option<(Instant, PlaneMetrics)>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("key", &self.key)
            .field("version", &self.version)
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

/// A finished request: the response frame, or nothing for acks=0 produce.
#[derive(Debug)]
pub struct Reply {
    /// The API, for logs.
    pub key: ApiKey,
    /// The encoded frame; `None` when Kafka sends no response.
    pub frame: Option<anyhow::Result<Bytes>>,
}

impl Started {
    fn ready(header: &RequestHeader, key: ApiKey, response: ResponseKind) -> Self {
        Self::later(header, key, async move { Some(response) })
    }

    fn later(
        header: &RequestHeader,
        key: ApiKey,
        work: impl Future<Output = Option<ResponseKind>> + Send + 'static,
    ) -> Self {
        Started {
            key,
            version: header.request_api_version,
            correlation_id: header.correlation_id,
            work: work.boxed(),
            timer: None,
        }
    }

    /// Waits for the request's work and encodes its answer.
    pub fn run(self) -> BoxFuture<'static, Reply> {
        async move {
            let Started { key, version, correlation_id, work, timer } = self;
            let response = work.await;
            let frame = response.map(|r| codec::encode(key, version, correlation_id, &r));
            if let Some((arrived, metrics)) = timer {
                metrics.request_took(Protocol::Kafka, api_name(key), arrived.elapsed());
            }
            Reply { key, frame }
        }
        .boxed()
    }
}

/// What a client told about itself, for logs, and who it authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) id: String,
    /// The listener it came in on: the addresses it is told are that listener's.
    pub(crate) listener: Arc<str>,
    /// The authenticated principal; `None` where authentication is off.
    pub(crate) principal: Option<Principal>,
}

impl Client {
    fn new(
        addr: SocketAddr,
        header: &RequestHeader,
        listener: &Arc<str>,
        principal: Option<Principal>,
    ) -> Self {
        Client {
            addr,
            id: header.client_id.as_ref().map_or_else(String::new, |s| s.to_string()),
            listener: Arc::clone(listener),
            principal,
        }
    }

    /// Whether the client may do `operation` on the resource: always where authentication
    /// is off; otherwise as the ACLs (and super users) say.
    pub(crate) fn allowed(
        &self,
        ctx: &Context,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        match (&ctx.auth, &self.principal) {
            (None, _) => true,
            (Some(store), Some(principal)) => {
                store.authorize(principal, self.addr.ip(), operation, resource_type, name)
            }
            // Unauthenticated requests never reach a handler where authentication is on.
            (Some(_), None) => false,
        }
    }

    /// Whether the client may use an idempotent producer, as Kafka since 3.0 (KIP-679):
    /// IDEMPOTENT_WRITE on the cluster, or WRITE on some topic.
    pub(crate) fn may_produce_idempotently(&self, ctx: &Context) -> bool {
        match (&ctx.auth, &self.principal) {
            (None, _) => true,
            (Some(store), Some(principal)) => store.may_produce_idempotently(principal, self.addr.ip()),
            (Some(_), None) => false,
        }
    }
}

/// An answer made by the connection itself (the SASL exchange), in the request's order.
pub fn answer(header: &RequestHeader, key: ApiKey, response: ResponseKind) -> Started {
    Started::ready(header, key, response)
}

/// Starts one decoded request: whatever must happen in arrival order happens now.
pub fn start(
    context: &Arc<Context>,
    header: RequestHeader,
    request: RequestKind,
    peer: SocketAddr,
    listener: &Arc<str>,
    principal: Option<Principal>,
) -> Started {
    let arrived = Instant::now();
    let client = Client::new(peer, &header, listener, principal);
    let version = header.request_api_version;
    let ctx = Arc::clone(context);
    let mut started = match request {
        RequestKind::ApiVersions(_) => {
            Started::ready(&header, ApiKey::ApiVersions, ResponseKind::ApiVersions(api_versions(code::NONE)))
        }
        RequestKind::Metadata(r) => Started::later(&header, ApiKey::Metadata, async move {
            Some(ResponseKind::Metadata(metadata::metadata(&ctx, r, version, &client).await))
        }),
        RequestKind::Produce(r) => {
            let work = data::produce(&ctx, r, version, &client);
            Started::later(&header, ApiKey::Produce, async move { work.await.map(ResponseKind::Produce) })
        }
        RequestKind::Fetch(r) => Started::later(&header, ApiKey::Fetch, async move {
            Some(ResponseKind::Fetch(data::fetch(&ctx, r, version, &client).await))
        }),
        RequestKind::ListOffsets(r) => Started::ready(
            &header,
            ApiKey::ListOffsets,
            ResponseKind::ListOffsets(data::list_offsets(&ctx, r, version, &client)),
        ),
        RequestKind::OffsetForLeaderEpoch(r) => Started::ready(
            &header,
            ApiKey::OffsetForLeaderEpoch,
            ResponseKind::OffsetForLeaderEpoch(data::offset_for_leader_epoch(&ctx, r, &client)),
        ),
        RequestKind::InitProducerId(r) => Started::later(&header, ApiKey::InitProducerId, async move {
            Some(ResponseKind::InitProducerId(data::init_producer_id(&ctx, r, &client).await))
        }),
        RequestKind::FindCoordinator(r) => Started::later(&header, ApiKey::FindCoordinator, async move {
            Some(ResponseKind::FindCoordinator(groups::find_coordinator(&ctx, r, version, &client).await))
        }),
        RequestKind::OffsetCommit(r) => Started::later(&header, ApiKey::OffsetCommit, async move {
            Some(ResponseKind::OffsetCommit(groups::offset_commit(&ctx, r, &client).await))
        }),
        RequestKind::OffsetFetch(r) => Started::later(&header, ApiKey::OffsetFetch, async move {
            Some(ResponseKind::OffsetFetch(groups::offset_fetch(&ctx, r, version, &client).await))
        }),
        RequestKind::JoinGroup(r) => Started::later(&header, ApiKey::JoinGroup, async move {
            Some(ResponseKind::JoinGroup(membership::join_group(&ctx, r, version, &client).await))
        }),
        RequestKind::SyncGroup(r) => Started::later(&header, ApiKey::SyncGroup, async move {
            Some(ResponseKind::SyncGroup(membership::sync_group(&ctx, r, &client).await))
        }),
        RequestKind::Heartbeat(r) => Started::later(&header, ApiKey::Heartbeat, async move {
            Some(ResponseKind::Heartbeat(membership::heartbeat(&ctx, r, &client).await))
        }),
        RequestKind::LeaveGroup(r) => Started::later(&header, ApiKey::LeaveGroup, async move {
            Some(ResponseKind::LeaveGroup(membership::leave_group(&ctx, r, version, &client).await))
        }),
        RequestKind::ListGroups(r) => Started::ready(
            &header,
            ApiKey::ListGroups,
            ResponseKind::ListGroups(membership::list_groups(&ctx, &r, &client)),
        ),
        RequestKind::DescribeGroups(r) => Started::later(&header, ApiKey::DescribeGroups, async move {
            Some(ResponseKind::DescribeGroups(membership::describe_groups(&ctx, r, version, &client).await))
        }),
        RequestKind::DeleteGroups(r) => Started::later(&header, ApiKey::DeleteGroups, async move {
            Some(ResponseKind::DeleteGroups(membership::delete_groups(&ctx, r, &client).await))
        }),
        RequestKind::ConsumerGroupHeartbeat(r) => {
            Started::later(&header, ApiKey::ConsumerGroupHeartbeat, async move {
                Some(ResponseKind::ConsumerGroupHeartbeat(
                    membership::consumer_group_heartbeat(&ctx, r, &client).await,
                ))
            })
        }
        RequestKind::CreateTopics(r) => Started::later(&header, ApiKey::CreateTopics, async move {
            Some(ResponseKind::CreateTopics(admin::create_topics(&ctx, r, &client).await))
        }),
        RequestKind::DeleteTopics(r) => Started::later(&header, ApiKey::DeleteTopics, async move {
            Some(ResponseKind::DeleteTopics(admin::delete_topics(&ctx, r, &client).await))
        }),
        RequestKind::CreatePartitions(r) => Started::later(&header, ApiKey::CreatePartitions, async move {
            Some(ResponseKind::CreatePartitions(configs::create_partitions(&ctx, r, &client).await))
        }),
        RequestKind::DescribeConfigs(r) => Started::ready(
            &header,
            ApiKey::DescribeConfigs,
            ResponseKind::DescribeConfigs(configs::describe_configs(&ctx, r, version, &client)),
        ),
        RequestKind::AlterConfigs(r) => Started::later(&header, ApiKey::AlterConfigs, async move {
            Some(ResponseKind::AlterConfigs(configs::alter_configs(&ctx, r, &client).await))
        }),
        RequestKind::IncrementalAlterConfigs(r) => {
            Started::later(&header, ApiKey::IncrementalAlterConfigs, async move {
                Some(ResponseKind::IncrementalAlterConfigs(
                    configs::incremental_alter_configs(&ctx, r, &client).await,
                ))
            })
        }
        RequestKind::DescribeCluster(_) => Started::ready(
            &header,
            ApiKey::DescribeCluster,
            ResponseKind::DescribeCluster(admin::describe_cluster(&ctx, &client)),
        ),
        RequestKind::CreateAcls(r) => Started::later(&header, ApiKey::CreateAcls, async move {
            Some(ResponseKind::CreateAcls(acls::create_acls(&ctx, r, &client).await))
        }),
        RequestKind::DeleteAcls(r) => Started::later(&header, ApiKey::DeleteAcls, async move {
            Some(ResponseKind::DeleteAcls(acls::delete_acls(&ctx, r, &client).await))
        }),
        RequestKind::DescribeAcls(r) => Started::ready(
            &header,
            ApiKey::DescribeAcls,
            ResponseKind::DescribeAcls(acls::describe_acls(&ctx, &r, &client)),
        ),
        other => {
            // The codec refuses keys missing from versions::SERVED, so this is a served key
            // without a handler: a bug, answered by closing the connection.
            let key = ApiKey::try_from(header.request_api_key).unwrap_or(ApiKey::ApiVersions);
            tracing::error!(client = %client.addr, "kafka: no handler for {key:?}");
            drop(other);
            Started {
                key,
                version,
                correlation_id: header.correlation_id,
                work: async { None }.boxed(),
                timer: None,
            }
        }
    };
    started.timer = Some((arrived, context.plane.metrics().clone()));
    started
}

/// The `api` label of a Kafka API's latency: its name in snake case.
fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::ListGroups => "list_groups",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DeleteGroups => "delete_groups",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::OffsetForLeaderEpoch => "offset_for_leader_epoch",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::AlterConfigs => "alter_configs",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::IncrementalAlterConfigs => "incremental_alter_configs",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::ConsumerGroupHeartbeat => "consumer_group_heartbeat",
        ApiKey::SaslHandshake => "sasl_handshake",
        ApiKey::SaslAuthenticate => "sasl_authenticate",
        ApiKey::CreateAcls => "create_acls",
        ApiKey::DeleteAcls => "delete_acls",
        ApiKey::DescribeAcls => "describe_acls",
        _ => "other",
    }
}

/// The ApiVersions answer: the served table, and `error_code`.
fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(versions::api_versions())
}

/// The version-0 answer to an ApiVersions newer than served.
pub fn api_versions_too_new(correlation_id: i32) -> Started {
    Started {
        key: ApiKey::ApiVersions,
        version: 0,
        correlation_id,
        work: async { Some(ResponseKind::ApiVersions(api_versions(code::UNSUPPORTED_VERSION))) }.boxed(),
        timer: None,
    }
}

/// A string for the wire.
pub(crate) fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// Splits an advertised `host:port` (IPv6 in brackets); `None` if it has no valid port.
pub(crate) fn host_port(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splits_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(host_port("localhost:9092"), Some(("localhost".into(), 9092)));
        assert_eq!(host_port("127.0.0.1:9093"), Some(("127.0.0.1".into(), 9093)));
        assert_eq!(host_port("[::1]:9094"), Some(("::1".into(), 9094)));
        assert_eq!(host_port("nohost"), None);
        assert_eq!(host_port(":9092"), None);
        assert_eq!(host_port("h:99999"), None);
    }
}
