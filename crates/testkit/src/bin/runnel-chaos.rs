//! `runnel-chaos`: checks Runnel's promise (an acknowledged record survives any single node
//! failing) on a running cluster, while it injects faults.
//!
//! Run it through `scripts/chaos.sh`, which finds the cluster `scripts/cluster.sh` started. It
//! creates a fresh topic, produces to every partition continuously at acks=all (the testkit's
//! [`Workload`]), and meanwhile, one fault at a time, picks the leader of a random partition and
//! kills it (then restarts it), pauses it (then resumes it), restarts it cleanly, or cuts it off
//! from the other nodes (then heals it), through `cluster.sh kill|pause|resume|restart|isolate|
//! heal`. Before each fault it waits (bounded) until every partition has its full ISR again and
//! takes writes. At the end it reads every partition back, checks the history and prints the
//! verdict and each fault's failover time. Exit status: 0 when the history holds, 1 on any
//! violation (lost, duplicated, reordered, ...), 2 when the run itself failed.
//!
//! Ctrl-C ends the fault loop early: the current fault is undone, and the run is still judged.
//!
//! `--client kafka` makes the workload a Kafka client instead: librdkafka's idempotent producer
//! (confluent-kafka, acks=all) in a child process, `tests/python/kafka_failover.py`, producing
//! over the nodes' Kafka listeners and printing each delivery report, which the workload turns
//! into the same history ([`ProduceMode::Kafka`]); the faults, the final read (over gRPC) and
//! the checker are the same. `scripts/chaos.sh --client kafka` finds the venv and the listeners.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::history::Window;
use runnel_testkit::workload::{
    KafkaClient, PartitionState, ProduceMode, Workload, WorkloadOpts, acknowledged_ends, partition_states,
    read_final,
};
use runnel_testkit::{grpc_client, percentile};
use tokio::sync::watch;

/// Longest run accepted.
const DURATION_MAX_S: u64 = 3600;
/// How long one `cluster.sh` call may take (a restart waits for the node to be ready).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait, before a fault, for every partition to have its full ISR and take writes.
const STEADY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final read waits for each high watermark to reach its acknowledged offsets.
const SETTLE: Duration = Duration::from_secs(15);
/// The shortest time left in the run for another fault to start.
const FAULT_ROOM: Duration = Duration::from_secs(5);
/// Pause between steady state and the next fault, so each failover is measured from a
/// partition that is taking writes.
const QUIET: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Fault {
    /// kill -9, hold, start again.
    Kill,
    /// SIGSTOP, hold, SIGCONT.
    Pause,
    /// SIGTERM, start again at once.
    Restart,
    /// Cut off from the other nodes, hold, heal (netns mode of cluster.sh only).
    Isolate,
}

impl Fault {
    /// How long the fault lasts before it is undone: a range to draw from.
    fn hold(self) -> (Duration, Duration) {
        let ms = Duration::from_millis;
        match self {
            Fault::Kill => (ms(500), ms(3000)),
            // Both sides of the 3 s session timeout: a leader that is fenced meanwhile, and one
            // that wakes up still believing it leads.
            Fault::Pause => (ms(1000), ms(5000)),
            Fault::Restart => (ms(0), ms(0)),
            Fault::Isolate => (ms(2000), ms(8000)),
        }
    }
}

/// Who produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Client {
    /// The testkit's own gRPC producers (or the client crate's Producer, see --idempotent).
    Grpc,
    /// librdkafka's idempotent producer over the Kafka protocol (needs --python,
    /// --kafka-script and --kafka-bootstrap; scripts/chaos.sh gives them).
    Kafka,
}

