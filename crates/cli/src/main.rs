//! `runnel`: one binary for a Runnel node and its command-line client.
//!
//! This crate is the composition root: it parses the command line and wires the library
//! crates together. Today it carries the operator tools for the partition log.

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
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
