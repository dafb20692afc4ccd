//! Failover through a Kafka client (the Kafka listener's acceptance 5): on a three-node
//! cluster, librdkafka's idempotent producer (confluent-kafka from the pinned venv,
//! `enable.idempotence=true`, `acks=all`, the client's defaults otherwise) produces numbered
//! records to a 3-partition topic of replication factor 3 and min.insync.replicas 2, while the
//! leader of partition 0 is killed with SIGKILL three times, each time restarted and waited for.
//!
//! The producer is `tests/python/kafka_failover.py produce`, run as the testkit workload's
//! Kafka client ([`ProduceMode::Kafka`]): every delivery report is a line on its stdout, which
//! the workload records as a produce history. The kills are timed on that progress (1,000
//! acknowledgements on partition 0 since the last fault, and its full ISR back), never on
//! sleeps. The producer is never restarted: it must recover on its own. At the end every
//! partition is read back twice, by the testkit's gRPC reader and by a Kafka consumer
//! (`kafka_failover.py read`), and the history is checked against both: every acknowledged
//! record exactly once, at its offset, in order per partition, nothing lost or duplicated.
//! Each kill's stall (the longest stretch without an acknowledgement on partition 0 from the
//! kill until writes resumed) is printed.
//!
//! `RUNNEL_SKIP_PYTHON=1` skips it, as it does the other Python client tests. Run it with
//! `cargo test -p runnel --test kafka_failover -- --nocapture`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::history::{FinalLog, History};
use runnel_testkit::process::{python_env, run_with_timeout, skip_python};
use runnel_testkit::workload::{
    KafkaClient, ProduceMode, Workload, WorkloadOpts, acknowledged_ends, partition_states, read_final,
};
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL, percentile};

const TOPIC: &str = "kafka-failover";
const PARTITIONS: u32 = 3;
/// The partition whose leader is killed.
const VICTIM_PARTITION: u32 = 0;
const KILLS: usize = 3;
/// Acknowledgements on the victim partition between faults (and before the first).
const PROGRESS: u64 = 1000;
/// Acknowledgements after a kill that show the producer writes again.
const RESUMED: u64 = 100;
/// How long the first acknowledgements may take (the venv's Python starting, librdkafka's
/// first Metadata and InitProducerId).
const FIRST_ACKS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the producer may take to write again after a kill, or to make [`PROGRESS`].
const ACKS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted leader may take to be back in partition 0's ISR.
const IN_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const LISTENER_TIMEOUT: Duration = Duration::from_secs(15);
/// The Kafka consumer's read-back.
const READ_TIMEOUT: Duration = Duration::from_secs(45);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repo root exists")
}

/// The cargo target dir (`<target>/<profile>/runnel`): the venv lives next to the build.
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_runnel"));
    bin.parent().and_then(Path::parent).expect("the runnel binary sits in <target>/<profile>/").to_owned()
}

