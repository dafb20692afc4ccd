//! A node's planes apart (`--internal-addr`, issue 14's "separate the planes"): every node
//! of a three-node cluster serves inter-node calls on an internal listener and client calls
//! on its gRPC listener, and
//!
//! - the client listener refuses each inter-node call a forger would make: a Raft vote,
//!   a replica fetch (UNIMPLEMENTED: not served there at all), and the controller calls only
//!   brokers make, registration, heartbeats, sessions, ISR changes and producer-id blocks
//!   (PERMISSION_DENIED, naming the internal listener); after them no term, ISR, partition
//!   epoch or broker has changed;
//! - the same harmless calls on the internal listener are served, so the refusals above come
//!   from the listener, not from the request;
//! - clients still do everything on the client listener: topic creation (forwarded to the
//!   controller leader over the internal plane), produce with acks=all on a replication
//!   factor of 3 with the ISR full, so followers replicate over the internal listeners;
//! - kill -9 of the partition leader moves leadership, and every acknowledged record is read
//!   back from the new leader.
//!
//! Run with `cargo test -p runnel --test planes`.

use std::net::SocketAddr;
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use runnel_proto::pb::runnel::v1::raft_service_client::RaftServiceClient;
use runnel_proto::pb::runnel::v1::replication_service_client::ReplicationServiceClient;
use runnel_testkit::{Cluster, ClusterOpts};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);
const RECORDS: usize = 100;

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A Raft vote as openraft 0.9 spells it in JSON: candidate `node` at `term`, claiming a log
/// that ends at `last_index` in that term.
fn vote(term: u64, node: u64, last_index: u64) -> pb::RaftVoteRequest {
    let json = serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": node}, "committed": false},
        "last_log_id": {"leader_id": {"term": term, "node_id": node}, "index": last_index},
    });
    pb::RaftVoteRequest { request_json: serde_json::to_vec(&json).unwrap() }
}

/// Each voter's own Raft term, as it describes itself.
async fn terms(cluster: &Cluster) -> Vec<(u64, u64)> {
    let mut terms = Vec::new();
    for id in cluster.ids().into_iter().filter(|&id| cluster.is_up(id)) {
        let described = cluster.describe_cluster(id, WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
        let me = described.voters.iter().find(|v| v.node_id == id).expect("a voter describes itself");
        terms.push((id, me.term));
    }
    terms
}

fn record(i: usize) -> pb::Record {
    pb::Record {
        key: None,
        value: Some(format!("v{i}").into_bytes().into()),
        headers: Vec::new(),
        timestamp_ms: None,
        offset: 0,
    }
}

fn produce(i: usize) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        timeout_ms: 10_000,
        data: Some(pb::produce_request::Data::Records(pb::RecordList { records: vec![record(i)] })),
        producer: None,
    }
}

/// Produces record `i` with acks=all, retrying what a client retries (a leader still taking
/// over); its offset.
async fn produce_acked(client: &mut BrokerServiceClient<Channel>, i: usize) -> i64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match client.produce(produce(i)).await {
            Ok(answer) => return answer.into_inner().base_offset,
            Err(e) if e.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("produce {i}: {e:?}"),
        }
    }
}

/// Creates topic `t` (one partition, replication factor 3) through node 1's client listener,
/// waits for a leader and a full ISR, and produces [`RECORDS`] records with acks=all: the
/// partition as it then is, and the acknowledged (offset, value) pairs.
async fn replicated_topic(cluster: &Cluster) -> (pb::PartitionInfo, Vec<(i64, String)>) {
    let request = pb::CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        replication_factor: 3,
        configs: Default::default(),
    };
    cluster.create_topic(1, request, WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
    let state = cluster
        .wait_for_first_partition("t", "a leader and a full ISR", WAIT, |p| p.leader > 0 && p.isr.len() == 3)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut client = cluster.broker_client(state.leader as u64).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..RECORDS {
        acked.push((produce_acked(&mut client, i).await, format!("v{i}")));
    }
    (state, acked)
}

