//! The consumer against an in-process fake broker: one tonic server on 127.0.0.1:0 serving
//! a BrokerService (a fixed log per partition) and a GroupService whose assignment each test
//! sets, and which records every heartbeat and commit in order.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use tokio_stream::StreamExt;

use super::*;

const TOPIC: &str = "t";
const PARTITIONS: u32 = 3;
/// Records per partition in the fake log: values `p<P>-<offset>`.
const RECORDS: i64 = 10;

fn status(code: i32, name: &str) -> tonic::Status {
    let mut s = tonic::Status::failed_precondition(format!("{name} ({code}): fake"));
    s.metadata_mut().insert("runnel-error-code", code.to_string().parse().unwrap());
    s.metadata_mut().insert("runnel-error-name", name.parse().unwrap());
    s
}

#[derive(Debug, Default)]
struct GroupState {
    /// Partitions per member id; a member not listed gets every partition.
    assignment: BTreeMap<String, Vec<u32>>,
    /// Moves whenever a test changes the assignment.
    epoch: i32,
    committed: BTreeMap<u32, i64>,
    /// Answer the next heartbeat with FENCED_MEMBER_EPOCH.
    fence_next: bool,
    members_joined: u32,
    /// "hb <member> <epoch> owned=<p,p>", "commit <member> <p>@<offset>", in arrival order.
    events: Vec<String>,
}

#[derive(Debug, Clone)]
struct Fake {
    addr: String,
    group: Arc<Mutex<GroupState>>,
}

impl Fake {
    fn events(&self) -> Vec<String> {
        lock(&self.group).events.clone()
    }
    fn set_assignment(&self, member: &str, partitions: &[u32]) {
        let mut g = lock(&self.group);
        g.assignment.insert(member.to_owned(), partitions.to_vec());
        g.epoch += 1;
    }
}

fn value(partition: u32, offset: i64) -> String {
    format!("p{partition}-{offset}")
}

#[tonic::async_trait]
impl pb::broker_service_server::BrokerService for Fake {
    type ProduceStreamStream = tokio_stream::Empty<Result<pb::ProduceStreamResponse, tonic::Status>>;
    type FetchStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FetchResponse, tonic::Status>> + Send>>;

