//! Controller benchmark on three local `runnel node` processes (driven by
//! `scripts/bench-controller.sh`):
//!
//! - metadata commit latency: N sequential CreateTopic calls to the controller leader over
//!   gRPC, p50 / p99 / max;
//! - controller failover: kill -9 the leader, then time until the next successful commit
//!   (CreateTopic retried against the surviving nodes), over K kills; the killed node is
//!   restarted between kills.
//!
//! Usage: bench_controller --binary PATH [--creates N] [--kills K] [--partitions P] [--rf R]
//!        [-- NODE ARGS...]   (appended to every node's command line, e.g. election timeouts)

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use runnel_proto::pb::runnel::v1::CreateTopicRequest;
use runnel_testkit::{Cluster, ClusterOpts, error_name, percentile};

/// One commit attempt during failover gives up after this and tries the next node: the
/// measured failover time is accurate to about this much.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Args {
    binary: String,
    creates: usize,
    kills: usize,
    partitions: u32,
    rf: u32,
    node_args: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args =
        Args { binary: String::new(), creates: 200, kills: 5, partitions: 3, rf: 3, node_args: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--" {
            args.node_args = it.by_ref().collect();
            break;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--binary" => args.binary = value,
            "--creates" => args.creates = value.parse()?,
            "--kills" => args.kills = value.parse()?,
            "--partitions" => args.partitions = value.parse()?,
            "--rf" => args.rf = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.binary.is_empty() {
        bail!("--binary PATH is required");
    }
    Ok(args)
}

fn request(name: String, partitions: u32, rf: u32) -> CreateTopicRequest {
    CreateTopicRequest { name, partitions, replication_factor: rf, configs: Default::default() }
}

fn fmt(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut opts = ClusterOpts::new(&args.binary);
    opts.extra_args = args.node_args.clone();
    opts.log_filter = "warn".to_owned();
    let mut cluster = Cluster::start(3, opts)?;
    println!("cluster of 3 ready under {} (node args: {:?})", cluster.root().display(), args.node_args);

    let leader = cluster.wait_for_leader(None, Duration::from_secs(10)).await?;
    let mut client = cluster.controller_client(leader).await?;
    let mut latencies = Vec::with_capacity(args.creates);
    let started = Instant::now();
    for i in 0..args.creates {
        let t = Instant::now();
        client.create_topic(request(format!("bench-{i}"), args.partitions, args.rf)).await?;
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    println!(
        "commit latency (CreateTopic to leader {leader}, {} partitions, rf {}, n={}): \
         p50 {}  p99 {}  max {}  ({:.0} creates/s)",
        args.partitions,
        args.rf,
        args.creates,
        fmt(percentile(&latencies, 50.0)),
        fmt(percentile(&latencies, 99.0)),
        fmt(percentile(&latencies, 100.0)),
        args.creates as f64 / total.as_secs_f64(),
    );

    let mut failovers = Vec::with_capacity(args.kills);
    for k in 0..args.kills {
        let old = cluster.wait_for_leader(None, Duration::from_secs(10)).await?;
        cluster.kill(old)?;
        let killed = Instant::now();
        let name = format!("failover-{k}");
        let mut attempts = 0;
        'commit: loop {
            for via in cluster.ids().into_iter().filter(|&id| cluster.is_up(id)) {
                attempts += 1;
                let call = async {
                    let mut c = cluster.controller_client(via).await?;
                    Ok::<_, anyhow::Error>(c.create_topic(request(name.clone(), 1, 1)).await)
                };
                match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
                    Ok(Ok(Ok(_))) => break 'commit,
                    Ok(Ok(Err(s))) if attempts > 1 && error_name(&s) == "TOPIC_ALREADY_EXISTS" => {
                        break 'commit;
                    }
                    _ => {}
                }
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("no commit within 30 s of killing leader {old}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed.elapsed();
        println!(
            "failover {}: killed leader {old}, next commit after {} ({attempts} attempts)",
            k + 1,
            fmt(took)
        );
        failovers.push(took);
        cluster.restart(old)?;
    }
    if !failovers.is_empty() {
        println!(
            "controller failover (kill -9 leader -> next commit, n={}): p50 {}  max {}",
            failovers.len(),
            fmt(percentile(&failovers, 50.0)),
            fmt(percentile(&failovers, 100.0)),
        );
    }
    Ok(())
}