fn wait_for_kafka_ports(cluster: &Cluster) {
    let deadline = Instant::now() + LISTENER_TIMEOUT;
    for id in cluster.ids() {
        let addr: SocketAddr = cluster.node(id).kafka_addr();
        while let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            assert!(Instant::now() < deadline, "node {id}'s Kafka port {addr} accepts no connection: {e}");
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Waits until partition `p` has a leader and all three replicas in sync; answers the leader.
async fn wait_in_sync(cluster: &Cluster, p: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + IN_SYNC_TIMEOUT;
    loop {
        match partition_states(&cluster.up_grpc_addrs(), TOPIC).await.remove(&p) {
            Some(s) if s.leader > 0 && s.isr.len() == s.replicas.len() => return Ok(s.leader as u64),
            state if Instant::now() >= deadline => {
                anyhow::bail!("partition {p} not fully in sync after {IN_SYNC_TIMEOUT:?}: {state:?}")
            }
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Reads every partition back through a Kafka consumer: `read <p> <offset> <value>` and
/// `log <p> <log start> <high watermark>` lines, as the history checker's final logs.
fn kafka_read_back(
    python: &Path,
    script: &Path,
    bootstrap: &str,
    history: &History,
) -> BTreeMap<u32, FinalLog> {
    let partitions: Vec<u32> = (0..PARTITIONS).collect();
    let ends: Vec<String> =
        acknowledged_ends(history, &partitions).iter().map(|(p, end)| format!("{p}:{end}")).collect();
    let run = run_with_timeout(
        Command::new(python)
            .arg(script)
            .arg("read")
            .args(["--bootstrap", bootstrap, "--topic", TOPIC, "--partitions", &PARTITIONS.to_string()])
            .args(["--ends", &ends.join(","), "--timeout", &READ_TIMEOUT.as_secs().to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        READ_TIMEOUT + Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("running the Kafka read-back: {e:#}"));
    assert!(run.success() && run.stdout.ends_with("done\n"), "{}", run.describe("kafka_failover.py read"));
    let mut logs: BTreeMap<u32, FinalLog> = BTreeMap::new();
    for line in run.stdout.lines() {
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        let num = |i: usize| words[i].parse::<i64>().unwrap_or_else(|_| panic!("bad line {line:?}"));
        match words[0] {
            "log" => {
                let log = logs.entry(num(1) as u32).or_default();
                (log.log_start, log.high_watermark) = (num(2), num(3));
            }
            "read" => logs.entry(num(1) as u32).or_default().records.push((num(2), words[3].to_owned())),
            "done" => {}
            _ => panic!("unexpected line from the Kafka read-back: {line:?}"),
        }
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_librdkafka_producer_loses_and_repeats_nothing_while_a_leader_is_killed_three_times() {
    if skip_python("kafka_failover") {
        return;
    }
    let test_start = Instant::now();
    let root = repo_root();
    let venv = python_env(&root, &target_dir().join("pyenv")).unwrap_or_else(|e| panic!("{e:#}"));
    let python = venv.join("bin/python");
    let script = root.join("tests/python/kafka_failover.py");

    let mut cluster = Cluster::start(3, ClusterOpts::new(env!("CARGO_BIN_EXE_runnel")))
        .unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    wait_for_kafka_ports(&cluster);
    let via = cluster.wait_for_leader(None, Duration::from_secs(10)).await.unwrap();
    let request = pb::CreateTopicRequest {
        name: TOPIC.into(),
        partitions: PARTITIONS,
        replication_factor: 3,
        configs: [("min.insync.replicas".to_owned(), "2".to_owned())].into(),
    };
    cluster.create_topic(via, request, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.wait_for_partition_leaders(via, TOPIC, Duration::from_secs(20)).await.unwrap();

    let kafka_bootstrap: String = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.node(id).kafka_addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let grpc_bootstrap: Vec<String> = cluster.bootstrap().split(',').map(str::to_owned).collect();
    let mut opts = WorkloadOpts::new(grpc_bootstrap.clone(), TOPIC, (0..PARTITIONS).collect());
    opts.mode = ProduceMode::Kafka;
    // A pace the two cores keep up with under three debug-build nodes, fast enough for
    // 1,000 acknowledgements on the partition in about a second.
    let mut client = KafkaClient::new(&python, &script, kafka_bootstrap.clone());
    client.rate = 3000;
    client.flush_timeout = Duration::from_secs(20);
    opts.kafka = Some(client);
    let workload = Workload::start(opts);
    workload
        .wait_for_acks_everywhere(PROGRESS, FIRST_ACKS_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", workload.kafka_report()));
    println!("first {PROGRESS} acknowledgements on every partition after {:.3?}", workload.elapsed());

    let mut kills = Vec::new();
    for round in 1..=KILLS {
        // Progress and a whole ISR again before the next fault: the last victim is back.
        let before = workload.acknowledged_on(VICTIM_PARTITION);
        workload
            .wait_for_acks_on(VICTIM_PARTITION, before + PROGRESS, ACKS_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", workload.kafka_report()));
        let leader =
            wait_in_sync(&cluster, VICTIM_PARTITION).await.unwrap_or_else(|e| panic!("round {round}: {e:#}"));

        let controller = cluster.wait_for_leader(None, Duration::from_secs(10)).await.unwrap();
        cluster.kill(leader).unwrap();
        let killed_at = workload.elapsed();
        let acked_at_kill = workload.acknowledged_on(VICTIM_PARTITION);
        let also = if leader == controller { " (and the controller leader)" } else { "" };
        println!(
            "[{:>7.3} s] kill -9 node {leader}, leader of partition {VICTIM_PARTITION}{also}",
            killed_at.as_secs_f64()
        );
        let resumed =
            workload.wait_for_acks_on(VICTIM_PARTITION, acked_at_kill + RESUMED, ACKS_TIMEOUT).await;
        let resumed_at = workload.elapsed();
        cluster.restart(leader).unwrap_or_else(|e| panic!("restarting node {leader}: {e:#}"));
        println!("[{:>7.3} s] node {leader} restarted and ready", workload.elapsed().as_secs_f64());
        if let Err(e) = resumed {
            let report = workload.kafka_report();
            drop(workload);
            panic!(
                "round {round}: the producer did not write again after node {leader} was killed: {e:#}\n{report}"
            );
        }
        kills.push((format!("{leader}{also}"), killed_at, resumed_at));
    }

    let (history, report) = workload.stop_reporting().await;
    println!("{report}");
    let stopped_at = history.ended;

    let grpc_logs = read_final(
        &grpc_bootstrap,
        TOPIC,
        &acknowledged_ends(&history, &(0..PARTITIONS).collect::<Vec<_>>()),
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|e| panic!("final read: {e:#}"));
    let verdict = history.check(&grpc_logs);
    println!("checked against the gRPC read:\n{verdict}");
    let kafka_logs = kafka_read_back(&python, &script, &kafka_bootstrap, &history);
    let kafka_verdict = history.check(&kafka_logs);
    println!(
        "checked against the Kafka consumer's read: {}",
        kafka_verdict.to_string().lines().last().unwrap_or("")
    );

    let mut stalls = Vec::new();
    for (round, (leader, at, resumed)) in kills.iter().enumerate() {
        let window = history.longest_gap_within(VICTIM_PARTITION, *at, *resumed);
        println!(
            "kill {} of leader {leader} at {:.3} s: produce to partition {VICTIM_PARTITION} stalled {window}",
            round + 1,
            at.as_secs_f64()
        );
        stalls.push(window.length());
    }
    println!(
        "stall after kill -9 of the leader, through librdkafka: median {:.3?}, worst {:.3?}; {} records \
         acknowledged in {:.1} s of producing; test took {:.1?}",
        percentile(&stalls, 50.0),
        percentile(&stalls, 100.0),
        verdict.acknowledged,
        stopped_at.as_secs_f64(),
        test_start.elapsed()
    );

    assert!(report.clean(), "the Kafka client did not end cleanly: {report}");
    assert!(verdict.ok(), "{verdict}");
    assert_eq!((verdict.lost, verdict.duplicated, verdict.out_of_order), (0, 0, 0), "{verdict}");
    assert!(verdict.acknowledged as u64 >= PROGRESS * (KILLS as u64 + 1), "{verdict}");
    assert!(kafka_verdict.ok(), "checked against the Kafka consumer's read:\n{kafka_verdict}");
    for p in 0..PARTITIONS {
        assert_eq!(
            kafka_logs.get(&p).map(|l| &l.records),
            grpc_logs.get(&p).map(|l| &l.records),
            "partition {p}: the Kafka consumer and the gRPC reader read different records"
        );
    }
    // Every record the producer gave up on is accounted for by the checker (absent, or present
    // once); with librdkafka's 5-minute message timeout there should be none.
    let unacknowledged = history.attempts.iter().filter(|a| !a.outcome.is_acked()).count();
    assert_eq!(unacknowledged, 0, "records not acknowledged by the end: {verdict}");

    for (id, status) in cluster.stop_all().expect("nodes stop") {
        assert!(status.success(), "node {id} exited with {status} on SIGTERM\n{}", cluster.all_logs());
    }
}