    async fn produce(
        &self,
        _: tonic::Request<pb::ProduceRequest>,
    ) -> Result<tonic::Response<pb::ProduceResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn produce_stream(
        &self,
        _: tonic::Request<tonic::Streaming<pb::ProduceStreamRequest>>,
    ) -> Result<tonic::Response<Self::ProduceStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn fetch(
        &self,
        _: tonic::Request<pb::FetchRequest>,
    ) -> Result<tonic::Response<pb::FetchResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn fetch_stream(
        &self,
        request: tonic::Request<pb::FetchStreamRequest>,
    ) -> Result<tonic::Response<Self::FetchStreamStream>, tonic::Status> {
        let r = request.into_inner();
        if r.offset < 0 || r.offset > RECORDS {
            let mut s = status(1, "OFFSET_OUT_OF_RANGE");
            s.metadata_mut().insert("runnel-log-start-offset", "0".parse().unwrap());
            s.metadata_mut().insert("runnel-high-watermark", RECORDS.to_string().parse().unwrap());
            return Err(s);
        }
        let mut first = Vec::new();
        if r.offset < RECORDS {
            let values: Vec<String> = (r.offset..RECORDS).map(|o| value(r.partition, o)).collect();
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            first.push(Ok(pb::FetchResponse {
                high_watermark: RECORDS,
                log_start_offset: 0,
                next_offset: RECORDS,
                records: Vec::new(),
                batches: crate::records::test_batch(r.offset, &refs).into(),
            }));
        }
        // Then nothing more: the stream stays open, as a tail at the high watermark does.
        let stream = tokio_stream::iter(first).chain(tokio_stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }
    async fn list_offsets(
        &self,
        request: tonic::Request<pb::ListOffsetsRequest>,
    ) -> Result<tonic::Response<pb::ListOffsetsResponse>, tonic::Status> {
        let offset = if request.into_inner().spec == pb::OffsetSpec::Earliest as i32 { 0 } else { RECORDS };
        Ok(tonic::Response::new(pb::ListOffsetsResponse { offset, timestamp_ms: -1, leader_epoch: 1 }))
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
        Ok(tonic::Response::new(pb::MetadataResponse {
            brokers: vec![pb::BrokerMetadata { broker_id: 1, grpc: self.addr.clone(), ..Default::default() }],
            topics: vec![pb::TopicMetadata {
                name: TOPIC.into(),
                topic_id: vec![1; 16],
                partitions: (0..PARTITIONS)
                    .map(|p| pb::PartitionMetadata { partition: p, leader: 1, ..Default::default() })
                    .collect(),
                error: None,
            }],
            metadata_version: 1,
            answered_by: 1,
        }))
    }
}

#[tonic::async_trait]
impl pb::group_service_server::GroupService for Fake {
    async fn find_coordinator(
        &self,
        _: tonic::Request<pb::FindCoordinatorRequest>,
    ) -> Result<tonic::Response<pb::FindCoordinatorResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::FindCoordinatorResponse {
            broker_id: 1,
            address: self.addr.clone(),
            partition: 0,
        }))
    }
    async fn consumer_group_heartbeat(
        &self,
        request: tonic::Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Result<tonic::Response<pb::ConsumerGroupHeartbeatResponse>, tonic::Status> {
        let r = request.into_inner();
        let mut g = lock(&self.group);
        let owned: Vec<String> = crate::membership::from_pb(&r.owned_partitions)
            .iter()
            .map(|tp| tp.partition.to_string())
            .collect();
        let member_id = if r.member_id.is_empty() {
            g.members_joined += 1;
            format!("m{}", g.members_joined)
        } else {
            r.member_id.clone()
        };
        g.events.push(format!("hb {member_id} {} owned={}", r.member_epoch, owned.join(",")));
        if r.member_epoch == -1 {
            return Ok(tonic::Response::new(pb::ConsumerGroupHeartbeatResponse {
                member_id,
                member_epoch: -1,
                heartbeat_interval_ms: 50,
                assignment: Vec::new(),
            }));
        }
        if std::mem::take(&mut g.fence_next) {
            return Err(status(110, "FENCED_MEMBER_EPOCH"));
        }
        let partitions = g.assignment.get(&member_id).cloned().unwrap_or_else(|| (0..PARTITIONS).collect());
        Ok(tonic::Response::new(pb::ConsumerGroupHeartbeatResponse {
            member_id,
            member_epoch: g.epoch + 1,
            heartbeat_interval_ms: 50,
            assignment: vec![pb::TopicPartitions { topic: TOPIC.into(), partitions }],
        }))
    }
    async fn offset_commit(
        &self,
        request: tonic::Request<pb::OffsetCommitRequest>,
    ) -> Result<tonic::Response<pb::OffsetCommitResponse>, tonic::Status> {
        let r = request.into_inner();
        let mut g = lock(&self.group);
        for o in &r.offsets {
            g.events.push(format!("commit {} {}@{}", r.member_id, o.partition, o.offset));
            g.committed.insert(o.partition, o.offset);
        }
        Ok(tonic::Response::new(pb::OffsetCommitResponse {}))
    }
    async fn offset_fetch(
        &self,
        request: tonic::Request<pb::OffsetFetchRequest>,
    ) -> Result<tonic::Response<pb::OffsetFetchResponse>, tonic::Status> {
        let r = request.into_inner();
        let g = lock(&self.group);
        let offsets = crate::membership::from_pb(&r.partitions)
            .into_iter()
            .map(|tp| pb::CommittedOffset {
                offset: g.committed.get(&tp.partition).copied().unwrap_or(-1),
                topic: tp.topic,
                partition: tp.partition,
                ..Default::default()
            })
            .collect();
        Ok(tonic::Response::new(pb::OffsetFetchResponse { offsets }))
    }
    async fn list_groups(
        &self,
        _: tonic::Request<pb::ListGroupsRequest>,
    ) -> Result<tonic::Response<pb::ListGroupsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn describe_group(
        &self,
        _: tonic::Request<pb::DescribeGroupRequest>,
    ) -> Result<tonic::Response<pb::DescribeGroupResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn reset_offsets(
        &self,
        _: tonic::Request<pb::ResetOffsetsRequest>,
    ) -> Result<tonic::Response<pb::ResetOffsetsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

/// A fake broker on a loopback port; it stops with the test's runtime.
async fn fake() -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = Fake { addr: listener.local_addr().unwrap().to_string(), group: Default::default() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::broker_service_server::BrokerServiceServer::new(fake.clone()))
            .add_service(pb::group_service_server::GroupServiceServer::new(fake.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    fake
}

fn config(fake: &Fake) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(vec![fake.addr.clone()]).with_group("g");
    c.auto_offset_reset = OffsetReset::Earliest;
    c.session_timeout = Duration::from_secs(5);
    c
}

/// Everything the listener heard, in order.
#[derive(Debug, Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl RebalanceListener for Heard {
    fn on_assigned(&mut self, partitions: &BTreeSet<TopicPartition>) {
        lock(&self.0).push(format!("assigned {}", list(partitions)));
    }
    fn on_revoked(&mut self, revocation: &mut Revocation) {
        lock(&self.0).push(format!("revoked {}", list(revocation.partitions())));
    }
    fn on_lost(&mut self, partitions: &BTreeSet<TopicPartition>) {
        lock(&self.0).push(format!("lost {}", list(partitions)));
    }
}

