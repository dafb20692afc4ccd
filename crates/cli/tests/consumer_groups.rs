//! Consumer groups end to end, on three real `runnel node` processes, through the Rust
//! client's `Consumer` and the CLI (`runnel consume --group`, `runnel group ...`): the
//! acceptance scenarios of issue 6.
//!
//! Members run as `runnel consume --group` child processes, so "a member dies" is a real
//! SIGKILL. Each prints the records it processed (JSON lines, flushed before its next poll)
//! and logs its commits on stderr (`RUNNEL_LOG=runnel_client=info`), which the checks read:
//! every record is processed, and a record is processed twice only by the killed member and
//! a successor, at or after the killed member's last commit.
//!
//! Every wait is a poll against a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_client::consumer::{Consumer, ConsumerConfig, OffsetReset, TopicPartition};
use runnel_client::coordinator::Coordinator;
use runnel_client::router::Router;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// The members' session timeout: a killed member's partitions must move within it + 1 s.
const SESSION_TIMEOUT_MS: u64 = 6_000;

fn start3() -> Cluster {
    let opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

fn bootstrap(cluster: &Cluster) -> Vec<String> {
    cluster.bootstrap().split(',').map(str::to_owned).collect()
}

async fn create(cluster: &Cluster, name: &str, partitions: u32) {
    let request = pb::CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 3,
        configs: [("min.insync.replicas".to_owned(), "2".to_owned())].into(),
    };
    cluster.create_topic(1, request, DEADLINE).await.unwrap();
    cluster.wait_for_partition_leaders(1, name, DEADLINE).await.unwrap();
}

/// Produces `count` records `<tag>-<partition>-<i>` to each partition, acks=all.
async fn produce(router: &Router, topic: &str, partitions: u32, tag: &str, count: usize) {
    for p in 0..partitions {
        let records = (0..count)
            .map(|i| pb::Record { value: Some(Bytes::from(format!("{tag}-{p}-{i}"))), ..Default::default() })
            .collect();
        let request = pb::ProduceRequest {
            topic: topic.into(),
            partition: p,
            acks: pb::Acks::All as i32,
            timeout_ms: 10_000,
            data: Some(pb::produce_request::Data::Records(pb::RecordList { records })),
            producer: None,
        };
        router
            .call(topic, p, Duration::from_secs(15), |mut c| {
                let request = request.clone();
                async move { c.produce(request).await.map(tonic::Response::into_inner) }
            })
            .await
            .unwrap_or_else(|e| panic!("produce to {topic}-{p}: {e}"));
    }
}

