//! `runnel produce`, `runnel consume` and `runnel bench` against real `runnel node`
//! processes: records survive the round trip in order, keys land where Kafka's partitioner
//! puts them, the CLI finds leaders by itself (also across a leader's restart), and errors
//! read `error: NAME (code): message`.
//!
//! Every wait is a poll or a process run bounded by a deadline; every process started is
//! stopped (the testkit's `Cluster` kills its nodes on drop, [`Producer`] its child).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::{CliOutput, Cluster, ClusterOpts, POLL_INTERVAL};
use serde_json::Value;

/// Bound on one CLI run.
const RUN: Duration = Duration::from_secs(30);

fn start(n: usize) -> Cluster {
    Cluster::start(n, ClusterOpts::new(env!("CARGO_BIN_EXE_runnel")))
        .unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

/// `runnel topic create` (RF 1), then waits until every partition's leader serves it.
async fn create_topic(cluster: &Cluster, name: &str, partitions: u32) -> Vec<u64> {
    let p = partitions.to_string();
    let out = cluster.runnel(&["topic", "create", name, "--partitions", &p, "--replication-factor", "1"]);
    assert!(out.success(), "topic create {name}: {out:?}");
    cluster.wait_for_partition_leaders(1, name, Duration::from_secs(20)).await.unwrap()
}

/// A running `runnel` process whose stdin the test writes. Killed on drop if still running.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    started: Instant,
}

impl Running {
    fn spawn(args: &[&str], bootstrap: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(args)
            .args(["--bootstrap", bootstrap])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runnel produce");
        let mut p = Running { child, stdin: None, started: Instant::now() };
        p.stdin = p.child.stdin.take();
        p
    }

    fn write(&mut self, lines: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(lines.as_bytes()).expect("write to runnel produce");
        stdin.flush().expect("flush");
    }

