//! Runnel's end-to-end harness: a cluster of real `runnel node` processes.
//!
//! [`Cluster::start`] spawns `n` nodes (ids `1..=n`, every one a controller voter and a broker
//! unless [`ClusterOpts::extra_args`] says otherwise) on free loopback ports, each with its own
//! data directory under one temp dir, and waits until every node answers `GET /readyz` with 200.
//! Tests then kill, pause, stop and restart nodes by id, run the `runnel` CLI against the
//! cluster and talk gRPC to any node.
//!
//! Nothing leaks: dropping the [`Cluster`] (also while a test panics) kills and reaps every
//! child. Each node's stdout and stderr go to files in the temp dir; when the cluster is dropped
//! during a panic they are printed, so a failing test shows what the nodes said. Set
//! `RUNNEL_TESTKIT_KEEP=1` to keep the temp dir (its path is printed).
//!
//! The API is blocking (std processes, std sockets) so it works from plain `#[test]`s and from
//! async tests alike; the gRPC helpers are `async`.
//!
//! **Network faults.** With [`ClusterOpts::netns`] each node runs in its own Linux network
//! namespace, on its own address of a private `/24` joined by a bridge to the root namespace,
//! where the test process reaches every node. [`Cluster::isolate`] then cuts a node off from the
//! other nodes (packets between them are silently dropped) while the test and its clients can
//! still talk to it; [`Cluster::heal`] reconnects it. How, and why that way: [`netns`]. The mode
//! needs root; without it [`Cluster::start`] fails and says so. Loopback ports stay the default.
//!
//! **Histories.** [`workload`] produces unique records continuously over the broker's gRPC
//! API, following leaders, and records every attempt and its outcome; [`history`] checks such a
//! history against a final read of the log (lost, duplicated, misplaced or reordered records,
//! gaps, divergent reads) and measures the longest window without a successful produce.
//!
//! **Child processes.** [`process`] runs a test's other programs (a Python client, kcat) with a
//! deadline, killing their whole process group, and builds the pinned Python venv.
//!
//! **`runnel-chaos`** (`src/bin/runnel-chaos.rs`) drives the workload and the checker against
//! a cluster started by `scripts/cluster.sh`, injecting faults through it; `scripts/chaos.sh`
//! runs it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use runnel_proto::pb::runnel::v1::{
    CreateTopicRequest, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest,
    ListOffsetsRequest, MetadataRequest, PartitionInfo,
};
use rustix::process::{Pid, Signal, kill_process};
use tonic::transport::Channel;

pub mod history;
pub mod netns;
pub mod process;
pub mod workload;

pub use netns::Netns;

/// How often readiness and state are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How a [`Cluster`] runs its nodes.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// The `runnel` binary (tests in the cli crate pass `env!("CARGO_BIN_EXE_runnel")`).
    pub binary: PathBuf,
    /// `--session-timeout-ms`, when set.
    pub session_timeout_ms: Option<u64>,
    /// `--heartbeat-interval-ms`, when set.
    pub heartbeat_interval_ms: Option<u64>,
    /// How long [`Cluster::start`] and [`Cluster::restart`] wait for `/readyz`.
    pub ready_timeout: Duration,
    /// How long [`Cluster::stop`] waits for a clean exit after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// `RUNNEL_LOG` for the nodes (a tracing filter).
    pub log_filter: String,
    /// Appended to every node's command line.
    pub extra_args: Vec<String>,
    /// Run each node in its own network namespace on a private subnet (see [`netns`]), so
    /// [`Cluster::isolate`] can cut it off from the others. Needs root; off by default (nodes
    /// on loopback ports).
    pub netns: bool,
    /// Give each node a separate internal gRPC listener (`--internal-addr`) for inter-node
    /// calls; the voters list names those. Off by default (one gRPC listener per node).
    pub internal_listener: bool,
    /// Run every node with TLS: a throwaway CA and node certificates
    /// (`runnel_proto::tls::generate`) in the cluster's temp dir, passed as `--tls-cert`,
    /// `--tls-key`, `--tls-ca`. The cluster's own clients ([`Cluster::channel`]) then use TLS
    /// (trusting the CA, presenting no certificate). Off by default.
    pub tls: bool,
    /// The Kafka listener's name (`--kafka-addr NAME://...`); `SSL` makes it serve TLS, with
    /// [`ClusterOpts::tls`]. Default: unnamed (PLAINTEXT).
    pub kafka_listener_name: Option<String>,
}

