//! Calls to a consumer group's coordinator (`GroupService` in `proto/runnel/v1/group.proto`).
//!
//! Any broker answers `FindCoordinator`; every other call goes to the coordinator, which may
//! move (it is the leader of one `__consumer_offsets` partition). [`Coordinator::call`] finds
//! it, sends, and on NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
//! COORDINATOR_LOAD_IN_PROGRESS or no answer looks it up again with backoff, until a
//! deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::group_service_client::GroupServiceClient;
use runnel_proto::security::{AuthChannel, Credentials};

use crate::error::{ClientError, code, error};
use crate::router::{Backoff, Failure, leader_hint};

/// Kafka's error codes of the group protocol (see `group.proto`).
pub mod group_code {
    /// The coordinator is still reading its partition (retriable).
    pub const COORDINATOR_LOAD_IN_PROGRESS: i32 = 14;
    /// The group's partition has no leader right now (retriable).
    pub const COORDINATOR_NOT_AVAILABLE: i32 = 15;
    /// The broker asked does not coordinate the group (find it again).
    pub const NOT_COORDINATOR: i32 = 16;
    /// An empty or over-long group id.
    pub const INVALID_GROUP_ID: i32 = 24;
    /// The member is not in the group: join again with epoch 0.
    pub const UNKNOWN_MEMBER_ID: i32 = 25;
    /// The operation needs a group without members.
    pub const NON_EMPTY_GROUP: i32 = 68;
    /// The member's epoch is not the coordinator's: drop every partition and join again.
    pub const FENCED_MEMBER_EPOCH: i32 = 110;
    /// A commit from an epoch the member has since left.
    pub const STALE_MEMBER_EPOCH: i32 = 113;
}

/// How long to try connecting to one broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one FindCoordinator call (the broker may create `__consumer_offsets` first).
const FIND_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings, so a call to a stopped broker fails instead of hanging.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// Largest answer accepted (a DescribeGroup of a big group).
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long [`Coordinator::call`] retries a coordinator that moved or cannot be reached.
pub const COORDINATOR_RETRY_DEADLINE: Duration = Duration::from_secs(30);

/// Whether a failed group call may succeed at the coordinator found again.
pub fn coordinator_moved(e: &ClientError) -> bool {
    use group_code::*;
    matches!(
        e.code,
        COORDINATOR_LOAD_IN_PROGRESS
            | COORDINATOR_NOT_AVAILABLE
            | NOT_COORDINATOR
            | code::NETWORK_EXCEPTION
            | code::REQUEST_TIMED_OUT
            | code::LEADER_NOT_AVAILABLE
            | code::NOT_LEADER_OR_FOLLOWER
    )
}

