//! `runnel node` settings: flags, then `RUNNEL_*` environment variables (clap reads both),
//! then an optional TOML file, then defaults.
//!
//! [`NodeArgs`] is both the clap argument set and the TOML file's schema (keys are the flag
//! names with '-' turned into '_'), every field optional, so one merge rule covers all of
//! them: a value set at a higher level wins. [`NodeSettings::resolve`] then checks the
//! result and fills in defaults.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use runnel_controller::controller::{Voter, parse_voters};
use serde::{Deserialize, Serialize};

/// Broker heartbeat period.
pub(crate) const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// A broker silent this long is fenced.
pub(crate) const SESSION_TIMEOUT_MS: u64 = 3_000;
/// Default `--replica-lag-time-ms` (Kafka's replica.lag.time.max.ms).
const REPLICA_LAG_TIME_MS: u64 = 10_000;
/// Default `--retention-check-interval-ms` (Kafka's log.retention.check.interval.ms).
const RETENTION_CHECK_INTERVAL_MS: u64 = 300_000;
/// Most partitions `--offsets-topic-partitions` may ask for (a topic's limit is 10,000; a
/// coordinator per partition past a few hundred is no use).
const OFFSETS_TOPIC_PARTITIONS_MAX: u32 = 1_000;
/// Raft leader heartbeat period. Elections are started by the controller's elector
/// (`runnel_controller::raft::elector`), not openraft's timer: the first follower in line asks
/// for votes after `election_timeout_max` of silence (when every voter's leader lease has run
/// out), the next one `max - min` later. Measured with
/// `cargo test -p runnel --test cluster controller_leader_that_leads` (kill -9 of the node that
/// leads both the controller and partitions, until its partitions have new leaders): with
/// 300-600 ms, 654-882 ms on a loaded machine (openraft's own timer took 1.27-1.40 s);
/// 250-500 ms leaves more room under the 1 s goal. Five heartbeats fit in the silence, so a
/// late heartbeat or two does not depose a loaded but live leader.
pub(crate) const RAFT_HEARTBEAT_INTERVAL_MS: u64 = 100;
/// See [`RAFT_HEARTBEAT_INTERVAL_MS`].
pub(crate) const ELECTION_TIMEOUT_MIN_MS: u64 = 250;
/// See [`RAFT_HEARTBEAT_INTERVAL_MS`].
pub(crate) const ELECTION_TIMEOUT_MAX_MS: u64 = 500;

