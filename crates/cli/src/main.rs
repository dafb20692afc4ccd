//! `runnel`: one binary for a Runnel node and its command-line client.
//!
//! This crate is the composition root: it parses the command line and wires the library
//! crates together: `runnel node` runs a node, the other commands are operator tools.

mod node;

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
    /// http=<addr>` once the gRPC listener is bound; SIGTERM or SIGINT stops it cleanly.
    Node(Box<node::NodeArgs>),
    /// Inspect partition logs on disk.
    #[command(subcommand)]
    Log(LogCommand),
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

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node(_) => unreachable!("handled by run_node"),
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