#[derive(Debug, Parser)]
#[command(
    name = "runnel-chaos",
    about = "Produces at acks=all while killing, pausing, restarting and isolating partition leaders of a \
             scripts/cluster.sh cluster, then checks every record. Run it through scripts/chaos.sh."
)]
struct Args {
    /// Every node's gRPC address (ip:port); broker ids are the positions, 1 first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053")]
    bootstrap: Vec<String>,
    /// scripts/cluster.sh, which injects the faults.
    #[arg(long)]
    cluster_script: PathBuf,
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The faults to draw from.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,restart")]
    faults: Vec<Fault>,
    /// The topic to create (default: chaos-<unix seconds>).
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Its replication factor.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Its min.insync.replicas.
    #[arg(long, default_value_t = 2)]
    min_insync_replicas: u32,
    /// Producers per partition (each with one request in flight).
    #[arg(long, default_value_t = 1)]
    producers_per_partition: u32,
    /// Pause after each acknowledged request, in milliseconds (leaves the nodes some CPU).
    #[arg(long, default_value_t = 2)]
    interval_ms: u64,
    /// Seed of the fault schedule (default: from the clock); printed so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Produce through the client crate's idempotent Producer (it retries with the same
    /// records, and the leaders drop repeats) instead of the workload's own loop, which never
    /// retries a value. Duplicates must then be 0.
    #[arg(long, conflicts_with = "client_producer")]
    idempotent: bool,
    /// Produce through the client's Producer without idempotence: its retries may append a
    /// record twice, which the verdict counts (the contrast to --idempotent).
    #[arg(long)]
    client_producer: bool,
    /// Who produces: the gRPC workload, or a Kafka client (librdkafka, idempotent, acks=all).
    #[arg(long, value_enum, default_value_t = Client::Grpc, conflicts_with_all = ["idempotent", "client_producer"])]
    client: Client,
    /// --client kafka: the Python that has confluent-kafka (the venv of tests/python/requirements.txt).
    #[arg(long, required_if_eq("client", "kafka"))]
    python: Option<PathBuf>,
    /// --client kafka: tests/python/kafka_failover.py.
    #[arg(long, required_if_eq("client", "kafka"))]
    kafka_script: Option<PathBuf>,
    /// --client kafka: every node's Kafka listener (ip:port,...).
    #[arg(long, required_if_eq("client", "kafka"))]
    kafka_bootstrap: Option<String>,
    /// --client kafka: records a second at most, over all partitions.
    #[arg(long, default_value_t = 3000)]
    kafka_rate: u32,
}

