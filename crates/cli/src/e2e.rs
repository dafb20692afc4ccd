//! `runnel bench e2e`: end-to-end latency, from the moment a record is due to be produced to
//! the moment a consumer in a group gets it from `poll`.
//!
//! One process runs both ends, so both read one clock (`Instant`, from a common start). The
//! producer sends at a fixed rate: record `i` is due at `start + i / rate`, and its latency
//! runs from that due time, not from when it was actually sent, so a producer that falls
//! behind shows up in the figures instead of hiding them (no coordinated omission). Each
//! tick hands the records due by then to the client's `Producer` (idempotent under acks=all,
//! keyless records spread by its sticky partitioner, `--linger-ms` of batching), with up to
//! [`IN_FLIGHT_MAX`] records awaiting their acknowledgement. The consumer is a member of a fresh
//! group (`runnel-e2e-<pid>`) that has been assigned every partition, with positions at the
//! log end, before the first record is sent. Each value starts with the record's sequence
//! number and due time (16 bytes), padded to `--record-size`.
//!
//! Bounded: `--duration` is at most [`DURATION_MAX`], samples are at most one per record
//! sent, and the drain after the last send at most [`DRAIN_TIMEOUT`]. Disk: rate x size x
//! duration per replica (10,000/s of 1 KiB for 10 s is about 100 MB per replica).

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use runnel_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use runnel_client::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use serde_json::{Value, json};

use crate::client::{ClientError, Output};
use crate::data::produce::Acks;

/// Records handed to the producer and not yet acknowledged, at most.
const IN_FLIGHT_MAX: usize = 100_000;
/// How often the producer sends what is due.
const TICK: Duration = Duration::from_millis(2);
/// Longest `--duration`.
const DURATION_MAX: Duration = Duration::from_secs(600);
/// How long the consumer may take to get the last records once sending stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the consumer may take to be assigned every partition.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of the sequence number and due time at the start of each value.
const HEADER_BYTES: usize = 16;

/// `runnel bench e2e`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct E2eArgs {
    /// The topic (it must exist).
    #[arg(long)]
    topic: String,
    /// Records per second.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Bytes of each record's value (at least 16).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=(1 << 20)))]
    record_size: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    duration: f64,
    /// all, 1 or 0 (as for `runnel produce`).
    #[arg(long, value_enum, default_value = "all")]
    acks: Acks,
    /// Exactly-once appends per partition across retries [default: true with --acks all,
    /// else false].
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    idempotence: Option<bool>,
    /// How long the producer lets a batch wait for more records (Kafka's linger.ms).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
    linger_ms: u32,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    bootstrap: crate::data::cli::Bootstrap,
}

