//! The merge of node views into the cluster view, the peer answer parser, and the HTTP
//! routing of the console (without sockets: [`Site::answer`] is called directly).

use std::collections::BTreeMap;

use super::*;
use crate::node::http::{Probes, Site};

const TOPIC: &str = "orders";

fn partition(partition: u32, leader: Option<u32>, isr: Vec<u32>) -> PartitionMeta {
    PartitionMeta { partition, leader, replicas: vec![1, 2, 3], isr, leader_epoch: 4 }
}

fn metadata(version: u64, partitions: Vec<PartitionMeta>) -> MetadataView {
    MetadataView {
        version,
        brokers: (1..=3)
            .map(|id| BrokerMeta {
                id,
                epoch: 10 + u64::from(id),
                fenced: false,
                grpc: format!("127.0.0.1:5005{id}"),
                kafka: format!("127.0.0.1:909{}", id + 1),
                http: format!("127.0.0.1:808{id}"),
            })
            .collect(),
        topics: vec![TopicMeta { name: TOPIC.into(), partitions }],
    }
}

/// Node `id`'s view: a controller and broker, leading `leads` (log end 100, HW 90).
fn node(id: u32, raft_leader: u64, metadata: MetadataView, leads: &[u32]) -> LocalView {
    LocalView {
        node_id: id,
        roles: vec!["controller".into(), "broker".into()],
        ready: true,
        controller: Some(RaftView {
            term: 7,
            leader: Some(raft_leader),
            state: if u64::from(id) == raft_leader { "Leader" } else { "Follower" }.into(),
        }),
        broker: Some(BrokerView { epoch: 11, ..BrokerView::default() }),
        metadata: Some(metadata),
        replicas: (0..2)
            .map(|p| ReplicaView {
                topic: TOPIC.into(),
                partition: p,
                leader: leads.contains(&p),
                log_end: 100 + u64::from(id),
                high_watermark: 90 + u64::from(id),
                ..ReplicaView::default()
            })
            .collect(),
        topic_bytes: BTreeMap::from([(
            TOPIC.into(),
            TopicBytes { produced: 1000 * u64::from(id), fetched: 5 },
        )]),
        ..LocalView::default()
    }
}

fn healthy() -> (LocalView, Vec<PeerAnswer>) {
    let meta = metadata(20, vec![partition(0, Some(2), vec![1, 2, 3]), partition(1, Some(3), vec![3, 1])]);
    let local = node(1, 1, meta.clone(), &[]);
    let peers = vec![
        (2, "127.0.0.1:8082".into(), Ok(node(2, 1, meta.clone(), &[0]))),
        (3, "127.0.0.1:8083".into(), Ok(node(3, 1, meta, &[1]))),
    ];
    (local, peers)
}