/// A `runnel consume --group` child process.
struct Member {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Member {
    fn spawn(cluster: &Cluster, name: &str, group: &str, topic: &str) -> Member {
        let stdout = cluster.root().join(format!("member-{name}.out"));
        let stderr = cluster.root().join(format!("member-{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["consume", topic, "--group", group, "--from-beginning", "--output", "json"])
            .args(["--session-timeout-ms", &SESSION_TIMEOUT_MS.to_string()])
            .args(["--auto-commit-interval-ms", "200", "--client-id", name])
            .args(["--bootstrap", &cluster.bootstrap()])
            .env("RUNNEL_LOG", "runnel_client=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Member { name: name.to_owned(), child: Some(child), stdout, stderr }
    }

    /// (partition, offset) of every record printed so far (a last line cut short is left).
    fn read(&self) -> Vec<(u32, i64)> {
        let text = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| (v["partition"].as_u64().unwrap() as u32, v["offset"].as_i64().unwrap()))
            .collect()
    }

    /// The last offset committed per partition, from the commit log lines.
    fn commits(&self) -> BTreeMap<u32, i64> {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let mut last = BTreeMap::new();
        for line in text.lines().map(strip_ansi).filter(|l| l.contains("committed")) {
            let Some(list) = line.split("offsets=").nth(1) else { continue };
            for item in list.split_whitespace().next().unwrap_or("").split(',') {
                let Some((tp, offset)) = item.split_once('@') else { continue };
                let Some((_, p)) = tp.rsplit_once('-') else { continue };
                if let (Ok(p), Ok(o)) = (p.parse::<u32>(), offset.parse::<i64>()) {
                    last.insert(p, o);
                }
            }
        }
        last
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ctrl-C: the member commits, leaves and exits 0.
    fn interrupt(&mut self) {
        let mut child = self.child.take().expect("running");
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "member {} did not exit after Ctrl-C", self.name);
            std::thread::sleep(POLL_INTERVAL);
        };
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(status.success(), "member {} exited with {status}: {err}", self.name);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `runnel group describe G --output json`.
fn describe(cluster: &Cluster, group: &str) -> Value {
    let out = cluster.runnel(&["group", "describe", group, "--output", "json"]);
    assert!(out.success(), "group describe: {}", out.stderr);
    out.json().unwrap()
}

/// Each member's owned partitions, by client id.
fn owned(d: &Value) -> BTreeMap<String, BTreeSet<u32>> {
    d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let parts =
                m["assignment"].as_array().unwrap().iter().map(|tp| tp["partition"].as_u64().unwrap() as u32);
            (m["client_id"].as_str().unwrap().to_owned(), parts.collect())
        })
        .collect()
}

/// Polls `group describe` until the members (by client id) own the six partitions in
/// shares of `sizes` and the group is stable; answers the split and how long it took.
fn wait_split(
    cluster: &Cluster,
    group: &str,
    members: &[&str],
    sizes: usize,
) -> (BTreeMap<String, BTreeSet<u32>>, Duration) {
    let start = Instant::now();
    loop {
        let d = describe(cluster, group);
        let split = owned(&d);
        let names: Vec<&str> = split.keys().map(String::as_str).collect();
        let all: BTreeSet<u32> = split.values().flatten().copied().collect();
        let disjoint = split.values().map(BTreeSet::len).sum::<usize>() == all.len();
        if names == members
            && all.len() == 6
            && disjoint
            && split.values().all(|s| s.len() == sizes)
            && d["state"] == "stable"
        {
            return (split, start.elapsed());
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no {sizes}-way split among {members:?} within {DEADLINE:?}: {d}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until the members together have read offsets `0..per_partition` of every partition.
fn wait_read_all(members: &[&Member], per_partition: i64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let read: BTreeSet<(u32, i64)> = members.iter().flat_map(|m| m.read()).collect();
        if (0..6).all(|p| (0..per_partition).all(|o| read.contains(&(p, o)))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not everything read within {DEADLINE:?}: {} of {}",
            read.len(),
            6 * per_partition
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_six_partitions_rebalance_on_join_and_take_over_a_killed_member() {
    let cluster = start3();
    let router = Router::new(bootstrap(&cluster));
    let (topic, group) = ("orders", "billing");
    create(&cluster, topic, 6).await;
    produce(&router, topic, 6, "a", 50).await;

    // Phase 1: two members split the six partitions 3 and 3.
    let a = Member::spawn(&cluster, "a", group, topic);
    let b = Member::spawn(&cluster, "b", group, topic);
    let (split, took) = wait_split(&cluster, group, &["a", "b"], 3);
    eprintln!("two members: {split:?} after {took:?}");

    // Phase 2: a third joins; 2, 2 and 2.
    let mut c = Member::spawn(&cluster, "c", group, topic);
    let (split, took) = wait_split(&cluster, group, &["a", "b", "c"], 2);
    eprintln!("three members: {split:?} after {took:?}");
    produce(&router, topic, 6, "b", 50).await;
    wait_read_all(&[&a, &b, &c], 100);

    // Phase 3: c is killed while records arrive; its partitions move to a and b within the
    // session timeout plus 1 s.
    produce(&router, topic, 6, "c", 100).await;
    c.kill();
    let killed_at = Instant::now();
    let (split, took) = wait_split(&cluster, group, &["a", "b"], 3);
    let moved = killed_at.elapsed();
    eprintln!("after the kill: {split:?}; moved {moved:?} after the kill (observed by polling {took:?})");
    assert!(
        moved <= Duration::from_millis(SESSION_TIMEOUT_MS + 1000),
        "the killed member's partitions moved after {moved:?}, more than the session timeout + 1 s"
    );
    produce(&router, topic, 6, "d", 100).await;
    wait_read_all(&[&a, &b, &c], 300);

    // Nothing unread (above), and nothing processed twice except what the killed member
    // processed after its last commit.
    let c_commits = c.commits();
    let mut seen: BTreeMap<(u32, i64), Vec<&str>> = BTreeMap::new();
    for m in [&a, &b, &c] {
        for r in m.read() {
            seen.entry(r).or_default().push(&m.name);
        }
    }
    let mut redelivered = 0;
    for ((p, o), readers) in &seen {
        if readers.len() > 1 {
            let after_last_commit = c_commits.get(p).is_none_or(|&committed| *o >= committed);
            assert!(
                readers.contains(&"c") && after_last_commit,
                "offset {o} of partition {p} was processed by {readers:?}; c's last commits {c_commits:?}"
            );
            redelivered += 1;
        }
    }
    eprintln!("{redelivered} records processed twice (after c's last commit {c_commits:?})");

    // The group has members: resetting its offsets is refused.
    let refused = cluster.runnel(&["group", "reset-offsets", group, "--topic", topic, "--to-earliest"]);
    assert_eq!(refused.error_name(), Some("NON_EMPTY_GROUP"), "{}", refused.stderr);

    // Phase 4: a and b stop cleanly (commit, leave). The group is empty, every offset
    // committed, no lag.
    let (mut a, mut b) = (a, b);
    a.interrupt();
    b.interrupt();
    let d = describe(&cluster, group);
    assert_eq!(d["state"], "empty", "{d}");
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!((p["committed"].as_i64(), p["lag"].as_i64()), (Some(300), Some(0)), "{d}");
    }

    // Phase 5: a second group reads the whole topic from the beginning, on its own.
    let second = cluster.runnel_with_timeout(
        &[
            "consume",
            topic,
            "--group",
            "audit",
            "--from-beginning",
            "--max-messages",
            "1800",
            "--output",
            "json",
        ],
        DEADLINE,
    );
    assert!(second.success(), "{}", second.stderr);
    let read: Vec<(u64, i64)> = second
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["partition"].as_u64().unwrap(), v["offset"].as_i64().unwrap()))
        .collect();
    let distinct: BTreeSet<(u64, i64)> = read.iter().copied().collect();
    assert_eq!((read.len(), distinct.len()), (1800, 1800), "every record once");
    let audit = describe(&cluster, "audit");
    assert!(audit["partitions"].as_array().unwrap().iter().all(|p| p["committed"] == 300), "{audit}");
    let list = cluster.runnel(&["group", "list", "--output", "json"]);
    let listed = list.json().unwrap();
    let names: BTreeSet<String> = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(group) && names.contains("audit"), "{listed}");

    // Phase 6: with no members, offsets can be reset.
    let reset = cluster.runnel(&["group", "reset-offsets", group, "--topic", topic, "--to-earliest"]);
    assert!(reset.success(), "{}", reset.stderr);
    let reset = cluster.runnel(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--partition",
        "2",
        "--to-offset",
        "7",
    ]);
    assert!(reset.success(), "{}", reset.stderr);
    let d = describe(&cluster, group);
    let committed: Vec<i64> =
        d["partitions"].as_array().unwrap().iter().map(|p| p["committed"].as_i64().unwrap()).collect();
    assert_eq!(committed, [0, 0, 7, 0, 0, 0], "{d}");
    assert_eq!(d["partitions"][2]["lag"], 293, "{d}");
}

/// Sets its flag when partitions are lost.
struct OnLost(Arc<std::sync::atomic::AtomicBool>);

impl runnel_client::consumer::RebalanceListener for OnLost {
    fn on_lost(&mut self, _: &BTreeSet<TopicPartition>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_committed_before_the_coordinators_node_is_killed_are_used_after() {
    let mut cluster = start3();
    let addrs = bootstrap(&cluster);
    let router = Router::new(addrs.clone());
    let (topic, group) = ("ledger", "ledger-readers");
    create(&cluster, topic, 3).await;
    produce(&router, topic, 3, "x", 40).await;

    let mut config = ConsumerConfig::new(addrs.clone()).with_group(group);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.enable_auto_commit = false;
    config.session_timeout = Duration::from_millis(SESSION_TIMEOUT_MS);
    let mut first = Consumer::new(config.clone()).unwrap();
    first.subscribe([topic]).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + DEADLINE;
    while read < 120 {
        assert!(Instant::now() < deadline, "read {read} of 120");
        read += first.poll(Duration::from_millis(200)).await.unwrap().len();
    }
    let committed: BTreeMap<TopicPartition, i64> =
        (0..3).map(|p| (TopicPartition::new(topic, p), 10 + 5 * i64::from(p))).collect();
    first.commit_offsets_sync(committed.clone()).await.unwrap();

    let coordinator = Coordinator::new(addrs.clone(), group);
    let coordinator_id = {
        let mut c = coordinator.client(&addrs[0]).unwrap();
        c.find_coordinator(pb::FindCoordinatorRequest { group_id: group.into() })
            .await
            .unwrap()
            .into_inner()
            .broker_id
    };
    eprintln!("killing node {coordinator_id}, the coordinator");
    cluster.kill(u64::from(coordinator_id)).unwrap();
    let killed_at = Instant::now();

    // The member lives on through the failover: the new coordinator does not know it, so
    // it rejoins reporting its partitions and gets them back. It loses nothing, reads nothing
    // twice, and goes on with records produced after the kill.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    first.set_listener(Box::new(OnLost(lost.clone())));
    produce(&router, topic, 3, "y", 10).await;
    let mut after: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while after.values().map(Vec::len).sum::<usize>() < 30 {
        assert!(Instant::now() < deadline, "the member did not go on: {after:?}");
        for r in first.poll(Duration::from_millis(200)).await.unwrap() {
            after.entry(r.partition).or_default().push(r.offset);
        }
    }
    eprintln!("the member read the records produced after the kill {:?} after it", killed_at.elapsed());
    for (p, offsets) in &after {
        assert_eq!(offsets, &(40..50).collect::<Vec<i64>>(), "partition {p}: on from its position");
    }
    assert!(!lost.load(std::sync::atomic::Ordering::SeqCst), "a coordinator failover loses no partition");
    // Leaves without committing more (auto-commit is off).
    first.close().await.unwrap();

    // A new member, after the failover, starts exactly at the committed offsets (the first
    // one committed nothing more).
    let mut second = Consumer::new(config).unwrap();
    second.subscribe([topic]).unwrap();
    let mut first_offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while first_offsets.len() < 3 {
        assert!(Instant::now() < deadline, "not every partition read again: {first_offsets:?}");
        for r in second.poll(Duration::from_millis(200)).await.unwrap() {
            first_offsets.entry(r.topic_partition()).or_insert(r.offset);
        }
    }
    eprintln!("a new member read from the committed offsets {:?} after the kill", killed_at.elapsed());
    assert_eq!(first_offsets, committed);
    let fetched = Arc::new(coordinator).offset_fetch(Vec::new()).await.unwrap();
    let fetched: BTreeMap<TopicPartition, i64> =
        fetched.into_iter().map(|o| (TopicPartition::new(o.topic, o.partition), o.offset)).collect();
    assert_eq!(fetched, committed, "the new coordinator has the offsets");
    drop(second);
}

#[allow(dead_code)]
#[path = "../../client/examples/payroll.rs"]
mod payroll;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payroll_applies_each_employees_updates_in_the_order_sent() {
    let cluster = start3();
    let report = payroll::run(bootstrap(&cluster), 300).await.unwrap();
    eprintln!("payroll: {report:?}");
    assert_eq!(report.sent, 300);
    assert_eq!(report.applied, 300, "every update applied");
    assert_eq!(report.out_of_order, 0, "each employee's updates in the order sent");
    assert_eq!(report.salaries.len(), 30, "every employee paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_e2e_receives_every_record_it_sends_through_a_group() {
    let cluster = start3();
    create(&cluster, "latency", 3).await;
    let out = cluster.runnel_with_timeout(
        &["bench", "e2e", "--topic", "latency", "--rate", "1000", "--duration", "2", "--output", "json"],
        DEADLINE,
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let report = out.json().unwrap();
    eprintln!("bench e2e: {report}");
    assert_eq!((report["sent"].as_u64(), report["missing"].as_u64()), (Some(2000), Some(0)), "{report}");
    assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{report}");
}
