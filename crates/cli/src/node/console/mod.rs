//! The web console: a page at `/` (HTML, JS and CSS embedded in the binary at compile time)
//! and the small JSON API it reads, on the node's HTTP port.
//!
//! - `GET /api/v1/local`: what this node knows by itself ([`LocalView`]): its roles, its
//!   controller Raft standing, its broker standing and metadata cache, the replicas it hosts
//!   (log end, high watermark, ...), the groups it coordinates and its per-topic byte counters.
//! - `GET /api/v1/cluster`: the whole cluster as seen from this node ([`ClusterView`]). The
//!   node asks every other registered broker's `/api/v1/local` in parallel, each within
//!   [`PEER_TIMEOUT`], marks those that do not answer as down, and merges the answers
//!   ([`merge`], a pure function): a partition's high watermark and log end come from its
//!   leader, a group's lag from that and its committed offsets. When this node cannot reach
//!   the controller quorum the view says `stale` and why, so the page does not present it as
//!   current.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runnel_broker::DataPlane;
use runnel_broker::ReplicaManager;
use runnel_broker::group::GroupCoordinator;
use runnel_broker::group::coordinator::{OFFSETS_TOPIC, coordinator_partition};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::Probes;

/// How long the cluster view waits for each peer's `/api/v1/local` (connect, ask, read).
/// A refused connection fails at once; this bounds a hung or unreachable peer, and keeps the
/// page's once-a-second refresh near one second.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_millis(400);
/// Largest peer answer read; a bigger one is treated as a failure of that peer.
pub(crate) const PEER_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long the local view waits for the group coordinator's descriptions.
const GROUPS_TIMEOUT: Duration = Duration::from_millis(300);
/// Groups described per node; more are counted in `groups_omitted`.
const GROUPS_MAX: usize = 200;

/// The embedded page and its assets: path, content type, body.
pub(crate) const ASSETS: [(&str, &str, &str); 4] = [
    ("/", "text/html; charset=utf-8", include_str!("index.html")),
    ("/index.html", "text/html; charset=utf-8", include_str!("index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("app.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("style.css")),
];

/// The page loads nothing from elsewhere and runs no inline code.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The broker role's parts the console reads.
#[derive(Debug, Clone)]
pub(crate) struct BrokerParts {
    pub(crate) plane: Arc<DataPlane>,
    pub(crate) replicas: Arc<ReplicaManager>,
    pub(crate) groups: Arc<GroupCoordinator>,
}

/// What the console reads on this node.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    pub(crate) probes: Probes,
    /// The controller voters' ids (from `--controller-voters`).
    pub(crate) voters: Vec<u32>,
    pub(crate) broker: Option<BrokerParts>,
}

/// A node's own view, as `/api/v1/local` answers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LocalView {
    pub(crate) node_id: u32,
    pub(crate) roles: Vec<String>,
    /// Whether `/readyz` would answer 200; else `not_ready` says why.
    pub(crate) ready: bool,
    pub(crate) not_ready: Option<String>,
    pub(crate) controller: Option<RaftView>,
    pub(crate) broker: Option<BrokerView>,
    /// The broker's metadata cache, once loaded.
    pub(crate) metadata: Option<MetadataView>,
    pub(crate) replicas: Vec<ReplicaView>,
    pub(crate) groups: Vec<GroupView>,
    pub(crate) groups_omitted: usize,
    /// Record batch bytes produced and fetched through this node since it started, by topic.
    pub(crate) topic_bytes: BTreeMap<String, TopicBytes>,
}

/// The controller Raft standing of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RaftView {
    pub(crate) term: u64,
    pub(crate) leader: Option<u64>,
    /// openraft's server state: "Leader", "Follower", "Candidate", "Learner", "Shutdown".
    pub(crate) state: String,
}