/// Runs `runnel bench e2e`: exits 1 when a record was not produced or not consumed.
pub(crate) fn run(args: E2eArgs) -> anyhow::Result<ExitCode> {
    if !(args.duration > 0.0 && args.duration <= DURATION_MAX.as_secs_f64()) {
        anyhow::bail!("--duration must be more than 0 and at most {} seconds", DURATION_MAX.as_secs());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = match runtime.block_on(e2e(&args)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let text = match args.output {
        Output::Json => format!("{report}\n"),
        Output::Text => format!(
            "{} records sent at {}/s for {} s ({} failed), {} received ({} missing); end-to-end latency ms: \
             p50 {} p99 {} p999 {} max {}\n",
            report["sent"],
            report["rate"],
            report["duration_s"],
            report["failed"],
            report["received"],
            report["missing"],
            report["latency_ms"]["p50"],
            report["latency_ms"]["p99"],
            report["latency_ms"]["p999"],
            report["latency_ms"]["max"],
        ),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    let ok = report["failed"] == 0 && report["missing"] == 0;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn e2e(args: &E2eArgs) -> Result<Value, ClientError> {
    let target = args.bootstrap.target().map_err(|e| {
        runnel_client::error::error(
            runnel_client::error::code::INVALID_REQUEST,
            "INVALID_CONFIG",
            format!("{e:#}"),
        )
    })?;
    let bootstrap = target.to_vec();
    let router = Arc::new(target.router());
    let partitions = router.partition_count(&args.topic).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let total = (f64::from(args.rate) * duration.as_secs_f64()).round() as u64;

    // The consumer first: assigned every partition, at the log end.
    let mut config = ConsumerConfig::new(bootstrap).with_group(format!("runnel-e2e-{}", std::process::id()));
    config.tls = target.tls();
    config.credentials = target.credentials();
    config.client_id = "runnel-bench-e2e".into();
    config.auto_offset_reset = OffsetReset::Latest;
    config.enable_auto_commit = false;
    config.session_timeout = Duration::from_secs(10);
    config.max_poll_records = 5_000;
    let mut consumer = Consumer::new(config)?;
    consumer.subscribe([args.topic.clone()])?;
    let joined_by = Instant::now() + JOIN_TIMEOUT;
    loop {
        let assigned = consumer.assignment();
        if assigned.len() == partitions as usize && assigned.iter().all(|tp| consumer.position(tp).is_some())
        {
            break;
        }
        if Instant::now() >= joined_by {
            return Err(ClientError::new(
                -1,
                "UNKNOWN_SERVER_ERROR",
                format!("the consumer was not assigned every partition within {JOIN_TIMEOUT:?}"),
            ));
        }
        let early = consumer.poll(Duration::from_millis(50)).await?;
        if !early.is_empty() {
            return Err(ClientError::new(
                -1,
                "UNKNOWN_SERVER_ERROR",
                "records arrived before the benchmark began",
            ));
        }
    }

    let start = Instant::now();
    let mut config = ProducerConfig::new(target.to_vec());
    config.tls = target.tls();
    config.credentials = target.credentials();
    config.client_id = "runnel-bench-e2e".into();
    config.acks = args.acks.to_client();
    config.idempotence = args.idempotence.unwrap_or(args.acks == Acks::All);
    config.linger = Duration::from_millis(u64::from(args.linger_ms));
    let client = Producer::new(config).await?;
    let producer =
        tokio::spawn(produce(client, args.topic.clone(), args.rate, args.record_size as usize, total, start));
    let mut samples: Vec<u32> = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(10_000_000));
    let mut seen: HashSet<u64> = HashSet::new();
    let mut produced: Option<(u64, u64)> = None;
    let mut producer = Some(producer);
    let mut drain_until = None;
    loop {
        for r in consumer.poll(Duration::from_millis(20)).await? {
            let now = micros(start.elapsed());
            let Some(value) = r.value.as_deref().filter(|v| v.len() >= HEADER_BYTES) else { continue };
            let seq = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
            let due = u64::from_be_bytes(value[8..16].try_into().unwrap_or_default());
            if seq < total && seen.insert(seq) {
                samples.push(u32::try_from(now.saturating_sub(due)).unwrap_or(u32::MAX));
            }
        }
        if producer.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) {
            let result = producer.take().expect("checked above").await;
            produced = Some(match result {
                Ok(counts) => counts,
                Err(e) => {
                    return Err(ClientError::new(
                        -1,
                        "UNKNOWN_SERVER_ERROR",
                        format!("the producer panicked: {e}"),
                    ));
                }
            });
            drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        if let Some((acked, _)) = produced
            && (seen.len() as u64 >= acked || drain_until.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
    }
    let _ = consumer.close().await;
    let (acked, failed) = produced.unwrap_or((0, total));
    samples.sort_unstable();
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * samples.len() as f64 - 1e-9).ceil() as usize;
        (f64::from(samples[rank.clamp(1, samples.len()) - 1]) / 1000.0 * 1000.0).round() / 1000.0
    };
    Ok(json!({
        "test": "e2e",
        "topic": args.topic,
        "rate": args.rate,
        "record_size": args.record_size,
        "duration_s": args.duration,
        "sent": acked,
        "failed": failed,
        "received": seen.len(),
        "missing": acked.saturating_sub(seen.len() as u64),
        "latency_ms": {"p50": pct(50.0), "p99": pct(99.0), "p999": pct(99.9), "max": pct(100.0)},
    }))
}

/// Sends `total` records at `rate` per second through `client`; answers (acknowledged,
/// failed).
async fn produce(
    client: Producer,
    topic: String,
    rate: u32,
    record_size: usize,
    total: u64,
    start: Instant,
) -> (u64, u64) {
    let padding = Bytes::from(vec![b'x'; record_size - HEADER_BYTES]);
    // A collector awaits the deliveries in send order; the bounded channel holds the sender
    // back once too many are outstanding.
    let (deliveries, mut answered) = tokio::sync::mpsc::channel::<DeliveryFuture>(IN_FLIGHT_MAX);
    let collector = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Some(delivery) = answered.recv().await {
            match delivery.await {
                Ok(_) => acked += 1,
                Err(e) => tracing::warn!(partition = e.partition, error = %e.error, "produce failed"),
            }
        }
        acked
    });
    let mut next = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    'send: while next < total {
        ticker.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        let due_now = ((elapsed * f64::from(rate)) as u64 + 1).min(total);
        while next < due_now {
            let due = Duration::from_secs_f64(next as f64 / f64::from(rate));
            let mut value = BytesMut::with_capacity(record_size);
            value.put_u64(next);
            value.put_u64(micros(due));
            value.extend_from_slice(&padding);
            let delivery = client.send(ProducerRecord::new(topic.clone(), value.freeze())).await;
            if deliveries.send(delivery).await.is_err() {
                break 'send; // The collector stopped (it panicked).
            }
            next += 1;
        }
    }
    drop(deliveries);
    let acked = collector.await.unwrap_or(0);
    client.close().await;
    (acked, total - acked)
}
