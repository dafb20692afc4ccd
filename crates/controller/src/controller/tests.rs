//! In-process controller clusters on 127.0.0.1: real nodes, real sockets, temp dirs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::*;
use crate::metadata::ErrorCode;

const POLL: Duration = Duration::from_millis(20);
/// Every test's hard bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(25);

fn config(id: u64, dir: &Path, voters: &[Voter], session: (Duration, Duration)) -> ControllerConfig {
    let (session_timeout, session_grace) = session;
    let mut config = ControllerConfig::new(id, dir, voters.to_vec());
    config.heartbeat_interval = Duration::from_millis(100);
    config.election_timeout_min = Duration::from_millis(400);
    config.election_timeout_max = Duration::from_millis(800);
    config.service.write_timeout = Duration::from_secs(2);
    config.service.session_timeout = session_timeout;
    config.service.session_grace = session_grace;
    config.shutdown_timeout = Duration::from_secs(2);
    config
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    voters: Vec<Voter>,
    nodes: Vec<Option<Controller>>,
    /// The session timeout and the new leader's grace.
    session: (Duration, Duration),
}

impl Cluster {
    /// Most tests heartbeat by hand and not after a failover: a new leader gives their
    /// brokers a full session timeout.
    async fn start(n: u64, session_timeout: Duration) -> anyhow::Result<Cluster> {
        Self::start_with(n, (session_timeout, session_timeout)).await
    }

    async fn start_with(n: u64, session: (Duration, Duration)) -> anyhow::Result<Cluster> {
        let mut listeners = Vec::new();
        let mut voters = Vec::new();
        let mut dirs = Vec::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            voters.push(Voter { id, addr: listener.local_addr()?.to_string() });
            listeners.push(listener);
            dirs.push(tempfile::tempdir()?);
        }
        let mut nodes = Vec::new();
        for (listener, (voter, dir)) in listeners.into_iter().zip(voters.iter().zip(&dirs)) {
            let config = config(voter.id, dir.path(), &voters, session);
            nodes.push(Some(Controller::start(config, listener).await?));
        }
        Ok(Cluster { dirs, voters, nodes, session })
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.shutdown().await;
        }
    }

    /// Restarts node `id` from its data dir on its old address.
    async fn restart(&mut self, id: u64, deadline: Instant) -> anyhow::Result<()> {
        let index = (id - 1) as usize;
        loop {
            let attempt = async {
                let listener = TcpListener::bind(&self.voters[index].addr).await?;
                let config = config(id, self.dirs[index].path(), &self.voters, self.session);
                anyhow::Ok(Controller::start(config, listener).await?)
            };
            match attempt.await {
                Ok(node) => {
                    self.nodes[index] = Some(node);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::info!("restart of {id} failed, retrying: {e}");
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e.context(format!("restart node {id}"))),
            }
        }
    }

    fn running(&self) -> impl Iterator<Item = &Controller> {
        self.nodes.iter().flatten()
    }

    /// Waits until the running nodes agree on a leader among them.
    async fn leader(&self, deadline: Instant) -> anyhow::Result<u64> {
        loop {
            let named: Vec<_> = self.running().map(|n| n.raft().metrics().borrow().current_leader).collect();
            if let Some(Some(leader)) = named.first().copied()
                && named.iter().all(|l| *l == Some(leader))
                && self.running().any(|n| n.id() == leader)
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader by the deadline: {named:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn client(&self, id: u64) -> anyhow::Result<ControllerServiceClient<Channel>> {
        let addr = &self.voters[(id - 1) as usize].addr;
        Ok(ControllerServiceClient::connect(format!("http://{addr}")).await?)
    }

    async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id).await;
        }
    }
}

fn endpoints(id: u32) -> pb::BrokerEndpoints {
    pb::BrokerEndpoints {
        grpc: format!("broker{id}:9000"),
        kafka: format!("broker{id}:9092"),
        http: format!("broker{id}:8080"),
        internal: String::new(),
    }
}

/// Registers broker `id` and heartbeats once as caught up, so it is unfenced. Its epoch.
async fn register(client: &mut ControllerServiceClient<Channel>, id: u32) -> anyhow::Result<u64> {
    let request = pb::RegisterBrokerRequest {
        broker_id: id,
        endpoints: Some(endpoints(id)),
        rack: String::new(),
        incarnation_id: vec![],
    };
    let epoch = client.register_broker(request).await?.into_inner().broker_epoch;
    let beat = pb::BrokerHeartbeatRequest { broker_id: id, broker_epoch: epoch, metadata_version: epoch };
    let answer = client.broker_heartbeat(beat).await?.into_inner();
    ensure!(!answer.fenced && !answer.should_reregister, "broker {id} still fenced: {answer:?}");
    Ok(epoch)
}

