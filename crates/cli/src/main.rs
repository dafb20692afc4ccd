//! `runnel`: one binary for a Runnel node and its command-line client.
//!
//! This crate is the composition root: it parses the command line and wires the library
//! crates together: `runnel node` runs a node, the other commands are operator tools.

/// mimalloc rather than glibc's malloc: the data plane allocates and frees buffers of
/// megabytes per fetch, which glibc serves with a fresh mmap each time (a page fault per 4
/// KiB touched, and a munmap after); mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod data;
mod e2e;
mod group;
mod healthcheck;
mod node;
mod security;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use runnel_storage::dump::{DumpOptions, dump_partition};

#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = "Runnel: a replicated, Kafka-compatible event streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node of a cluster (controller and/or broker roles, HTTP probes).
    ///
    /// Every setting is a flag, an environment variable RUNNEL_<NAME> or a key of the TOML
    /// file given by --config, in that precedence. Prints `runnel node <id> ready: grpc=<addr>
    /// http=<addr> kafka=<listeners>` once the listeners are bound; SIGTERM or SIGINT stops it cleanly.
    Node(Box<node::NodeArgs>),
    /// Describe the cluster: the controller quorum and the brokers.
    Cluster {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Inspect partition logs on disk.
    #[command(subcommand)]
    Log(LogCommand),
    /// Produce records to a topic: one per line of stdin.
    ///
    /// Prints `produced N records (M acknowledged) to TOPIC` on stderr at the end; exits 1
    /// when a record was not acknowledged, with its error.
    Produce(data::cli::ProduceArgs),
    /// Print a topic's records: the value per line, or one JSON object per record.
    Consume(data::cli::ConsumeArgs),
    /// Consumer groups: list, describe (members, assignment, lag), reset offsets.
    Group {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Measure produce or consume throughput and latency.
    #[command(subcommand)]
    Bench(data::cli::BenchCommand),
    /// GET a node's probe (default: its /readyz) and exit 0 on 200, 1 otherwise; for
    /// container HEALTHCHECKs on images without curl.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// TLS certificates for a cluster.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Users of a cluster started with --auth: create (or change a password), delete, list.
    User {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: security::UserCommand,
    },
    /// ACLs of a cluster started with --auth (Kafka's model): add, remove, list.
    Acl {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: security::AclCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Write a throwaway CA (ca.pem, ca.key) and a certificate and key per node
    /// (node-<id>.pem, node-<id>.key, subject CN runnel-node-<id>) into DIR, for
    /// `runnel node --tls-cert DIR/node-<id>.pem --tls-key DIR/node-<id>.key --tls-ca DIR/ca.pem`.
    /// For tests and local clusters: the CA's key is written beside them.
    Generate {
        /// Where to write the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The node ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u32>,
        /// Names and IP addresses the nodes are reached by (each certificate is valid for all
        /// of them) [default: localhost,127.0.0.1,::1].
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The controller leader, each voter's term and log indexes, each broker's epoch and
    /// fenced flag.
    Status,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic; the controller places its replicas.
    Create {
        /// The topic name.
        name: String,
        /// The partition count.
        #[arg(long)]
        partitions: u32,
        /// Replicas per partition [default: 3, or the number of live brokers if fewer].
        #[arg(long)]
        replication_factor: Option<u32>,
        /// A config override, key=value (Kafka names, e.g. retention.ms=60000); repeatable.
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List every topic.
    List,
    /// Show a topic's partitions: leader, replicas, ISR, leader epoch.
    Describe {
        /// The topic name.
        name: String,
    },
    /// Delete a topic.
    Delete {
        /// The topic name.
        name: String,
    },
    /// Change a topic's config overrides; prints the overrides in force afterwards.
    AlterConfig {
        /// The topic name.
        name: String,
        /// Set an override, key=value (Kafka names, e.g. retention.ms=60000); repeatable.
        #[arg(long = "set", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Remove an override (back to the broker default); repeatable.
        #[arg(long = "delete")]
        delete: Vec<String>,
        /// Check the change without making it.
        #[arg(long)]
        validate_only: bool,
    },
    /// Grow a topic to a new partition count; existing partitions (and the partition of
    /// every key already written) are untouched.
    AddPartitions {
        /// The topic name.
        name: String,
        /// The partition count afterwards (the new total, above the current count).
        #[arg(long)]
        count: u32,
        /// Check the change without making it.
        #[arg(long)]
        validate_only: bool,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print every batch of a partition directory and check its integrity.
    ///
    /// Exits 0 when the log is intact, 1 when it finds corruption (each problem is listed
    /// with its segment, byte position and offset), 2 on usage errors.
    Dump {
        /// The partition directory, e.g. data/orders-0.
        partition_dir: PathBuf,
        /// Also decode and print every record (key, value, headers, timestamp).
        #[arg(long)]
        records: bool,
        /// Largest batch, in bytes, considered valid.
        #[arg(long, default_value_t = runnel_storage::BATCH_BYTES_LIMIT)]
        max_batch_bytes: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => run_node(*args),
        command => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            run(command)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: node::NodeArgs) -> anyhow::Result<ExitCode> {
    let print = args.print_config;
    let settings = node::NodeSettings::load(args)?;
    if print {
        println!("{}", serde_json::to_string_pretty(&settings)?);
        return Ok(ExitCode::SUCCESS);
    }
    node::init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(node::run(settings))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a client command; a controller's refusal prints `error: NAME (code): message`.
fn run_client(client: client::ClientArgs, kind: &str, call: ClientCall) -> anyhow::Result<ExitCode> {
    let addrs = client.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(async {
        match call {
            ClientCall::Status => client::cluster_status(&addrs).await,
            ClientCall::Topic(TopicCommand::Create { name, partitions, replication_factor, configs }) => {
                client::topic_create(&addrs, name, partitions, replication_factor, configs).await
            }
            ClientCall::Topic(TopicCommand::List) => client::topic_list(&addrs).await,
            ClientCall::Topic(TopicCommand::Describe { name }) => client::topic_describe(&addrs, name).await,
            ClientCall::Topic(TopicCommand::Delete { name }) => client::topic_delete(&addrs, name).await,
            ClientCall::Topic(TopicCommand::AlterConfig { name, set, delete, validate_only }) => {
                client::topic_alter_config(&addrs, name, set, delete, validate_only).await
            }
            ClientCall::Topic(TopicCommand::AddPartitions { name, count, validate_only }) => {
                client::topic_add_partitions(&addrs, name, count, validate_only).await
            }
        }
    });
    match answer {
        Ok(value) => {
            let text = match client.output {
                client::Output::Json => format!("{value}\n"),
                client::Output::Text => client::text(kind, &value),
            };
            // A reader that went away (`| head`) is not an error of the command.
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

enum ClientCall {
    Status,
    Topic(TopicCommand),
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node(args) => run_node(*args),
        Command::Cluster { client, command: ClusterCommand::Status } => {
            run_client(client, "cluster", ClientCall::Status)
        }
        Command::Topic { client, command } => {
            let kind = match &command {
                TopicCommand::List => "list",
                TopicCommand::Delete { .. } => "delete",
                TopicCommand::AlterConfig { .. } => "configs",
                _ => "topic",
            };
            run_client(client, kind, ClientCall::Topic(command))
        }
        Command::Produce(args) => data::cli::run_produce(args),
        Command::Consume(args) => data::cli::run_consume(args),
        Command::Bench(command) => data::cli::run_bench(command),
        Command::Group { client, command } => group::run(client, command),
        Command::Healthcheck(args) => healthcheck::run(args),
        Command::User { client, command } => security::run_user(client, command),
        Command::Acl { client, command } => security::run_acl(client, command),
        Command::Tls(TlsCommand::Generate { dir, nodes, hosts }) => {
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()]
            } else {
                hosts
            };
            runnel_proto::tls::generate(&dir, &nodes, &hosts)?;
            println!("wrote ca.pem, ca.key and node-<id>.pem/.key for nodes {nodes:?} to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Log(LogCommand::Dump { partition_dir, records, max_batch_bytes }) => {
            if !partition_dir.is_dir() {
                anyhow::bail!("{} is not a directory", partition_dir.display());
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let summary = dump_partition(&partition_dir, &DumpOptions { records, max_batch_bytes }, &mut out)
                .with_context(|| format!("dumping {}", partition_dir.display()))?;
            out.flush()?;
            Ok(if summary.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