    /// Closes stdin and waits (bounded) for the exit; answers what it printed.
    fn finish(mut self, timeout: Duration) -> CliOutput {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut stdout);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut stderr);
        }
        CliOutput {
            code: status.and_then(|s| s.code()),
            timed_out: status.is_none(),
            stdout,
            stderr,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `runnel produce <args>` with `input` on stdin.
fn produce(bootstrap: &str, args: &[&str], input: &str) -> CliOutput {
    let mut p = Running::spawn(&[&["produce"], args].concat(), bootstrap);
    // A writer thread: the producer may exit early (an error) without reading everything.
    let mut stdin = p.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = p.finish(RUN);
    writer.join().expect("stdin writer");
    out
}

/// The JSON lines of `runnel consume --output json`.
fn json_lines(out: &CliOutput) -> Vec<Value> {
    assert!(out.success(), "consume failed: {out:?}");
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect()
}

/// Records grouped by partition, in the order printed: `(offset, key, value)`.
fn by_partition(records: &[Value]) -> BTreeMap<u64, Vec<(i64, Option<String>, String)>> {
    let mut parts: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for r in records {
        assert_eq!(r["value_base64"], false, "{r}");
        parts.entry(r["partition"].as_u64().unwrap()).or_default().push((
            r["offset"].as_i64().unwrap(),
            r["key"].as_str().map(str::to_owned),
            r["value"].as_str().unwrap().to_owned(),
        ));
    }
    parts
}

/// The high watermark of `topic`-`partition`, asked of node `id`.
async fn latest(cluster: &Cluster, id: u64, topic: &str, partition: u32) -> Option<i64> {
    let mut c = cluster.broker_client(id).await.ok()?;
    let request = pb::ListOffsetsRequest { topic: topic.into(), partition, spec: 0, timestamp_ms: 0 };
    let answer = tokio::time::timeout(Duration::from_secs(2), c.list_offsets(request)).await.ok()?.ok()?;
    Some(answer.into_inner().offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_in_order_and_follow_their_leaders() {
    let mut cluster = start(3);
    let all = cluster.bootstrap();
    let leaders = create_topic(&cluster, "demo", 3).await;
    println!("demo leaders by partition: {leaders:?}");

    // Phase 1: 10,000 lines, in order within each partition. The default 16 KiB batches
    // (Kafka's) spread keyless records over the partitions.
    let lines: String = (0..10_000).map(|i| format!("line-{i:05}\n")).collect();
    let t = Instant::now();
    let out = produce(&all, &["demo"], &lines);
    assert!(out.success(), "{out:?}");
    assert!(out.stderr.contains("produced 10000 records (10000 acknowledged) to demo"), "{out:?}");
    println!("produced 10000 lines in {:?}", t.elapsed());

    let t = Instant::now();
    let out = cluster.runnel(&[
        "consume",
        "demo",
        "--from-beginning",
        "--max-messages",
        "10000",
        "--output",
        "json",
    ]);
    let records = json_lines(&out);
    println!("consumed {} records in {:?}", records.len(), t.elapsed());
    assert_eq!(records.len(), 10_000);
    let parts = by_partition(&records);
    assert!(parts.len() > 1, "sticky batches of 16 KiB spread 10,000 lines: {:?}", parts.keys());
    let mut seen = BTreeSet::new();
    for (p, recs) in &parts {
        let offsets: Vec<i64> = recs.iter().map(|r| r.0).collect();
        let expected: Vec<i64> = (0..recs.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}: offsets contiguous from 0");
        let values: Vec<&str> = recs.iter().map(|r| r.2.as_str()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "partition {p}: values in send order");
        assert!(recs.iter().all(|r| r.1.is_none()), "no keys");
        seen.extend(values.iter().map(|v| v.to_string()));
    }
    assert_eq!(seen.len(), 10_000, "every line exactly once");
    let first = &records[0];
    assert_eq!(first["topic"], "demo");
    assert!(first["timestamp_ms"].as_i64().unwrap() > 1_600_000_000_000, "{first}");
    assert_eq!(first["headers"], Value::Array(vec![]));

    // Phase 2: keys land where Kafka's partitioner puts them. The hashes are those of Kafka's
    // own murmur2 test vectors (UtilsTest.testMurmur2), so this checks the CLI against Kafka,
    // not against itself.
    let kafka_hashes: [(&str, i32); 6] = [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        ("abc", 479_470_107),
    ];
    let keyed: String = (0..120).map(|i| format!("{}:k{i:03}\n", kafka_hashes[i % 6].0)).collect();
    let out = produce(&all, &["demo", "--key-separator", ":"], &keyed);
    assert!(out.success() && out.stderr.contains("(120 acknowledged)"), "{out:?}");
    let mut keyed_records = Vec::new();
    for p in 0..3u32 {
        let p = p.to_string();
        let out =
            cluster.runnel(&["consume", "demo", "--partition", &p, "--from-beginning", "--output", "json"]);
        keyed_records.extend(json_lines(&out).into_iter().filter(|r| r["key"].is_string()));
    }
    assert_eq!(keyed_records.len(), 120);
    for (key, hash) in kafka_hashes {
        let expected = u64::from((hash & 0x7fff_ffff) as u32 % 3);
        let mine: Vec<&Value> = keyed_records.iter().filter(|r| r["key"] == key).collect();
        assert_eq!(mine.len(), 20, "key {key}");
        assert!(
            mine.iter().all(|r| r["partition"] == expected),
            "key {key} must be in partition {expected}: {mine:?}"
        );
        let values: Vec<&str> = mine.iter().map(|r| r["value"].as_str().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "key {key}: in send order");
    }

    // Phase 3: a bootstrap broker that leads nothing of what is asked still gets the request
    // to the leader.
    let leader = leaders[0];
    let other = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let before = latest(&cluster, leader, "demo", 0).await.unwrap();
    // Empty input (runnel_on's stdin is /dev/null) produces nothing, successfully.
    let out = cluster.runnel_on(&[other], &["produce", "demo", "--partition", "0"], RUN);
    assert!(out.success() && out.stderr.contains("produced 0 records (0 acknowledged)"), "{out:?}");
    let via = cluster.node(other).grpc_addr().to_string();
    let out = produce(&via, &["demo", "--partition", "0"], "via-a-follower-1\nvia-a-follower-2\n");
    assert!(out.success() && out.stderr.contains("(2 acknowledged)"), "{out:?}");
    assert_eq!(latest(&cluster, leader, "demo", 0).await, Some(before + 2));
    let from = before.to_string();
    let out = cluster.runnel_on(&[other], &["consume", "demo", "--partition", "0", "--offset", &from], RUN);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "via-a-follower-1\nvia-a-follower-2\n");

    // Phase 4: clear errors for what does not exist.
    let out = cluster.runnel(&["consume", "no-such-topic"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.starts_with("error: UNKNOWN_TOPIC_OR_PARTITION (3): "), "{out:?}");
    let out = cluster.runnel(&["consume", "demo", "--partition", "0", "--offset", "999999"]);
    assert_eq!(out.error_name(), Some("OFFSET_OUT_OF_RANGE"), "{out:?}");
    assert!(out.stderr.contains(&format!("offsets 0 to {} can be fetched", before + 2)), "{out:?}");

    // Phase 5: a producer that is running when its partition's leader dies waits for the
    // partition to come back and delivers everything, in order. (RF 1: the partition is
    // offline until its only replica returns.)
    // A consumer tails the partition meanwhile and must see every record once, in order.
    let leaders = create_topic(&cluster, "failover", 1).await;
    let victim = leaders[0];
    let consumer = Running::spawn(
        &["consume", "failover", "--from-beginning", "--follow", "--max-messages", "200"],
        &all,
    );
    let mut producer = Running::spawn(&["produce", "failover"], &all);
    producer.write(&(0..100).map(|i| format!("r{i:03}\n")).collect::<String>());
    let deadline = Instant::now() + Duration::from_secs(10);
    while latest(&cluster, victim, "failover", 0).await != Some(100) {
        assert!(Instant::now() < deadline, "the first 100 records never reached the leader");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    cluster.kill(victim).unwrap();
    producer.write(&(100..200).map(|i| format!("r{i:03}\n")).collect::<String>());
    let t = Instant::now();
    cluster.restart(victim).unwrap();
    let out = producer.finish(RUN);
    println!("producer finished {:?} after the leader's restart began", t.elapsed());
    assert!(out.success() && out.stderr.contains("produced 200 records (200 acknowledged)"), "{out:?}");
    let expected: String = (0..200).map(|i| format!("r{i:03}\n")).collect();
    let out = consumer.finish(RUN);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, expected, "the tailing consumer");
    let out = cluster.runnel(&["consume", "failover", "--from-beginning"]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_sane_figures() {
    let cluster = start(1);
    create_topic(&cluster, "bench", 2).await;
    let out = cluster.runnel(&[
        "bench",
        "produce",
        "--topic",
        "bench",
        "--num-records",
        "20000",
        "--output",
        "json",
    ]);
    assert!(out.success(), "{out:?}");
    let r = out.json().unwrap();
    println!("bench produce: {r}");
    assert_eq!(r["test"], "produce");
    assert_eq!(r["records"], 20_000);
    assert_eq!(r["failed_records"], 0);
    assert_eq!(r["bytes"], 20_000 * 1024);
    assert!(r["records_per_s"].as_f64().unwrap() > 0.0 && r["mb_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let l = &r["latency_ms"];
    let ms = |k: &str| l[k].as_f64().unwrap();
    assert!(
        0.0 < ms("p50") && ms("p50") <= ms("p99") && ms("p99") <= ms("p999") && ms("p999") <= ms("max"),
        "{l}"
    );
    assert!(ms("max") < 30_000.0, "{l}");

    let out = cluster.runnel(&["bench", "consume", "--topic", "bench", "--output", "json"]);
    assert!(out.success(), "{out:?}");
    let r = out.json().unwrap();
    println!("bench consume: {r}");
    assert_eq!(r["test"], "consume");
    assert_eq!(r["records"], 20_000);
    assert_eq!(r["bytes"], 20_000 * 1024);
    assert!(r["records_per_s"].as_f64().unwrap() > 0.0, "{r}");

    // With keys and a target rate: the rate is kept (roughly) and every record is keyed.
    create_topic(&cluster, "bench-keys", 2).await;
    let out = cluster.runnel(&[
        "bench",
        "produce",
        "--topic",
        "bench-keys",
        "--num-records",
        "2000",
        "--record-size",
        "100",
        "--keys",
        "10",
        "--throughput",
        "4000",
        "--batch-size",
        "2000",
        "--concurrency",
        "2",
        "--output",
        "json",
    ]);
    assert!(out.success(), "{out:?}");
    let r = out.json().unwrap();
    assert_eq!(r["records"], 2000);
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!(elapsed >= 0.4, "2000 records at 4000/s take about 0.5 s, not {elapsed} s");
    let out = cluster.runnel(&["consume", "bench-keys", "--from-beginning", "--output", "json"]);
    let keyed = json_lines(&out).into_iter().filter(|r| r["key"].is_string()).count();
    assert_eq!(keyed, 2000);
}