impl ClusterOpts {
    /// Defaults: the node's own liveness timings, 20 s to become ready, 10 s to stop.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            session_timeout_ms: None,
            heartbeat_interval_ms: None,
            ready_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(10),
            log_filter: "info".to_owned(),
            extra_args: Vec::new(),
            netns: false,
            internal_listener: false,
            tls: false,
            kafka_listener_name: None,
        }
    }
}

/// One node of a [`Cluster`]: its fixed addresses and data dir, and its process when running.
#[derive(Debug)]
pub struct Node {
    id: u64,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    kafka_addr: SocketAddr,
    internal_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// The node's network namespace, in netns mode.
    namespace: Option<String>,
}

impl Node {
    /// The node id (also its controller voter id and broker id).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The gRPC listener (BrokerService, GroupService, ControllerService; and the inter-node
    /// services unless the node has an internal listener), fixed across restarts.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }
    /// The internal gRPC listener (RaftService, ReplicationService, the whole
    /// ControllerService), with [`ClusterOpts::internal_listener`].
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }
    /// The HTTP listener (health, metrics).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    /// The Kafka listener.
    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }
    /// The node's data directory, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The node's network namespace, in netns mode.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    /// Whether a process is running (possibly paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    /// The process id, when running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// Everything the node printed on stdout and stderr so far (every start appends).
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "----- node {} stdout ({}) -----\n{}\n----- node {} stderr ({}) -----\n{}",
            self.id,
            self.stdout_path.display(),
            read(&self.stdout_path),
            self.id,
            self.stderr_path.display(),
            read(&self.stderr_path),
        )
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().ok_or_else(|| anyhow!("node {} is not running", self.id))?;
        kill_process(Pid::from_child(child), sig).with_context(|| format!("signalling node {}", self.id))
    }

    /// SIGKILL and reap. A no-op when not running.
    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SIGKILL also ends a stopped (SIGSTOPped) process.
        let _ = child.kill();
        self.paused = false;
        child.wait().ok()
    }
}

/// The result of one `runnel` CLI run.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code; `None` when killed by a signal or by [`Cluster::runnel_with_timeout`].
    pub code: Option<i32>,
    /// Whether the run was killed for exceeding its timeout.
    pub timed_out: bool,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl CliOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// Stdout parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {:?} (stderr: {:?})", self.stdout, self.stderr))
    }
    /// The error name of an `error: <NAME> (<code>): <message>` line on stderr.
    pub fn error_name(&self) -> Option<&str> {
        let line = self.stderr.lines().find_map(|l| l.strip_prefix("error: "))?;
        let (name, _) = line.split_once(" (")?;
        Some(name)
    }
}

/// N real `runnel node` processes. See the crate docs.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOpts,
    nodes: Vec<Node>,
    voters: String,
    // Dropped after the nodes are killed (in `drop`), so no process holds a namespace.
    netns: Option<Netns>,
    // Declared last: dropped after the nodes are killed.
    root: Option<tempfile::TempDir>,
}

/// How many times [`Cluster::start`] picks fresh ports when a node fails to come up (a port
/// picked free can be taken by someone else before the node binds it).
const START_ATTEMPTS: usize = 3;

/// The ports every node uses in netns mode, where each node has an address of its own (the
/// node's defaults for node 1).
pub const NETNS_GRPC_PORT: u16 = 50051;
/// See [`NETNS_GRPC_PORT`].
pub const NETNS_HTTP_PORT: u16 = 8081;
/// See [`NETNS_GRPC_PORT`].
pub const NETNS_KAFKA_PORT: u16 = 9092;
/// See [`NETNS_GRPC_PORT`].
pub const NETNS_INTERNAL_PORT: u16 = 50061;