#[test]
fn merges_leaders_offsets_and_liveness() {
    let (local, peers) = healthy();
    let view = merge(local, peers, &[1, 2, 3]);
    assert!(!view.stale, "{:?}", view.stale_reason);
    assert_eq!((view.controller_leader, view.controller_term, view.metadata_version), (Some(1), 7, 20));
    let states: Vec<(u32, &str, bool)> =
        view.nodes.iter().map(|n| (n.id, n.state.as_str(), n.controller_leader)).collect();
    assert_eq!(states, [(1, "up", true), (2, "up", false), (3, "up", false)]);
    let t = &view.topics[0];
    // Each partition's offsets come from its leader: node 2 leads 0, node 3 leads 1.
    let p: Vec<_> = t.partitions.iter().map(|p| (p.leader, p.high_watermark, p.log_end)).collect();
    assert_eq!(p, [(Some(2), Some(92), Some(102)), (Some(3), Some(93), Some(103))]);
    assert_eq!((t.under_replicated, t.offline), (1, 0));
    assert!(t.partitions[1].under_replicated && !t.partitions[0].under_replicated);
    assert_eq!(t.bytes.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn an_unreachable_peer_is_down_and_its_offsets_unknown() {
    let (local, mut peers) = healthy();
    peers[0].2 = Err("connecting to 127.0.0.1:8082: Connection refused".into());
    let view = merge(local, peers, &[1, 2, 3]);
    let two = &view.nodes[1];
    assert_eq!((two.id, two.state.as_str()), (2, "down"));
    assert_eq!(two.roles, ["controller", "broker"], "roles from the voters and the metadata");
    assert!(two.error.as_deref().unwrap().contains("refused"));
    // The metadata still names node 2 as leader of partition 0: its offsets are unknown.
    assert_eq!(view.topics[0].partitions[0].high_watermark, None);
    assert!(!view.stale, "the controller leader (node 1) answers");
}

#[test]
fn offsets_only_from_the_leader_the_metadata_names() {
    let (local, mut peers) = healthy();
    // Node 3 still believes it leads partition 0 too (it has not seen the change yet).
    if let Ok(v) = &mut peers[1].2 {
        v.replicas[0].leader = true;
    }
    let view = merge(local, peers, &[1, 2, 3]);
    assert_eq!(view.topics[0].partitions[0].high_watermark, Some(92));
}

#[test]
fn freshest_metadata_wins() {
    let (local, mut peers) = healthy();
    let newer = metadata(25, vec![partition(0, Some(3), vec![3]), partition(1, None, vec![])]);
    if let Ok(v) = &mut peers[1].2 {
        v.metadata = Some(newer);
    }
    let view = merge(local, peers, &[1, 2, 3]);
    assert_eq!((view.metadata_from, view.metadata_version), (Some(3), 25));
    let t = &view.topics[0];
    assert_eq!(t.partitions[0].leader, Some(3));
    assert!(t.partitions[1].offline);
    assert_eq!(t.offline, 1);
}

#[test]
fn a_peer_answering_under_another_id_is_down() {
    let (local, mut peers) = healthy();
    peers[0].2 = Ok(node(3, 1, metadata(20, vec![]), &[]));
    let view = merge(local, peers, &[1, 2, 3]);
    assert_eq!(view.nodes[1].state, "down");
    assert!(view.nodes[1].error.as_deref().unwrap().contains("answers as node 3"));
}

#[test]
fn stale_without_quorum_or_unready() {
    // This node knows no controller leader.
    let (mut local, _) = healthy();
    local.ready = false;
    local.not_ready = Some("no controller leader known".into());
    let view = merge(local, vec![], &[1, 2, 3]);
    assert!(view.stale);
    assert!(view.stale_reason.unwrap().contains("no controller leader known"));
    // The controller leader it knows does not answer.
    let (mut local, mut peers) = healthy();
    local.controller.as_mut().unwrap().leader = Some(2);
    for (_, _, answer) in &mut peers {
        if let Ok(v) = answer {
            v.controller.as_mut().unwrap().leader = Some(2);
        }
    }
    peers[0].2 = Err("refused".into());
    let view = merge(local.clone(), peers.clone(), &[1, 2, 3]);
    assert!(view.stale_reason.unwrap().contains("node 2, does not answer"));
    // A node that still believes it leads, with the other two voters gone.
    let mut alone = local;
    alone.controller.as_mut().unwrap().leader = Some(1);
    peers[1].2 = Err("refused".into());
    let view = merge(alone, peers, &[1, 2, 3]);
    assert!(view.stale_reason.unwrap().contains("only 1 of the 3 controller voters"));
}

#[test]
fn group_lag_from_the_leaders_high_watermark() {
    let (mut local, peers) = healthy();
    local.groups = vec![GroupView {
        group_id: "payroll".into(),
        state: "stable".into(),
        group_epoch: 3,
        assignor: "uniform".into(),
        members: vec![MemberView {
            member_id: "m1".into(),
            assignment: BTreeMap::from([(TOPIC.into(), vec![0])]),
            ..MemberView::default()
        }],
        offsets: vec![
            OffsetView { topic: TOPIC.into(), partition: 1, offset: 80 },
            OffsetView { topic: TOPIC.into(), partition: 0, offset: 92 },
            OffsetView { topic: "gone".into(), partition: 0, offset: 5 },
        ],
    }];
    let view = merge(local, peers, &[1, 2, 3]);
    let g = &view.groups[0];
    assert_eq!((g.group_id.as_str(), g.coordinator), ("payroll", 1));
    let lags: Vec<_> =
        g.partitions.iter().map(|p| (p.topic.as_str(), p.partition, p.lag, p.member.as_deref())).collect();
    assert_eq!(lags, [("gone", 0, None, None), (TOPIC, 0, Some(0), Some("m1")), (TOPIC, 1, Some(13), None)]);
    assert_eq!(g.lag, 13);
}

#[test]
fn a_group_reported_twice_is_taken_from_the_newer_epoch() {
    let (mut local, mut peers) = healthy();
    let group = |epoch| GroupView { group_id: "g".into(), group_epoch: epoch, ..GroupView::default() };
    local.groups = vec![group(2)];
    if let Ok(v) = &mut peers[0].2 {
        v.groups = vec![group(5)];
    }
    let view = merge(local, peers, &[1, 2, 3]);
    assert_eq!(view.groups.len(), 1);
    assert_eq!((view.groups[0].coordinator, view.groups[0].group_epoch), (2, 5));
}

#[test]
fn peer_http_addresses() {
    assert_eq!(peer_http_addr("127.0.0.1:8081", "x:1").as_deref(), Some("127.0.0.1:8081"));
    assert_eq!(peer_http_addr("0.0.0.0:8081", "10.0.0.5:50051").as_deref(), Some("10.0.0.5:8081"));
    assert_eq!(peer_http_addr("[::]:8081", "[::1]:50051").as_deref(), Some("[::1]:8081"));
    assert_eq!(peer_http_addr("", "x:1"), None);
    assert_eq!(peer_http_addr("host:port", "x:1"), None);
}

#[test]
fn parses_peer_answers_and_refuses_garbage() {
    let body = serde_json::to_string(&healthy().0).unwrap();
    let ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    assert_eq!(parse_local_answer(ok.as_bytes()).unwrap(), healthy().0);
    let refused = b"HTTP/1.1 404 Not Found\r\n\r\nnot found\n";
    assert!(parse_local_answer(refused).unwrap_err().contains("404"));
    assert!(parse_local_answer(b"HTTP/1.1 200 OK\r\n\r\n{\"node_id\":").unwrap_err().contains("bad JSON"));
    assert!(parse_local_answer(b"\x00\xff garbage").is_err());
}

fn site() -> Site {
    let probes = Probes { node_id: 1, raft: None, broker: None };
    Site {
        probes: probes.clone(),
        registry: prometheus_client::registry::Registry::default(),
        console: Console { probes, voters: vec![1], broker: None },
        auth: None,
    }
}

#[tokio::test]
async fn routes_assets_api_and_errors() {
    let site = site();
    let page = site.answer("GET", "/").await;
    assert_eq!((page.status, page.content_type, page.csp), (200, "text/html; charset=utf-8", true));
    assert!(String::from_utf8(page.body).unwrap().contains("<script src=\"app.js\""));
    for (path, kind) in
        [("/app.js", "text/javascript"), ("/style.css", "text/css"), ("/index.html", "text/html")]
    {
        let a = site.answer("GET", path).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.content_type.starts_with(kind), "{path}: {}", a.content_type);
    }
    assert_eq!(site.answer("GET", "/nope").await.status, 404);
    assert_eq!(site.answer("GET", "/api/v1/nope").await.status, 404);
    assert_eq!(site.answer("POST", "/api/v1/cluster").await.status, 405);
    assert_eq!(site.answer("DELETE", "/").await.status, 405);

    let local = site.answer("GET", "/api/v1/local").await;
    assert_eq!((local.status, local.content_type), (200, "application/json"));
    let local: LocalView = serde_json::from_slice(&local.body).unwrap();
    assert_eq!((local.node_id, local.ready), (1, true));

    // A node with neither role nor peers: itself, up, and nothing else.
    let cluster = site.answer("GET", "/api/v1/cluster").await;
    let cluster: ClusterView = serde_json::from_slice(&cluster.body).unwrap();
    assert_eq!(cluster.served_by, 1);
    assert_eq!(cluster.nodes.iter().map(|n| (n.id, n.state.as_str())).collect::<Vec<_>>(), [(1, "up")]);
    assert!(cluster.generated_at_ms > 0);
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    for (path, _, body) in ASSETS {
        for bad in ["http://", "https://", "//cdn", "style=\"", "onclick", "innerHTML"] {
            assert!(!body.contains(bad), "{path} contains {bad:?}");
        }
    }
}
