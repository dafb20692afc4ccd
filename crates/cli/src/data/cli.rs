//! The command lines of `runnel produce`, `runnel consume` and `runnel bench`, and how each
//! one runs and reports.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::bench::{self, ConsumeBench, DURATION_MAX, ProduceBench};
use super::consume::{self, ConsumeOptions, PrintOptions, Start};
use super::produce::{self, Acks, ProduceOptions};
use super::router::Router;
use crate::client::{self, ClientError, Output};

/// Where to reach the cluster.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Bootstrap {
    /// Broker addresses, host:port[,host:port...]; any broker answers Metadata, the next is
    /// tried when one is down.
    #[arg(long, env = "RUNNEL_BOOTSTRAP", default_value = "127.0.0.1:50051")]
    pub(crate) bootstrap: String,
    /// The cluster CA (PEM) when its nodes serve TLS: connect over TLS, trusting it
    /// [default: plaintext].
    #[arg(long, env = "RUNNEL_TLS_CA")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) login: client::Login,
}

impl Bootstrap {
    /// `--bootstrap` and `--tls-ca`, read.
    pub(crate) fn target(&self) -> anyhow::Result<client::Target> {
        client::Target::new(&self.bootstrap, self.tls_ca.as_deref(), &self.login)
    }

    fn router(&self) -> anyhow::Result<Arc<Router>> {
        Ok(Arc::new(self.target()?.router()))
    }
}

/// `runnel produce`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProduceArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Send every record to this partition (default: by key with Kafka's murmur2
    /// partitioner; records without a key fill one partition's batch, then the next one's).
    #[arg(long)]
    pub(crate) partition: Option<u32>,
    /// Split each line at the first SEP: the part before is the key, the rest the value. A
    /// line without SEP has a null key.
    #[arg(long, value_name = "SEP")]
    pub(crate) key_separator: Option<String>,
    /// Which replicas must have a batch before it counts as acknowledged: all (in-sync
    /// replicas), 1 (the leader), 0 (none: the leader only validates it).
    #[arg(long, value_enum, default_value = "all")]
    pub(crate) acks: Acks,
    /// Largest batch, in bytes. Kafka's default (16 KiB), so that records without a key
    /// move on to the next partition every 16 KiB, as with a Kafka producer.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub(crate) batch_size: u32,
    /// How long a batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub(crate) linger_ms: u64,
    /// Idempotent appends: retries never write a record twice (the producer numbers its
    /// batches and the leader drops repeats). Default true with --acks all, which it needs.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub(crate) idempotence: Option<bool>,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

/// `runnel consume`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub(crate) partition: Option<u32>,
    /// Start at the log start offset (default: at the latest offset, i.e. only new records).
    #[arg(long, conflicts_with = "offset")]
    pub(crate) from_beginning: bool,
    /// Start at this offset (needs --partition).
    #[arg(long, requires = "partition", value_parser = clap::value_parser!(i64).range(0..))]
    pub(crate) offset: Option<i64>,
    /// Stop after this many records.
    #[arg(long)]
    pub(crate) max_messages: Option<u64>,
    /// Keep reading new records (until --max-messages or Ctrl-C); without it, stop at the
    /// high watermark each partition had at the start.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Output: the value per line (text), or one JSON object per record (json).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// With text output: print the key, then --key-separator, before the value.
    #[arg(long)]
    pub(crate) print_key: bool,
    /// What separates key and value with --print-key.
    #[arg(long, default_value = "\t", value_name = "SEP")]
    pub(crate) key_separator: String,
    #[command(flatten)]
    pub(crate) group: crate::group::GroupConsumeArgs,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

/// `runnel bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Produce records as fast as asked and report throughput and per-batch latency.
    Produce(BenchProduceArgs),
    /// Read records and report throughput.
    Consume(BenchConsumeArgs),
    /// End-to-end latency at a fixed rate, from produce to a consumer group member's poll.
    E2e(crate::e2e::E2eArgs),
}

/// `runnel bench produce`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchProduceArgs {
    /// The topic (it must exist).
    #[arg(long)]
    pub(crate) topic: String,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=(16 << 20)))]
    pub(crate) record_size: u32,
    /// How many records to send (default 100000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub(crate) num_records: Option<u64>,
    /// Send for this many seconds instead of a number of records.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) duration: Option<f64>,
    /// Target rate in records per second over all streams; -1 for as fast as possible.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub(crate) throughput: f64,
    /// Parallel produce streams (workers), each with its own share of the partitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// Requests in flight per stream.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) max_in_flight: u32,
    /// all, 1 or 0 (as for `runnel produce`).
    #[arg(long, value_enum, default_value = "all")]
    pub(crate) acks: Acks,
    /// The partitions to write, e.g. 0,2 (default: all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) partitions: Vec<u32>,
    /// Give records random keys from a keyspace of N (key-0 ... key-{N-1}), partitioned by
    /// murmur2 (default: no keys).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) keys: Option<u32>,
    /// Bytes of values per batch (at least one record per batch).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub(crate) batch_size: u32,
    /// How long a partially filled batch waits for more records, in milliseconds (the
    /// producer's default is 5). Full batches go at once either way; 0 sends a run shorter
    /// than a batch without waiting.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub(crate) linger_ms: u64,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