impl Cluster {
    /// Starts `n` nodes and waits until every one is ready.
    pub fn start(n: usize, opts: ClusterOpts) -> anyhow::Result<Self> {
        assert!(n >= 1, "a cluster has at least one node");
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::prepare(n, opts.clone())?;
            match cluster.start_all() {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let logs = cluster.all_logs();
                    eprintln!("testkit: cluster start attempt {attempt} failed: {e:#}");
                    last_err = Some(e.context(logs));
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Lays out the temp dir and picks addresses (free loopback ports, or in netns mode each
    /// node's namespace and address, with fixed ports), without spawning anything.
    pub fn prepare(n: usize, opts: ClusterOpts) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("runnel-testkit-").tempdir()?;
        let netns =
            if opts.netns { Some(Netns::create(n).context("setting up network namespaces")?) } else { None };
        let addrs: Vec<[SocketAddr; 4]> = match &netns {
            // Every node has an address of its own, so the ports can be the usual ones.
            Some(net) => (1..=n as u64)
                .map(|id| {
                    let ip = net.addr(id);
                    [
                        (ip, NETNS_GRPC_PORT).into(),
                        (ip, NETNS_HTTP_PORT).into(),
                        (ip, NETNS_KAFKA_PORT).into(),
                        (ip, NETNS_INTERNAL_PORT).into(),
                    ]
                })
                .collect(),
            None => free_ports(4 * n)?
                .chunks(4)
                .map(|p| p.iter().map(|&port| SocketAddr::from(([127, 0, 0, 1], port))))
                .map(|mut a| [a.next().unwrap(), a.next().unwrap(), a.next().unwrap(), a.next().unwrap()])
                .collect(),
        };
        let mut nodes = Vec::with_capacity(n);
        for (i, [grpc_addr, http_addr, kafka_addr, internal_addr]) in addrs.into_iter().enumerate() {
            let id = i as u64 + 1;
            let internal_addr = opts.internal_listener.then_some(internal_addr);
            let dir = root.path().join(format!("node-{id}"));
            std::fs::create_dir_all(dir.join("data"))?;
            nodes.push(Node {
                id,
                grpc_addr,
                http_addr,
                kafka_addr,
                internal_addr,
                data_dir: dir.join("data"),
                stdout_path: dir.join("stdout.log"),
                stderr_path: dir.join("stderr.log"),
                child: None,
                paused: false,
                namespace: netns.as_ref().map(|net| net.namespace(id).to_owned()),
            });
        }
        if opts.tls {
            let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            hosts.extend(nodes.iter().map(|n| n.grpc_addr.ip().to_string()).filter(|ip| ip != "127.0.0.1"));
            let ids: Vec<u32> = nodes.iter().map(|n| n.id as u32).collect();
            runnel_proto::tls::generate(&root.path().join("tls"), &ids, &hosts)?;
        }
        let voters = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.internal_addr.unwrap_or(n.grpc_addr)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self { opts, nodes, voters, netns, root: Some(root) })
    }

    /// Spawns every node that is not running and waits until all are ready.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for id in self.ids() {
            if !self.node(id).is_running() {
                self.spawn(id)?;
            }
        }
        self.wait_all_ready(self.opts.ready_timeout)
    }

    /// The node ids, `1..=n`.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The temp dir holding every node's data and logs.
    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("root lives until drop").path()
    }

    /// The `--controller-voters` value.
    pub fn voters(&self) -> &str {
        &self.voters
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The command line node `id` is started with (without the binary).
    pub fn node_args(&self, id: u64) -> Vec<String> {
        let n = self.node(id);
        let mut args = vec![
            "node".to_owned(),
            "--id".to_owned(),
            id.to_string(),
            "--data-dir".to_owned(),
            n.data_dir.display().to_string(),
            "--controller-voters".to_owned(),
            self.voters.clone(),
            "--grpc-addr".to_owned(),
            n.grpc_addr.to_string(),
            "--http-addr".to_owned(),
            n.http_addr.to_string(),
            "--kafka-addr".to_owned(),
            match &self.opts.kafka_listener_name {
                Some(name) => format!("{name}://{}", n.kafka_addr),
                None => n.kafka_addr.to_string(),
            },
        ];
        if let Some(internal) = n.internal_addr {
            args.extend(["--internal-addr".to_owned(), internal.to_string()]);
        }
        if self.opts.tls {
            let dir = self.root().join("tls");
            for (flag, file) in [
                ("--tls-cert", format!("node-{id}.pem")),
                ("--tls-key", format!("node-{id}.key")),
                ("--tls-ca", "ca.pem".into()),
            ] {
                args.extend([flag.to_owned(), dir.join(file).display().to_string()]);
            }
        }
        if let Some(ms) = self.opts.session_timeout_ms {
            args.extend(["--session-timeout-ms".to_owned(), ms.to_string()]);
        }
        if let Some(ms) = self.opts.heartbeat_interval_ms {
            args.extend(["--heartbeat-interval-ms".to_owned(), ms.to_string()]);
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    /// Starts node `id`'s process (same ports, same data dir) without waiting for readiness.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let args = self.node_args(id);
        let binary = self.opts.binary.clone();
        let node = self.node(id);
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let append = |p: &Path| OpenOptions::new().create(true).append(true).open(p);
        let mut out = append(&node.stdout_path)?;
        let mut err = append(&node.stderr_path)?;
        // Mark each start, so a restarted node's output is told apart.
        let place = node.namespace().map(|ns| format!(" in network namespace {ns}")).unwrap_or_default();
        let banner =
            format!("===== testkit: starting node {id}{place}: {} {}\n", binary.display(), args.join(" "));
        out.write_all(banner.as_bytes())?;
        err.write_all(banner.as_bytes())?;
        let mut command = match &self.netns {
            Some(net) => net.command(id, &binary),
            None => Command::new(&binary),
        };
        let child = command
            .args(&args)
            .env("RUNNEL_LOG", &self.opts.log_filter)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let node = self.node_mut(id);
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Waits until node `id` answers `GET /readyz` with 200; fails early when it exits.
    pub fn wait_ready(&mut self, id: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let node = self.node_mut(id);
            let child = node.child.as_mut().ok_or_else(|| anyhow!("node {id} is not running"))?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                bail!("node {id} exited before it was ready: {status}");
            }
            let addr = node.http_addr;
            if let Ok((200, _)) = http_get(addr, "/readyz", Duration::from_millis(500)) {
                return Ok(start.elapsed());
            }
            if Instant::now() >= deadline {
                bail!("node {id} not ready after {timeout:?}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every running node is ready.
    pub fn wait_all_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for id in self.ids() {
            if self.node(id).is_running() {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_ready(id, left)?;
            }
        }
        Ok(())
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        if node.child.is_none() {
            bail!("node {id} is not running");
        }
        node.kill_and_reap();
        Ok(())
    }

    /// SIGSTOP node `id`: it stays alive but does nothing (its sockets stay open).
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        node.signal(Signal::STOP)?;
        node.paused = true;
        Ok(())
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id);
        node.signal(Signal::CONT)?;
        node.paused = false;
        Ok(())
    }

    /// Cuts node `id` off from every other node, silently dropping what they send each other;
    /// the test process still reaches it. Needs [`ClusterOpts::netns`]. See [`netns`].
    pub fn isolate(&mut self, id: u64) -> anyhow::Result<()> {
        self.netns_mut()?.isolate(id)
    }

    /// Reconnects node `id` to every node that is not itself isolated.
    pub fn heal(&mut self, id: u64) -> anyhow::Result<()> {
        self.netns_mut()?.heal(id)
    }

    /// Reconnects every node.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.netns_mut()?.heal_all()
    }

    /// Whether node `id` is isolated now.
    pub fn is_isolated(&self, id: u64) -> bool {
        self.netns.as_ref().is_some_and(|net| net.isolated().contains(&id))
    }

    /// The network namespaces, in netns mode.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    fn netns_mut(&mut self) -> anyhow::Result<&mut Netns> {
        self.netns.as_mut().ok_or_else(|| anyhow!("isolating nodes needs ClusterOpts::netns = true"))
    }

    /// SIGTERM node `id` and wait for it to exit, at most [`ClusterOpts::stop_timeout`]; past
    /// that it is killed and this fails. Answers the exit status of a clean stop.
    pub fn stop(&mut self, id: u64) -> anyhow::Result<ExitStatus> {
        let timeout = self.opts.stop_timeout;
        let node = self.node_mut(id);
        if node.paused {
            // A stopped process does not act on SIGTERM until continued.
            node.signal(Signal::CONT)?;
            node.paused = false;
        }
        node.signal(Signal::TERM)?;
        let deadline = Instant::now() + timeout;
        let child = node.child.as_mut().expect("signal checked it is running");
        loop {
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                node.kill_and_reap();
                bail!("node {id} did not exit within {timeout:?} of SIGTERM; killed");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM every running node at once, then wait for each (bounded as in [`Cluster::stop`]).
    /// Answers each node's exit status, by id.
    pub fn stop_all(&mut self) -> anyhow::Result<Vec<(u64, ExitStatus)>> {
        let running: Vec<u64> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect();
        for &id in &running {
            let node = self.node_mut(id);
            if node.paused {
                node.signal(Signal::CONT)?;
                node.paused = false;
            }
            node.signal(Signal::TERM)?;
        }
        // stop() signals again; a second SIGTERM to a process already exiting is harmless.
        running.into_iter().map(|id| Ok((id, self.stop(id)?))).collect()
    }

    /// Starts node `id` again on the same ports and data dir (stopping it first if running)
    /// and waits for readiness.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.node(id).is_running() {
            self.stop(id)?;
        }
        self.spawn(id)?;
        self.wait_ready(id, self.opts.ready_timeout).map(drop)
    }

    /// Every node's logs, for failure messages.
    pub fn all_logs(&self) -> String {
        self.nodes.iter().map(Node::logs).collect::<Vec<_>>().join("\n")
    }

    /// The `--bootstrap` value naming every node's gRPC listener.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.grpc_addr.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Runs `runnel <args> --bootstrap <every node>` with a 30 s limit.
    pub fn runnel(&self, args: &[&str]) -> CliOutput {
        self.runnel_with_timeout(args, Duration::from_secs(30))
    }

    /// Runs `runnel <args> --bootstrap <every node>`, killing it after `timeout`.
    pub fn runnel_with_timeout(&self, args: &[&str], timeout: Duration) -> CliOutput {
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--bootstrap".to_owned(), self.bootstrap()]);
        run_with_timeout(&self.opts.binary, &full, timeout)
            .unwrap_or_else(|e| panic!("running runnel {full:?}: {e:#}"))
    }

    /// Runs `runnel <args> --bootstrap <the given nodes>`, killing it after `timeout`.
    pub fn runnel_on(&self, ids: &[u64], args: &[&str], timeout: Duration) -> CliOutput {
        let bootstrap = ids.iter().map(|&id| self.node(id).grpc_addr.to_string()).collect::<Vec<_>>();
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--bootstrap".to_owned(), bootstrap.join(",")]);
        run_with_timeout(&self.opts.binary, &full, timeout)
            .unwrap_or_else(|e| panic!("running runnel {full:?}: {e:#}"))
    }

    /// Whether node `id` is running and not paused.
    pub fn is_up(&self, id: u64) -> bool {
        let n = self.node(id);
        n.is_running() && !n.paused
    }

    /// The gRPC addresses of the nodes that are up (running and not paused).
    pub fn up_grpc_addrs(&self) -> Vec<String> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_up(id))
            .map(|id| self.node(id).grpc_addr().to_string())
            .collect()
    }

    /// A ControllerService client connected to node `id`.
    pub async fn controller_client(&self, id: u64) -> anyhow::Result<ControllerServiceClient<Channel>> {
        Ok(ControllerServiceClient::new(self.channel(self.node(id).grpc_addr, None).await?))
    }

    /// A BrokerService (the client data plane) client connected to node `id`.
    pub async fn broker_client(&self, id: u64) -> anyhow::Result<BrokerServiceClient<Channel>> {
        let channel = self.channel(self.node(id).grpc_addr, None).await?;
        Ok(BrokerServiceClient::new(channel).max_decoding_message_size(128 << 20))
    }

    /// A channel to `addr`, connected within 2 s: with [`ClusterOpts::tls`], over TLS trusting
    /// the cluster CA and presenting node `as_node`'s certificate when given (to act as that
    /// node), none otherwise.
    pub async fn channel(&self, addr: SocketAddr, as_node: Option<u64>) -> anyhow::Result<Channel> {
        let tls = match (self.opts.tls, as_node) {
            (false, _) => None,
            (true, Some(node)) => Some(self.node_tls(node)?.client()),
            (true, None) => {
                let ca = std::fs::read(self.root().join("tls").join("ca.pem"))?;
                Some(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
            }
        };
        runnel_proto::tls::endpoint(&addr.to_string(), tls.as_ref())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))
    }

    /// Node `id`'s TLS material, with [`ClusterOpts::tls`].
    pub fn node_tls(&self, id: u64) -> anyhow::Result<runnel_proto::tls::NodeTls> {
        let dir = self.root().join("tls");
        Ok(runnel_proto::tls::NodeTls::load(
            &dir.join(format!("node-{id}.pem")),
            &dir.join(format!("node-{id}.key")),
            &dir.join("ca.pem"),
        )?)
    }

    /// Creates a topic through node `via`'s controller service, polling until `timeout` while
    /// the cluster cannot take it yet: a broker not yet unfenced, or fenced for a moment by a
    /// controller change (INVALID_REPLICATION_FACTOR), or no controller leader (UNAVAILABLE,
    /// NOT_CONTROLLER). TOPIC_ALREADY_EXISTS after a retry means an earlier try went through.
    pub async fn create_topic(
        &self,
        via: u64,
        request: CreateTopicRequest,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut retried = false;
        loop {
            let status = match self.controller_client(via).await {
                Ok(mut c) => match c.create_topic(request.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(status) => status,
                },
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let code = status
                .metadata()
                .get("runnel-error-code")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            if retried && code == Some(36) {
                return Ok(());
            }
            let transient = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
                || matches!(code, Some(38 | 41));
            if !transient || Instant::now() >= deadline {
                bail!("create topic {}: {status}", request.name);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            retried = true;
        }
    }

    /// Polls node `id`'s Metadata until every partition of `topic` has a leader that serves
    /// it (answers ListOffsets, so produce requests can go there), or `timeout` passes.
    /// Answers the leader of each partition.
    pub async fn wait_for_partition_leaders(
        &self,
        id: u64,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.partition_leaders(id, topic).await {
                Ok(Some(leaders)) => {
                    let mut serving = true;
                    for (partition, &leader) in leaders.iter().enumerate() {
                        serving &= self.serves(leader, topic, partition as u32).await;
                    }
                    if serving {
                        return Ok(leaders);
                    }
                    last = format!("leaders {leaders:?} do not all serve their partitions yet");
                }
                Ok(None) => last = "some partition has no leader".into(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!("partitions of {topic} have no leaders within {timeout:?}: {last}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether node `id` answers ListOffsets for the partition (it leads it and has loaded it).
    async fn serves(&self, id: u64, topic: &str, partition: u32) -> bool {
        let Ok(mut client) = self.broker_client(id).await else { return false };
        let request = ListOffsetsRequest { topic: topic.to_owned(), partition, spec: 0, timestamp_ms: 0 };
        matches!(tokio::time::timeout(Duration::from_secs(2), client.list_offsets(request)).await, Ok(Ok(_)))
    }

    /// The leader of each partition of `topic` in node `id`'s Metadata; `None` if one has none.
    async fn partition_leaders(&self, id: u64, topic: &str) -> anyhow::Result<Option<Vec<u64>>> {
        let mut client = self.broker_client(id).await?;
        let request = MetadataRequest { topics: vec![topic.to_owned()] };
        let answer = tokio::time::timeout(Duration::from_secs(2), client.metadata(request))
            .await
            .map_err(|_| anyhow!("Metadata timed out"))??
            .into_inner();
        let t = answer.topics.first().ok_or_else(|| anyhow!("no topic in the answer"))?;
        if let Some(e) = &t.error {
            bail!("{} ({}): {}", e.name, e.code, e.message);
        }
        Ok(t.partitions.iter().map(|p| u64::try_from(p.leader).ok()).collect())
    }

    /// DescribeCluster asked of node `id`, bounded by `timeout`.
    pub async fn describe_cluster(
        &self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<DescribeClusterResponse> {
        let call = async {
            let mut c = self.controller_client(id).await?;
            Ok::<_, anyhow::Error>(c.describe_cluster(DescribeClusterRequest {}).await?.into_inner())
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| anyhow!("DescribeCluster timed out"))?
    }

    /// The first partition of `topic` as node `via` describes it; `None` when the node does
    /// not answer within 2 s or knows no such topic.
    pub async fn first_partition(&self, via: u64, topic: &str) -> Option<PartitionInfo> {
        let call = async {
            let mut c = self.controller_client(via).await.ok()?;
            let r = c.describe_topic(DescribeTopicRequest { name: topic.into() }).await.ok()?;
            r.into_inner().topic?.partitions.into_iter().next()
        };
        tokio::time::timeout(Duration::from_secs(2), call).await.ok().flatten()
    }

    /// Polls the running nodes until `check` holds for the first partition of `topic`, and
    /// answers that state; after `timeout`, an error naming `what` and the last state seen.
    pub async fn wait_for_first_partition(
        &self,
        topic: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&PartitionInfo) -> bool,
    ) -> anyhow::Result<PartitionInfo> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            for id in self.ids().into_iter().filter(|&id| self.is_up(id)) {
                if let Some(state) = self.first_partition(id, topic).await {
                    if check(&state) {
                        return Ok(state);
                    }
                    last = Some(state);
                }
            }
            if Instant::now() >= deadline {
                bail!("{what}: not within {timeout:?}; last state {last:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls the running, unpaused, connected nodes until one names a controller leader that is
    /// itself running, unpaused and not isolated (and not `excluding`), or `timeout` passes. An
    /// isolated node is neither asked nor accepted: it may still believe it leads.
    pub async fn wait_for_leader(&self, excluding: Option<u64>, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let usable = |n: &Node| n.is_running() && !n.paused && !self.is_isolated(n.id);
        loop {
            for n in self.nodes.iter().filter(|n| usable(n)) {
                if let Ok(r) = self.describe_cluster(n.id, Duration::from_millis(500)).await {
                    let leader = r.leader_id;
                    let alive = self.nodes.iter().any(|m| m.id == leader && usable(m));
                    if leader != 0 && alive && Some(leader) != excluding {
                        return Ok(leader);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no controller leader within {timeout:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_and_reap();
        }
        let keep = std::env::var_os("RUNNEL_TESTKIT_KEEP").is_some();
        if std::thread::panicking() {
            eprintln!("testkit: the test panicked; node logs follow\n{}", self.all_logs());
        }
        if let Some(root) = self.root.take()
            && (keep || std::thread::panicking())
        {
            eprintln!("testkit: kept {}", root.keep().display());
        }
        // Every process is reaped, so nothing keeps a namespace alive.
        drop(self.netns.take());
    }
}

/// A ControllerService client for `addr`, connecting within 2 s.
pub async fn grpc_client(addr: SocketAddr) -> anyhow::Result<ControllerServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(ControllerServiceClient::new(channel))
}

/// The `runnel-error-name` metadata of a failed gRPC call, or empty.
pub fn error_name(status: &tonic::Status) -> String {
    status.metadata().get("runnel-error-name").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// `count` distinct free loopback ports: each bound to port 0 together (so they are distinct),
/// read, then released for the node to bind.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A minimal HTTP/1.0 GET: answers the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a request split over segments confuses minimal servers.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().ok_or_else(|| anyhow!("empty HTTP response"))?;
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

/// Runs `binary args`, capturing its output; kills it after `timeout`.
pub fn run_with_timeout(binary: &Path, args: &[String], timeout: Duration) -> anyhow::Result<CliOutput> {
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let deadline = start + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait()?, true);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stdout = out.join().map_err(|_| anyhow!("stdout reader panicked"))?;
    let stderr = err.join().map_err(|_| anyhow!("stderr reader panicked"))?;
    Ok(CliOutput { code: if timed_out { None } else { status.code() }, timed_out, stdout, stderr, elapsed })
}

/// Percentile `p` (0..=100) of `samples` by nearest rank; `samples` need not be sorted.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    assert!(!samples.is_empty(), "percentile of nothing");
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests;