fn create(name: &str, partitions: u32) -> pb::CreateTopicRequest {
    pb::CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 3,
        configs: Default::default(),
    }
}

fn follower_of(leader: u64) -> u64 {
    if leader == 1 { 2 } else { 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_by_itself_and_serves_topics_through_any_node() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(20);
        let cluster = Cluster::start(3, Duration::from_secs(60)).await?;

        // Phase 1: no manual init; the three nodes elect a leader.
        let leader = cluster.leader(deadline).await?;
        let follower = follower_of(leader);
        let mut client = cluster.client(follower).await?;

        // Phase 2: a watcher on a follower sees the full image first.
        let mut watch = cluster.client(follower).await?.watch_metadata(pb::WatchMetadataRequest {}).await?.into_inner();
        let first = watch.message().await?.context("the watch ends")?;
        ensure!(matches!(first.update, Some(pb::metadata_update::Update::Image(_))), "first update is not an image");

        // Phase 3: brokers register through the follower; a topic is created through it.
        for id in 1..=3 {
            register(&mut client, id).await?;
        }
        let created = client.create_topic(create("orders", 6)).await?.into_inner().topic.context("topic")?;
        ensure!(created.partitions.len() == 6);
        let described = client
            .describe_topic(pb::DescribeTopicRequest { name: "orders".into() })
            .await?
            .into_inner()
            .topic
            .context("topic")?;
        let mut leaders: BTreeMap<i64, usize> = BTreeMap::new();
        for p in &described.partitions {
            ensure!(p.replicas.len() == 3 && p.isr.len() == 3, "partition {p:?}");
            *leaders.entry(p.leader).or_default() += 1;
        }
        ensure!(leaders.len() == 3 && leaders.values().all(|&n| n == 2), "leaders unbalanced: {leaders:?}");

        // Phase 4: a duplicate is refused with TOPIC_ALREADY_EXISTS (36) in the metadata.
        let duplicate = client.create_topic(create("orders", 1)).await.expect_err("duplicate");
        ensure!(duplicate.code() == tonic::Code::AlreadyExists, "{duplicate:?}");
        ensure!(duplicate.metadata().get(ERROR_CODE_KEY).is_some_and(|v| v == "36"), "{duplicate:?}");
        ensure!(status_error_code(&duplicate) == Some(ErrorCode::TopicAlreadyExists));

        // Phase 5: concurrent creates of one name through every node: exactly one succeeds.
        let mut racers = Vec::new();
        for i in 0..9u64 {
            let mut client = cluster.client(i % 3 + 1).await?;
            racers.push(tokio::spawn(async move { client.create_topic(create("race", 3)).await }));
        }
        let mut wins = 0;
        for racer in racers {
            match racer.await? {
                Ok(_) => wins += 1,
                Err(status) => ensure!(status_error_code(&status) == Some(ErrorCode::TopicAlreadyExists), "{status:?}"),
            }
        }
        ensure!(wins == 1, "{wins} creates of one name succeeded");
        let listed = client.list_topics(pb::ListTopicsRequest {}).await?.into_inner();
        let names: Vec<_> = listed.topics.iter().map(|t| t.name.as_str()).collect();
        ensure!(names == ["orders", "race"], "{names:?}");

        // Phase 6: the watcher got the registrations and then the creation's deltas.
        let mut created_seen = false;
        let mut last_version = first.version;
        while !created_seen {
            let update = tokio::time::timeout_at(deadline, watch.message()).await??.context("watch ended")?;
            ensure!(update.version > last_version, "versions go back");
            last_version = update.version;
            if let Some(pb::metadata_update::Update::Deltas(d)) = update.update {
                created_seen = d.deltas.iter().any(|d| {
                    matches!(&d.change, Some(pb::metadata_delta::Change::TopicCreated(t)) if t.name == "orders")
                });
            }
        }

        // Phase 7: DescribeCluster on a follower names the leader and the voters.
        let cluster_view = client.describe_cluster(pb::DescribeClusterRequest {}).await?.into_inner();
        ensure!(cluster_view.leader_id == leader && cluster_view.voters.len() == 3, "{cluster_view:?}");
        ensure!(cluster_view.brokers.iter().all(|b| !b.fenced) && cluster_view.brokers.len() == 3);

        eprintln!("formed, served and watched in {:?}", started.elapsed());
        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_in_time_and_a_full_restart_keeps_every_topic() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(22);
        let mut cluster = Cluster::start(3, Duration::from_secs(60)).await?;
        let leader = cluster.leader(deadline).await?;
        let mut client = cluster.client(leader).await?;
        // Broker ids apart from the node ids: a new controller leader fences the broker with
        // its predecessor's id at once (it most likely died with it), and these brokers only
        // stand in for three live ones.
        for id in 11..=13 {
            register(&mut client, id).await?;
        }
        client.create_topic(create("kept", 3)).await?;

        // Phase 1: two of three nodes stop; a write through the survivor fails in time.
        let survivor = follower_of(leader);
        for id in (1..=3).filter(|&id| id != survivor) {
            cluster.stop(id).await;
        }
        let mut client = cluster.client(survivor).await?;
        let asked = Instant::now();
        let failed = client.create_topic(create("lost", 1)).await.expect_err("no quorum");
        let took = asked.elapsed();
        ensure!(took < Duration::from_secs(4), "the write took {took:?}");
        ensure!(failed.code() == tonic::Code::Unavailable, "{failed:?}");
        ensure!(status_error_code(&failed) == Some(ErrorCode::RequestTimedOut), "{failed:?}");
        ensure!(failed.message().contains("no quorum"), "{failed:?}");

        // Phase 2: one node returns; writes succeed again.
        let back = (1..=3).find(|&id| id != survivor).context("a stopped node")?;
        cluster.restart(back, deadline).await?;
        loop {
            match client.create_topic(create("after", 1)).await {
                Ok(_) => break,
                Err(e)
                    if Instant::now() < deadline
                        && status_error_code(&e) != Some(ErrorCode::TopicAlreadyExists) =>
                {
                    tokio::time::sleep(POLL).await
                }
                Err(e) if status_error_code(&e) == Some(ErrorCode::TopicAlreadyExists) => break,
                Err(e) => return Err(e.into()),
            }
        }

        // Phase 3: every node stops and restarts from its data dir: no re-init, all topics kept.
        for id in 1..=3 {
            cluster.stop(id).await;
        }
        for id in 1..=3 {
            cluster.restart(id, deadline).await?;
        }
        cluster.leader(deadline).await?;
        let mut client = cluster.client(survivor).await?;
        let names: Vec<String> = loop {
            match client.list_topics(pb::ListTopicsRequest {}).await {
                Ok(listed) => break listed.into_inner().topics.into_iter().map(|t| t.name).collect(),
                Err(e) if Instant::now() < deadline => {
                    tracing::info!("list after restart: {e}");
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        ensure!(names == ["after", "kept"], "{names:?}");

        eprintln!("no-quorum write failed in {took:?}; test took {:?}", started.elapsed());
        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_fenced_and_its_partitions_get_new_leaders() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(20);
        let session = Duration::from_millis(1500);
        let cluster = Cluster::start(3, session).await?;
        let leader = cluster.leader(deadline).await?;
        let mut client = cluster.client(follower_of(leader)).await?;
        let mut epochs = BTreeMap::new();
        for id in 1..=3 {
            epochs.insert(id, register(&mut client, id).await?);
        }
        client.create_topic(create("events", 6)).await?;
        let before =
            client.describe_topic(pb::DescribeTopicRequest { name: "events".into() }).await?.into_inner();
        let before = before.topic.context("topic")?;

        // Phase 1: brokers 1 and 2 keep heartbeating; broker 3 goes silent after two sessions.
        let beat_until = |id: u32, until: Instant| {
            let mut client = client.clone();
            let epoch = epochs[&id];
            async move {
                while Instant::now() < until {
                    let beat = pb::BrokerHeartbeatRequest {
                        broker_id: id,
                        broker_epoch: epoch,
                        metadata_version: epoch,
                    };
                    let answer = client.broker_heartbeat(beat).await?.into_inner();
                    ensure!(!answer.fenced, "broker {id} fenced while heartbeating");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                anyhow::Ok(())
            }
        };
        let quiet_at = Instant::now() + session * 2;
        let live = tokio::spawn({
            let a = beat_until(1, deadline - Duration::from_secs(2));
            let b = beat_until(2, deadline - Duration::from_secs(2));
            async move { tokio::try_join!(a, b) }
        });
        beat_until(3, quiet_at).await?;
        let silent_since = Instant::now();

        // Phase 2: broker 3 is fenced within the session timeout + 1 s.
        loop {
            let view = client.describe_cluster(pb::DescribeClusterRequest {}).await?.into_inner();
            if view.brokers.iter().any(|b| b.broker_id == 3 && b.fenced) {
                break;
            }
            ensure!(silent_since.elapsed() < session + Duration::from_secs(1), "broker 3 not fenced in time");
            tokio::time::sleep(POLL).await;
        }
        let fenced_after = silent_since.elapsed();

        // Phase 3: what it led moved to ISR members with a higher leader epoch; it left the ISRs.
        let after =
            client.describe_topic(pb::DescribeTopicRequest { name: "events".into() }).await?.into_inner();
        let after = after.topic.context("topic")?;
        for (old, new) in before.partitions.iter().zip(&after.partitions) {
            ensure!(!new.isr.contains(&3), "broker 3 still in the ISR of {new:?}");
            if old.leader == 3 {
                ensure!(new.leader != 3 && new.leader >= 0, "no new leader: {new:?}");
                ensure!(old.isr.contains(&(new.leader as u32)), "leader from outside the ISR: {new:?}");
                ensure!(new.leader_epoch > old.leader_epoch, "epoch did not rise: {old:?} -> {new:?}");
            } else {
                ensure!(new.leader == old.leader, "a healthy leader moved: {old:?} -> {new:?}");
            }
        }
        live.abort();

        eprintln!("broker fenced {fenced_after:?} after going silent; test took {:?}", started.elapsed());
        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_session_ends_is_fenced_at_once() -> anyhow::Result<()> {
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(20);
        // A session timeout far beyond the test: only the session's end can fence.
        let cluster = Cluster::start(3, Duration::from_secs(60)).await?;
        let leader = cluster.leader(deadline).await?;

        // Phase 1: a follower refuses a session and names the leader.
        let (_keep, rx) = mpsc::channel::<pb::BrokerHeartbeatRequest>(1);
        let refused = cluster
            .client(follower_of(leader))
            .await?
            .broker_session(ReceiverStream::new(rx))
            .await
            .expect_err("a follower serves no session");
        ensure!(status_error_code(&refused) == Some(ErrorCode::NotController), "{refused:?}");
        let leader_addr = &cluster.voters[(leader - 1) as usize].addr;
        ensure!(refused.metadata().get(LEADER_KEY).is_some_and(|v| v == leader_addr.as_str()), "{refused:?}");

        // Phase 2: a registered broker heartbeats over a session on the leader.
        let mut client = cluster.client(leader).await?;
        let epoch = register(&mut client, 1).await?;
        let (tx, rx) = mpsc::channel(4);
        let mut answers = client.broker_session(ReceiverStream::new(rx)).await?.into_inner();
        for _ in 0..3 {
            tx.send(pb::BrokerHeartbeatRequest {
                broker_id: 1,
                broker_epoch: epoch,
                metadata_version: epoch,
            })
            .await?;
            let answer = answers.message().await?.context("the session ends")?;
            ensure!(!answer.fenced && !answer.should_reregister, "{answer:?}");
        }

        // Phase 3: the session ends (as when the process dies): fenced within a second.
        let ended = Instant::now();
        drop(tx);
        drop(answers);
        let node = cluster.running().find(|n| n.id() == leader).context("leader runs")?;
        loop {
            let fenced = node.image()?.broker(1).context("broker 1")?.fenced;
            if fenced {
                break;
            }
            ensure!(ended.elapsed() < Duration::from_secs(1), "not fenced within 1 s of the session's end");
            tokio::time::sleep(POLL).await;
        }

        // Phase 4: a unary heartbeat from the live broker unfences it again.
        let beat =
            pb::BrokerHeartbeatRequest { broker_id: 1, broker_epoch: epoch, metadata_version: u64::MAX };
        ensure!(!client.broker_heartbeat(beat).await?.into_inner().fenced);
        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_fences_brokers_that_do_not_reach_it_within_the_grace() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let grace = Duration::from_millis(500);
        let mut cluster = Cluster::start_with(3, (Duration::from_secs(60), grace)).await?;
        let leader = cluster.leader(deadline).await?;

        // Phase 1: brokers 1 and 2 register; broker 2 keeps heartbeating through a follower.
        let follower = follower_of(leader);
        let mut client = cluster.client(follower).await?;
        register(&mut client, 1).await?;
        let epoch = register(&mut client, 2).await?;
        let beat =
            pb::BrokerHeartbeatRequest { broker_id: 2, broker_epoch: epoch, metadata_version: u64::MAX };
        let mut beating = client.clone();
        let heartbeats = tokio::spawn(async move {
            loop {
                let _ = beating.broker_heartbeat(beat).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });

        // Phase 2: the leader goes; broker 1 (silent, as if on the dead leader's host) is
        // fenced by the new leader after its grace, far inside the 60 s session timeout.
        let stopped = Instant::now();
        cluster.stop(leader).await;
        let new_leader = cluster.leader(deadline).await?;
        let node = cluster.running().find(|n| n.id() == new_leader).context("new leader runs")?;
        loop {
            let image = node.image()?;
            if image.broker(1).context("broker 1")?.fenced {
                ensure!(!image.broker(2).context("broker 2")?.fenced, "the heartbeating broker was fenced");
                break;
            }
            ensure!(stopped.elapsed() < Duration::from_secs(5), "broker 1 not fenced after the grace");
            tokio::time::sleep(POLL).await;
        }
        heartbeats.abort();
        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_partition_is_a_compare_and_swap_served_through_any_node() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(20);
        // A long session: nothing is fenced behind the test's back.
        let cluster = Cluster::start(3, Duration::from_secs(60)).await?;
        let leader = cluster.leader(deadline).await?;
        // Every call goes through a follower, so forwarding is exercised too.
        let mut client = cluster.client(follower_of(leader)).await?;
        let mut epochs = BTreeMap::new();
        for id in 1..=3 {
            epochs.insert(id, register(&mut client, id).await?);
        }
        client.create_topic(pb::CreateTopicRequest { replication_factor: 3, ..create("isr", 1) }).await?;
        let describe = |mut client: ControllerServiceClient<Channel>| async move {
            let topic = client
                .describe_topic(pb::DescribeTopicRequest { name: "isr".into() })
                .await?
                .into_inner()
                .topic
                .context("topic")?;
            anyhow::Ok((topic.topic_id.clone(), topic.partitions[0].clone()))
        };
        let (topic_id, before) = describe(client.clone()).await?;
        let lead = u32::try_from(before.leader)?;
        let other = *before.isr.iter().find(|&&b| b != lead).context("a follower")?;
        let request =
            |sender: u32, epoch: u64, state: &pb::PartitionInfo, isr: &[u32]| pb::AlterPartitionRequest {
                topic: "isr".into(),
                topic_id: topic_id.clone(),
                partition: 0,
                leader_id: sender,
                broker_epoch: epoch,
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
                new_isr: isr.iter().map(|&b| pb::IsrMember { broker_id: b, broker_epoch: 0 }).collect(),
            };
        let refused = |result: Result<tonic::Response<pb::AlterPartitionResponse>, tonic::Status>| {
            result.err().and_then(|s| status_error_code(&s))
        };

        // The leader shrinks the ISR: applied, partition epoch +1, leader epoch unchanged.
        let shrunk = client
            .alter_partition(request(lead, epochs[&lead], &before, &[lead, other]))
            .await?
            .into_inner()
            .state
            .context("state")?;
        ensure!(
            shrunk.isr.len() == 2 && shrunk.isr.contains(&lead) && shrunk.isr.contains(&other),
            "{shrunk:?}"
        );
        ensure!(shrunk.partition_epoch == before.partition_epoch + 1, "{before:?} -> {shrunk:?}");
        ensure!(shrunk.leader_epoch == before.leader_epoch && shrunk.leader == before.leader);
        ensure!(describe(client.clone()).await?.1 == shrunk, "describe disagrees with the answer");

        // The same request again is stale: the partition epoch moved on.
        let stale = client.alter_partition(request(lead, epochs[&lead], &before, &[lead])).await;
        ensure!(refused(stale) == Some(ErrorCode::InvalidUpdateVersion));
        // Only the leader may ask, and only with its current broker epoch.
        let not_leader = client.alter_partition(request(other, epochs[&other], &shrunk, &[other])).await;
        ensure!(refused(not_leader) == Some(ErrorCode::NotLeaderOrFollower));
        let old_epoch = client.alter_partition(request(lead, epochs[&lead] - 1, &shrunk, &[lead])).await;
        ensure!(refused(old_epoch) == Some(ErrorCode::StaleBrokerEpoch));
        // Nothing refused changed the partition.
        ensure!(describe(client.clone()).await?.1 == shrunk, "a refused request changed the state");

        // The caught-up replica is let back in.
        let all: Vec<u32> = before.replicas.clone();
        let expanded = client
            .alter_partition(request(lead, epochs[&lead], &shrunk, &all))
            .await?
            .into_inner()
            .state
            .context("state")?;
        ensure!(
            expanded.isr.len() == 3 && expanded.partition_epoch == shrunk.partition_epoch + 1,
            "{expanded:?}"
        );

        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_id_blocks_are_unique_through_any_node_and_across_a_leader_change() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut cluster = Cluster::start(3, Duration::from_secs(60)).await?;
        let leader = cluster.leader(deadline).await?;
        // Through a follower, so forwarding to the leader is exercised too.
        let mut client = cluster.client(follower_of(leader)).await?;
        let epoch = register(&mut client, 1).await?;
        let allocate = |mut c: ControllerServiceClient<Channel>, broker_epoch: u64| async move {
            c.allocate_producer_ids(pb::AllocateProducerIdsRequest { broker_id: 1, broker_epoch })
                .await
                .map(tonic::Response::into_inner)
        };
        let a = allocate(client.clone(), epoch).await?;
        let b = allocate(client.clone(), epoch).await?;
        ensure!((a.first_id, a.count, b.first_id, b.count) == (0, 1000, 1000, 1000), "{a:?} {b:?}");
        let stale = allocate(client.clone(), epoch - 1).await;
        ensure!(stale.err().and_then(|s| status_error_code(&s)) == Some(ErrorCode::StaleBrokerEpoch));
        let unknown = client
            .allocate_producer_ids(pb::AllocateProducerIdsRequest { broker_id: 9, broker_epoch: epoch })
            .await;
        ensure!(unknown.err().and_then(|s| status_error_code(&s)) == Some(ErrorCode::BrokerIdNotRegistered));

        // The leader stops; its successor goes on after the blocks already handed out.
        cluster.stop(leader).await;
        let successor = cluster.leader(deadline).await?;
        let survivor = cluster.client(successor).await?;
        let c = loop {
            match allocate(survivor.clone(), epoch).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => tracing::debug!("retrying: {e}"),
                Err(e) => bail!("no block from the new leader: {e}"),
            }
            tokio::time::sleep(POLL).await;
        };
        // A call the old leader timed out on may still have committed a block: at least 2000.
        ensure!(c.first_id >= 2000 && c.first_id % 1000 == 0 && c.count == 1000, "{c:?}");

        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_and_partition_counts_change_through_any_node() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let cluster = Cluster::start(3, Duration::from_secs(60)).await?;
        let leader = cluster.leader(deadline).await?;
        // Through a follower: every call below is forwarded to the leader.
        let mut client = cluster.client(follower_of(leader)).await?;
        for id in 1..=3 {
            register(&mut client, id).await?;
        }
        client.create_topic(create("t", 1)).await?;
        let mut watch = client.watch_metadata(pb::WatchMetadataRequest {}).await?.into_inner();
        let image = watch.message().await?.context("the watch ends")?;
        let describe = |mut client: ControllerServiceClient<Channel>| async move {
            let topic = client
                .describe_topic(pb::DescribeTopicRequest { name: "t".into() })
                .await?
                .into_inner()
                .topic;
            topic.context("no topic")
        };

        // AlterTopicConfig: a validate-only change answers and changes nothing; a real one
        // commits the canonical values.
        let alter =
            |set: &[(&str, &str)], delete: &[&str], validate_only: bool| pb::AlterTopicConfigRequest {
                name: "t".into(),
                set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                delete: delete.iter().map(|k| k.to_string()).collect(),
                validate_only,
            };
        let checked =
            client.alter_topic_config(alter(&[("retention.ms", "+600")], &[], true)).await?.into_inner();
        ensure!(checked.configs.get("retention.ms").map(String::as_str) == Some("600"), "{checked:?}");
        ensure!(describe(client.clone()).await?.configs.is_empty(), "validate_only changed the topic");
        let done = client
            .alter_topic_config(alter(&[("retention.ms", "600"), ("max.message.bytes", "2048")], &[], false))
            .await?
            .into_inner();
        ensure!(done.configs.len() == 2, "{done:?}");
        let done = client.alter_topic_config(alter(&[], &["retention.ms"], false)).await?.into_inner();
        ensure!(done.configs.keys().collect::<Vec<_>>() == ["max.message.bytes"], "{done:?}");
        ensure!(describe(client.clone()).await?.configs == done.configs);

        // Refusals carry Kafka's codes, validate-only or not.
        for validate_only in [true, false] {
            let bad = client
                .alter_topic_config(alter(&[("bogus", "1")], &[], validate_only))
                .await
                .expect_err("bogus");
            ensure!(status_error_code(&bad) == Some(ErrorCode::InvalidConfig), "{bad:?}");
            ensure!(bad.code() == tonic::Code::InvalidArgument, "{bad:?}");
            let bad = client
                .alter_topic_config(pb::AlterTopicConfigRequest {
                    name: "nope".into(),
                    ..alter(&[], &[], validate_only)
                })
                .await
                .expect_err("unknown topic");
            ensure!(status_error_code(&bad) == Some(ErrorCode::UnknownTopicOrPartition), "{bad:?}");
        }

        // CreatePartitions: validate-only first, then for real; it only grows.
        let grow = |count: u32, validate_only: bool| pb::CreatePartitionsRequest {
            name: "t".into(),
            count,
            validate_only,
        };
        let checked = client.create_partitions(grow(3, true)).await?.into_inner().topic.context("topic")?;
        ensure!(checked.partitions.len() == 3);
        ensure!(describe(client.clone()).await?.partitions.len() == 1, "validate_only grew the topic");
        let grown = client.create_partitions(grow(3, false)).await?.into_inner().topic.context("topic")?;
        ensure!(grown.partitions.len() == 3, "{grown:?}");
        for p in &grown.partitions {
            ensure!(
                p.replicas.len() == 3 && p.isr.len() == 3 && p.leader == i64::from(p.replicas[0]),
                "{p:?}"
            );
        }
        ensure!(describe(client.clone()).await? == grown);
        for count in [3, 2] {
            let bad = client.create_partitions(grow(count, false)).await.expect_err("not a growth");
            ensure!(status_error_code(&bad) == Some(ErrorCode::InvalidPartitions), "{bad:?}");
        }
        let bad = client
            .create_partitions(pb::CreatePartitionsRequest { name: "nope".into(), ..grow(5, false) })
            .await
            .expect_err("unknown topic");
        ensure!(status_error_code(&bad) == Some(ErrorCode::UnknownTopicOrPartition), "{bad:?}");

        // The internal topic exists (a broker creates it) but no client deletes or grows it.
        let internal = super::service::INTERNAL_TOPICS[0];
        client.create_topic(create(internal, 1)).await?;
        let bad = client
            .create_partitions(pb::CreatePartitionsRequest { name: internal.into(), ..grow(5, false) })
            .await
            .expect_err("grew the internal topic");
        ensure!(status_error_code(&bad) == Some(ErrorCode::InvalidTopicException), "{bad:?}");
        let bad = client
            .delete_topic(pb::DeleteTopicRequest { name: internal.into() })
            .await
            .expect_err("deleted the internal topic");
        ensure!(status_error_code(&bad) == Some(ErrorCode::InvalidTopicException), "{bad:?}");
        ensure!(bad.message().contains("internal topic"), "{bad:?}");

        // A watcher sees the config changes and the new partitions as deltas.
        let (mut configs_seen, mut partitions_seen) = (0, false);
        let mut version = image.version;
        while configs_seen < 2 || !partitions_seen {
            let update = tokio::time::timeout_at(deadline, watch.message()).await??.context("watch ended")?;
            ensure!(update.version > version, "versions go back");
            version = update.version;
            let Some(pb::metadata_update::Update::Deltas(d)) = update.update else { bail!("a full image") };
            for delta in d.deltas {
                match delta.change {
                    Some(pb::metadata_delta::Change::TopicConfigChanged(c)) if c.name == "t" => {
                        configs_seen += 1
                    }
                    Some(pb::metadata_delta::Change::PartitionsCreated(p)) => {
                        let indexes: Vec<u32> = p.partitions.iter().map(|p| p.partition).collect();
                        ensure!(indexes == [1, 2], "{indexes:?}");
                        partitions_seen = true;
                    }
                    _ => {}
                }
            }
        }
        cluster.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}
