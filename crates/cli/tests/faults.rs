//! Faults on real `runnel node` processes, judged from outside: a node cut off from the others
//! (the testkit's netns mode, which needs root), and produce histories checked after kills and
//! restarts.
//!
//! Every wait is a poll against a deadline; the figures are printed (`--nocapture`).

use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL};

/// Raft election timeouts of the controller tests (`cluster.rs`): failover within 2 s.
fn opts(netns: bool) -> ClusterOpts {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.netns = netns;
    opts.extra_args =
        ["--election-timeout-min-ms", "300", "--election-timeout-max-ms", "600"].map(str::to_owned).to_vec();
    opts
}

fn start(n: usize, netns: bool) -> Cluster {
    Cluster::start(n, opts(netns)).unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

const RPC: Duration = Duration::from_millis(500);

/// What node `via` says: its controller leader (0 for none) and whether `broker` is fenced.
async fn view(cluster: &Cluster, via: u64, broker: u64) -> Option<(u64, bool)> {
    let c = cluster.describe_cluster(via, RPC).await.ok()?;
    let fenced = c.brokers.iter().find(|b| u64::from(b.broker_id) == broker)?.fenced;
    Some((c.leader_id, fenced))
}

/// Cuts `victim` off and checks, from the test process, that it still answers while the other
/// two have (or elect) a controller leader among themselves and fence its broker; then heals
/// and checks that it rejoins: unfenced, and agreeing with the others on the leader.
async fn isolate_then_heal(cluster: &mut Cluster, victim: u64) {
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != victim).collect();
    let was_leader = cluster.wait_for_leader(None, Duration::from_secs(10)).await.unwrap() == victim;
    cluster.isolate(victim).unwrap();
    let cut = Instant::now();

    let deadline = cut + Duration::from_secs(15);
    let (leader, moved_on) = loop {
        let mut agreed = None;
        for &via in &others {
            if let Some((leader, true)) = view(cluster, via, victim).await
                && leader != 0
                && leader != victim
            {
                agreed = Some(leader);
            }
        }
        if let Some(leader) = agreed {
            break (leader, cut.elapsed());
        }
        assert!(Instant::now() < deadline, "the others did not fence isolated broker {victim} within 15 s");
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    // Cut off from its peers, not from clients: it still answers the test process, with its own
    // (stale) view, over both services.
    let own = cluster.describe_cluster(victim, Duration::from_secs(2)).await.unwrap();
    let mut broker = cluster.broker_client(victim).await.unwrap();
    let metadata = tokio::time::timeout(Duration::from_secs(2), broker.metadata(pb::MetadataRequest { topics: vec![] }))
        .await
        .expect("Metadata from the isolated node answers")
        .unwrap()
        .into_inner();
    assert_eq!(metadata.answered_by, victim as u32);
    println!(
        "isolated node {victim} (controller leader: {was_leader}): the others fenced it under leader {leader} \
         after {moved_on:?}; it still answers the test process and names leader {} itself",
        own.leader_id
    );

    cluster.heal(victim).unwrap();
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        let mut unfenced = true;
        for id in cluster.ids() {
            match view(cluster, id, victim).await {
                Some((leader, fenced)) => {
                    leaders.push(leader);
                    unfenced &= !fenced;
                }
                None => unfenced = false,
            }
        }
        let agreed = leaders.len() == 3 && leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]);
        if agreed && unfenced {
            println!("node {victim} rejoined {:?} after the heal, leader {}", healed.elapsed(), leaders[0]);
            break;
        }
        assert!(Instant::now() < deadline, "node {victim} did not rejoin within 20 s: leaders {leaders:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_stays_reachable_while_the_others_fence_it_then_rejoins() {
    let mut cluster = start(3, true);
    let leader = cluster.wait_for_leader(None, Duration::from_secs(10)).await.unwrap();
    isolate_then_heal(&mut cluster, leader).await;
    let leader = cluster.wait_for_leader(None, Duration::from_secs(10)).await.unwrap();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    isolate_then_heal(&mut cluster, follower).await;
}