const DEADLINE: Duration = Duration::from_secs(10);

/// Polls until `done` says so about everything read, or the deadline.
async fn poll_until(
    consumer: &mut Consumer,
    read: &mut Vec<ConsumerRecord>,
    what: &str,
    done: impl Fn(&Consumer, &[ConsumerRecord]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(consumer, read) {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}; read {}", read.len());
        read.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
    }
}

fn tps(partitions: &[u32]) -> BTreeSet<TopicPartition> {
    partitions.iter().map(|&p| TopicPartition::new(TOPIC, p)).collect()
}

#[tokio::test]
async fn a_member_starts_at_committed_offsets_and_commits_before_it_releases_a_partition() {
    let fake = fake().await;
    lock(&fake.group).committed.insert(0, 4);
    let heard = Heard::default();
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.set_listener(Box::new(heard.clone()));
    consumer.subscribe([TOPIC]).unwrap();
    let mut read = Vec::new();
    // Partition 0 from its committed offset 4, the others from the start.
    let expected = (RECORDS - 4) + 2 * RECORDS;
    poll_until(&mut consumer, &mut read, "reading everything", |_, r| r.len() as i64 >= expected).await;
    assert_eq!(read.len() as i64, expected, "nothing twice");
    assert_eq!(read.iter().filter(|r| r.partition == 0).map(|r| r.offset).min(), Some(4));
    for r in &read {
        assert_eq!(r.value.as_deref(), Some(value(r.partition, r.offset).as_bytes()));
    }
    assert_eq!(*lock(&heard.0), ["assigned t-0,t-1,t-2"]);
    assert_eq!(consumer.position(&TopicPartition::new(TOPIC, 1)), Some(RECORDS));

    // The coordinator takes partition 2 away: the consumer commits its position, tells the
    // listener, and only then reports it gone.
    fake.set_assignment("m1", &[0, 1]);
    poll_until(&mut consumer, &mut read, "revoking partition 2", |c, _| c.assignment() == tps(&[0, 1])).await;
    assert_eq!(*lock(&heard.0), ["assigned t-0,t-1,t-2", "revoked t-2"]);
    let deadline = Instant::now() + DEADLINE;
    let events = loop {
        let events = fake.events();
        if events.iter().any(|e| e.ends_with("owned=0,1")) {
            break events;
        }
        assert!(Instant::now() < deadline, "no heartbeat reported the release: {events:?}");
        consumer.poll(Duration::from_millis(50)).await.unwrap();
    };
    let commit = events.iter().position(|e| e == &format!("commit m1 2@{RECORDS}")).expect("a commit of t-2");
    let released = events.iter().position(|e| e.ends_with("owned=0,1")).unwrap();
    assert!(commit < released, "committed before released: {events:?}");

    // Close commits the rest and leaves.
    consumer.close().await.unwrap();
    let g = lock(&fake.group);
    assert_eq!(g.committed, BTreeMap::from([(0, RECORDS), (1, RECORDS), (2, RECORDS)]));
    assert!(g.events.last().unwrap().starts_with("hb m1 -1"), "{:?}", g.events);
}