/// One injected fault.
#[derive(Debug)]
struct Injected {
    fault: Fault,
    node: u64,
    /// When the script injecting it started, on the history's clock.
    at: Duration,
    /// When the next fault started (or the run ended): the span of this fault and its recovery.
    until: Duration,
    /// The partitions the node led then.
    led: Vec<u32>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("runnel-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if args.duration == 0 || args.duration > DURATION_MAX_S {
        bail!("--duration must be 1 to {DURATION_MAX_S} seconds");
    }
    if args.faults.is_empty() {
        bail!("--faults names no fault");
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let topic = args.topic.clone().unwrap_or_else(|| {
        format!(
            "chaos-{}",
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        )
    });
    let stop = interrupt_watch();

    create_topic(&args, &topic).await?;
    let partitions: Vec<u32> = (0..args.partitions).collect();
    wait_for_leaders(&args.bootstrap, &topic, &partitions).await?;
    println!(
        "runnel-chaos: topic {topic}, {} partitions, replication factor {}, min.insync.replicas {}; \
         {} s of faults from {:?}; seed {seed}",
        args.partitions, args.replication_factor, args.min_insync_replicas, args.duration, args.faults
    );

    let mut opts = WorkloadOpts::new(args.bootstrap.clone(), topic.clone(), partitions.clone());
    opts.producers_per_partition = args.producers_per_partition;
    opts.interval = Duration::from_millis(args.interval_ms);
    opts.mode = match (args.client, args.idempotent, args.client_producer) {
        (Client::Kafka, _, _) => ProduceMode::Kafka,
        (Client::Grpc, true, _) => ProduceMode::Producer { idempotence: true },
        (Client::Grpc, false, true) => ProduceMode::Producer { idempotence: false },
        (Client::Grpc, false, false) => ProduceMode::Direct,
    };
    if args.client == Client::Kafka {
        let (Some(python), Some(script), Some(bootstrap)) =
            (&args.python, &args.kafka_script, &args.kafka_bootstrap)
        else {
            bail!("--client kafka needs --python, --kafka-script and --kafka-bootstrap");
        };
        let mut client = KafkaClient::new(python, script, bootstrap.clone());
        client.rate = args.kafka_rate;
        println!(
            "runnel-chaos: producing with librdkafka's idempotent producer (acks=all) over the Kafka listeners \
             {bootstrap}, at most {} records/s",
            client.rate
        );
        opts.kafka = Some(client);
    } else {
        println!("runnel-chaos: producing with {:?}", opts.mode);
    }
    let workload = Workload::start(opts);
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut injected: Vec<Injected> = Vec::new();
    let mut steady_failures = 0;

    while !*stop.borrow() && Instant::now() + FAULT_ROOM < end {
        if let Err(e) = wait_steady(&args, &topic, &workload, &stop).await {
            println!("[{:>8.3} s] {e:#}", workload.elapsed().as_secs_f64());
            steady_failures += 1;
            if steady_failures >= 2 {
                println!(
                    "[{:>8.3} s] no more faults: the cluster does not recover",
                    workload.elapsed().as_secs_f64()
                );
                break;
            }
            continue;
        }
        if !sleep_unless_stopped(QUIET, &stop).await {
            break;
        }
        let states = partition_states(&args.bootstrap, &topic).await;
        let partition = rng.gen_range(0..args.partitions);
        let Some(node) = states.get(&partition).and_then(|s| u64::try_from(s.leader).ok()).filter(|&n| n > 0)
        else {
            continue;
        };
        let led: Vec<u32> = states.iter().filter(|(_, s)| s.leader == node as i64).map(|(&p, _)| p).collect();
        let fault = args.faults[rng.gen_range(0..args.faults.len())];
        let (low, high) = fault.hold();
        let hold = if high > low { rng.gen_range(low..high) } else { low };
        let before = workload.elapsed();
        let what = match fault {
            Fault::Kill => "kill -9",
            Fault::Pause => "pause (SIGSTOP)",
            Fault::Restart => "restart (SIGTERM, then start)",
            Fault::Isolate => "isolate",
        };
        println!("[{:>8.3} s] {what} node {node}, leader of partitions {led:?}", before.as_secs_f64());
        let script = &args.cluster_script;
        let node_arg = node.to_string();
        let (inject, undo): (&str, Option<&str>) = match fault {
            Fault::Kill => ("kill", Some("restart")),
            Fault::Pause => ("pause", Some("resume")),
            Fault::Restart => ("restart", None),
            Fault::Isolate => ("isolate", Some("heal")),
        };
        let injected_ok = cluster_sh(script, &[inject, &node_arg]).await;
        if let Err(e) = &injected_ok {
            println!("[{:>8.3} s] {inject} failed: {e:#}", workload.elapsed().as_secs_f64());
        }
        if let Some(previous) = injected.last_mut() {
            previous.until = before;
        }
        injected.push(Injected { fault, node, at: before, until: Duration::MAX, led });
        if let Some(undo) = undo {
            // The fault is undone even after Ctrl-C.
            sleep_unless_stopped(hold, &stop).await;
            cluster_sh(script, &[undo, &node_arg])
                .await
                .with_context(|| format!("undoing {what} of node {node}: cluster.sh {undo} {node}"))?;
            println!("[{:>8.3} s] {undo} node {node}", workload.elapsed().as_secs_f64());
        }
        injected_ok?;
    }
    // Production goes on to the end of the run, and past it until the cluster is whole again,
    // so the run does not end inside the last fault's outage.
    while Instant::now() < end && sleep_unless_stopped(Duration::from_millis(200), &stop).await {}
    if let Err(e) = wait_steady(&args, &topic, &workload, &watch::channel(false).1).await {
        println!("[{:>8.3} s] at the end: {e:#}", workload.elapsed().as_secs_f64());
    }
    if *stop.borrow() {
        println!("[{:>8.3} s] interrupted: stopping", workload.elapsed().as_secs_f64());
    }

    let client_stats = workload.client_stats();
    let (history, kafka_report) = workload.stop_reporting().await;
    let kafka_clean = match args.client {
        Client::Kafka => {
            println!("{kafka_report}");
            kafka_report.clean()
        }
        Client::Grpc => true,
    };
    if let Some(stats) = client_stats {
        println!(
            "client producer: {} batches acknowledged, {} resent, {} answered as duplicates (dropped by the \
             leaders), {} failed; {} times it left a silent leader for the one the others named",
            stats.batches, stats.retries, stats.duplicates, stats.failed_batches, stats.leader_moves
        );
    }
    if let Some(last) = injected.last_mut() {
        last.until = history.ended;
    }
    println!(
        "[{:>8.3} s] produced; reading every partition back (waiting up to {SETTLE:?} for each high watermark)",
        history.ended.as_secs_f64()
    );
    let logs = read_final(&args.bootstrap, &topic, &acknowledged_ends(&history, &partitions), SETTLE).await?;
    let verdict = history.check(&logs);

    println!(
        "\nfaults injected: {}; each with the longest stretch without an acknowledged produce from it to the",
        injected.len()
    );
    println!("next fault (its failover and its recovery), on a partition the node led and on any partition:");
    let mut by_kind: BTreeMap<Fault, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for f in &injected {
        let windows: Vec<(u32, Window)> =
            partitions.iter().map(|&p| (p, history.longest_gap_within(p, f.at, f.until))).collect();
        let worst = |only_led: bool| {
            windows
                .iter()
                .filter(|(p, _)| !only_led || f.led.contains(p))
                .max_by_key(|(_, w)| w.length())
                .copied()
        };
        let describe = |w: Option<(u32, Window)>| match w {
            Some((p, w)) => format!("{} (partition {p})", secs(w.length())),
            None => "-".to_owned(),
        };
        println!(
            "  {:>8.3} s  {:<8} node {}: led {}, any {}",
            f.at.as_secs_f64(),
            format!("{:?}", f.fault).to_lowercase(),
            f.node,
            describe(worst(true)),
            describe(worst(false))
        );
        let entry = by_kind.entry(f.fault).or_default();
        if let Some((_, w)) = worst(true) {
            entry.0.push(w.length());
        }
        if let Some((_, w)) = worst(false) {
            entry.1.push(w.length());
        }
    }
    for (fault, (led, any)) in &by_kind {
        let stats = |d: &[Duration]| {
            if d.is_empty() {
                "-".to_owned()
            } else {
                format!("median {}, worst {}", secs(percentile(d, 50.0)), secs(percentile(d, 100.0)))
            }
        };
        println!(
            "  {:<8} ({} faults): on the partitions the node led: {}; on any partition: {}",
            format!("{fault:?}").to_lowercase(),
            any.len(),
            stats(led),
            stats(any)
        );
    }
    println!("\n{verdict}");
    if !kafka_clean {
        println!(
            "the Kafka client did not end cleanly (a fatal error, or no clean exit): see its report above"
        );
    }
    Ok(verdict.ok() && kafka_clean)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// A flag that turns true on Ctrl-C (SIGINT).
fn interrupt_watch() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("runnel-chaos: interrupted; undoing the current fault, then judging the run");
            let _ = tx.send(true);
        }
        // Keep the sender, so receivers never see it closed.
        std::future::pending::<()>().await;
    });
    rx
}