/// kill -9 of the partition leader `leader`: a follower takes over, and every acknowledged
/// record reads back from it, and it takes new records.
async fn fail_over_and_read_back(cluster: &mut Cluster, leader: u64, acked: &[(i64, String)]) {
    cluster.kill(leader).unwrap();
    let moved = cluster
        .wait_for_first_partition("t", "a new leader", WAIT, |p| p.leader > 0 && p.leader as u64 != leader)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut client = cluster.broker_client(moved.leader as u64).await.unwrap();
    let fetch = pb::FetchRequest {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        max_bytes: 0,
        max_wait_ms: 0,
        min_bytes: 0,
        format: pb::RecordFormat::Records as i32,
    };
    // Its high watermark may trail its log for a moment after the move: poll until it
    // covers what was acknowledged.
    let deadline = std::time::Instant::now() + WAIT;
    let got = loop {
        let read =
            client.fetch(fetch.clone()).await.unwrap_or_else(|e| panic!("fetch from the new leader: {e:?}"));
        let got: Vec<(i64, String)> = read
            .into_inner()
            .records
            .iter()
            .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()))
            .collect();
        if got.len() >= acked.len() || std::time::Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got, acked, "the new leader {} lost or changed acknowledged records", moved.leader);
    let next = acked.len();
    assert_eq!(produce_acked(&mut client, next).await, next as i64, "produce after the failover");
}

/// A registration of `broker_id` that points its endpoints elsewhere, as a forger would.
fn forged_registration(broker_id: u32) -> pb::RegisterBrokerRequest {
    pb::RegisterBrokerRequest {
        broker_id,
        endpoints: Some(pb::BrokerEndpoints {
            grpc: "10.9.9.9:1".into(),
            kafka: "10.9.9.9:2".into(),
            http: "10.9.9.9:3".into(),
            internal: "10.9.9.9:4".into(),
        }),
        rack: String::new(),
        incarnation_id: vec![7; 16],
    }
}

/// A replica fetch of `t-0` in `follower`'s name claiming everything durable, which would
/// raise the high watermark if the leader believed it.
fn forged_fetch(
    follower: u32,
    follower_epoch: u64,
    partition: &pb::PartitionInfo,
) -> pb::ReplicaFetchRequest {
    pb::ReplicaFetchRequest {
        follower_id: follower,
        follower_epoch,
        partitions: vec![pb::ReplicaFetchPartition {
            topic: "t".into(),
            topic_id: Vec::new(),
            partition: 0,
            fetch_offset: RECORDS as u64,
            last_fetched_epoch: partition.leader_epoch,
            current_leader_epoch: partition.leader_epoch,
            durable_end: u64::MAX,
        }],
        ..Default::default()
    }
}

