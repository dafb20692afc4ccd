//! `/metrics` on a real three-node cluster: every node's exposition parses, line by line,
//! with Python `prometheus_client`'s own text parser (`tests/python/metrics_parse.py`, in the
//! pinned venv of `tests/python/requirements.txt`); the per-partition gauges of an RF 3 topic
//! are there with sane values; under a small gRPC load (produce, consume, a group's offsets
//! reset) every family is served on every node (process, tokio, controller, fsync, ISR
//! changes; request, record and byte counters and latency histograms on the leader, whose
//! histogram counts grow with more load; follower lag on the leader only; group lag on the
//! group's coordinator), and every metric the Grafana dashboard queries is served; the
//! leader's `runnel_partition_under_replicated` rises to 1 when a follower is killed (the
//! controller fences it and drops it from the ISR), its lag in seconds passes
//! `--replica-lag-time-ms` (2 s here), and the gauge falls back to 0 (`runnel_isr_expands_total` counting) once it is restarted and
//! has caught up. Every wait polls with a deadline.
//! `RUNNEL_SKIP_PYTHON=1` skips it, as it does the other Python tests, and says so.
//!
//! Run with `cargo test -p runnel --test metrics`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runnel_testkit::process::{python_env, run_with_timeout, skip_python};
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL, http_get};

const TOPIC: &str = "metered";
const RECORDS: u64 = 25;
const GROUP: &str = "metered-readers";
/// Bound on each wait for a state (leaders, HW, ISR shrink and regrowth).
const WAIT: Duration = Duration::from_secs(30);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repo root exists")
}

/// The cargo target dir (`<target>/<profile>/runnel`): the venv lives next to the build.
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_runnel"));
    bin.parent().and_then(Path::parent).expect("the runnel binary sits in <target>/<profile>/").to_owned()
}

/// One node's samples, keyed by name and labels (`k=v` sorted by key, comma-separated; ""
/// for none).
type Samples = BTreeMap<(String, String), f64>;