/// How the node writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `runnel node`'s flags; also the TOML file's schema.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NodeArgs {
    /// A TOML file with any of these settings (keys: flag names with '-' as '_'); flags and
    /// environment variables override it.
    #[arg(long, env = "RUNNEL_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// This node's id (required), also its broker id.
    #[arg(long, env = "RUNNEL_ID")]
    pub(crate) id: Option<u32>,
    /// Where the node keeps its data (required).
    #[arg(long, env = "RUNNEL_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The controller voters, `id@host:port,...` (required; each voter's internal gRPC
    /// address: its --internal-advertised-addr when set, else its --grpc-advertised-addr).
    #[arg(long, env = "RUNNEL_CONTROLLER_VOTERS")]
    pub(crate) controller_voters: Option<String>,
    /// The node's roles, comma separated: controller, broker [default: controller,broker].
    #[arg(long, env = "RUNNEL_ROLES")]
    pub(crate) roles: Option<String>,
    /// gRPC listener, HOST:PORT [default: 127.0.0.1:(50050+id)].
    #[arg(long, env = "RUNNEL_GRPC_ADDR")]
    pub(crate) grpc_addr: Option<String>,
    /// HTTP listener for /healthz, /readyz and /metrics [default: 127.0.0.1:(8080+id)].
    #[arg(long, env = "RUNNEL_HTTP_ADDR")]
    pub(crate) http_addr: Option<String>,
    /// The gRPC address other nodes and clients are told, HOST:PORT [default: --grpc-addr].
    #[arg(long, env = "RUNNEL_GRPC_ADVERTISED_ADDR")]
    pub(crate) grpc_advertised_addr: Option<String>,
    /// A separate gRPC listener for inter-node calls only (Raft, replication, broker
    /// sessions, ISR changes), HOST:PORT, so that they can be firewalled from clients; the
    /// --grpc-addr listener then refuses them [default: none, --grpc-addr serves both].
    #[arg(long, env = "RUNNEL_INTERNAL_ADDR")]
    pub(crate) internal_addr: Option<String>,
    /// The internal address other nodes are told, HOST:PORT [default: --internal-addr].
    #[arg(long, env = "RUNNEL_INTERNAL_ADVERTISED_ADDR")]
    pub(crate) internal_advertised_addr: Option<String>,
    /// This node's TLS certificate (PEM; its subject CN must be runnel-node-<id>). With
    /// --tls-key and --tls-ca: every gRPC listener serves TLS, calls to other nodes present
    /// this certificate, and inter-node calls are refused unless the caller's certificate
    /// names the node the call claims to come from. `runnel tls generate` makes a throwaway
    /// set [default: none, plaintext].
    #[arg(long, env = "RUNNEL_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// This node's TLS private key (PEM).
    #[arg(long, env = "RUNNEL_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The cluster CA (PEM) every node's certificate is signed by.
    #[arg(long, env = "RUNNEL_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Serve the HTTP listener (probes, metrics, the console) over TLS too, with the node's
    /// certificate; `runnel healthcheck --url https://...` then checks it [default: false,
    /// plaintext HTTP, which Prometheus and container health checks expect].
    #[arg(long, env = "RUNNEL_HTTP_TLS", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub(crate) http_tls: Option<bool>,
    /// Kafka listeners, [NAME://]HOST:PORT[,...] (Kafka's `listeners`) [default:
    /// 127.0.0.1:(9091+id), so node 1 is on 9092]. A loopback host also listens on the other
    /// loopback family (127.0.0.1 and [::1]), since clients may resolve `localhost` to either.
    #[arg(long, env = "RUNNEL_KAFKA_ADDR")]
    pub(crate) kafka_addr: Option<String>,
    /// Kafka's listener.security.protocol.map: NAME:PROTOCOL[,...], PROTOCOL PLAINTEXT, SSL
    /// (TLS with the node's --tls-cert), SASL_PLAINTEXT or SASL_SSL (with --auth, every
    /// listener is one of the SASL two) [default: a listener named SSL or SASL_SSL is TLS, the
    /// others plaintext].
    #[arg(long, env = "RUNNEL_KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")]
    pub(crate) kafka_listener_security_protocol_map: Option<String>,
    /// What Metadata tells clients, per listener: [NAME://]HOST:PORT[,...] (Kafka's
    /// `advertised.listeners`; a client is told the addresses of the listener it connected
    /// to) [default: --kafka-addr].
    #[arg(long, env = "RUNNEL_KAFKA_ADVERTISED_ADDR")]
    pub(crate) kafka_advertised_addr: Option<String>,
    /// Client authentication and authorization: Kafka clients authenticate with SASL (PLAIN,
    /// SCRAM-SHA-256, SCRAM-SHA-512) and gRPC clients with the same users' credentials, and
    /// every request is checked against the ACLs (none allows nothing, as Kafka's
    /// allow.everyone.if.no.acl.found=false). Users and ACLs live in the cluster metadata
    /// (`runnel user`, `runnel acl`, Kafka's CreateAcls). Needs --internal-addr (the other
    /// nodes' calls stay off the client listener) [default: false].
    #[arg(long, env = "RUNNEL_AUTH", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub(crate) auth: Option<bool>,
    /// Kafka's super.users: principals allowed everything, `User:NAME` separated by `;` or
    /// `,`. While the cluster has no user, one of them may be created from a node's own host
    /// without credentials (`runnel user create admin`) [default: User:admin].
    #[arg(long, env = "RUNNEL_SUPER_USERS")]
    pub(crate) super_users: Option<String>,
    /// Kafka's auto.create.topics.enable: a Metadata (or Produce) for an unknown topic
    /// creates it [default: true].
    #[arg(long, env = "RUNNEL_AUTO_CREATE_TOPICS_ENABLE", value_parser = BoolishValueParser::new())]
    pub(crate) auto_create_topics_enable: Option<bool>,
    /// Kafka's num.partitions: partitions of an auto-created topic [default: 1].
    #[arg(long, env = "RUNNEL_NUM_PARTITIONS")]
    pub(crate) num_partitions: Option<u32>,
    /// Kafka's default.replication.factor: replicas of an auto-created topic [default: 3, or
    /// the number of live brokers if fewer].
    #[arg(long, env = "RUNNEL_DEFAULT_REPLICATION_FACTOR")]
    pub(crate) default_replication_factor: Option<u32>,
    /// Kafka's socket.request.max.bytes: a larger request frame closes its connection
    /// [default: 104857600].
    #[arg(long, env = "RUNNEL_SOCKET_REQUEST_MAX_BYTES")]
    pub(crate) socket_request_max_bytes: Option<usize>,
    /// Kafka's max.connections: connections open at once per listener, for each Kafka and
    /// gRPC listener; more are closed as they come [default: 10000].
    #[arg(long, env = "RUNNEL_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Kafka's connections.max.idle.ms: a Kafka connection with no request for this long
    /// (and none unanswered) is closed [default: 600000].
    #[arg(long, env = "RUNNEL_CONNECTIONS_MAX_IDLE_MS")]
    pub(crate) connections_max_idle_ms: Option<u64>,
    /// Broker heartbeat period [default: 500].
    #[arg(long, env = "RUNNEL_HEARTBEAT_INTERVAL_MS")]
    pub(crate) heartbeat_interval_ms: Option<u64>,
    /// A broker silent this long is fenced [default: 3000].
    #[arg(long, env = "RUNNEL_SESSION_TIMEOUT_MS")]
    pub(crate) session_timeout_ms: Option<u64>,
    /// A follower that has not caught up with its leader for this long leaves the ISR
    /// (Kafka's replica.lag.time.max.ms) [default: 10000].
    #[arg(long, env = "RUNNEL_REPLICA_LAG_TIME_MS")]
    pub(crate) replica_lag_time_ms: Option<u64>,
    /// How often the broker deletes segments past their topic's retention (Kafka's
    /// log.retention.check.interval.ms) [default: 300000].
    #[arg(long, env = "RUNNEL_RETENTION_CHECK_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) retention_check_interval_ms: Option<u64>,
    /// An idempotent producer with no batch in a partition for this long is forgotten there,
    /// at the next retention check (Kafka's producer.id.expiration.ms) [default: 86400000].
    #[arg(long, env = "RUNNEL_PRODUCER_ID_EXPIRATION_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) producer_id_expiration_ms: Option<u64>,
    /// Partitions of the internal `__consumer_offsets` topic, used by the broker that
    /// creates it on the first group call; fixed once the topic exists [default: 8].
    #[arg(long, env = "RUNNEL_OFFSETS_TOPIC_PARTITIONS")]
    pub(crate) offsets_topic_partitions: Option<u32>,
    /// Raft leader heartbeat period [default: 100].
    #[arg(long, env = "RUNNEL_RAFT_HEARTBEAT_INTERVAL_MS")]
    pub(crate) raft_heartbeat_interval_ms: Option<u64>,
    /// Raft election timeout, lower bound [default: 250].
    #[arg(long, env = "RUNNEL_ELECTION_TIMEOUT_MIN_MS")]
    pub(crate) election_timeout_min_ms: Option<u64>,
    /// Raft election timeout, upper bound [default: 500].
    #[arg(long, env = "RUNNEL_ELECTION_TIMEOUT_MAX_MS")]
    pub(crate) election_timeout_max_ms: Option<u64>,
    /// Do not move leadership back to preferred replicas when a broker is unfenced.
    #[arg(long, env = "RUNNEL_NO_RESTORE_PREFERRED_LEADERS", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub(crate) no_restore_preferred_leaders: Option<bool>,
    /// Log format [default: text].
    #[arg(long, env = "RUNNEL_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// Print the resolved settings as JSON and exit.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub(crate) print_config: bool,
}