fn refused_as(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, what: &str) -> tonic::Status {
    match result {
        Ok(answer) => panic!("{what} was served on the client listener: {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inter_node_calls_are_refused_on_the_client_listener() {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.internal_listener = true;
    let mut cluster = Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    for id in cluster.ids() {
        let node = cluster.node(id);
        let internal = node.internal_addr().expect("an internal listener");
        assert_ne!(internal, node.grpc_addr());
        assert!(cluster.voters().contains(&format!("{id}@{internal}")), "{}", cluster.voters());
        assert!(node.logs().contains(&format!("internal={internal}")), "{}", node.logs());
    }

    // Clients work on the client listener: the topic is created through node 1's, whichever
    // node leads the controller, and the ISR fills, so followers fetch over the internal plane.
    let (before, acked) = replicated_topic(&cluster).await;
    let leader = before.leader as u64;
    let described = cluster.describe_cluster(1, WAIT).await.unwrap();
    for broker in &described.brokers {
        let internal = cluster.node(u64::from(broker.broker_id)).internal_addr().unwrap().to_string();
        assert_eq!(broker.endpoints.as_ref().map(|e| e.internal.as_str()), Some(internal.as_str()));
    }
    let epoch_of = |id: u32| described.brokers.iter().find(|b| b.broker_id == id).unwrap().broker_epoch;
    let follower = before.replicas.iter().copied().find(|&r| u64::from(r) != leader).unwrap();
    let terms_before = terms(&cluster).await;
    let top_term = terms_before.iter().map(|&(_, t)| t).max().unwrap();

    // Every forgery on every node's client listener.
    for id in cluster.ids() {
        let client_channel = channel(cluster.node(id).grpc_addr()).await;
        let mut raft = RaftServiceClient::new(client_channel.clone());
        refused_as(
            raft.vote(vote(top_term + 1_000, 99, u64::MAX / 2)).await,
            Code::Unimplemented,
            "a Raft vote",
        );
        let mut replication = ReplicationServiceClient::new(client_channel.clone());
        let fetch = forged_fetch(follower, epoch_of(follower), &before);
        let opened = replication.replica_fetch(tokio_stream::iter([fetch])).await;
        refused_as(opened.map(|_| ()), Code::Unimplemented, "a replica fetch");

        let mut controller = ControllerServiceClient::new(client_channel);
        let denied = |result: Result<_, tonic::Status>, what: &str| {
            let status = refused_as(result, Code::PermissionDenied, what);
            assert!(status.message().contains("internal listener"), "{what}: {status:?}");
        };
        denied(controller.register_broker(forged_registration(follower)).await.map(|_| ()), "RegisterBroker");
        let heartbeat = pb::BrokerHeartbeatRequest {
            broker_id: follower,
            broker_epoch: epoch_of(follower),
            metadata_version: 0,
        };
        denied(controller.broker_heartbeat(heartbeat).await.map(|_| ()), "BrokerHeartbeat");
        denied(controller.broker_session(tokio_stream::iter([heartbeat])).await.map(|_| ()), "BrokerSession");
        let shrink = pb::AlterPartitionRequest {
            topic: "t".into(),
            topic_id: Vec::new(),
            partition: 0,
            leader_id: leader as u32,
            broker_epoch: epoch_of(leader as u32),
            leader_epoch: before.leader_epoch,
            partition_epoch: before.partition_epoch,
            new_isr: vec![pb::IsrMember { broker_id: leader as u32, broker_epoch: epoch_of(leader as u32) }],
        };
        denied(controller.alter_partition(shrink).await.map(|_| ()), "AlterPartition");
        let ids = pb::AllocateProducerIdsRequest { broker_id: follower, broker_epoch: epoch_of(follower) };
        denied(controller.allocate_producer_ids(ids).await.map(|_| ()), "AllocateProducerIds");
        // The admin calls stay on the client listener.
        controller
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
            .expect("DescribeCluster is a client call");
    }
    assert_eq!(terms(&cluster).await, terms_before, "a refused vote moved a term");
    let after = cluster.first_partition(1, "t").await.expect("the partition");
    assert_eq!(after, before, "a refused call changed the partition");
    let described_after = cluster.describe_cluster(1, WAIT).await.unwrap();
    assert_eq!(described_after.brokers, described.brokers, "a refused call changed a broker");

    // The internal listener serves those services: a stale vote is answered (and refused by
    // Raft itself, changing nothing), and a broker's own producer-id call is served.
    let internal = channel(cluster.node(u64::from(follower)).internal_addr().unwrap()).await;
    let stale = RaftServiceClient::new(internal.clone()).vote(vote(0, 99, 0)).await;
    assert!(stale.is_ok(), "the internal listener does not serve Raft: {stale:?}");
    let ids = pb::AllocateProducerIdsRequest { broker_id: follower, broker_epoch: epoch_of(follower) };
    let block = ControllerServiceClient::new(internal).allocate_producer_ids(ids).await;
    assert!(
        block.is_ok_and(|b| b.into_inner().count > 0),
        "the internal listener does not serve the controller"
    );
    assert_eq!(terms(&cluster).await, terms_before, "a stale vote moved a term");

    fail_over_and_read_back(&mut cluster, leader, &acked).await;
}

/// An AppendEntries heartbeat as openraft 0.9 spells it in JSON: leader `node` at `term`.
fn heartbeat(term: u64, node: u64) -> pb::RaftAppendEntriesRequest {
    let json = serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": node}, "committed": true},
        "prev_log_id": null,
        "entries": [],
        "leader_commit": null,
    });
    pb::RaftAppendEntriesRequest { request_json: serde_json::to_vec(&json).unwrap() }
}