/// `runnel bench consume`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchConsumeArgs {
    /// The topic.
    #[arg(long)]
    pub(crate) topic: String,
    /// How many records to read (default: everything up to the high watermark at the start).
    #[arg(long)]
    pub(crate) num_records: Option<u64>,
    /// The partitions to read, e.g. 0,2 (default: all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) partitions: Vec<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub(crate) timeout: f64,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn seconds(flag: &str, s: f64) -> Result<Duration, anyhow::Error> {
    if !(s > 0.0 && s <= DURATION_MAX.as_secs_f64()) {
        anyhow::bail!("{flag} must be more than 0 and at most {} seconds", DURATION_MAX.as_secs());
    }
    Ok(Duration::from_secs_f64(s))
}

/// Runs `runnel produce`: exits 1 when a record was not acknowledged.
pub(crate) fn run_produce(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let options = ProduceOptions {
        topic: args.topic.clone(),
        partition: args.partition,
        key_separator: args.key_separator,
        acks: args.acks,
        batch_size: args.batch_size as usize,
        linger: Duration::from_millis(args.linger_ms),
        idempotence: args.idempotence.unwrap_or(args.acks == Acks::All),
        bootstrap: client::bootstrap(&args.bootstrap.bootstrap),
        tls: args.bootstrap.target()?.tls(),
        credentials: args.bootstrap.target()?.credentials(),
    };
    let summary = match runtime()?.block_on(produce::produce(options)) {
        Ok(summary) => summary,
        Err(e) => return Ok(fail(&e)),
    };
    eprintln!("produced {} records ({} acknowledged) to {}", summary.read, summary.acknowledged, args.topic);
    let mut code = ExitCode::SUCCESS;
    for (partition, outcome) in &summary.failures {
        if let Some(e) = &outcome.error {
            eprintln!("error: {e} (partition {partition}: {} records not acknowledged)", outcome.failed);
        }
        code = ExitCode::FAILURE;
    }
    if let Some(outcome) = &summary.unplaced {
        if let Some(e) = &outcome.error {
            eprintln!("error: {e} ({} records not acknowledged)", outcome.failed);
        }
        code = ExitCode::FAILURE;
    }
    if let Some(e) = &summary.input_error {
        code = fail(e);
    }
    Ok(code)
}

/// Runs `runnel consume`: exits 1 when reading stopped on an error.
pub(crate) fn run_consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let print = PrintOptions {
        output: args.output,
        print_key: args.print_key,
        key_separator: args.key_separator.clone(),
    };
    if args.group.group.is_some() {
        let target = args.bootstrap.target()?;
        return crate::group::run_group_consume(
            args.topic,
            &args.group,
            &target,
            args.from_beginning,
            args.max_messages,
            print,
        );
    }
    let start = match (args.from_beginning, args.offset) {
        (_, Some(n)) => Start::Offset(n),
        (true, None) => Start::Earliest,
        (false, None) => Start::Latest,
    };
    let options = ConsumeOptions {
        topic: args.topic.clone(),
        partition: args.partition,
        start,
        max_messages: args.max_messages,
        follow: args.follow,
        print,
    };
    let router = args.bootstrap.router()?;
    let runtime = runtime()?;
    let cancel = crate::group::cancel_on_ctrl_c(&runtime);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = runtime.block_on(consume::consume(router, options, &mut out, cancel));
    let _ = out.flush();
    match result {
        Ok(summary) => {
            eprintln!("consumed {} records from {}", summary.records, args.topic);
            Ok(summary.error.map_or(ExitCode::SUCCESS, |e| fail(&e)))
        }
        Err(e) => Ok(fail(&e)),
    }
}

/// Runs `runnel bench produce|consume`: exits 1 when records failed.
pub(crate) fn run_bench(command: BenchCommand) -> anyhow::Result<ExitCode> {
    let (report, output) = match command {
        BenchCommand::E2e(args) => return crate::e2e::run(args),
        BenchCommand::Produce(a) => {
            let duration = a.duration.map(|d| seconds("--duration", d)).transpose()?;
            if a.throughput == 0.0 || (a.throughput < 0.0 && a.throughput != -1.0) {
                anyhow::bail!("--throughput must be a positive rate or -1 (unlimited)");
            }
            let bench = ProduceBench {
                topic: a.topic,
                record_size: a.record_size as usize,
                num_records: a.num_records.unwrap_or(100_000),
                duration,
                throughput: (a.throughput > 0.0).then_some(a.throughput),
                concurrency: a.concurrency as usize,
                max_in_flight: a.max_in_flight as usize,
                acks: a.acks,
                partitions: a.partitions,
                keys: a.keys,
                batch_size: a.batch_size as usize,
                linger: Duration::from_millis(a.linger_ms),
            };
            let target = a.bootstrap.target()?;
            let router = Arc::new(target.router());
            (runtime()?.block_on(bench::produce(router, &target, bench)), a.output)
        }
        BenchCommand::Consume(a) => {
            let bench = ConsumeBench {
                topic: a.topic,
                num_records: a.num_records,
                partitions: a.partitions,
                timeout: seconds("--timeout", a.timeout)?,
            };
            let router = a.bootstrap.router()?;
            (runtime()?.block_on(bench::consume(router, bench)), a.output)
        }
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => return Ok(fail(&e)),
    };
    let text = match output {
        Output::Json => format!("{report}\n"),
        Output::Text => bench::text(&report),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    let failed = report["failed_records"].as_u64().unwrap_or(0);
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
