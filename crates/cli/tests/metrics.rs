//! `/metrics` on a real three-node cluster: every node's exposition parses, line by line,
//! with Python `prometheus_client`'s own text parser (`tests/python/metrics_parse.py`, in the
//! pinned venv of `tests/python/requirements.txt`); the per-partition gauges of an RF 3 topic
//! are there with sane values; and the leader's `runnel_partition_under_replicated` rises to
//! 1 when a follower is killed (the ISR shrinks after `--replica-lag-time-ms`, 2 s here) and
//! falls back to 0 once it is restarted and has caught up. Every wait polls with a deadline.
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
        let mut files = Vec::new();
        for &id in ids {
            let path = self.dir.path().join(format!("node-{id}.txt"));
            std::fs::write(&path, Self::fetch(cluster, id)).expect("write the scrape");
            files.push((id, path));
        }
        let run = run_with_timeout(
            Command::new(&self.python)
                .arg(&self.script)
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
    let mut producer = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["produce", TOPIC, "--partition", "0", "--bootstrap", &cluster.bootstrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel produce");
    let input: String = (0..RECORDS).map(|i| format!("record-{i}\n")).collect();
    producer.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let produced = run_with_timeout_child(producer);
    assert!(produced.status.success(), "runnel produce: {produced:?}");

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
    assert!(
        gauge(s, "runnel_produce_requests_total", "error_code=0,protocol=grpc").is_some_and(|n| n >= 1.0),
        "{s:#?}"
    );
    let topic_key = format!("topic={TOPIC}");
    let bytes = gauge(s, "runnel_produce_bytes_total", &topic_key).expect("produce bytes counted");
    assert!(bytes >= (RECORDS * "record-0".len() as u64) as f64, "{s:#?}");

    // A follower dies: the leader shrinks the ISR after the lag time and reports it.
    cluster.kill(follower).unwrap();
    let s = poll(&scraper, &cluster, leader, "under-replicated after a follower's kill -9", |s| {
        gauge(s, "runnel_partition_under_replicated", &key) == Some(1.0)
    });
    assert_eq!(gauge(&s, "runnel_partition_isr_size", &key), Some(2.0));
    assert_eq!(gauge(&s, "runnel_partition_under_min_isr", &key), Some(0.0));
    assert_eq!(gauge(&s, "runnel_partition_is_leader", &key), Some(1.0));

    // It comes back, catches up and rejoins the ISR.
    cluster.restart(follower).unwrap();
    poll(&scraper, &cluster, leader, "fully replicated after the follower's restart", |s| {
        gauge(s, "runnel_partition_under_replicated", &key) == Some(0.0)
            && gauge(s, "runnel_partition_isr_size", &key) == Some(3.0)
    });
    poll(&scraper, &cluster, follower, "the restarted follower's log at RECORDS", |s| {
        gauge(s, "runnel_partition_log_end_offset", &key) == Some(RECORDS as f64)
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