struct Scraper {
    python: PathBuf,
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl Scraper {
    /// Node `id`'s `/metrics` body.
    fn fetch(cluster: &Cluster, id: u64) -> String {
        let (status, body) = http_get(cluster.node(id).http_addr(), "/metrics", SCRAPE_TIMEOUT)
            .unwrap_or_else(|e| panic!("scrape node {id}: {e:#}"));
        assert_eq!(status, 200, "node {id} /metrics: {body}");
        body
    }

    /// Scrapes each of `ids` and parses every body with prometheus_client's parser.
    fn scrape(&self, cluster: &Cluster, ids: &[u64]) -> BTreeMap<u64, Samples> {
        self.scrape_checking(cluster, ids, None)
    }

    /// Like [`Scraper::scrape`]; with `dashboard`, the script also fails unless every metric
    /// name in the dashboard's PromQL is a sample name in one of the scrapes.
    fn scrape_checking(
        &self,
        cluster: &Cluster,
        ids: &[u64],
        dashboard: Option<&Path>,
    ) -> BTreeMap<u64, Samples> {
        let mut files = Vec::new();
        for &id in ids {
            let path = self.dir.path().join(format!("node-{id}.txt"));
            std::fs::write(&path, Self::fetch(cluster, id)).expect("write the scrape");
            files.push((id, path));
        }
        let run = run_with_timeout(
            Command::new(&self.python)
                .arg(&self.script)
                .args(dashboard.map(|d| ["--dashboard".as_ref(), d.as_os_str()]).into_iter().flatten())
                .args(files.iter().map(|(_, p)| p))
                .env("PYTHONDONTWRITEBYTECODE", "1"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("running metrics_parse.py: {e:#}"));
        assert!(run.success(), "{}", run.describe("metrics_parse.py"));
        let parsed: serde_json::Value =
            serde_json::from_str(&run.stdout).expect("metrics_parse.py prints JSON");
        files
            .into_iter()
            .map(|(id, path)| {
                let samples = parsed[path.to_str().unwrap()].as_array().expect("the file's samples");
                let mut map = Samples::new();
                for s in samples {
                    let name = s[0].as_str().unwrap().to_owned();
                    let labels: BTreeMap<&str, &str> = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                        .collect();
                    let key = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    let previous = map.insert((name.clone(), key.clone()), s[2].as_f64().unwrap());
                    assert!(previous.is_none(), "node {id}: {name} {key} twice");
                }
                (id, map)
            })
            .collect()
    }
}

fn gauge(samples: &Samples, name: &str, key: &str) -> Option<f64> {
    samples.get(&(name.to_owned(), key.to_owned())).copied()
}

/// Whether any sample is named `name`.
fn has(samples: &Samples, name: &str) -> bool {
    samples.keys().any(|(n, _)| n == name)
}

/// The sum of every sample named `name` (0 for none).
fn total(samples: &Samples, name: &str) -> f64 {
    samples.iter().filter(|((n, _), _)| n == name).map(|(_, v)| v).sum()
}

/// Runs `runnel produce` of `records` lines to partition 0 of TOPIC (gRPC, acks=all).
fn produce(cluster: &Cluster, records: std::ops::Range<u64>) {
    let mut producer = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["produce", TOPIC, "--partition", "0", "--bootstrap", &cluster.bootstrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel produce");
    let input: String = records.map(|i| format!("record-{i}\n")).collect();
    producer.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let produced = run_with_timeout_child(producer);
    assert!(produced.status.success(), "runnel produce: {produced:?}");
}

/// Polls node `id`'s parsed metrics until `done` holds, or panics after [`WAIT`] with `what`
/// and the last scrape.
fn poll(
    scraper: &Scraper,
    cluster: &Cluster,
    id: u64,
    what: &str,
    done: impl Fn(&Samples) -> bool,
) -> Samples {
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = scraper.scrape(cluster, &[id]).remove(&id).unwrap();
        if done(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: {what} not within {WAIT:?}; last scrape: {samples:#?}"
        );
        std::thread::sleep(POLL_INTERVAL * 10);
    }
}

#[test]
fn partition_gauges_follow_replication_on_a_three_node_cluster() {
    let test = "partition_gauges_follow_replication_on_a_three_node_cluster";
    if skip_python(test) {
        return;
    }
    let root = repo_root();
    let venv = python_env(&root, &target_dir().join("pyenv")).unwrap_or_else(|e| panic!("{e:#}"));
    let scraper = Scraper {
        python: venv.join("bin/python"),
        script: root.join("tests/python/metrics_parse.py"),
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.extra_args = vec!["--replica-lag-time-ms".into(), "2000".into()];
    let mut cluster = Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let ids = cluster.ids();

    let out = cluster.runnel(&["topic", "create", TOPIC, "--partitions", "1", "--replication-factor", "3"]);
    assert!(out.success(), "topic create: {out:?}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let leaders = runtime.block_on(cluster.wait_for_partition_leaders(1, TOPIC, WAIT)).unwrap();
    let leader = leaders[0];
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();

    // RECORDS records, acknowledged by the whole ISR (`runnel produce` defaults to acks=all).
    produce(&cluster, 0..RECORDS);

    // Every node: the node gauges, and the partition's, with the HW at RECORDS everywhere
    // (a follower learns it on its next fetch: polled).
    let key = format!("partition=0,topic={TOPIC}");
    for &id in &ids {
        let s = poll(&scraper, &cluster, id, "HW and log end at RECORDS", |s| {
            gauge(s, "runnel_partition_high_watermark", &key) == Some(RECORDS as f64)
                && gauge(s, "runnel_partition_log_end_offset", &key) == Some(RECORDS as f64)
        });
        assert_eq!(gauge(&s, "runnel_node_id", ""), Some(id as f64));
        assert_eq!(gauge(&s, "runnel_ready", ""), Some(1.0));
        assert_eq!(gauge(&s, "runnel_broker_fenced", ""), Some(0.0));
        assert!(gauge(&s, "runnel_broker_epoch", "").is_some_and(|e| e > 0.0), "{s:#?}");
        assert!(gauge(&s, "runnel_raft_term", "").is_some_and(|t| t >= 1.0), "{s:#?}");
        assert_eq!(gauge(&s, "runnel_partition_log_start_offset", &key), Some(0.0));
        assert!(gauge(&s, "runnel_partition_size_bytes", &key).is_some_and(|b| b > 0.0), "{s:#?}");
        assert_eq!(gauge(&s, "runnel_partition_is_leader", &key), Some(f64::from(id == leader)));
        assert_eq!(gauge(&s, "runnel_partition_replicas", &key), Some(3.0));
        assert_eq!(gauge(&s, "runnel_partition_isr_size", &key), Some(3.0));
        assert_eq!(gauge(&s, "runnel_partition_under_replicated", &key), Some(0.0));
        assert_eq!(gauge(&s, "runnel_partition_under_min_isr", &key), Some(0.0));
    }
    // All three at once, through one parser run; the leader counted the gRPC produce
    // (`runnel produce` speaks gRPC) and its bytes.
    let all = scraper.scrape(&cluster, &ids);
    assert_eq!(all.len(), 3);
    let s = &all[&leader];
    let topic_key = format!("protocol=grpc,topic={TOPIC}");
    let bytes = gauge(s, "runnel_produce_bytes_total", &topic_key).expect("produce bytes counted");
    assert!(bytes >= (RECORDS * "record-0".len() as u64) as f64, "{s:#?}");

    let records_key = format!("protocol=grpc,topic={TOPIC}");
    assert!(
        gauge(s, "runnel_produce_requests_total", &format!("error_code=0,{records_key}"))
            .is_some_and(|n| n >= 1.0),
        "{s:#?}"
    );
    assert!(
        gauge(s, "runnel_produce_records_total", &records_key).is_some_and(|n| n >= RECORDS as f64),
        "{s:#?}"
    );

    // Some reading (gRPC fetches) and a consumer group whose offsets sit at 0: the group's
    // coordinator reports a lag of RECORDS.
    let out = cluster.runnel(&["consume", TOPIC, "--from-beginning"]);
    assert!(out.success(), "consume: {out:?}");
    let out = cluster.runnel(&["group", "reset-offsets", GROUP, "--topic", TOPIC, "--to-earliest"]);
    assert!(out.success(), "group reset-offsets: {out:?}");
    let group_key = format!("group={GROUP},partition=0,topic={TOPIC}");
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let all = scraper.scrape(&cluster, &ids);
        let lags: Vec<f64> =
            all.values().filter_map(|s| gauge(s, "runnel_group_lag_records", &group_key)).collect();
        if lags == [RECORDS as f64] {
            break all;
        }
        assert!(Instant::now() < deadline, "one coordinator with a group lag of {RECORDS}, not {lags:?}");
        std::thread::sleep(POLL_INTERVAL * 10);
    };
    // Every family, on every node; and the dashboard's every metric is served.
    scraper.scrape_checking(&cluster, &ids, Some(&root.join("deploy/grafana/dashboards/runnel.json")));
    for (&id, s) in &all {
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "runnel_tokio_workers",
            "runnel_tokio_alive_tasks",
            "runnel_controller_metadata_version",
        ] {
            assert!(gauge(s, name, "").is_some_and(|v| v > 0.0), "node {id}: {name} > 0 in {s:#?}");
        }
        assert_eq!(gauge(s, "runnel_controller_fenced_brokers", ""), Some(0.0), "node {id}");
        assert!(
            gauge(s, "runnel_raft_leader_changes_total", "").is_some_and(|n| n >= 1.0),
            "node {id}: {s:#?}"
        );
        for name in [
            "runnel_isr_shrinks_total",
            "runnel_isr_expands_total",
            "runnel_controller_commit_duration_seconds_count",
            "runnel_log_fsync_duration_seconds_count",
            "runnel_log_fsync_batch_records_count",
        ] {
            assert!(gauge(s, name, "").is_some(), "node {id}: {name} in {s:#?}");
        }
        // Every replica of the topic fsyncs what it appends (the default policy, `always`).
        assert!(
            gauge(s, "runnel_log_fsync_duration_seconds_count", "").is_some_and(|n| n >= 1.0),
            "node {id}"
        );
        assert!(gauge(s, "runnel_log_fsync_batch_records_sum", "").is_some_and(|n| n >= 1.0), "node {id}");
        // Follower lag: on the leader only, one series per follower.
        let lag_series = s
            .keys()
            .filter(|(n, k)| {
                n == "runnel_partition_follower_lag_records" && k.contains(&format!("topic={TOPIC}"))
            })
            .count();
        assert_eq!(lag_series, if id == leader { 2 } else { 0 }, "node {id}: {s:#?}");
    }
    let coordinator =
        all.values().find(|s| gauge(s, "runnel_group_lag_records", &group_key).is_some()).unwrap();
    let g = format!("group={GROUP}");
    assert_eq!(gauge(coordinator, "runnel_group_members", &g), Some(0.0), "offsets only, no member");
    assert_eq!(gauge(coordinator, "runnel_group_rebalances_total", &g), Some(0.0), "{coordinator:#?}");
    let committed: f64 =
        all.values().map(|s| gauge(s, "runnel_controller_commit_duration_seconds_count", "").unwrap()).sum();
    assert!(committed >= 1.0, "the topic's creation, at least, was committed and timed");
    let s = &all[&leader];
    for other in ids.iter().filter(|&&id| id != leader) {
        let key = format!("follower={other},partition=0,topic={TOPIC}");
        assert!(gauge(s, "runnel_partition_follower_lag_seconds", &key).is_some(), "{key} in {s:#?}");
    }
    assert!(
        gauge(s, "runnel_fetch_records_total", &records_key).is_some_and(|n| n >= RECORDS as f64),
        "{s:#?}"
    );
    assert!(gauge(s, "runnel_fetch_bytes_total", &records_key).is_some_and(|n| n > 0.0), "{s:#?}");
    let produce_key = "api=produce,protocol=grpc";
    let produce_count =
        gauge(s, "runnel_request_duration_seconds_count", produce_key).expect("produce timed");
    assert!(
        gauge(s, "runnel_request_duration_seconds_count", "api=fetch,protocol=grpc")
            .is_some_and(|n| n >= 1.0)
    );
    let fsyncs = gauge(s, "runnel_log_fsync_duration_seconds_count", "").unwrap();

    // More load: the histograms' counts grow, and the followers catch up to no lag.
    produce(&cluster, RECORDS..RECORDS + 5);
    let s = poll(&scraper, &cluster, leader, "the histograms grown and the followers caught up", |s| {
        ids.iter().filter(|&&id| id != leader).all(|f| {
            gauge(
                s,
                "runnel_partition_follower_lag_records",
                &format!("follower={f},partition=0,topic={TOPIC}"),
            ) == Some(0.0)
        })
    });
    assert!(gauge(&s, "runnel_request_duration_seconds_count", produce_key).unwrap() > produce_count);
    assert!(gauge(&s, "runnel_log_fsync_duration_seconds_count", "").unwrap() > fsyncs);
    assert!(
        total(&s, "runnel_request_duration_seconds_bucket") > 0.0
            && has(&s, "runnel_request_duration_seconds_sum")
    );
    let shrinks = gauge(&s, "runnel_isr_shrinks_total", "").unwrap();
    let expands = gauge(&s, "runnel_isr_expands_total", "").unwrap();
    let records = RECORDS + 5;

    // A follower dies: the leader shrinks the ISR after the lag time and reports it.
    cluster.kill(follower).unwrap();
    // (The controller fences a killed broker and drops it from the ISR itself, so the
    // leader's own shrink counter need not move: `runnel_isr_shrinks_total` counts only
    // the lag-driven shrinks a leader asks for.)
    let s = poll(&scraper, &cluster, leader, "under-replicated after a follower's kill -9", |s| {
        gauge(s, "runnel_partition_under_replicated", &key) == Some(1.0)
    });
    assert!(gauge(&s, "runnel_isr_shrinks_total", "").is_some_and(|n| n >= shrinks), "{s:#?}");
    assert_eq!(gauge(&s, "runnel_partition_isr_size", &key), Some(2.0));
    assert_eq!(gauge(&s, "runnel_partition_under_min_isr", &key), Some(0.0));
    assert_eq!(gauge(&s, "runnel_partition_is_leader", &key), Some(1.0));
    let dead_key = format!("follower={follower},partition=0,topic={TOPIC}");
    poll(&scraper, &cluster, leader, "the dead follower's lag past the 2 s lag time", |s| {
        gauge(s, "runnel_partition_follower_lag_seconds", &dead_key).is_some_and(|t| t >= 2.0)
    });

    // It comes back, catches up and rejoins the ISR.
    cluster.restart(follower).unwrap();
    poll(&scraper, &cluster, leader, "fully replicated, the expansion counted, after the restart", |s| {
        gauge(s, "runnel_partition_under_replicated", &key) == Some(0.0)
            && gauge(s, "runnel_partition_isr_size", &key) == Some(3.0)
            && gauge(s, "runnel_isr_expands_total", "").is_some_and(|n| n > expands)
    });
    poll(&scraper, &cluster, follower, "the restarted follower's log at every record", |s| {
        gauge(s, "runnel_partition_log_end_offset", &key) == Some(records as f64)
    });
    cluster.stop_all().unwrap();
}

#[derive(Debug)]
#[allow(dead_code)] // Read through Debug when a check fails.
struct Produced {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for the producer (stdin already closed) for at most [`WAIT`], killing it after.
fn run_with_timeout_child(mut child: std::process::Child) -> Produced {
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            panic!("runnel produce did not finish within {WAIT:?} ({status})");
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    };
    let stdout = read(child.stdout.as_mut().map(|s| s as &mut dyn std::io::Read));
    let stderr = read(child.stderr.as_mut().map(|s| s as &mut dyn std::io::Read));
    Produced { status, stdout, stderr }
}