/// Which roles a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Roles {
    pub(crate) controller: bool,
    pub(crate) broker: bool,
}

/// The resolved, checked settings of a node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeSettings {
    pub(crate) id: u32,
    pub(crate) data_dir: PathBuf,
    #[serde(serialize_with = "voters_as_text")]
    pub(crate) voters: Vec<Voter>,
    pub(crate) roles: Roles,
    pub(crate) grpc_addr: String,
    pub(crate) grpc_advertised_addr: String,
    /// The internal listener and what other nodes are told of it, when the planes are apart.
    pub(crate) internal_addr: Option<String>,
    pub(crate) internal_advertised_addr: Option<String>,
    /// The certificate, key and CA files, when the node runs TLS.
    pub(crate) tls_files: Option<[PathBuf; 3]>,
    /// Their contents, loaded and checked.
    #[serde(skip)]
    pub(crate) tls: Option<runnel_proto::tls::NodeTls>,
    pub(crate) http_addr: String,
    /// The HTTP listener serves TLS.
    pub(crate) http_tls: bool,
    pub(crate) kafka_addr: String,
    pub(crate) kafka_advertised_addr: String,
    /// The Kafka listeners to bind: (name, HOST:PORT).
    #[serde(skip)]
    pub(crate) kafka_listeners: Vec<runnel_kafka::listeners::Listener>,
    /// The Kafka listeners that serve TLS (security protocol SSL or SASL_SSL).
    pub(crate) kafka_ssl_listeners: Vec<String>,
    /// Client authentication (SASL, gRPC credentials) and ACLs.
    pub(crate) auth: bool,
    /// Principals allowed everything.
    pub(crate) super_users: Vec<String>,
    /// The Kafka endpoint this broker registers (every listener's advertised address).
    pub(crate) kafka_endpoint: String,
    pub(crate) auto_create_topics_enable: bool,
    pub(crate) num_partitions: u32,
    pub(crate) default_replication_factor: Option<u32>,
    pub(crate) socket_request_max_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) connections_max_idle_ms: u64,
    pub(crate) heartbeat_interval_ms: u64,
    pub(crate) session_timeout_ms: u64,
    pub(crate) replica_lag_time_ms: u64,
    pub(crate) retention_check_interval_ms: u64,
    pub(crate) producer_id_expiration_ms: u64,
    pub(crate) offsets_topic_partitions: u32,
    pub(crate) raft_heartbeat_interval_ms: u64,
    pub(crate) election_timeout_min_ms: u64,
    pub(crate) election_timeout_max_ms: u64,
    pub(crate) restore_preferred_leaders: bool,
    pub(crate) log_format: LogFormat,
}

fn voters_as_text<S: serde::Serializer>(voters: &[Voter], s: S) -> Result<S::Ok, S::Error> {
    let text: Vec<String> = voters.iter().map(|v| format!("{}@{}", v.id, v.addr)).collect();
    s.serialize_str(&text.join(","))
}

