//! Runnel's Kafka wire protocol against real Kafka clients: each test starts a three-node
//! cluster (every node with its `--kafka-addr` listener), runs one client script from
//! `tests/python/` against it with a bound, and asserts that every check in it passed.
//!
//! | test | script | what |
//! | --- | --- | --- |
//! | `kafka_python_client` | `kafka_python_test.py` | the acceptance kafka-python snippet, topic auto-creation, murmur2 partitioning, a group's commit and resume |
//! | `confluent_kafka_client` | `confluent_kafka_test.py` | 100,000 records from an idempotent producer, a two-member group reading each once, AdminClient create/describe/delete |
//! | `kcat_cli` | `kcat_test.py` | `kcat -L`, and `-P`/`-C` round trips with keys and headers |
//! | `kafka_cross_protocol` | `kafka_cross_protocol_test.py` | Kafka-written records read by `runnel consume` and gRPC, and the reverse, byte for byte |
//! | `kafka_bad_input` | `kafka_bad_input_test.py` | oversized, truncated and garbage frames, an unknown API key, a bad CRC: each answered, the node still serving |
//! | `aiokafka_client` | `aiokafka_test.py` | aiokafka's idempotent producer to an auto-created topic, a group's read, commit and resume |
//! | `auto_creation_off` | `kafka_auto_create_off_test.py` | with `--auto-create-topics-enable false`, neither Metadata nor Produce creates a topic; CreateTopics does |
//! | `kafka_clients_with_sasl_and_acls` | `kafka_sasl_test.py` | `--auth`: SCRAM-SHA-256/512 and PLAIN over TLS with kafka-python and librdkafka, each user held to its ACLs; no SASL or a wrong password refused |
//! | `kafka_admin_and_kip848` | `kafka_admin_test.py` | CreatePartitions, DescribeConfigs, IncrementalAlterConfigs taking effect, a KIP-848 group of two, List/Describe/DeleteGroups |
//!
//! The scripts print one line per check and a summary; a failing test prints all of it and
//! then (the testkit, as the cluster drops) every node's log. The clients come from the pinned
//! venv of `tests/python/requirements.txt` (`scripts/python-env.sh`, built under the target
//! dir on first use) and kcat from Debian's `kcat` package (`.ci/run` installs it).
//! `RUNNEL_SKIP_PYTHON=1` skips these tests, as it does the gRPC Python client's, and says so.
//!
//! The tests run one at a time (a lock): five three-node clusters and 100,000 records at once
//! would only measure the machine. Run them with
//! `cargo test -p runnel --test kafka_clients` (add `-- --nocapture` to see the reports of
//! passing tests too).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use runnel_testkit::process::{python_env, run_with_timeout, skip_python};
use runnel_testkit::{Cluster, ClusterOpts, POLL_INTERVAL};

const NODES: usize = 3;
/// How long, once every node is ready, its Kafka port may take to accept connections.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(15);

/// One cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repo root exists")
}

/// The cargo target dir (`<target>/<profile>/runnel`): the venv lives next to the build.
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_runnel"));
    bin.parent().and_then(Path::parent).expect("the runnel binary sits in <target>/<profile>/").to_owned()
}

/// A running three-node cluster and the venv to test it with; holds the lock that runs the
/// tests one at a time.
struct Setup {
    root: PathBuf,
    venv: PathBuf,
    cluster: Cluster,
    _serial: MutexGuard<'static, ()>,
}

impl Setup {
    /// `None` when `RUNNEL_SKIP_PYTHON=1` skips `test`.
    fn start(test: &str) -> Option<Setup> {
        Self::start_with(test, &[])
    }

    /// The same, every node started with `extra_args` too.
    fn start_with(test: &str, extra_args: &[&str]) -> Option<Setup> {
        Self::start_opts(test, |opts| opts.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect())
    }

