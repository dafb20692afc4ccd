//! Finds partition leaders and sends requests to them, following leadership as it moves.
//!
//! The router asks any broker for `Metadata` (the last one that answered first, then the
//! bootstrap list, then every broker it has learned of), caches each partition's leader
//! address, and keeps one lazily connected channel per broker address. [`Router::call`] runs
//! a request against a partition's leader and, when the answer says leadership is elsewhere
//! or not settled yet, retries with backoff until a deadline: it follows a `runnel-leader`
//! hint at once, and otherwise refreshes the metadata before the next attempt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient;
use runnel_proto::security::{AuthChannel, Credentials};

use crate::error::code;
use crate::error::{ClientError, unreachable};

/// Largest message the client sends or accepts: a fetch answers at most 64 MiB of batches,
/// plus the response's own framing.
pub const MESSAGE_BYTES_MAX: usize = 80 * 1024 * 1024;
/// How long to try connecting to one broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one Metadata call (a paused broker must not hold a refresh up for long).
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on every channel, so a stream to a broker that stopped (SIGSTOP, a dead
/// host) fails within interval + timeout instead of hanging.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long retriable leadership errors (no leader, not the leader, broker unreachable) are
/// retried before a request fails.
pub const LEADER_RETRY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a topic or partition nobody knows of is waited for (metadata reaches brokers a
/// little after a topic is created).
pub const UNKNOWN_TOPIC_DEADLINE: Duration = Duration::from_secs(5);
/// How long a Metadata request may go unanswered before the next address is asked too.
const METADATA_HEDGE: Duration = Duration::from_millis(250);
/// How long a [`Router::moved_from`] view of a topic is reused.
const ELSEWHERE_FRESH: Duration = Duration::from_millis(200);
/// How long [`Router::moved_from`] waits for more answers once one broker answered.
const ELSEWHERE_GRACE: Duration = Duration::from_millis(150);
/// Deadline of each Metadata call of [`Router::moved_from`].
const ELSEWHERE_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause between retries; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Retry at once at this address (a NOT_LEADER_OR_FOLLOWER answer named the leader).
    Redirect(String),
    /// Leadership is moving or the broker is unreachable: refresh metadata, back off, retry.
    Refresh,
    /// The topic or partition is unknown: retry for [`UNKNOWN_TOPIC_DEADLINE`] only.
    Unknown,
    /// Give up: the error is the answer.
    Fail,
}

/// A failed attempt: the error to report and what to do next.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What to report if the request gives up.
    pub error: ClientError,
    /// What to do about it.
    pub next: Next,
}

impl Failure {
    fn new(code: i32, name: &str, message: impl Into<String>, next: Next) -> Self {
        Failure { error: ClientError { name: name.to_owned(), code, message: message.into() }, next }
    }

    /// Classifies a failed unary call or stream made to `addr`.
    pub fn from_status(status: tonic::Status, addr: &str) -> Self {
        let hint = leader_hint(&status, addr);
        // A broker dying under a call or stream surfaces as an h2 error with code Unknown
        // ("error reading a body from connection"): no answer either.
        let transport = unreachable(&status)
            || (status.code() == tonic::Code::Unknown
                && status.metadata().get("runnel-error-code").is_none());
        if transport {
            let error = ClientError {
                name: "NETWORK_EXCEPTION".into(),
                code: code::NETWORK_EXCEPTION,
                message: format!("broker {addr}: {}", status.message()),
            };
            return Failure { error, next: Next::Refresh };
        }
        let range = offset_range(&status);
        let mut error = ClientError::from(status);
        if let (code::OFFSET_OUT_OF_RANGE, Some((start, hw))) = (error.code, range) {
            error.message = format!("{} (offsets {start} to {hw} can be fetched)", error.message);
        }
        let next = next_for(error.code, hint);
        Failure { error, next }
    }

    /// Classifies an error carried in a stream response (ProduceStream) from `addr`.
    pub fn from_pb(error: &pb::Error, addr: &str) -> Self {
        let hint = Some(error.leader.clone()).filter(|h| !h.is_empty() && h != addr);
        let next = next_for(error.code, hint);
        Failure {
            error: ClientError { name: error.name.clone(), code: error.code, message: error.message.clone() },
            next,
        }
    }

    /// Whether the attempt may be retried at all.
    pub fn retriable(&self) -> bool {
        self.next != Next::Fail
    }
}

/// The address a refusal from `addr` names in `runnel-leader` (the partition's leader, or a
/// group's coordinator), unless it names `addr` itself.
pub fn leader_hint(status: &tonic::Status, addr: &str) -> Option<String> {
    status
        .metadata()
        .get("runnel-leader")
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && *h != addr)
        .map(str::to_owned)
}

/// The `runnel-log-start-offset` and `runnel-high-watermark` of an OFFSET_OUT_OF_RANGE status.
fn offset_range(status: &tonic::Status) -> Option<(i64, i64)> {
    let get = |key: &str| status.metadata().get(key)?.to_str().ok()?.parse::<i64>().ok();
    Some((get("runnel-log-start-offset")?, get("runnel-high-watermark")?))
}