#[tokio::test]
async fn a_fenced_member_loses_its_partitions_without_committing_and_rejoins_under_its_id() {
    let fake = fake().await;
    let heard = Heard::default();
    let mut cfg = config(&fake);
    cfg.enable_auto_commit = false;
    let mut consumer = Consumer::new(cfg).unwrap();
    consumer.set_listener(Box::new(heard.clone()));
    consumer.subscribe([TOPIC]).unwrap();
    let mut read = Vec::new();
    poll_until(&mut consumer, &mut read, "reading everything", |_, r| r.len() as i64 >= 3 * RECORDS).await;

    lock(&fake.group).fence_next = true;
    let deadline = Instant::now() + DEADLINE;
    while !lock(&heard.0).iter().any(|e| e.starts_with("lost")) {
        assert!(Instant::now() < deadline, "never lost: {:?}", lock(&heard.0));
        read.extend(consumer.poll(Duration::from_millis(50)).await.unwrap());
    }
    // The rejoin comes back with every partition, from the (empty) committed offsets: so
    // the records are read again, as they must be when nothing was committed.
    poll_until(&mut consumer, &mut read, "reading again", |_, r| r.len() as i64 >= 6 * RECORDS).await;
    assert_eq!(*lock(&heard.0), ["assigned t-0,t-1,t-2", "lost t-0,t-1,t-2", "assigned t-0,t-1,t-2"]);
    let events = fake.events();
    assert!(events.iter().all(|e| !e.starts_with("commit")), "a lost partition is not committed: {events:?}");
    let rejoin = events.iter().rposition(|e| e.starts_with("hb m1 0 ")).expect("a rejoin");
    assert_eq!(events[rejoin], "hb m1 0 owned=", "rejoined under its id, owning nothing");
    // Manual commits: commit_sync stores the positions.
    consumer.commit_sync().await.unwrap();
    assert_eq!(lock(&fake.group).committed.len(), PARTITIONS as usize);
    drop(consumer);
}

#[tokio::test]
async fn assigned_partitions_read_from_the_reset_offset_and_seek_moves_a_position() {
    let fake = fake().await;
    let mut cfg = ConsumerConfig::new(vec![fake.addr.clone()]);
    cfg.auto_offset_reset = OffsetReset::Earliest;
    cfg.max_poll_records = 3;
    let mut consumer = Consumer::new(cfg).unwrap();
    consumer.assign(tps(&[1])).unwrap();
    let mut read = Vec::new();
    poll_until(&mut consumer, &mut read, "reading p1", |_, r| r.len() as i64 >= RECORDS).await;
    assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..RECORDS).collect::<Vec<_>>());
    let p1 = TopicPartition::new(TOPIC, 1);
    consumer.seek(&p1, 7).unwrap();
    let mut again = Vec::new();
    poll_until(&mut consumer, &mut again, "reading after the seek", |_, r| r.len() >= 3).await;
    assert_eq!(again.iter().map(|r| r.offset).collect::<Vec<_>>(), [7, 8, 9]);
    assert!(consumer.seek(&TopicPartition::new(TOPIC, 0), 1).is_err(), "not assigned");
    // A commit needs a group.
    assert_eq!(consumer.commit_sync().await.unwrap_err().code, group_code::INVALID_GROUP_ID);
    // Past the log end: reset to the earliest offset.
    consumer.seek(&p1, RECORDS + 5).unwrap();
    let mut reset = Vec::new();
    poll_until(&mut consumer, &mut reset, "reading after the reset", |_, r| r.len() >= 3).await;
    assert_eq!(reset[0].offset, 0);
    // The stream form.
    let mut stream = Box::pin(consumer.stream());
    let next = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.offset, 3);
}