/// Sleeps for `d`; false when interrupted (at once, or meanwhile).
async fn sleep_unless_stopped(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// Runs `cluster.sh <args>` in a process group of its own (a Ctrl-C meant for runnel-chaos must
/// not cut a restart short), bounded by [`SCRIPT_TIMEOUT`].
async fn cluster_sh(script: &Path, args: &[&str]) -> anyhow::Result<()> {
    let script = script.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&script)
            .args(&args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", script.display()))?;
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cluster.sh {} did not finish within {SCRIPT_TIMEOUT:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            bail!("cluster.sh {} failed ({status}): {}", args.join(" "), stderr.trim());
        }
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("cluster.sh task: {e}"))?
}

/// Creates the topic through any node (followers forward to the controller leader).
async fn create_topic(args: &Args, topic: &str) -> anyhow::Result<()> {
    let configs = [("min.insync.replicas".to_owned(), args.min_insync_replicas.to_string())].into();
    let request = pb::CreateTopicRequest {
        name: topic.to_owned(),
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        configs,
    };
    let mut last = anyhow!("no bootstrap address");
    for addr in &args.bootstrap {
        let addr: SocketAddr =
            addr.parse().with_context(|| format!("--bootstrap {addr:?} is not ip:port"))?;
        let call = async {
            let mut client = grpc_client(addr).await?;
            client.create_topic(request.clone()).await.map_err(|s| {
                let name = runnel_testkit::error_name(&s);
                anyhow!("{name} {}", s.message())
            })
        };
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.context(format!("creating {topic} through {addr}")),
            Err(_) => last = anyhow!("creating {topic} through {addr}: no answer within 10 s"),
        }
    }
    Err(last)
}

/// Waits until every partition has a leader.
async fn wait_for_leaders(bootstrap: &[String], topic: &str, partitions: &[u32]) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEADY_TIMEOUT;
    loop {
        let states = partition_states(bootstrap, topic).await;
        if partitions.iter().all(|p| states.get(p).is_some_and(|s| s.leader > 0)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the partitions of {topic} have no leaders after {STEADY_TIMEOUT:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every partition has its full ISR and has acknowledged records since the call.
async fn wait_steady(
    args: &Args,
    topic: &str,
    workload: &Workload,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let partitions: Vec<u32> = (0..args.partitions).collect();
    let acked: Vec<u64> = partitions.iter().map(|&p| workload.acknowledged_on(p)).collect();
    let mut last: BTreeMap<u32, PartitionState> = BTreeMap::new();
    loop {
        let full = |s: &PartitionState| s.leader > 0 && s.isr.len() == s.replicas.len();
        let writing = partitions.iter().zip(&acked).all(|(&p, &n)| workload.acknowledged_on(p) > n);
        if writing && !last.is_empty() && partitions.iter().all(|p| last.get(p).is_some_and(full)) {
            return Ok(());
        }
        if start.elapsed() >= STEADY_TIMEOUT {
            let short: Vec<String> = last
                .iter()
                .filter(|(_, s)| !full(s))
                .map(|(p, s)| format!("partition {p}: leader {} isr {:?}", s.leader, s.isr))
                .collect();
            bail!(
                "not steady after {STEADY_TIMEOUT:?}: {}{}",
                if writing { "every partition takes writes" } else { "some partition takes no writes" },
                if short.is_empty() { String::new() } else { format!("; {}", short.join(", ")) }
            );
        }
        if !sleep_unless_stopped(Duration::from_millis(100), stop).await {
            return Ok(());
        }
        last = partition_states(&args.bootstrap, topic).await;
    }
}