/// The retry decision for a Kafka error code.
fn next_for(error_code: i32, hint: Option<String>) -> Next {
    match error_code {
        code::NOT_LEADER_OR_FOLLOWER => hint.map_or(Next::Refresh, Next::Redirect),
        // KAFKA_STORAGE_ERROR: the leader's disk failed and leadership is moving (Kafka's
        // KafkaStorageException is retriable and refreshes metadata too).
        code::LEADER_NOT_AVAILABLE | code::NETWORK_EXCEPTION | code::KAFKA_STORAGE_ERROR => Next::Refresh,
        // The ISR is short or shrank while acks=all waited: Kafka's producer retries these.
        code::NOT_ENOUGH_REPLICAS | code::NOT_ENOUGH_REPLICAS_AFTER_APPEND | code::REQUEST_TIMED_OUT => {
            Next::Refresh
        }
        code::UNKNOWN_TOPIC_OR_PARTITION => Next::Unknown,
        _ => Next::Fail,
    }
}

/// Exponential backoff with jitter, so that many partitions retrying at once spread out.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Starts at the shortest pause.
    pub fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    /// The pause before the next attempt: the current step, jittered by up to -25 %.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = rand::thread_rng().gen_range(0.75..=1.0);
        step.mul_f64(jitter)
    }

    /// Back to the shortest pause (after progress).
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Tracks one request's retries against its two deadlines, which run from the first
/// failure since the last progress (so a stream that was healthy for an hour still gets the
/// full deadline when it breaks).
#[derive(Debug)]
pub struct Retry {
    failing_since: Option<Instant>,
    unknown_since: Option<Instant>,
    backoff: Backoff,
    redirects_in_a_row: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

impl Retry {
    /// A request that has not failed yet.
    pub fn new() -> Self {
        Retry { failing_since: None, unknown_since: None, backoff: Backoff::new(), redirects_in_a_row: 0 }
    }

    /// Progress was made: the deadlines start over.
    pub fn reset(&mut self) {
        *self = Retry::new();
    }