impl NodeArgs {
    /// Fills every unset field from `lower`.
    fn or(self, lower: NodeArgs) -> NodeArgs {
        NodeArgs {
            config: self.config.or(lower.config),
            id: self.id.or(lower.id),
            data_dir: self.data_dir.or(lower.data_dir),
            controller_voters: self.controller_voters.or(lower.controller_voters),
            roles: self.roles.or(lower.roles),
            grpc_addr: self.grpc_addr.or(lower.grpc_addr),
            grpc_advertised_addr: self.grpc_advertised_addr.or(lower.grpc_advertised_addr),
            internal_addr: self.internal_addr.or(lower.internal_addr),
            internal_advertised_addr: self.internal_advertised_addr.or(lower.internal_advertised_addr),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_ca: self.tls_ca.or(lower.tls_ca),
            http_tls: self.http_tls.or(lower.http_tls),
            http_addr: self.http_addr.or(lower.http_addr),
            kafka_addr: self.kafka_addr.or(lower.kafka_addr),
            kafka_advertised_addr: self.kafka_advertised_addr.or(lower.kafka_advertised_addr),
            auth: self.auth.or(lower.auth),
            super_users: self.super_users.or(lower.super_users),
            kafka_listener_security_protocol_map: self
                .kafka_listener_security_protocol_map
                .or(lower.kafka_listener_security_protocol_map),
            auto_create_topics_enable: self.auto_create_topics_enable.or(lower.auto_create_topics_enable),
            num_partitions: self.num_partitions.or(lower.num_partitions),
            default_replication_factor: self.default_replication_factor.or(lower.default_replication_factor),
            socket_request_max_bytes: self.socket_request_max_bytes.or(lower.socket_request_max_bytes),
            max_connections: self.max_connections.or(lower.max_connections),
            connections_max_idle_ms: self.connections_max_idle_ms.or(lower.connections_max_idle_ms),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(lower.heartbeat_interval_ms),
            session_timeout_ms: self.session_timeout_ms.or(lower.session_timeout_ms),
            replica_lag_time_ms: self.replica_lag_time_ms.or(lower.replica_lag_time_ms),
            retention_check_interval_ms: self
                .retention_check_interval_ms
                .or(lower.retention_check_interval_ms),
            producer_id_expiration_ms: self.producer_id_expiration_ms.or(lower.producer_id_expiration_ms),
            offsets_topic_partitions: self.offsets_topic_partitions.or(lower.offsets_topic_partitions),
            raft_heartbeat_interval_ms: self.raft_heartbeat_interval_ms.or(lower.raft_heartbeat_interval_ms),
            election_timeout_min_ms: self.election_timeout_min_ms.or(lower.election_timeout_min_ms),
            election_timeout_max_ms: self.election_timeout_max_ms.or(lower.election_timeout_max_ms),
            no_restore_preferred_leaders: self
                .no_restore_preferred_leaders
                .or(lower.no_restore_preferred_leaders),
            log_format: self.log_format.or(lower.log_format),
            print_config: self.print_config || lower.print_config,
        }
    }
}

/// Parses a TOML settings file.
pub(crate) fn parse_file(text: &str) -> anyhow::Result<NodeArgs> {
    Ok(toml::from_str(text)?)
}

fn read_file(path: &Path) -> anyhow::Result<NodeArgs> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_file(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Refuses an address other nodes or clients are told when it is a wildcard, which reaches
/// no one (Kafka refuses 0.0.0.0 in advertised.listeners likewise).
fn check_reachable(what: &str, addr: &str, flag: &str) -> anyhow::Result<()> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    if matches!(host.trim_start_matches('[').trim_end_matches(']'), "0.0.0.0" | "::" | "") {
        bail!(
            "the {what} address others are told, {addr:?}, is not one they can connect to: set {flag} to this node's reachable HOST:PORT"
        );
    }
    Ok(())
}

/// The names of `listeners` whose security protocol is SSL: as `map` (Kafka's
/// listener.security.protocol.map) says, else SSL for a listener named SSL.
fn ssl_listeners(
    listeners: &[runnel_kafka::listeners::Listener],
    map: Option<&str>,
    auth: bool,
) -> anyhow::Result<Vec<String>> {
    let mut protocols = std::collections::BTreeMap::new();
    for entry in map.unwrap_or_default().split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, protocol)) = entry.split_once(':') else {
            bail!("--kafka-listener-security-protocol-map: {entry:?} is not NAME:PROTOCOL");
        };
        let (ssl, sasl) = match protocol {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                bail!(
                    "--kafka-listener-security-protocol-map: unknown protocol {other:?} (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)"
                )
            }
        };
        if sasl && !auth {
            bail!(
                "--kafka-listener-security-protocol-map: listener {name} is {protocol}, which needs --auth"
            );
        }
        if !sasl && auth {
            bail!(
                "--kafka-listener-security-protocol-map: listener {name} is {protocol}, but with --auth every Kafka listener authenticates: make it SASL_{protocol}"
            );
        }
        if !listeners.iter().any(|l| l.name == name) {
            bail!("--kafka-listener-security-protocol-map names {name}, which --kafka-addr does not define");
        }
        protocols.insert(name.to_owned(), ssl);
    }
    Ok(listeners
        .iter()
        .filter(|l| protocols.get(&l.name).copied().unwrap_or(l.name == "SSL" || l.name == "SASL_SSL"))
        .map(|l| l.name.clone())
        .collect())
}