/// The broker standing of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BrokerView {
    pub(crate) epoch: u64,
    pub(crate) fenced: bool,
    pub(crate) controller: Option<String>,
    pub(crate) metadata_version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetadataView {
    pub(crate) version: u64,
    pub(crate) brokers: Vec<BrokerMeta>,
    pub(crate) topics: Vec<TopicMeta>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BrokerMeta {
    pub(crate) id: u32,
    pub(crate) epoch: u64,
    pub(crate) fenced: bool,
    pub(crate) grpc: String,
    pub(crate) kafka: String,
    pub(crate) http: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub(crate) name: String,
    pub(crate) partitions: Vec<PartitionMeta>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartitionMeta {
    pub(crate) partition: u32,
    pub(crate) leader: Option<u32>,
    pub(crate) replicas: Vec<u32>,
    pub(crate) isr: Vec<u32>,
    pub(crate) leader_epoch: i32,
}

/// One replica this node hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplicaView {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    /// Whether this node leads it.
    pub(crate) leader: bool,
    pub(crate) log_end: u64,
    pub(crate) high_watermark: u64,
    pub(crate) log_start: u64,
    pub(crate) size_bytes: u64,
}

/// A group this node coordinates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupView {
    pub(crate) group_id: String,
    pub(crate) state: String,
    pub(crate) group_epoch: i32,
    pub(crate) assignor: String,
    pub(crate) members: Vec<MemberView>,
    pub(crate) offsets: Vec<OffsetView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MemberView {
    pub(crate) member_id: String,
    pub(crate) client_id: String,
    pub(crate) host: String,
    /// Partitions owned, by topic.
    pub(crate) assignment: BTreeMap<String, Vec<u32>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OffsetView {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicBytes {
    pub(crate) produced: u64,
    pub(crate) fetched: u64,
}

/// The merged view `/api/v1/cluster` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClusterView {
    /// The node that built this view.
    pub(crate) served_by: u32,
    pub(crate) generated_at_ms: u64,
    /// True when the serving node cannot vouch for the view being current (it cannot reach
    /// the controller quorum): the page shows `stale_reason` and greys the data.
    pub(crate) stale: bool,
    pub(crate) stale_reason: Option<String>,
    /// The controller leader and term, as the freshest answering controller knows them.
    pub(crate) controller_leader: Option<u64>,
    pub(crate) controller_term: u64,
    /// The node whose metadata the topics come from, and its version.
    pub(crate) metadata_from: Option<u32>,
    pub(crate) metadata_version: u64,
    pub(crate) nodes: Vec<NodeSummary>,
    pub(crate) topics: Vec<TopicSummary>,
    pub(crate) groups: Vec<GroupSummary>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeSummary {
    pub(crate) id: u32,
    /// "controller", "broker": from the node itself, or from the metadata and voters when down.
    pub(crate) roles: Vec<String>,
    /// "up" (it answered), "down" (it did not; `error` says how) or "unknown" (no address).
    pub(crate) state: String,
    pub(crate) error: Option<String>,
    pub(crate) http: Option<String>,
    pub(crate) ready: Option<bool>,
    pub(crate) not_ready: Option<String>,
    /// Its controller Raft state and term, when it is up and a controller.
    pub(crate) raft_state: Option<String>,
    pub(crate) raft_term: Option<u64>,
    pub(crate) controller_leader: bool,
    /// As the metadata says.
    pub(crate) fenced: Option<bool>,
    pub(crate) broker_epoch: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopicSummary {
    pub(crate) name: String,
    pub(crate) internal: bool,
    pub(crate) partitions: Vec<PartitionSummary>,
    pub(crate) under_replicated: usize,
    pub(crate) offline: usize,
    /// Each answering node's cumulative counters: the page turns successive polls into rates.
    pub(crate) bytes: BTreeMap<u32, TopicBytes>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartitionSummary {
    pub(crate) partition: u32,
    pub(crate) leader: Option<u32>,
    pub(crate) replicas: Vec<u32>,
    pub(crate) isr: Vec<u32>,
    pub(crate) leader_epoch: i32,
    /// From the leader's own report; `None` when the leader did not answer.
    pub(crate) high_watermark: Option<u64>,
    pub(crate) log_end: Option<u64>,
    pub(crate) under_replicated: bool,
    pub(crate) offline: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupSummary {
    pub(crate) group_id: String,
    pub(crate) coordinator: u32,
    pub(crate) state: String,
    pub(crate) group_epoch: i32,
    pub(crate) assignor: String,
    pub(crate) members: Vec<MemberView>,
    pub(crate) partitions: Vec<GroupPartition>,
    /// The sum of the known lags.
    pub(crate) lag: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupPartition {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) committed: i64,
    /// The partition's high watermark, from its leader.
    pub(crate) end: Option<u64>,
    /// `end - committed`, at least 0; `None` when the end is unknown.
    pub(crate) lag: Option<u64>,
    /// The member that owns it now.
    pub(crate) member: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Console {
    fn node_id(&self) -> u32 {
        self.probes.node_id
    }

    /// This node's own view.
    pub(crate) async fn local(&self) -> LocalView {
        let probes = &self.probes;
        let mut view = LocalView { node_id: self.node_id(), ..LocalView::default() };
        if probes.raft.is_some() {
            view.roles.push("controller".into());
        }
        if self.broker.is_some() {
            view.roles.push("broker".into());
        }
        match probes.readiness() {
            Ok(()) => view.ready = true,
            Err(why) => view.not_ready = Some(why),
        }
        if let Some(raft) = &probes.raft {
            let m = raft.metrics().borrow().clone();
            view.controller = Some(RaftView {
                term: m.current_term,
                leader: m.current_leader,
                state: format!("{:?}", m.state),
            });
        }
        if let Some(status) = &probes.broker {
            let s = status.borrow().clone();
            view.broker = Some(BrokerView {
                epoch: s.epoch,
                fenced: s.fenced,
                controller: s.controller,
                metadata_version: s.metadata_version,
            });
        }
        let Some(broker) = &self.broker else { return view };
        let topic_names: Vec<String> = if let Ok(cache) = broker.plane.metadata() {
            view.metadata = Some(MetadataView {
                version: cache.version,
                brokers: cache
                    .brokers
                    .iter()
                    .map(|(&id, b)| BrokerMeta {
                        id,
                        epoch: b.epoch,
                        fenced: b.fenced,
                        grpc: b.grpc.clone(),
                        kafka: b.kafka.clone(),
                        http: b.http.clone(),
                    })
                    .collect(),
                topics: cache
                    .topics
                    .iter()
                    .map(|(name, t)| TopicMeta {
                        name: name.clone(),
                        partitions: t
                            .partitions
                            .iter()
                            .enumerate()
                            .map(|(i, p)| PartitionMeta {
                                partition: i as u32,
                                leader: p.leader,
                                replicas: p.replicas.clone(),
                                isr: p.isr.clone(),
                                leader_epoch: p.leader_epoch,
                            })
                            .collect(),
                    })
                    .collect(),
            });
            cache.topics.keys().cloned().collect()
        } else {
            Vec::new()
        };
        let me = broker.replicas.broker_id();
        view.replicas = broker
            .replicas
            .partitions()
            .into_iter()
            .filter_map(|p| {
                let state = p.state();
                if !state.hosted {
                    return None;
                }
                let tp = p.topic_partition();
                let log = p.log();
                Some(ReplicaView {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    leader: state.leader == Some(me),
                    log_end: log.log_end(),
                    high_watermark: p.high_watermark(),
                    log_start: log.log_start(),
                    size_bytes: log.size_bytes(),
                })
            })
            .collect();
        view.replicas.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for topic in topic_names {
            let (produced, fetched) = broker.plane.metrics().topic_bytes(&topic);
            view.topic_bytes.insert(topic, TopicBytes { produced, fetched });
        }
        let listed = broker.groups.group_overviews();
        view.groups_omitted = listed.len().saturating_sub(GROUPS_MAX);
        let describe = async {
            let mut groups = Vec::new();
            for overview in listed.iter().take(GROUPS_MAX) {
                // A group whose shard moved away since the listing is simply left out.
                if let Ok(d) = broker.groups.describe_group(&overview.group_id).await {
                    groups.push(group_view(d));
                }
            }
            groups
        };
        match tokio::time::timeout(GROUPS_TIMEOUT, describe).await {
            Ok(groups) => view.groups = groups,
            Err(_) => view.groups_omitted = listed.len(),
        }
        view
    }

    /// The merged view: this node's, and every other broker's asked over HTTP in parallel.
    pub(crate) async fn cluster(&self) -> ClusterView {
        let local = self.local().await;
        let mut asked = tokio::task::JoinSet::new();
        let mut unaddressed = Vec::new();
        if let Some(metadata) = &local.metadata {
            for b in metadata.brokers.iter().filter(|b| b.id != local.node_id) {
                match peer_http_addr(&b.http, &b.grpc) {
                    Some(addr) => {
                        let id = b.id;
                        asked.spawn(async move {
                            let answer = match tokio::time::timeout(PEER_TIMEOUT, fetch_local(&addr)).await {
                                Ok(answer) => answer,
                                Err(_) => Err(format!("no answer within {PEER_TIMEOUT:?}")),
                            };
                            (id, addr, answer)
                        });
                    }
                    None => unaddressed.push(b.id),
                }
            }
        }
        let mut peers = Vec::new();
        while let Some(joined) = asked.join_next().await {
            if let Ok(peer) = joined {
                peers.push(peer);
            }
        }
        let mut view = merge(local, peers, &self.voters);
        for node in &mut view.nodes {
            if unaddressed.contains(&node.id) {
                node.error = Some("no HTTP address registered".into());
            }
        }
        view.generated_at_ms = now_ms();
        view
    }
}

fn group_view(d: runnel_proto::pb::runnel::v1::DescribeGroupResponse) -> GroupView {
    GroupView {
        group_id: d.group_id,
        state: d.state,
        group_epoch: d.group_epoch,
        assignor: d.assignor,
        members: d
            .members
            .into_iter()
            .map(|m| MemberView {
                member_id: m.member_id,
                client_id: m.client_id,
                host: m.host,
                assignment: m.assignment.into_iter().map(|tp| (tp.topic, tp.partitions)).collect(),
            })
            .collect(),
        offsets: d
            .offsets
            .into_iter()
            .map(|o| OffsetView { topic: o.topic, partition: o.partition, offset: o.offset })
            .collect(),
    }
}

/// Where to reach a broker's HTTP listener: its registered address, with an unspecified host
/// (`0.0.0.0`, `[::]`) replaced by its gRPC host. `None` when it registered none.
pub(crate) fn peer_http_addr(http: &str, grpc: &str) -> Option<String> {
    let (host, port) = http.rsplit_once(':')?;
    if port.parse::<u16>().is_err() {
        return None;
    }
    let unspecified = matches!(host, "" | "0.0.0.0" | "[::]" | "::");
    if !unspecified {
        return Some(http.to_owned());
    }
    let (grpc_host, _) = grpc.rsplit_once(':')?;
    Some(format!("{grpc_host}:{port}"))
}

/// GETs `/api/v1/local` from `addr` (one request, `Connection: close`) and parses it; the
/// answer is read up to [`PEER_BODY_BYTES_MAX`]. The caller bounds the time.
async fn fetch_local(addr: &str) -> Result<LocalView, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let request = format!("GET /api/v1/local HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("asking {addr}: {e}"))?;
    let mut answer = Vec::new();
    let read = (&mut stream).take(PEER_BODY_BYTES_MAX as u64 + 1).read_to_end(&mut answer).await;
    read.map_err(|e| format!("reading from {addr}: {e}"))?;
    if answer.len() > PEER_BODY_BYTES_MAX {
        return Err(format!("{addr} answered more than {PEER_BODY_BYTES_MAX} bytes"));
    }
    parse_local_answer(&answer).map_err(|e| format!("{addr}: {e}"))
}

/// Parses an HTTP/1.1 response carrying a [`LocalView`].
pub(crate) fn parse_local_answer(answer: &[u8]) -> Result<LocalView, String> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of the response head")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("answered {}", head.lines().next().unwrap_or_default()));
    }
    serde_json::from_slice(&answer[split + 4..]).map_err(|e| format!("bad JSON: {e}"))
}

/// One peer's answer: its id, the address asked, its view or why there is none.
pub(crate) type PeerAnswer = (u32, String, Result<LocalView, String>);

/// Merges this node's view with its peers' answers (pure: the unit tests feed it views).
pub(crate) fn merge(local: LocalView, peers: Vec<PeerAnswer>, voters: &[u32]) -> ClusterView {
    let served_by = local.node_id;
    let mut views: BTreeMap<u32, &LocalView> = BTreeMap::new();
    views.insert(served_by, &local);
    let mut failures: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for (id, addr, answer) in &peers {
        match answer {
            // A node that answers under another id is not the node registered there.
            Ok(v) if v.node_id == *id => {
                views.insert(*id, v);
            }
            Ok(v) => {
                failures.insert(*id, (addr.clone(), format!("{addr} answers as node {}", v.node_id)));
            }
            Err(e) => {
                failures.insert(*id, (addr.clone(), e.clone()));
            }
        }
    }

    // The topics come from the freshest metadata among the nodes that answered.
    let metadata_source = views
        .values()
        .filter_map(|v| v.metadata.as_ref().map(|m| (m.version, v.node_id, m)))
        .max_by_key(|(version, id, _)| (*version, std::cmp::Reverse(*id)));
    let metadata = metadata_source.map(|(_, _, m)| m);

    // The controller leader and term, from the answering controller with the highest term.
    let controller = views
        .values()
        .filter_map(|v| v.controller.as_ref())
        .max_by_key(|r| (r.term, r.leader.is_some()))
        .cloned();

    let mut ids: BTreeSet<u32> = views.keys().copied().collect();
    ids.extend(failures.keys().copied());
    ids.extend(voters.iter().copied());
    if let Some(m) = metadata {
        ids.extend(m.brokers.iter().map(|b| b.id));
    }
    let nodes: Vec<NodeSummary> = ids
        .iter()
        .map(|&id| {
            let meta = metadata.and_then(|m| m.brokers.iter().find(|b| b.id == id));
            let mut node = NodeSummary {
                id,
                fenced: meta.map(|b| b.fenced),
                broker_epoch: meta.map(|b| b.epoch),
                http: meta.and_then(|b| peer_http_addr(&b.http, &b.grpc)),
                controller_leader: controller.as_ref().and_then(|c| c.leader) == Some(u64::from(id)),
                ..NodeSummary::default()
            };
            if let Some(v) = views.get(&id) {
                node.state = "up".into();
                node.roles = v.roles.clone();
                node.ready = Some(v.ready);
                node.not_ready = v.not_ready.clone();
                node.raft_state = v.controller.as_ref().map(|r| r.state.clone());
                node.raft_term = v.controller.as_ref().map(|r| r.term);
            } else {
                if voters.contains(&id) {
                    node.roles.push("controller".into());
                }
                if meta.is_some() {
                    node.roles.push("broker".into());
                }
                match failures.get(&id) {
                    Some((addr, e)) => {
                        node.state = "down".into();
                        node.http = Some(addr.clone());
                        node.error = Some(e.clone());
                    }
                    None => node.state = "unknown".into(),
                }
            }
            node
        })
        .collect();

    // Each partition's high watermark and log end, from the report of the leader the
    // metadata names (an old leader may not know yet that it was replaced).
    let mut led: BTreeMap<(&str, u32, u32), &ReplicaView> = BTreeMap::new();
    for v in views.values() {
        for r in v.replicas.iter().filter(|r| r.leader) {
            led.insert((r.topic.as_str(), r.partition, v.node_id), r);
        }
    }
    let end_of = |topic: &str, partition: u32, leader: Option<u32>| {
        leader.and_then(|leader| led.get(&(topic, partition, leader)).copied())
    };
    let topics: Vec<TopicSummary> = metadata
        .map(|m| m.topics.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let partitions: Vec<PartitionSummary> = t
                .partitions
                .iter()
                .map(|p| {
                    let end = end_of(&t.name, p.partition, p.leader);
                    PartitionSummary {
                        partition: p.partition,
                        leader: p.leader,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        leader_epoch: p.leader_epoch,
                        high_watermark: end.map(|r| r.high_watermark),
                        log_end: end.map(|r| r.log_end),
                        under_replicated: p.isr.len() < p.replicas.len(),
                        offline: p.leader.is_none(),
                    }
                })
                .collect();
            TopicSummary {
                name: t.name.clone(),
                internal: t.name.starts_with("__"),
                under_replicated: partitions.iter().filter(|p| p.under_replicated).count(),
                offline: partitions.iter().filter(|p| p.offline).count(),
                partitions,
                bytes: views
                    .values()
                    .filter_map(|v| v.topic_bytes.get(&t.name).map(|b| (v.node_id, *b)))
                    .collect(),
            }
        })
        .collect();

    // A group may be reported twice while its coordinator moves: keep the report of the
    // node leading its offsets partition, else the one with the highest epoch.
    let offsets_partitions =
        metadata.and_then(|m| m.topics.iter().find(|t| t.name == OFFSETS_TOPIC)).map(|t| &t.partitions);
    let mut chosen: BTreeMap<&str, (u32, &GroupView)> = BTreeMap::new();
    for v in views.values() {
        for g in &v.groups {
            let leads = |node: u32| {
                offsets_partitions.is_some_and(|ps| {
                    let p = coordinator_partition(&g.group_id, ps.len() as u32);
                    ps.get(p as usize).and_then(|p| p.leader) == Some(node)
                })
            };
            let better = match chosen.get(g.group_id.as_str()) {
                None => true,
                Some((node, other)) => (leads(v.node_id), g.group_epoch) > (leads(*node), other.group_epoch),
            };
            if better {
                chosen.insert(&g.group_id, (v.node_id, g));
            }
        }
    }
    let high_watermark = |topic: &str, partition: u32| {
        topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .and_then(|p| p.high_watermark)
    };
    let groups: Vec<GroupSummary> = chosen
        .into_values()
        .map(|(coordinator, g)| {
            let mut partitions: Vec<GroupPartition> = g
                .offsets
                .iter()
                .map(|o| {
                    let end = high_watermark(&o.topic, o.partition);
                    GroupPartition {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        committed: o.offset,
                        end,
                        lag: end.map(|e| e.saturating_sub(o.offset.max(0) as u64)),
                        member: g
                            .members
                            .iter()
                            .find(|m| m.assignment.get(&o.topic).is_some_and(|ps| ps.contains(&o.partition)))
                            .map(|m| m.member_id.clone()),
                    }
                })
                .collect();
            partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            GroupSummary {
                group_id: g.group_id.clone(),
                coordinator,
                state: g.state.clone(),
                group_epoch: g.group_epoch,
                assignor: g.assignor.clone(),
                members: g.members.clone(),
                lag: partitions.iter().filter_map(|p| p.lag).sum(),
                partitions,
            }
        })
        .collect();

    let controller_leader = controller.as_ref().and_then(|c| c.leader);
    let stale_reason = staleness(&local, controller_leader, &nodes, voters);
    ClusterView {
        served_by,
        generated_at_ms: 0,
        stale: stale_reason.is_some(),
        stale_reason,
        controller_leader,
        controller_term: controller.as_ref().map_or(0, |c| c.term),
        metadata_from: metadata_source.map(|(_, id, _)| id),
        metadata_version: metadata.map_or(0, |m| m.version),
        nodes,
        topics,
        groups,
    }
}

/// Why the view cannot be trusted as current, if it cannot: this node is not ready (no
/// controller leader known, no controller reachable, fenced, not registered), fewer than a
/// majority of the controller voters answer it (a leader cut off from its quorum may still
/// believe it leads), or the controller leader it knows does not answer.
fn staleness(
    local: &LocalView,
    controller_leader: Option<u64>,
    nodes: &[NodeSummary],
    voters: &[u32],
) -> Option<String> {
    if let Some(why) = &local.not_ready {
        return Some(format!("node {} cannot vouch for this view: {why}", local.node_id));
    }
    let answering = voters.iter().filter(|&&v| nodes.iter().any(|n| n.id == v && n.state == "up")).count();
    if !voters.is_empty() && answering <= voters.len() / 2 {
        return Some(format!(
            "only {answering} of the {} controller voters answer node {}: no quorum",
            voters.len(),
            local.node_id
        ));
    }
    if local.controller.is_some() || local.broker.is_some() {
        match controller_leader {
            None => return Some(format!("node {} knows no controller leader", local.node_id)),
            Some(leader) => {
                if nodes.iter().any(|n| u64::from(n.id) == leader && n.state == "down") {
                    return Some(format!(
                        "the controller leader, node {leader}, does not answer node {}",
                        local.node_id
                    ));
                }
            }
        }
    }
    if local.broker.is_some() && local.metadata.is_none() {
        return Some(format!("node {} has not loaded the cluster metadata yet", local.node_id));
    }
    None
}

#[cfg(test)]
mod tests;