/// A call that must not get through: the TLS handshake fails (connecting or on the first
/// call, as TLS 1.3 reports a refused client certificate after the handshake).
async fn handshake_refused(
    cluster: &Cluster,
    addr: SocketAddr,
    tls: Option<tonic::transport::ClientTlsConfig>,
    what: &str,
) {
    let connected = runnel_proto::tls::endpoint(&addr.to_string(), tls.as_ref())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await;
    let Ok(channel) = connected else { return };
    let answer = RaftServiceClient::new(channel).vote(vote(u64::MAX / 2, 1, u64::MAX / 2)).await;
    assert!(answer.is_err(), "{what}: a vote got through: {answer:?}\n{}", cluster.all_logs());
}

/// With TLS (issue 14: "no one forges a broker, a vote or an ack"), on a three-node cluster
/// whose planes are apart: clients use TLS on the client listener; the internal listener
/// refuses a caller without a certificate and one whose certificate the cluster CA did not
/// sign, even if it names a node; and a genuine node certificate cannot speak for another
/// node: a vote, an AppendEntries, a replica fetch, a broker registration, a session, an ISR
/// change and a producer-id block claiming to come from the partition leader, sent with a
/// follower's certificate, are each PERMISSION_DENIED, while the same node's calls as itself
/// are served. Nothing moves, and a kill -9 of the leader loses no acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_no_node_speaks_for_another_and_strangers_are_refused() {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.internal_listener = true;
    opts.tls = true;
    let mut cluster = Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let (before, acked) = replicated_topic(&cluster).await;
    let leader = before.leader as u64;
    let forger = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let other = cluster.ids().into_iter().find(|&id| id != leader && id != forger).unwrap();
    let described = cluster.describe_cluster(1, WAIT).await.unwrap();
    let epoch_of =
        |id: u64| described.brokers.iter().find(|b| u64::from(b.broker_id) == id).unwrap().broker_epoch;
    let terms_before = terms(&cluster).await;
    let top_term = terms_before.iter().map(|&(_, t)| t).max().unwrap();

    // Strangers: no certificate, and a certificate naming the leader from another CA.
    let ca = std::fs::read(cluster.root().join("tls").join("ca.pem")).unwrap();
    let ca_only =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca));
    let elsewhere = cluster.root().join("other-ca");
    runnel_proto::tls::generate(&elsewhere, &[leader as u32], &["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let impostor = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(elsewhere.join(format!("node-{leader}.pem"))).unwrap(),
            std::fs::read(elsewhere.join(format!("node-{leader}.key"))).unwrap(),
        ));
    for id in cluster.ids() {
        let internal = cluster.node(id).internal_addr().unwrap();
        handshake_refused(&cluster, internal, Some(ca_only.clone()), "no client certificate").await;
        handshake_refused(&cluster, internal, Some(impostor.clone()), "a certificate from another CA").await;
        handshake_refused(&cluster, internal, None, "plaintext").await;
    }

    // A genuine follower certificate claiming to be the leader, at every node's internal
    // listener.
    let denied = |result: Result<(), tonic::Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    };
    for id in cluster.ids().into_iter().filter(|&id| id != forger) {
        let as_forger =
            cluster.channel(cluster.node(id).internal_addr().unwrap(), Some(forger)).await.unwrap();
        let mut raft = RaftServiceClient::new(as_forger.clone());
        denied(
            raft.vote(vote(top_term + 1_000, leader, u64::MAX / 2)).await.map(|_| ()),
            "a vote for the leader",
        );
        denied(
            raft.append_entries(heartbeat(top_term + 1_000, leader)).await.map(|_| ()),
            "entries from the leader",
        );
        let mut controller = ControllerServiceClient::new(as_forger.clone());
        let register = forged_registration(leader as u32);
        denied(controller.register_broker(register).await.map(|_| ()), "registering as the leader");
        let shrink = pb::AlterPartitionRequest {
            topic: "t".into(),
            topic_id: Vec::new(),
            partition: 0,
            leader_id: leader as u32,
            broker_epoch: epoch_of(leader),
            leader_epoch: before.leader_epoch,
            partition_epoch: before.partition_epoch,
            new_isr: vec![pb::IsrMember { broker_id: leader as u32, broker_epoch: epoch_of(leader) }],
        };
        denied(controller.alter_partition(shrink).await.map(|_| ()), "an ISR shrink as the leader");
        let ids = pb::AllocateProducerIdsRequest { broker_id: leader as u32, broker_epoch: epoch_of(leader) };
        denied(controller.allocate_producer_ids(ids).await.map(|_| ()), "producer ids as the leader");
        let beat = pb::BrokerHeartbeatRequest {
            broker_id: leader as u32,
            broker_epoch: epoch_of(leader),
            metadata_version: 0,
        };
        let session = controller.broker_session(tokio_stream::iter([beat])).await;
        // Only the controller leader holds sessions; the others answer NOT_CONTROLLER first.
        if let Ok(mut session) = session {
            let first = session.get_mut().message().await;
            if let Err(status) = first {
                assert!(
                    matches!(status.code(), Code::PermissionDenied | Code::Unavailable),
                    "session: {status:?}"
                );
                if status.code() == Code::Unavailable {
                    assert!(!status.message().contains("certificate"), "{status:?}");
                }
            } else {
                panic!("a session heartbeat as the leader was answered: {first:?}");
            }
        }
        if id == leader {
            let mut replication = ReplicationServiceClient::new(as_forger);
            let fetch = forged_fetch(other as u32, epoch_of(other), &before);
            let mut answers =
                replication.replica_fetch(tokio_stream::iter([fetch])).await.unwrap().into_inner();
            let answer = answers.message().await;
            assert!(
                matches!(&answer, Err(s) if s.code() == Code::PermissionDenied),
                "a replica fetch for another follower: {answer:?}"
            );
        }
    }

    // The forger's calls as itself are served: the checks are on identity, not on the call.
    let as_itself =
        cluster.channel(cluster.node(leader).internal_addr().unwrap(), Some(forger)).await.unwrap();
    let stale = RaftServiceClient::new(as_itself.clone()).vote(vote(0, forger, 0)).await;
    assert!(stale.is_ok(), "a node's own stale vote was not answered: {stale:?}");
    let ids = pb::AllocateProducerIdsRequest { broker_id: forger as u32, broker_epoch: epoch_of(forger) };
    let block = ControllerServiceClient::new(as_itself).allocate_producer_ids(ids).await;
    assert!(block.is_ok_and(|b| b.into_inner().count > 0), "a node's own producer-id call was refused");

    // The command-line client: with the CA it works; without, it says TLS may be why.
    let ca_path = cluster.root().join("tls").join("ca.pem").display().to_string();
    let out = cluster.runnel(&["topic", "describe", "t", "--tls-ca", &ca_path]);
    assert!(out.success() && out.stdout.contains("topic t"), "{out:?}");
    let out = cluster.runnel(&["topic", "describe", "t"]);
    assert!(!out.success() && out.stderr.contains("--tls-ca"), "{out:?}");

    // Nothing moved.
    assert_eq!(terms(&cluster).await, terms_before, "a refused call moved a term");
    assert_eq!(
        cluster.first_partition(1, "t").await.expect("the partition"),
        before,
        "the partition changed"
    );
    let after = cluster.describe_cluster(1, WAIT).await.unwrap();
    assert_eq!(after.brokers, described.brokers, "a broker changed");
    fail_over_and_read_back(&mut cluster, leader, &acked).await;
}