/// Whether `addr` (`HOST:PORT`) is on a loopback address (or localhost).
fn is_loopback_addr(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Kafka's super.users: `User:NAME` entries separated by `;` (Kafka's) or `,`.
fn parse_super_users(text: &str) -> anyhow::Result<Vec<String>> {
    let mut users = Vec::new();
    for entry in text.split([';', ',']).map(str::trim).filter(|e| !e.is_empty()) {
        match entry.strip_prefix("User:") {
            Some(name) if !name.is_empty() => users.push(entry.to_owned()),
            _ => bail!("--super-users: {entry:?} is not User:NAME"),
        }
    }
    Ok(users)
}

fn parse_roles(text: &str) -> anyhow::Result<Roles> {
    let mut roles = Roles { controller: false, broker: false };
    for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        match role {
            "controller" => roles.controller = true,
            "broker" => roles.broker = true,
            other => bail!("unknown role {other:?} (expected controller, broker)"),
        }
    }
    if !roles.controller && !roles.broker {
        bail!("--roles names no role");
    }
    Ok(roles)
}

impl NodeSettings {
    /// Merges flags and environment (`args`) over the TOML file they name, then defaults.
    pub(crate) fn load(args: NodeArgs) -> anyhow::Result<NodeSettings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => NodeArgs::default(),
        };
        Self::resolve(args.or(file))
    }

    /// Checks merged settings and fills in defaults.
    pub(crate) fn resolve(args: NodeArgs) -> anyhow::Result<NodeSettings> {
        let id = args.id.context("--id is required (or RUNNEL_ID, or id in the config file)")?;
        let data_dir = args.data_dir.context("--data-dir is required")?;
        let voters = args.controller_voters.context("--controller-voters is required")?;
        let voters = parse_voters(&voters)?;
        let roles = parse_roles(args.roles.as_deref().unwrap_or("controller,broker"))?;
        if roles.controller && !voters.iter().any(|v| v.id == u64::from(id)) {
            bail!("node {id} runs the controller role but is not in --controller-voters");
        }
        let port = |base: u32| -> anyhow::Result<u16> {
            u16::try_from(base + id).with_context(|| format!("no default port for node id {id}"))
        };
        let grpc_addr = match args.grpc_addr {
            Some(addr) => addr,
            None => format!("127.0.0.1:{}", port(50050)?),
        };
        let http_addr = match args.http_addr {
            Some(addr) => addr,
            None => format!("127.0.0.1:{}", port(8080)?),
        };
        let kafka_addr = match args.kafka_addr {
            Some(addr) => addr,
            None => format!("127.0.0.1:{}", port(9091)?),
        };
        let kafka_advertised_addr = args.kafka_advertised_addr.unwrap_or_else(|| kafka_addr.clone());
        let kafka_listeners =
            runnel_kafka::listeners::parse(&kafka_addr).map_err(|e| anyhow::anyhow!("--kafka-addr: {e}"))?;
        let advertised = runnel_kafka::listeners::parse(&kafka_advertised_addr)
            .and_then(|a| runnel_kafka::listeners::advertise(&kafka_listeners, &a))
            .map_err(|e| anyhow::anyhow!("--kafka-advertised-addr: {e}"))?;
        for l in &advertised {
            check_reachable("Kafka", &l.addr, "--kafka-advertised-addr")?;
        }
        let kafka_endpoint = runnel_kafka::listeners::encode(&advertised);
        let grpc_advertised_addr = args.grpc_advertised_addr.unwrap_or_else(|| grpc_addr.clone());
        check_reachable("gRPC", &grpc_advertised_addr, "--grpc-advertised-addr")?;
        if args.internal_advertised_addr.is_some() && args.internal_addr.is_none() {
            bail!("--internal-advertised-addr needs --internal-addr");
        }
        let internal_advertised_addr = args.internal_advertised_addr.or_else(|| args.internal_addr.clone());
        if let Some(internal) = &internal_advertised_addr {
            check_reachable("internal", internal, "--internal-advertised-addr")?;
            if *internal == grpc_advertised_addr {
                bail!("--internal-addr must differ from --grpc-addr (leave it unset to serve both on one)");
            }
            // Raft and the brokers reach a voter at its address in the list: with the planes
            // apart, that must be its internal listener, or every call would be refused.
            if let Some(me) = voters.iter().find(|v| v.id == u64::from(id))
                && me.addr != *internal
            {
                bail!(
                    "--controller-voters gives node {id} the address {:?}, but its internal listener is {internal:?}: with --internal-addr the voters list names each voter's internal address",
                    me.addr
                );
            }
        }
        let tls_files = match (args.tls_cert, args.tls_key, args.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some([cert, key, ca]),
            _ => bail!("--tls-cert, --tls-key and --tls-ca go together: give all three or none"),
        };
        let tls = match &tls_files {
            Some([cert, key, ca]) => {
                let tls = runnel_proto::tls::NodeTls::load(cert, key, ca)
                    .context("--tls-cert/--tls-key/--tls-ca")?;
                if tls.node_id() != id {
                    bail!(
                        "--tls-cert is node {}'s certificate (its CN), but this is node {id}",
                        tls.node_id()
                    );
                }
                Some(tls)
            }
            None => None,
        };
        let auth = args.auth.unwrap_or(false);
        if auth && args.internal_addr.is_none() {
            bail!(
                "--auth needs --internal-addr: with the other nodes' calls on the client listener, a client could forge them past any ACL"
            );
        }
        let super_users = parse_super_users(args.super_users.as_deref().unwrap_or("User:admin"))?;
        let kafka_ssl_listeners =
            ssl_listeners(&kafka_listeners, args.kafka_listener_security_protocol_map.as_deref(), auth)?;
        if let Some(name) = kafka_ssl_listeners.first()
            && tls.is_none()
        {
            bail!("the Kafka listener {name} is SSL: it needs --tls-cert, --tls-key and --tls-ca");
        }
        // With --auth the internal listener carries the users' credentials and takes every
        // inter-node call unauthenticated unless TLS checks the nodes' certificates: off
        // loopback, that is only safe with TLS.
        if auth
            && tls.is_none()
            && let Some(internal) = &args.internal_addr
            && !is_loopback_addr(internal)
        {
            bail!(
                "--auth with --internal-addr {internal} (not loopback) needs TLS (--tls-cert, --tls-key, --tls-ca): without it anyone who reaches the internal listener is trusted as a node"
            );
        }
        let http_tls = args.http_tls.unwrap_or(false);
        if http_tls && tls.is_none() {
            bail!("--http-tls needs --tls-cert, --tls-key and --tls-ca");
        }
        let num_partitions = args.num_partitions.unwrap_or(1);
        if num_partitions == 0 {
            bail!("--num-partitions must be at least 1");
        }
        if args.default_replication_factor == Some(0) {
            bail!("--default-replication-factor must be at least 1");
        }
        let socket_request_max_bytes =
            args.socket_request_max_bytes.unwrap_or(runnel_kafka::REQUEST_BYTES_MAX_DEFAULT);
        if socket_request_max_bytes < 1024 || socket_request_max_bytes > i32::MAX as usize {
            bail!("--socket-request-max-bytes must be from 1024 to {}", i32::MAX);
        }
        let max_connections = args.max_connections.unwrap_or(runnel_kafka::MAX_CONNECTIONS_DEFAULT);
        if max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        let connections_max_idle_ms = args
            .connections_max_idle_ms
            .unwrap_or(runnel_kafka::CONNECTIONS_MAX_IDLE_DEFAULT.as_millis() as u64);
        if connections_max_idle_ms == 0 {
            bail!("--connections-max-idle-ms must be at least 1");
        }
        let settings = NodeSettings {
            id,
            data_dir,
            voters,
            roles,
            grpc_addr,
            grpc_advertised_addr,
            internal_addr: args.internal_addr,
            internal_advertised_addr,
            tls_files,
            tls,
            http_addr,
            http_tls,
            kafka_addr,
            kafka_advertised_addr,
            kafka_listeners,
            kafka_ssl_listeners,
            auth,
            super_users,
            kafka_endpoint,
            auto_create_topics_enable: args.auto_create_topics_enable.unwrap_or(true),
            num_partitions,
            default_replication_factor: args.default_replication_factor,
            socket_request_max_bytes,
            max_connections,
            connections_max_idle_ms,
            heartbeat_interval_ms: args.heartbeat_interval_ms.unwrap_or(HEARTBEAT_INTERVAL_MS),
            session_timeout_ms: args.session_timeout_ms.unwrap_or(SESSION_TIMEOUT_MS),
            replica_lag_time_ms: args.replica_lag_time_ms.unwrap_or(REPLICA_LAG_TIME_MS),
            retention_check_interval_ms: args
                .retention_check_interval_ms
                .unwrap_or(RETENTION_CHECK_INTERVAL_MS),
            producer_id_expiration_ms: args
                .producer_id_expiration_ms
                .unwrap_or(runnel_broker::producer::PRODUCER_ID_EXPIRATION_MS_DEFAULT),
            offsets_topic_partitions: args
                .offsets_topic_partitions
                .unwrap_or(runnel_broker::group::OFFSETS_TOPIC_PARTITIONS_DEFAULT),
            raft_heartbeat_interval_ms: args.raft_heartbeat_interval_ms.unwrap_or(RAFT_HEARTBEAT_INTERVAL_MS),
            election_timeout_min_ms: args.election_timeout_min_ms.unwrap_or(ELECTION_TIMEOUT_MIN_MS),
            election_timeout_max_ms: args.election_timeout_max_ms.unwrap_or(ELECTION_TIMEOUT_MAX_MS),
            restore_preferred_leaders: !args.no_restore_preferred_leaders.unwrap_or(false),
            log_format: args.log_format.unwrap_or(LogFormat::Text),
        };
        if settings.heartbeat_interval_ms == 0
            || settings.heartbeat_interval_ms >= settings.session_timeout_ms
        {
            bail!("--heartbeat-interval-ms must be positive and below --session-timeout-ms");
        }
        if !(1..=OFFSETS_TOPIC_PARTITIONS_MAX).contains(&settings.offsets_topic_partitions) {
            bail!("--offsets-topic-partitions must be 1 to {OFFSETS_TOPIC_PARTITIONS_MAX}");
        }
        if settings.raft_heartbeat_interval_ms == 0
            || settings.raft_heartbeat_interval_ms >= settings.election_timeout_min_ms
            || settings.election_timeout_min_ms >= settings.election_timeout_max_ms
        {
            bail!("raft timers must satisfy 0 < heartbeat < election-timeout-min < election-timeout-max");
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: NodeArgs,
    }

    fn flags(list: &[&str]) -> NodeArgs {
        Wrapper::try_parse_from(std::iter::once("node").chain(list.iter().copied())).expect("parses").args
    }

    const VOTERS: &str = "1@127.0.0.1:50051,2@127.0.0.1:50052,3@127.0.0.1:50053";

    #[test]
    fn auth_needs_the_planes_apart_and_tls_off_loopback() {
        let voters = "1@127.0.0.1:50061";
        let with = |extra: &[&str]| {
            let mut args = vec!["--id", "1", "--data-dir", "d", "--controller-voters", voters, "--auth"];
            args.extend_from_slice(extra);
            NodeSettings::resolve(flags(&args))
        };
        let err = with(&[]).expect_err("--auth without --internal-addr").to_string();
        assert!(err.contains("--internal-addr"), "{err}");
        let s = with(&["--internal-addr", "127.0.0.1:50061"]).expect("loopback internal listener");
        assert!(s.auth);
        assert_eq!(s.super_users, ["User:admin"]);
        let err = NodeSettings::resolve(flags(&[
            "--id",
            "1",
            "--data-dir",
            "d",
            "--controller-voters",
            "1@10.0.0.1:50061",
            "--internal-addr",
            "10.0.0.1:50061",
            "--auth",
        ]))
        .expect_err("a routable internal listener without TLS")
        .to_string();
        assert!(err.contains("needs TLS"), "{err}");
        let s = with(&["--internal-addr", "127.0.0.1:50061", "--super-users", "User:ops;User:root"]).unwrap();
        assert_eq!(s.super_users, ["User:ops", "User:root"]);
        assert!(with(&["--internal-addr", "127.0.0.1:50061", "--super-users", "ops"]).is_err());
    }

    #[test]
    fn defaults_follow_the_node_id() {
        let s =
            NodeSettings::resolve(flags(&["--id", "2", "--data-dir", "d", "--controller-voters", VOTERS]))
                .expect("valid");
        assert_eq!((s.grpc_addr.as_str(), s.http_addr.as_str()), ("127.0.0.1:50052", "127.0.0.1:8082"));
        assert_eq!(s.kafka_addr, "127.0.0.1:9093");
        assert_eq!(s.roles, Roles { controller: true, broker: true });
        assert_eq!((s.heartbeat_interval_ms, s.session_timeout_ms), (500, 3000));
        assert_eq!((s.election_timeout_min_ms, s.election_timeout_max_ms), (250, 500));
        assert!(s.restore_preferred_leaders);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.offsets_topic_partitions, 8);
        assert_eq!(s.kafka_advertised_addr, "127.0.0.1:9093", "advertised defaults to the listener");
        assert!(s.auto_create_topics_enable);
        assert_eq!((s.num_partitions, s.default_replication_factor), (1, None));
        assert_eq!(s.socket_request_max_bytes, 100 << 20);
        assert_eq!((s.max_connections, s.connections_max_idle_ms), (10_000, 600_000));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file = parse_file(&format!(
            "id = 1\ndata_dir = \"/from/file\"\ncontroller_voters = \"{VOTERS}\"\n\
             heartbeat_interval_ms = 250\nsession_timeout_ms = 2000\nlog_format = \"json\"\n\
             no_restore_preferred_leaders = true\nroles = \"broker\"\n"
        ))
        .expect("valid toml");
        let merged = flags(&["--data-dir", "/from/flag", "--heartbeat-interval-ms", "100"]).or(file);
        let s = NodeSettings::resolve(merged).expect("valid");
        assert_eq!(s.id, 1);
        assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(s.heartbeat_interval_ms, 100);
        assert_eq!(s.session_timeout_ms, 2000);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(!s.restore_preferred_leaders);
        assert_eq!(s.roles, Roles { controller: false, broker: true });
        assert_eq!(s.grpc_addr, "127.0.0.1:50051", "unset everywhere: the default");
    }

    #[test]
    fn the_internal_listener_is_the_voters_address() {
        let split = "1@127.0.0.1:50061,2@127.0.0.1:50062,3@127.0.0.1:50063";
        let resolve = |voters: &str, extra: &[&str]| {
            let mut all = vec!["--id", "1", "--data-dir", "d", "--controller-voters", voters];
            all.extend_from_slice(extra);
            NodeSettings::resolve(flags(&all))
        };
        let s = resolve(split, &["--internal-addr", "127.0.0.1:50061"]).expect("valid");
        assert_eq!(s.internal_addr.as_deref(), Some("127.0.0.1:50061"));
        assert_eq!(s.internal_advertised_addr.as_deref(), Some("127.0.0.1:50061"));
        let s = resolve(
            split,
            &["--internal-addr", "0.0.0.0:50061", "--internal-advertised-addr", "127.0.0.1:50061"],
        )
        .expect("a wildcard bind, advertised");
        assert_eq!(s.internal_addr.as_deref(), Some("0.0.0.0:50061"));
        assert!(resolve(VOTERS, &[]).is_ok_and(|s| s.internal_addr.is_none()), "one listener by default");
        let refused = [
            (VOTERS, vec!["--internal-addr", "127.0.0.1:50061"], "the voters list names the client listener"),
            (split, vec!["--internal-addr", "0.0.0.0:50061"], "a wildcard advertised to peers"),
            (split, vec!["--internal-advertised-addr", "127.0.0.1:50061"], "advertised without a listener"),
            (VOTERS, vec!["--internal-addr", "127.0.0.1:50051"], "the same listener twice"),
        ];
        for (voters, extra, why) in refused {
            assert!(resolve(voters, &extra).is_err(), "{why}");
        }
    }

    #[test]
    fn the_security_protocol_map_picks_the_ssl_listeners() {
        let listeners = runnel_kafka::listeners::parse("SSL://h:1,INTERNAL://h:2,EXTERNAL://h:3").unwrap();
        assert_eq!(ssl_listeners(&listeners, None, false).unwrap(), ["SSL"], "named SSL: SSL by default");
        let map = Some("EXTERNAL:SSL,SSL:PLAINTEXT");
        assert_eq!(ssl_listeners(&listeners, map, false).unwrap(), ["EXTERNAL"]);
        for bad in ["EXTERNAL", "EXTERNAL:TLS", "EXTERNAL:SASL_SSL", "OTHER:SSL"] {
            assert!(ssl_listeners(&listeners, Some(bad), false).is_err(), "{bad}");
        }
        // With --auth every listener is SASL_*: SASL_SSL is TLS, a plain protocol is refused.
        let map = Some("EXTERNAL:SASL_SSL,SSL:SASL_PLAINTEXT");
        assert_eq!(ssl_listeners(&listeners, map, true).unwrap(), ["EXTERNAL"]);
        assert!(ssl_listeners(&listeners, Some("EXTERNAL:SSL"), true).is_err(), "SSL under --auth");
        assert_eq!(ssl_listeners(&listeners, None, true).unwrap(), ["SSL"], "defaults keep TLS by name");
        // An SSL listener needs the node's certificate.
        let refused = NodeSettings::resolve(flags(&[
            "--id",
            "1",
            "--data-dir",
            "d",
            "--controller-voters",
            VOTERS,
            "--kafka-addr",
            "SSL://127.0.0.1:9093",
        ]));
        assert!(refused.is_err_and(|e| e.to_string().contains("needs --tls-cert")));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(parse_file("bogus_key = 1").is_err(), "unknown keys are errors");
        let base = ["--data-dir", "d", "--controller-voters", VOTERS];
        assert!(NodeSettings::resolve(flags(&base)).is_err(), "no id");
        let with = |extra: &[&str]| {
            let mut all: Vec<&str> = base.to_vec();
            all.extend_from_slice(extra);
            NodeSettings::resolve(flags(&all))
        };
        assert!(with(&["--id", "4"]).is_err(), "a controller outside the voters");
        assert!(with(&["--id", "4", "--roles", "broker"]).is_ok(), "a broker-only node");
        assert!(with(&["--id", "1", "--roles", "storage"]).is_err());
        assert!(with(&["--id", "1", "--heartbeat-interval-ms", "5000"]).is_err());
        assert!(with(&["--id", "1", "--election-timeout-min-ms", "2000"]).is_err());
        assert!(with(&["--id", "1", "--offsets-topic-partitions", "0"]).is_err());
        assert!(
            with(&["--id", "1", "--offsets-topic-partitions", "3"])
                .is_ok_and(|s| s.offsets_topic_partitions == 3)
        );
        assert!(with(&["--id", "1", "--num-partitions", "0"]).is_err());
        assert!(
            with(&["--id", "1", "--kafka-addr", "0.0.0.0:9092"]).is_err(),
            "a wildcard advertised to clients"
        );
        assert!(
            with(&["--id", "1", "--kafka-addr", "0.0.0.0:9092", "--kafka-advertised-addr", "runnel-1:9092"])
                .is_ok_and(|s| s.kafka_addr == "0.0.0.0:9092" && s.kafka_advertised_addr == "runnel-1:9092")
        );
        assert!(with(&["--id", "1", "--default-replication-factor", "0"]).is_err());
        assert!(with(&["--id", "1", "--socket-request-max-bytes", "10"]).is_err());
        assert!(with(&["--id", "1", "--max-connections", "0"]).is_err());
        assert!(with(&["--id", "1", "--connections-max-idle-ms", "0"]).is_err());
        assert!(
            with(&[
                "--id",
                "1",
                "--auto-create-topics-enable",
                "false",
                "--kafka-advertised-addr",
                "kafka-1:9092"
            ])
            .is_ok_and(|s| !s.auto_create_topics_enable && s.kafka_advertised_addr == "kafka-1:9092")
        );
        assert!(
            with(&["--id", "1", "--no-restore-preferred-leaders"])
                .is_ok_and(|s| !s.restore_preferred_leaders)
        );
    }
}