    /// After `failure`: `Err` (the final error) when it is not retriable or a deadline has
    /// passed; otherwise how long to wait before retrying (zero to follow a first redirect at
    /// once).
    pub fn after(&mut self, failure: &Failure) -> Result<Duration, ClientError> {
        let now = Instant::now();
        let waited = now.duration_since(*self.failing_since.get_or_insert(now));
        let give_up = |what: &str| {
            let mut error = failure.error.clone();
            error.message = format!("{} (still failing after {} of {what})", error.message, secs(waited));
            Err(error)
        };
        match &failure.next {
            Next::Fail => return Err(failure.error.clone()),
            Next::Unknown => {
                let since = *self.unknown_since.get_or_insert(now);
                if now.duration_since(since) >= UNKNOWN_TOPIC_DEADLINE {
                    return give_up("waiting for the topic to appear");
                }
            }
            Next::Redirect(_) | Next::Refresh => {}
        }
        if waited >= LEADER_RETRY_DEADLINE {
            return give_up("retries");
        }
        if matches!(failure.next, Next::Redirect(_)) {
            self.redirects_in_a_row += 1;
            // Follow a hint at once; brokers that keep pointing elsewhere get the backoff.
            if self.redirects_in_a_row == 1 {
                return Ok(Duration::ZERO);
            }
        } else {
            self.redirects_in_a_row = 0;
        }
        let left = LEADER_RETRY_DEADLINE.saturating_sub(waited);
        Ok(self.backoff.next_delay().min(left))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// What the router knows of one topic.
#[derive(Debug, Clone)]
struct TopicRoute {
    /// The topic's id: a topic deleted and created again starts its epochs over.
    topic_id: Vec<u8>,
    /// Per partition index: the leader's address, or `None` with no leader (or a leader whose
    /// address is unknown).
    leaders: Vec<Option<String>>,
    /// Per partition index: the leader epoch of that leader (-1: unknown).
    epochs: Vec<i32>,
}

/// The cached metadata.
#[derive(Debug, Default)]
struct Table {
    /// Broker id → gRPC address.
    brokers: HashMap<u32, String>,
    /// Topics known to exist.
    topics: HashMap<String, TopicRoute>,
    /// Topics a Metadata answer said do not exist, with that answer's message.
    unknown: HashMap<String, ClientError>,
    /// Topics whose cached leaders are suspect: refreshed before their next use.
    stale: std::collections::HashSet<String>,
    /// The address that answered the last Metadata call: asked first next time.
    last_answered: Option<String>,
}

/// Routes requests to partition leaders. Shared by every task of a command (`Arc<Router>`).
#[derive(Debug)]
pub struct Router {
    bootstrap: Vec<String>,
    clients: Mutex<HashMap<String, BrokerServiceClient<AuthChannel>>>,
    table: Mutex<Table>,
    /// One refresh at a time: tasks that find the table stale while another refreshes wait
    /// for that refresh instead of sending their own.
    refreshing: tokio::sync::Mutex<()>,
    /// [`Router::moved_from`]'s recent answers, per (topic, broker left out), shared by every
    /// partition that asks within [`ELSEWHERE_FRESH`].
    elsewhere: Mutex<HashMap<(String, String), Recent>>,
    /// TLS to the brokers, when the cluster serves it.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Sent with every call.
    credentials: Credentials,
}

/// Per partition, a leader's address and its leader epoch.
type LeaderView = HashMap<u32, (String, i32)>;
/// A view of a topic's leaders and when it was taken.
type Recent = (Instant, Arc<LeaderView>);

/// Locks a std mutex; a poisoned one (a panic elsewhere while holding it) still holds
/// consistent data here, since every critical section is a plain map update.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    /// A router that asks the brokers at `bootstrap` (`host:port`) for metadata first.
    pub fn new(bootstrap: Vec<String>) -> Self {
        Router {
            bootstrap,
            clients: Mutex::new(HashMap::new()),
            table: Mutex::new(Table::default()),
            refreshing: tokio::sync::Mutex::new(()),
            elsewhere: Mutex::new(HashMap::new()),
            tls: None,
            credentials: Credentials::none(),
        }
    }

    /// The same router, reaching the brokers over TLS with `tls` (their CA).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The same, sending `credentials` with every call (a cluster with `--auth`).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// A client for the broker at `addr` (one channel per address, connected on first use).
    pub fn client(&self, addr: &str) -> Result<BrokerServiceClient<AuthChannel>, ClientError> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = runnel_proto::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| ClientError {
                name: "INVALID_REQUEST".into(),
                code: code::INVALID_REQUEST,
                message: format!("bad broker address {addr:?}: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(runnel_proto::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(runnel_proto::HTTP2_CONNECTION_WINDOW)
            .connect_lazy();
        let client = BrokerServiceClient::with_interceptor(channel, self.credentials.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Asks one broker after another for metadata about `topics` until one answers, and
    /// caches the answer.
    async fn fetch_metadata(&self, topics: &[String]) -> Result<(), ClientError> {
        let candidates = {
            let table = lock(&self.table);
            let mut c: Vec<String> = Vec::new();
            let mut add = |a: &String| {
                if !c.contains(a) {
                    c.push(a.clone());
                }
            };
            table.last_answered.iter().for_each(&mut add);
            self.bootstrap.iter().for_each(&mut add);
            let mut known: Vec<(&u32, &String)> = table.brokers.iter().collect();
            known.sort();
            known.into_iter().for_each(|(_, a)| add(a));
            c
        };
        let mut last = ClientError {
            name: "NETWORK_EXCEPTION".into(),
            code: code::NETWORK_EXCEPTION,
            message: "no bootstrap address".into(),
        };
        // Any failure moves on to the next address (a node without the broker role answers
        // UNIMPLEMENTED); the last one is reported when none answers. An address silent for
        // METADATA_HEDGE gets company: the next one is asked too, and the first good answer
        // wins. A stopped broker (SIGSTOP) accepts connections and never answers, so asking
        // in turn would spend METADATA_TIMEOUT on it at every refresh.
        let mut candidates = candidates.into_iter();
        let mut calls = tokio::task::JoinSet::new();
        // After a failed answer the next address is asked at once.
        let mut next_now = true;
        loop {
            let hedge = if next_now { Duration::ZERO } else { METADATA_HEDGE };
            next_now = false;
            let joined = tokio::time::timeout(hedge, calls.join_next()).await;
            let answered = match joined {
                Ok(Some(Ok(answered))) => Some(answered),
                // A call task that panicked: count it as a failed address.
                Ok(Some(Err(_))) => None,
                Ok(None) | Err(_) => {
                    // Nothing running, or the running ones are slow: ask the next address.
                    match candidates.next() {
                        Some(addr) => {
                            match self.client(&addr) {
                                Ok(mut client) => {
                                    let request = pb::MetadataRequest { topics: topics.to_vec() };
                                    calls.spawn(async move {
                                        let answer =
                                            tokio::time::timeout(METADATA_TIMEOUT, client.metadata(request))
                                                .await;
                                        (addr, answer)
                                    });
                                }
                                Err(e) => {
                                    last = e;
                                    next_now = true;
                                }
                            }
                            continue;
                        }
                        None if calls.is_empty() => return Err(last),
                        // Every address is asked: wait for the ones still running.
                        None => match calls.join_next().await {
                            Some(Ok(answered)) => Some(answered),
                            _ => None,
                        },
                    }
                }
            };
            // Any failure below asks the next address at once.
            next_now = true;
            let Some((addr, answer)) = answered else { continue };
            let answer = match answer {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    last = Failure::from_status(status, &addr).error;
                    continue;
                }
                Err(_) => {
                    last = ClientError {
                        name: "NETWORK_EXCEPTION".into(),
                        code: code::NETWORK_EXCEPTION,
                        message: format!(
                            "broker {addr}: Metadata timed out after {}",
                            secs(METADATA_TIMEOUT)
                        ),
                    };
                    continue;
                }
            };
            if answer.brokers.is_empty() {
                // A broker that has not received the cluster metadata yet (just restarted)
                // answers with no brokers and every topic unknown: not a view to act on.
                last = ClientError {
                    name: "LEADER_NOT_AVAILABLE".into(),
                    code: code::LEADER_NOT_AVAILABLE,
                    message: format!("broker {addr} has no cluster metadata yet"),
                };
                continue;
            }
            calls.abort_all();
            self.absorb(addr, topics, answer);
            return Ok(());
        }
    }

    /// Caches a Metadata answer received from `addr` to a request for `asked`.
    fn absorb(&self, addr: String, asked: &[String], answer: pb::MetadataResponse) {
        let mut table = lock(&self.table);
        for b in &answer.brokers {
            if !b.grpc.is_empty() {
                table.brokers.insert(b.broker_id, b.grpc.clone());
            }
        }
        for topic in &answer.topics {
            table.stale.remove(&topic.name);
            if let Some(e) = &topic.error {
                table.topics.remove(&topic.name);
                let error = ClientError { name: e.name.clone(), code: e.code, message: e.message.clone() };
                table.unknown.insert(topic.name.clone(), error);
                continue;
            }
            let known = table.topics.get(&topic.name).filter(|r| r.topic_id == topic.topic_id).cloned();
            let n = topic.partitions.len();
            let mut route =
                TopicRoute { topic_id: topic.topic_id.clone(), leaders: vec![None; n], epochs: vec![-1; n] };
            let mut older = false;
            for p in &topic.partitions {
                // "Partition i at index i": an out-of-range index is dropped, not trusted.
                let i = p.partition as usize;
                if i >= n {
                    continue;
                }
                // Kafka's rule (KIP-320): a leader with an older epoch than the one known is a
                // stale view (a broker that just resumed or restarted), not news.
                if let Some(k) = &known
                    && let (Some(addr), Some(&epoch)) = (k.leaders.get(i), k.epochs.get(i))
                    && epoch > p.leader_epoch
                {
                    route.leaders[i] = addr.clone();
                    route.epochs[i] = epoch;
                    older = true;
                    continue;
                }
                route.leaders[i] =
                    u32::try_from(p.leader).ok().and_then(|id| table.brokers.get(&id).cloned());
                route.epochs[i] = p.leader_epoch;
            }
            if older {
                // Ask again next time rather than trust the rest of a stale answer for long.
                table.stale.insert(topic.name.clone());
            }
            table.unknown.remove(&topic.name);
            table.topics.insert(topic.name.clone(), route);
        }
        // A topic asked for but missing from the answer does not exist either.
        for name in asked {
            if !answer.topics.iter().any(|t| &t.name == name) {
                table.topics.remove(name);
                table.stale.remove(name);
                let message = format!("topic {name:?} is not in broker {}'s metadata", answer.answered_by);
                table.unknown.insert(
                    name.clone(),
                    ClientError {
                        name: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                        code: code::UNKNOWN_TOPIC_OR_PARTITION,
                        message,
                    },
                );
            }
        }
        table.last_answered = Some(addr);
    }

    /// Refreshes `topic`'s metadata unless another task did while this one waited.
    async fn refresh(&self, topic: &str, force: bool) -> Result<(), ClientError> {
        let _one = self.refreshing.lock().await;
        let needed = {
            let table = lock(&self.table);
            force || table.stale.contains(topic) || !table.topics.contains_key(topic)
        };
        if needed {
            self.fetch_metadata(&[topic.to_owned()]).await?;
        }
        Ok(())
    }

    /// Marks `topic`'s cached leaders as suspect.
    pub fn invalidate(&self, topic: &str) {
        lock(&self.table).stale.insert(topic.to_owned());
    }

    /// Remembers a leader named by a `runnel-leader` hint.
    fn set_leader(&self, topic: &str, partition: u32, addr: String) {
        let mut table = lock(&self.table);
        if let Some(slot) = table.topics.get_mut(topic).and_then(|t| t.leaders.get_mut(partition as usize)) {
            *slot = Some(addr);
        }
    }

    /// Routes `topic`/`partition` to `addr`, the leader at `epoch`, unless a newer one is
    /// known; answers whether it did (or the topic is not cached).
    fn set_leader_at(&self, topic: &str, partition: u32, addr: String, epoch: i32) -> bool {
        let mut table = lock(&self.table);
        let Some(route) = table.topics.get_mut(topic) else { return true };
        let i = partition as usize;
        match (route.leaders.get_mut(i), route.epochs.get_mut(i)) {
            (Some(slot), Some(known)) if epoch >= *known => {
                *slot = Some(addr);
                *known = epoch;
                true
            }
            (Some(_), Some(_)) => false,
            _ => true,
        }
    }

    /// The cached view of `topic`, refreshed first when missing or stale.
    async fn route(&self, topic: &str) -> Result<TopicRoute, Failure> {
        let cached = {
            let table = lock(&self.table);
            (!table.stale.contains(topic)).then(|| table.topics.get(topic).cloned()).flatten()
        };
        if let Some(route) = cached {
            return Ok(route);
        }
        self.refresh(topic, false)
            .await
            .map_err(|error| Failure { next: next_for(error.code, None), error })?;
        let table = lock(&self.table);
        if let Some(route) = table.topics.get(topic) {
            return Ok(route.clone());
        }
        let error = table.unknown.get(topic).cloned().unwrap_or_else(|| ClientError {
            name: "UNKNOWN_TOPIC_OR_PARTITION".into(),
            code: code::UNKNOWN_TOPIC_OR_PARTITION,
            message: format!("unknown topic {topic:?}"),
        });
        Err(Failure { error, next: Next::Unknown })
    }

    /// The number of partitions of `topic`, waiting up to [`UNKNOWN_TOPIC_DEADLINE`] for a
    /// topic nobody knows of yet (and [`LEADER_RETRY_DEADLINE`] for unreachable brokers).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let mut retry = Retry::new();
        loop {
            let answer = self.route(topic).await.and_then(|route| match u32::try_from(route.leaders.len()) {
                Ok(0) | Err(_) => Err(Failure::new(
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    "UNKNOWN_TOPIC_OR_PARTITION",
                    format!("the metadata gives topic {topic:?} {} partitions", route.leaders.len()),
                    Next::Unknown,
                )),
                Ok(count) => Ok(count),
            });
            match answer {
                Ok(count) => return Ok(count),
                Err(failure) => {
                    let pause = retry.after(&failure)?;
                    self.invalidate(topic);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The leader's address for `topic`/`partition`, as cached (refreshing when stale).
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<String, Failure> {
        let route = self.route(topic).await?;
        match route.leaders.get(partition as usize) {
            Some(Some(addr)) => Ok(addr.clone()),
            Some(None) => Err(Failure::new(
                code::LEADER_NOT_AVAILABLE,
                "LEADER_NOT_AVAILABLE",
                format!("partition {topic}-{partition} has no leader"),
                Next::Refresh,
            )),
            None => Err(Failure::new(
                code::UNKNOWN_TOPIC_OR_PARTITION,
                "UNKNOWN_TOPIC_OR_PARTITION",
                format!(
                    "topic {topic:?} has {} partitions; there is no partition {partition}",
                    route.leaders.len()
                ),
                Next::Unknown,
            )),
        }
    }

    /// Whether leadership of `topic`/`partition` moved away from the broker at `from`, for a
    /// request that hangs there: a stopped (SIGSTOP) or cut-off leader keeps its connections
    /// open, so nothing fails until a timeout. Asks every other known broker for the topic's
    /// metadata at once and takes, per partition, the leader named with the highest leader
    /// epoch. Answers that leader when it is not `from` (and routes the partition to it), or
    /// `None`. One view per topic serves every partition for [`ELSEWHERE_FRESH`].
    pub async fn moved_from(&self, topic: &str, partition: u32, from: &str) -> Option<String> {
        let view = self.leaders_elsewhere(topic, from).await;
        let (addr, epoch) = view.get(&partition)?;
        if addr == from {
            return None;
        }
        // A view older than the leader already known is not a move.
        self.set_leader_at(topic, partition, addr.clone(), *epoch).then(|| addr.clone())
    }

    /// Per partition of `topic`, the leader (address, epoch) that the brokers other than
    /// `except` name with the highest epoch.
    async fn leaders_elsewhere(&self, topic: &str, except: &str) -> Arc<LeaderView> {
        let key = (topic.to_owned(), except.to_owned());
        if let Some((at, view)) = lock(&self.elsewhere).get(&key)
            && at.elapsed() < ELSEWHERE_FRESH
        {
            return Arc::clone(view);
        }
        let others: Vec<String> = {
            let table = lock(&self.table);
            let mut addrs: Vec<String> = self.bootstrap.clone();
            for a in table.brokers.values() {
                if !addrs.contains(a) {
                    addrs.push(a.clone());
                }
            }
            addrs.retain(|a| a != except);
            addrs
        };
        let mut calls = tokio::task::JoinSet::new();
        for addr in others {
            let Ok(mut client) = self.client(&addr) else { continue };
            let request = pb::MetadataRequest { topics: vec![topic.to_owned()] };
            calls.spawn(
                async move { tokio::time::timeout(ELSEWHERE_TIMEOUT, client.metadata(request)).await },
            );
        }
        let mut best = LeaderView::new();
        let mut grace_ends: Option<tokio::time::Instant> = None;
        loop {
            let joined = match grace_ends {
                None => calls.join_next().await,
                // The rest are slow or stopped: go with what answered.
                Some(end) => tokio::time::timeout_at(end, calls.join_next()).await.ok().flatten(),
            };
            let Some(joined) = joined else { break };
            let Ok(Ok(Ok(answer))) = joined else { continue };
            let answer = answer.into_inner();
            let Some(t) = answer.topics.iter().find(|t| t.name == topic && t.error.is_none()) else {
                continue;
            };
            grace_ends.get_or_insert_with(|| tokio::time::Instant::now() + ELSEWHERE_GRACE);
            let names: HashMap<u32, &String> = answer
                .brokers
                .iter()
                .filter(|b| !b.grpc.is_empty())
                .map(|b| (b.broker_id, &b.grpc))
                .collect();
            for p in &t.partitions {
                let Some(addr) = u32::try_from(p.leader).ok().and_then(|id| names.get(&id)) else { continue };
                if best.get(&p.partition).is_none_or(|(_, epoch)| p.leader_epoch > *epoch) {
                    best.insert(p.partition, ((*addr).clone(), p.leader_epoch));
                }
            }
        }
        calls.abort_all();
        let view = Arc::new(best);
        lock(&self.elsewhere).insert(key, (Instant::now(), Arc::clone(&view)));
        view
    }

    /// Acts on a failed attempt for `topic`/`partition`: remembers a redirect, or marks the
    /// topic's leaders for a refresh.
    pub fn note_failure(&self, topic: &str, partition: u32, failure: &Failure) {
        match &failure.next {
            Next::Redirect(addr) => self.set_leader(topic, partition, addr.clone()),
            Next::Refresh | Next::Unknown => self.invalidate(topic),
            Next::Fail => {}
        }
    }

    /// Runs `op` against the leader of `topic`/`partition`, each attempt bounded by
    /// `attempt_timeout`, retrying as the module docs say.
    pub async fn call<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        attempt_timeout: Duration,
        mut op: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(BrokerServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut retry = Retry::new();
        loop {
            let failure = match self.leader(topic, partition).await {
                Ok(addr) => {
                    let client = self.client(&addr)?;
                    match tokio::time::timeout(attempt_timeout, op(client)).await {
                        Ok(Ok(answer)) => return Ok(answer),
                        Ok(Err(status)) => Failure::from_status(status, &addr),
                        Err(_) => Failure::new(
                            code::REQUEST_TIMED_OUT,
                            "REQUEST_TIMED_OUT",
                            format!("broker {addr} did not answer within {}", secs(attempt_timeout)),
                            Next::Refresh,
                        ),
                    }
                }
                Err(failure) => failure,
            };
            self.note_failure(topic, partition, &failure);
            let pause = retry.after(&failure)?;
            tracing::debug!(topic, partition, error = %failure.error, ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32, name: &str, leader: Option<&str>) -> tonic::Status {
        let mut s = tonic::Status::failed_precondition(format!("{name} ({code}): something"));
        s.metadata_mut().insert("runnel-error-code", code.to_string().parse().unwrap());
        s.metadata_mut().insert("runnel-error-name", name.parse().unwrap());
        if let Some(l) = leader {
            s.metadata_mut().insert("runnel-leader", l.parse().unwrap());
        }
        s
    }

    #[test]
    fn failures_are_classified_by_kafka_code() {
        let f = Failure::from_status(status(6, "NOT_LEADER_OR_FOLLOWER", Some("h:2")), "h:1");
        assert_eq!(f.next, Next::Redirect("h:2".into()));
        assert_eq!(f.error.to_string(), "NOT_LEADER_OR_FOLLOWER (6): something");
        // A hint naming the broker that answered is no hint.
        let f = Failure::from_status(status(6, "NOT_LEADER_OR_FOLLOWER", Some("h:1")), "h:1");
        assert_eq!(f.next, Next::Refresh);
        let f = Failure::from_status(status(6, "NOT_LEADER_OR_FOLLOWER", None), "h:1");
        assert_eq!(f.next, Next::Refresh);
        assert_eq!(Failure::from_status(status(5, "LEADER_NOT_AVAILABLE", None), "h:1").next, Next::Refresh);
        assert_eq!(
            Failure::from_status(status(3, "UNKNOWN_TOPIC_OR_PARTITION", None), "h:1").next,
            Next::Unknown
        );
        let mut range = status(1, "OFFSET_OUT_OF_RANGE", None);
        range.metadata_mut().insert("runnel-log-start-offset", "5".parse().unwrap());
        range.metadata_mut().insert("runnel-high-watermark", "120".parse().unwrap());
        let f = Failure::from_status(range, "h:1");
        assert_eq!(f.next, Next::Fail);
        assert_eq!(
            f.error.to_string(),
            "OFFSET_OUT_OF_RANGE (1): something (offsets 5 to 120 can be fetched)"
        );
        assert_eq!(Failure::from_status(status(10, "MESSAGE_TOO_LARGE", None), "h:1").next, Next::Fail);
        let reset =
            Failure::from_status(tonic::Status::unknown("h2 protocol error: error reading a body"), "h:1");
        assert_eq!(reset.next, Next::Refresh);
        assert_eq!(
            reset.error.to_string(),
            "NETWORK_EXCEPTION (13): broker h:1: h2 protocol error: error reading a body"
        );
        let down = Failure::from_status(tonic::Status::unavailable("connection refused"), "h:1");
        assert_eq!(down.next, Next::Refresh);
        assert_eq!(down.error.to_string(), "NETWORK_EXCEPTION (13): broker h:1: connection refused");
        let stream_error = pb::Error {
            code: 6,
            name: "NOT_LEADER_OR_FOLLOWER".into(),
            message: "moved".into(),
            leader: "h:3".into(),
            leader_id: 3,
        };
        assert_eq!(Failure::from_pb(&stream_error, "h:1").next, Next::Redirect("h:3".into()));
    }

    #[test]
    fn retries_follow_one_redirect_at_once_then_back_off() {
        let mut retry = Retry::new();
        let redirect = Failure::new(6, "NOT_LEADER_OR_FOLLOWER", "x", Next::Redirect("h:2".into()));
        assert_eq!(retry.after(&redirect).unwrap(), Duration::ZERO);
        let second = retry.after(&redirect).unwrap();
        assert!(second > Duration::ZERO && second <= BACKOFF_MIN, "{second:?}");
        let refresh = Failure::new(5, "LEADER_NOT_AVAILABLE", "x", Next::Refresh);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = retry.after(&refresh).unwrap();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX.mul_f64(0.75), "backoff grows to its cap: {last:?}");
        let fatal = Failure::new(42, "INVALID_REQUEST", "bad", Next::Fail);
        assert_eq!(retry.after(&fatal).unwrap_err().to_string(), "INVALID_REQUEST (42): bad");
    }

    #[test]
    fn the_deadline_runs_from_the_first_failure() {
        let mut retry = Retry::new();
        // However long ago the request (or a healthy stream) started, a first failure gets
        // the whole deadline.
        let refresh = Failure::new(5, "LEADER_NOT_AVAILABLE", "none", Next::Refresh);
        assert!(retry.after(&refresh).is_ok());
        retry.failing_since = Some(Instant::now() - LEADER_RETRY_DEADLINE);
        assert!(retry.after(&refresh).is_err());
        retry.reset();
        assert!(retry.after(&refresh).is_ok());
    }

    #[test]
    fn unknown_topics_are_waited_for_briefly() {
        let mut retry = Retry::new();
        let unknown = Failure::new(3, "UNKNOWN_TOPIC_OR_PARTITION", "no such topic", Next::Unknown);
        assert!(retry.after(&unknown).is_ok());
        // Pretend the first unknown answer came 5 s ago.
        retry.unknown_since = Some(Instant::now() - UNKNOWN_TOPIC_DEADLINE);
        let err = retry.after(&unknown).unwrap_err().to_string();
        assert!(
            err.starts_with("UNKNOWN_TOPIC_OR_PARTITION (3): no such topic (still failing after"),
            "{err}"
        );
        // And leadership errors for 30 s.
        let mut retry = Retry::new();
        retry.failing_since = Some(Instant::now() - LEADER_RETRY_DEADLINE);
        let refresh = Failure::new(5, "LEADER_NOT_AVAILABLE", "none", Next::Refresh);
        assert!(retry.after(&refresh).unwrap_err().to_string().contains("still failing after 30"));
    }

    /// An in-process broker for the redirect paths: its Metadata says partition t-0 is led
    /// by broker 1 for the first `stale_metadata` answers, by broker 2 after; its Produce
    /// accepts when it is `leader`, else answers NOT_LEADER_OR_FOLLOWER, naming broker 2's
    /// address when `hint`.
    struct FakeBroker {
        leader: bool,
        hint: bool,
        stale_metadata: usize,
        addrs: [String; 2],
        metadata_calls: std::sync::atomic::AtomicUsize,
        produce_calls: std::sync::atomic::AtomicUsize,
    }

    /// The gRPC face of a [`FakeBroker`] (the trait cannot be implemented on `Arc` here).
    struct FakeService(std::sync::Arc<FakeBroker>);

    #[tonic::async_trait]
    impl pb::broker_service_server::BrokerService for FakeService {
        type ProduceStreamStream = tokio_stream::Empty<Result<pb::ProduceStreamResponse, tonic::Status>>;
        type FetchStreamStream = tokio_stream::Empty<Result<pb::FetchResponse, tonic::Status>>;

        async fn produce(
            &self,
            _: tonic::Request<pb::ProduceRequest>,
        ) -> Result<tonic::Response<pb::ProduceResponse>, tonic::Status> {
            self.0.produce_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.0.leader {
                return Ok(tonic::Response::new(pb::ProduceResponse {
                    base_offset: 7,
                    last_offset: 7,
                    log_start_offset: 0,
                    duplicate: false,
                }));
            }
            let mut s = status(6, "NOT_LEADER_OR_FOLLOWER", self.0.hint.then_some(self.0.addrs[1].as_str()));
            s.metadata_mut().insert("runnel-leader-id", "2".parse().unwrap());
            Err(s)
        }
        async fn produce_stream(
            &self,
            _: tonic::Request<tonic::Streaming<pb::ProduceStreamRequest>>,
        ) -> Result<tonic::Response<Self::ProduceStreamStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this fake"))
        }
        async fn fetch(
            &self,
            _: tonic::Request<pb::FetchRequest>,
        ) -> Result<tonic::Response<pb::FetchResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this fake"))
        }
        async fn fetch_stream(
            &self,
            _: tonic::Request<pb::FetchStreamRequest>,
        ) -> Result<tonic::Response<Self::FetchStreamStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this fake"))
        }
        async fn list_offsets(
            &self,
            _: tonic::Request<pb::ListOffsetsRequest>,
        ) -> Result<tonic::Response<pb::ListOffsetsResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this fake"))
        }
        async fn init_producer_id(
            &self,
            _: tonic::Request<pb::InitProducerIdRequest>,
        ) -> Result<tonic::Response<pb::InitProducerIdResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this fake"))
        }
        async fn metadata(
            &self,
            _: tonic::Request<pb::MetadataRequest>,
        ) -> Result<tonic::Response<pb::MetadataResponse>, tonic::Status> {
            let n = self.0.metadata_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let leader = if n < self.0.stale_metadata { 1 } else { 2 };
            let broker = |id: u32| pb::BrokerMetadata {
                broker_id: id,
                grpc: self.0.addrs[id as usize - 1].clone(),
                ..Default::default()
            };
            Ok(tonic::Response::new(pb::MetadataResponse {
                brokers: vec![broker(1), broker(2)],
                topics: vec![pb::TopicMetadata {
                    name: "t".into(),
                    topic_id: vec![1; 16],
                    partitions: vec![pb::PartitionMetadata { partition: 0, leader, ..Default::default() }],
                    error: None,
                }],
                metadata_version: 1,
                answered_by: 1,
            }))
        }
    }

    /// Two fake brokers on loopback ports; the servers stop when the runtime does.
    async fn two_brokers(hint: bool, stale_metadata: usize) -> [std::sync::Arc<FakeBroker>; 2] {
        let listeners = [
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ];
        let addrs = listeners.each_ref().map(|l| l.local_addr().unwrap().to_string());
        let mut brokers = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let fake = std::sync::Arc::new(FakeBroker {
                leader: i == 1,
                hint,
                stale_metadata,
                addrs: addrs.clone(),
                metadata_calls: Default::default(),
                produce_calls: Default::default(),
            });
            let service = pb::broker_service_server::BrokerServiceServer::new(FakeService(fake.clone()));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            brokers.push(fake);
        }
        [brokers.remove(0), brokers.remove(0)]
    }

    async fn produce_once(router: &Router) -> Result<pb::ProduceResponse, ClientError> {
        let request = pb::ProduceRequest { topic: "t".into(), partition: 0, ..Default::default() };
        router
            .call("t", 0, Duration::from_secs(5), |mut c| {
                let request = request.clone();
                async move { c.produce(request).await.map(tonic::Response::into_inner) }
            })
            .await
    }

    #[tokio::test]
    async fn a_stale_leader_is_left_for_the_one_its_hint_names() {
        let [a, b] = two_brokers(true, usize::MAX).await;
        let router = Router::new(vec![a.addrs[0].clone()]);
        assert_eq!(produce_once(&router).await.unwrap().base_offset, 7);
        let calls = |f: &FakeBroker| f.produce_calls.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!((calls(&a), calls(&b)), (1, 1), "one try at the stale leader, then the hinted one");
        // The hint is remembered: the next request goes straight to broker 2.
        assert_eq!(router.leader("t", 0).await.unwrap(), b.addrs[1]);
        produce_once(&router).await.unwrap();
        assert_eq!((calls(&a), calls(&b)), (1, 2));
    }

    #[tokio::test]
    async fn without_a_hint_the_metadata_is_refreshed() {
        let [a, b] = two_brokers(false, 1).await;
        let router = Router::new(vec![a.addrs[0].clone()]);
        assert_eq!(produce_once(&router).await.unwrap().base_offset, 7);
        let calls = |f: &FakeBroker| f.produce_calls.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!((calls(&a), calls(&b)), (1, 1));
        assert_eq!(
            a.metadata_calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "asked again after the refusal"
        );
    }

    /// A listener that accepts connections and never reads from them: what a stopped
    /// (SIGSTOP) broker looks like to a client. Answers its address.
    async fn silent_broker() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_silent_broker_does_not_hold_up_a_metadata_refresh() {
        let [a, _b] = two_brokers(false, 0).await;
        let silent = silent_broker().await;
        let router = Router::new(vec![silent, a.addrs[0].clone()]);
        let started = Instant::now();
        assert_eq!(router.leader("t", 0).await.unwrap(), a.addrs[1]);
        // Asked in turn, the silent one would cost METADATA_TIMEOUT; hedged, about METADATA_HEDGE.
        assert!(started.elapsed() < METADATA_TIMEOUT, "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn moved_from_names_the_leader_the_other_brokers_report() {
        // Both fakes' Metadata name broker 2 (b) the leader of t-0.
        let [a, b] = two_brokers(false, 0).await;
        let silent = silent_broker().await;
        let router = Router::new(vec![silent.clone(), a.addrs[0].clone()]);
        let started = Instant::now();
        // Asked about the silent broker: the others (a, and b once a named it) say b leads.
        assert_eq!(router.moved_from("t", 0, &silent).await, Some(b.addrs[1].clone()));
        assert!(started.elapsed() < METADATA_TIMEOUT, "took {:?}", started.elapsed());
        // Asked about b itself: the others still name b, so nothing moved.
        assert_eq!(router.moved_from("t", 0, &b.addrs[1]).await, None);
        // Unknown partitions never move.
        assert_eq!(router.moved_from("t", 9, &silent).await, None);
    }

    #[test]
    fn metadata_answers_are_cached_by_partition_index() {
        let router = Router::new(vec!["b:1".into()]);
        let answer = pb::MetadataResponse {
            brokers: vec![
                pb::BrokerMetadata { broker_id: 1, grpc: "h:1".into(), ..Default::default() },
                pb::BrokerMetadata { broker_id: 2, grpc: "h:2".into(), ..Default::default() },
            ],
            topics: vec![pb::TopicMetadata {
                name: "t".into(),
                topic_id: vec![0; 16],
                partitions: vec![
                    pb::PartitionMetadata { partition: 1, leader: -1, ..Default::default() },
                    pb::PartitionMetadata { partition: 0, leader: 2, ..Default::default() },
                    pb::PartitionMetadata { partition: 9, leader: 1, ..Default::default() },
                ],
                error: None,
            }],
            metadata_version: 7,
            answered_by: 1,
        };
        router.absorb("b:1".into(), &["t".into(), "gone".into()], answer);
        let table = lock(&router.table);
        assert_eq!(table.topics["t"].leaders, vec![Some("h:2".to_owned()), None, None]);
        assert_eq!(table.unknown["gone"].code, 3);
        assert_eq!(table.last_answered.as_deref(), Some("b:1"));
    }

    #[test]
    fn a_leader_with_an_older_epoch_than_the_known_one_is_not_taken() {
        let router = Router::new(vec!["b:1".into()]);
        let answer = |id: u8, leader: i64, leader_epoch: i32| pb::MetadataResponse {
            brokers: vec![
                pb::BrokerMetadata { broker_id: 1, grpc: "h:1".into(), ..Default::default() },
                pb::BrokerMetadata { broker_id: 2, grpc: "h:2".into(), ..Default::default() },
            ],
            topics: vec![pb::TopicMetadata {
                name: "t".into(),
                topic_id: vec![id; 16],
                partitions: vec![pb::PartitionMetadata {
                    partition: 0,
                    leader,
                    leader_epoch,
                    ..Default::default()
                }],
                error: None,
            }],
            metadata_version: 1,
            answered_by: 1,
        };
        let leader = |r: &Router| lock(&r.table).topics["t"].leaders[0].clone().unwrap();
        let stale = |r: &Router| lock(&r.table).stale.contains("t");
        router.absorb("b:1".into(), &["t".into()], answer(1, 2, 5));
        assert_eq!((leader(&router), stale(&router)), ("h:2".to_owned(), false));
        // A broker that just resumed still names broker 1 at epoch 4: kept out, asked again.
        router.absorb("h:1".into(), &["t".into()], answer(1, 1, 4));
        assert_eq!((leader(&router), stale(&router)), ("h:2".to_owned(), true));
        // A newer epoch is news.
        router.absorb("b:1".into(), &["t".into()], answer(1, 1, 6));
        assert_eq!((leader(&router), stale(&router)), ("h:1".to_owned(), false));
        // moved_from's view obeys the same rule.
        assert!(!router.set_leader_at("t", 0, "h:2".into(), 5));
        assert!(router.set_leader_at("t", 0, "h:2".into(), 7));
        assert_eq!(leader(&router), "h:2");
        // The topic deleted and created again starts its epochs over.
        router.absorb("b:1".into(), &["t".into()], answer(2, 1, 0));
        assert_eq!(leader(&router), "h:1");
    }
}