    /// The same, with the cluster's options set by `configure`.
    fn start_opts(test: &str, configure: impl FnOnce(&mut ClusterOpts)) -> Option<Setup> {
        if skip_python(test) {
            return None;
        }
        // A test that failed while holding the lock poisons it; the next one still runs.
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let root = repo_root();
        let venv = python_env(&root, &target_dir().join("pyenv")).unwrap_or_else(|e| panic!("{e:#}"));
        let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
        configure(&mut opts);
        let cluster = Cluster::start(NODES, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
        let setup = Setup { root, venv, cluster, _serial: serial };
        setup.wait_for_kafka_ports();
        Some(setup)
    }

    fn kafka_addrs(&self) -> Vec<(u64, SocketAddr)> {
        self.cluster.ids().into_iter().map(|id| (id, self.cluster.node(id).kafka_addr())).collect()
    }

    /// Every node's Kafka listener, as a client's bootstrap list.
    fn kafka_bootstrap(&self) -> String {
        self.kafka_addrs().iter().map(|(_, a)| a.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Polls until every node's Kafka port accepts a TCP connection: a node without a Kafka
    /// listener fails here, with one clear line, rather than in a client's retries.
    fn wait_for_kafka_ports(&self) {
        let deadline = Instant::now() + LISTENER_TIMEOUT;
        for (id, addr) in self.kafka_addrs() {
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => panic!(
                        "nothing listens on node {id}'s Kafka port {addr} ({e}) {LISTENER_TIMEOUT:?} after the \
                         node was ready: the node was started with --kafka-addr {addr} but serves no Kafka \
                         protocol there (is the Kafka listener, crates/kafka, wired into `runnel node`?)"
                    ),
                    Err(_) => std::thread::sleep(POLL_INTERVAL),
                }
            }
        }
    }

    /// Runs `tests/python/<script>` with the venv's Python and `args`, killed after `timeout`;
    /// fails the test with its whole output unless it exits 0.
    fn run_script(&self, script: &str, args: &[String], timeout: Duration) {
        let path = self.root.join("tests/python").join(script);
        let run = run_with_timeout(
            Command::new(self.venv.join("bin/python"))
                .arg(&path)
                .args(args)
                .env("PYTHONUNBUFFERED", "1")
                // Nothing written into the source tree.
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .current_dir(&self.root),
            timeout,
        )
        .unwrap_or_else(|e| panic!("running {script}: {e:#}"));
        let report = run.describe(&format!("tests/python/{script}"));
        // The testkit prints every node's log when this panics.
        assert!(run.success(), "{report}");
        println!("{report}");
    }

    /// Stops every node and checks that each exits cleanly: none crashed under the clients.
    fn finish(mut self) {
        for (id, status) in self.cluster.stop_all().expect("nodes stop") {
            assert!(
                status.success(),
                "node {id} exited with {status} on SIGTERM\n{}",
                self.cluster.all_logs()
            );
        }
    }

    fn kafka_args(&self) -> Vec<String> {
        vec!["--bootstrap".into(), self.kafka_bootstrap(), "--brokers".into(), NODES.to_string()]
    }
}

/// Acceptance 1: the acceptance kafka-python snippet, auto-creation, murmur2, group resume.
#[test]
fn kafka_python_client() {
    let Some(setup) = Setup::start("kafka_python_client") else { return };
    setup.run_script("kafka_python_test.py", &setup.kafka_args(), Duration::from_secs(180));
    setup.finish();
}

/// Acceptance 2: confluent-kafka's idempotent producer, a two-member group, AdminClient.
#[test]
fn confluent_kafka_client() {
    let Some(setup) = Setup::start("confluent_kafka_client") else { return };
    setup.run_script("confluent_kafka_test.py", &setup.kafka_args(), Duration::from_secs(180));
    setup.finish();
}

/// `--auto-create-topics-enable false` is honoured by Metadata and Produce.
#[test]
fn auto_creation_off() {
    let Some(setup) = Setup::start_with("auto_creation_off", &["--auto-create-topics-enable", "false"])
    else {
        return;
    };
    setup.run_script("kafka_auto_create_off_test.py", &setup.kafka_args(), Duration::from_secs(90));
    setup.finish();
}

/// Kafka's SSL security protocol: with TLS certificates and a listener named SSL, kafka-python
/// and librdkafka produce and consume over TLS, trusting the cluster CA; a plaintext client and
/// one that does not trust the CA get nowhere.
#[test]
fn kafka_clients_over_tls() {
    let Some(setup) = Setup::start_opts("kafka_clients_over_tls", |opts| {
        opts.tls = true;
        opts.kafka_listener_name = Some("SSL".into());
    }) else {
        return;
    };
    let ca = setup.cluster.root().join("tls").join("ca.pem").display().to_string();
    let args = vec!["--bootstrap".into(), setup.kafka_bootstrap(), "--ca".into(), ca];
    setup.run_script("kafka_tls_test.py", &args, Duration::from_secs(150));
    setup.finish();
}

/// SASL and ACLs (`runnel node --auth`) over TLS (a listener named SASL_SSL): users and ACLs
/// made with `runnel user` and `runnel acl`; kafka-python (SCRAM-SHA-256, PLAIN) and librdkafka
/// (SCRAM-SHA-512, an idempotent producer, a group) each do what their user's ACLs allow and
/// are refused the rest; no SASL and a wrong password get nowhere.
#[test]
fn kafka_clients_with_sasl_and_acls() {
    let Some(setup) = Setup::start_opts("kafka_clients_with_sasl_and_acls", |opts| {
        opts.tls = true;
        opts.internal_listener = true;
        opts.kafka_listener_name = Some("SASL_SSL".into());
        opts.extra_args = vec!["--auth".into()];
    }) else {
        return;
    };
    let ca = setup.cluster.root().join("tls").join("ca.pem").display().to_string();
    let runnel = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--tls-ca", &ca]);
        let out = setup.cluster.runnel(&full);
        assert!(out.success(), "runnel {args:?}: {out:?}");
    };
    let admin = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--user", "admin", "--password", "admin-secret"]);
        runnel(&full);
    };
    let (topic, other, group) = ("sasl-orders", "sasl-secret", "sasl-group");
    // The first administrator, from loopback without credentials; then everything as admin.
    runnel(&["user", "create", "admin", "--user-password", "admin-secret"]);
    // The admin's credential reaches the node that answers before it can act: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut args = vec!["topic", "create", topic, "--partitions", "1", "--replication-factor", "3"];
        args.extend(["--user", "admin", "--password", "admin-secret", "--tls-ca", &ca]);
        let out = setup.cluster.runnel(&args);
        if out.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the admin could not create {topic}: {out:?}");
        std::thread::sleep(POLL_INTERVAL * 5);
    }
    admin(&["topic", "create", other, "--partitions", "1", "--replication-factor", "3"]);
    admin(&["user", "create", "alice", "--user-password", "alice-secret"]);
    admin(&["user", "create", "reader", "--user-password", "reader-secret"]);
    admin(&["acl", "add", "--principal", "User:alice", "--operation", "read,write", "--topic", topic]);
    admin(&["acl", "add", "--principal", "User:alice", "--operation", "read", "--group", group]);
    admin(&["acl", "add", "--principal", "User:reader", "--operation", "read", "--topic", topic]);
    admin(&["acl", "add", "--principal", "User:reader", "--operation", "read", "--group", group]);
    let args: Vec<String> = [
        ("--bootstrap", setup.kafka_bootstrap()),
        ("--ca", ca.clone()),
        ("--topic", topic.into()),
        ("--other", other.into()),
        ("--group", group.into()),
        ("--password-alice", "alice-secret".into()),
        ("--password-reader", "reader-secret".into()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect();
    setup.run_script("kafka_sasl_test.py", &args, Duration::from_secs(180));
    setup.finish();
}

/// A third, independent client implementation: aiokafka (asyncio).
#[test]
fn aiokafka_client() {
    let Some(setup) = Setup::start("aiokafka_client") else { return };
    setup.run_script("aiokafka_test.py", &setup.kafka_args(), Duration::from_secs(150));
    setup.finish();
}

/// The admin APIs beyond topics (partitions, configs, groups) and KIP-848 groups, through
/// librdkafka's AdminClient and `group.protocol=consumer`.
#[test]
fn kafka_admin_and_kip848() {
    let Some(setup) = Setup::start("kafka_admin_and_kip848") else { return };
    setup.run_script("kafka_admin_test.py", &setup.kafka_args(), Duration::from_secs(150));
    setup.finish();
}

/// Acceptance 3: kcat's metadata listing and a produce/consume round trip.
#[test]
fn kcat_cli() {
    let Some(setup) = Setup::start("kcat_cli") else { return };
    let kcat = which("kcat").unwrap_or_else(|| {
        panic!("kcat is not on PATH: install Debian's kcat package (apt-get install kcat; .ci/run does)")
    });
    let mut args = setup.kafka_args();
    args.extend(["--kcat".into(), kcat.display().to_string()]);
    setup.run_script("kcat_test.py", &args, Duration::from_secs(120));
    setup.finish();
}

/// Acceptance 4: Kafka-written records read by `runnel consume` and gRPC, and the reverse.
#[test]
fn kafka_cross_protocol() {
    let Some(setup) = Setup::start("kafka_cross_protocol") else { return };
    let args = vec![
        "--kafka-bootstrap".into(),
        setup.kafka_bootstrap(),
        "--grpc-bootstrap".into(),
        setup.cluster.bootstrap(),
        "--runnel".into(),
        env!("CARGO_BIN_EXE_runnel").into(),
        "--brokers".into(),
        NODES.to_string(),
    ];
    setup.run_script("kafka_cross_protocol_test.py", &args, Duration::from_secs(120));
    setup.finish();
}

/// Acceptance 6: malformed requests are answered (or the connection closed) and the node
/// goes on serving; it still stops cleanly afterwards.
#[test]
fn kafka_bad_input() {
    let Some(setup) = Setup::start("kafka_bad_input") else { return };
    setup.run_script("kafka_bad_input_test.py", &setup.kafka_args(), Duration::from_secs(120));
    setup.finish();
}

/// The first `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}