/// The coordinator of one group, found through the bootstrap brokers and cached.
#[derive(Debug)]
pub struct Coordinator {
    group_id: String,
    bootstrap: Vec<String>,
    clients: Mutex<HashMap<String, GroupServiceClient<AuthChannel>>>,
    /// The coordinator's address, when known.
    current: Mutex<Option<String>>,
    /// TLS to the brokers, when the cluster serves it.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Sent with every call.
    credentials: Credentials,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Coordinator {
    /// The coordinator of `group_id`, to be found through `bootstrap` (broker addresses).
    pub fn new(bootstrap: Vec<String>, group_id: impl Into<String>) -> Self {
        Coordinator {
            group_id: group_id.into(),
            bootstrap,
            clients: Mutex::new(HashMap::new()),
            current: Mutex::new(None),
            tls: None,
            credentials: Credentials::none(),
        }
    }

    /// The same coordinator, reaching the brokers over TLS with `tls` (their CA).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The same, sending `credentials` with every call (a cluster with `--auth`).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// The group this coordinator serves.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// A GroupService client for `addr` (one lazily connected channel per address).
    pub fn client(&self, addr: &str) -> Result<GroupServiceClient<AuthChannel>, ClientError> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = runnel_proto::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| {
                error(code::INVALID_REQUEST, "INVALID_REQUEST", format!("bad address {addr:?}: {e}"))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = GroupServiceClient::with_interceptor(channel, self.credentials.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Forgets the cached coordinator, so the next call looks it up again.
    pub fn invalidate(&self) {
        *lock(&self.current) = None;
    }

    /// The coordinator's address: cached, or asked of each bootstrap broker in turn.
    pub async fn address(&self) -> Result<String, ClientError> {
        if let Some(addr) = lock(&self.current).clone() {
            return Ok(addr);
        }
        let mut last = error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", "no bootstrap address");
        for addr in &self.bootstrap {
            let mut client = self.client(addr)?;
            let request = pb::FindCoordinatorRequest { group_id: self.group_id.clone() };
            match tokio::time::timeout(FIND_TIMEOUT, client.find_coordinator(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    if answer.address.is_empty() {
                        last = error(
                            group_code::COORDINATOR_NOT_AVAILABLE,
                            "COORDINATOR_NOT_AVAILABLE",
                            format!("broker {addr} named no coordinator for group {:?}", self.group_id),
                        );
                        continue;
                    }
                    *lock(&self.current) = Some(answer.address.clone());
                    return Ok(answer.address);
                }
                Ok(Err(status)) => last = Failure::from_status(status, addr).error,
                Err(_) => {
                    last = error(
                        code::NETWORK_EXCEPTION,
                        "NETWORK_EXCEPTION",
                        format!("broker {addr}: FindCoordinator timed out"),
                    )
                }
            }
            // INVALID_GROUP_ID and the like are the same everywhere: no point asking on.
            if !coordinator_moved(&last) {
                return Err(last);
            }
        }
        Err(last)
    }

    /// One attempt of `op` at the coordinator, bounded by `timeout`. On an error saying the
    /// coordinator moved, the cached address is forgotten.
    pub async fn attempt<T, F, Fut>(&self, timeout: Duration, op: F) -> Result<T, ClientError>
    where
        F: FnOnce(GroupServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let addr = match self.address().await {
            Ok(addr) => addr,
            Err(e) => return Err(e),
        };
        let client = self.client(&addr)?;
        let result = match tokio::time::timeout(timeout, op(client)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(status)) => {
                // NOT_COORDINATOR names the coordinator in `runnel-leader`: go there next.
                let hint = leader_hint(&status, &addr);
                let e = Failure::from_status(status, &addr).error;
                if e.code == group_code::NOT_COORDINATOR
                    && let Some(hint) = hint
                {
                    *lock(&self.current) = Some(hint);
                    return Err(e);
                }
                Err(e)
            }
            Err(_) => Err(error(
                code::REQUEST_TIMED_OUT,
                "REQUEST_TIMED_OUT",
                format!("coordinator {addr} did not answer within {timeout:?}"),
            )),
        };
        if let Err(e) = &result
            && coordinator_moved(e)
        {
            self.invalidate();
        }
        result
    }

    /// Runs `op` at the coordinator, each attempt bounded by `timeout`, looking the
    /// coordinator up again (with backoff) while it moves, for up to
    /// [`COORDINATOR_RETRY_DEADLINE`].
    pub async fn call<T, F, Fut>(&self, timeout: Duration, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut(GroupServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            match self.attempt(timeout, &mut op).await {
                Ok(answer) => return Ok(answer),
                Err(e) if coordinator_moved(&e) && started.elapsed() < COORDINATOR_RETRY_DEADLINE => {
                    let pause = backoff.next_delay();
                    tracing::debug!(group = %self.group_id, error = %e, ?pause, "finding the coordinator again");
                    tokio::time::sleep(pause).await;
                }
                Err(mut e) => {
                    if coordinator_moved(&e) {
                        e.message = format!("{} (still failing after {:?})", e.message, started.elapsed());
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The committed offsets of `partitions` (empty: every committed offset of the group).
    pub async fn offset_fetch(
        &self,
        partitions: Vec<pb::TopicPartitions>,
    ) -> Result<Vec<pb::CommittedOffset>, ClientError> {
        let request = pb::OffsetFetchRequest { group_id: self.group_id.clone(), partitions };
        let answer = self
            .call(Duration::from_secs(10), |mut c| {
                let request = request.clone();
                async move { c.offset_fetch(request).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(answer.offsets)
    }
}
