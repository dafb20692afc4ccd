//! Payroll: three departments send salary updates keyed by employee id, and a group of two
//! consumers applies them. Kafka's partitioner sends every update of one employee to one
//! partition, and the group gives each partition to one consumer at a time, so each
//! employee's updates are applied in the order they were sent; this example checks it.
//!
//! ```text
//! RUNNEL_BOOTSTRAP=127.0.0.1:50051 cargo run -p runnel-client --example payroll -- 600
//! ```
//!
//! The argument is the number of updates (default 300), split over the departments; the
//! example exits once every update has been applied (1 if one was applied out of order, or
//! not at all within two minutes). It creates the topic `payroll` (6 partitions) with `Admin`
//! when it is missing. Each department sends its updates through its own idempotent
//! `Producer` (acks=all, batched, several batches in flight): the Producer acknowledges a
//! partition's records in send order and never writes a record twice, even when it retries
//! through a leader change.
//!
//! Each run tags its updates with a run id, so a topic that already holds updates of earlier
//! runs is fine: the consumers (a fresh group per run, reading from the earliest offset) skip
//! them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runnel_client::ClientError;
use runnel_client::admin::{Admin, NewTopic};
use runnel_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset};
use runnel_client::producer::{Producer, ProducerConfig, ProducerRecord};

/// The topic, and its partition count when the example creates it.
pub(crate) const TOPIC: &str = "payroll";
const PARTITIONS: u32 = 6;
const DEPARTMENTS: [&str; 3] = ["engineering", "sales", "support"];
/// Employees per department.
const EMPLOYEES: u32 = 10;
/// How long the consumers may take to apply every update.
const APPLY_DEADLINE: Duration = Duration::from_secs(120);

/// What a run found.
#[derive(Debug, Default, Clone)]
pub(crate) struct Report {
    /// Updates sent (acknowledged).
    pub(crate) sent: u64,
    /// Distinct updates applied.
    pub(crate) applied: u64,
    /// Updates delivered again (at-least-once: after a rebalance past the last commit).
    pub(crate) redelivered: u64,
    /// Updates applied after a later update of the same employee: must be 0.
    pub(crate) out_of_order: u64,
    /// Updates applied by each consumer.
    pub(crate) per_consumer: [u64; 2],
    /// Each employee's final salary.
    pub(crate) salaries: HashMap<String, u64>,
}

/// The salary update `seq` of `employee`, as the value says it: `run=R seq=N salary=S`.
fn update_value(run: &str, seq: u64, salary: u64) -> String {
    format!("run={run} seq={seq} salary={salary}")
}

fn parse_value(value: &[u8]) -> Option<(String, u64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut run = None;
    let mut seq = None;
    let mut salary = None;
    for field in text.split(' ') {
        match field.split_once('=')? {
            ("run", v) => run = Some(v.to_owned()),
            ("seq", v) => seq = v.parse().ok(),
            ("salary", v) => salary = v.parse().ok(),
            _ => {}
        }
    }
    Some((run?, seq?, salary?))
}

/// Creates the topic unless it exists (replication factor 3, or the number of live brokers
/// if fewer). Another run creating it at the same moment is fine.
async fn ensure_topic(bootstrap: &[String]) -> Result<(), ClientError> {
    let admin = Admin::new(bootstrap.to_vec());
    if admin.topic_exists(TOPIC).await? {
        return Ok(());
    }
    match admin.create_topic(NewTopic::new(TOPIC, PARTITIONS)).await {
        Ok(_) => Ok(()),
        Err(e) if e.name == "TOPIC_ALREADY_EXISTS" => Ok(()),
        Err(e) => Err(e),
    }
}

/// One department: `count` updates, each for one of its employees in turn, keyed by the
/// employee id. Kafka's partitioner sends an employee's updates to one partition, and the
/// producer appends them there in the order of `send`.
async fn department(
    bootstrap: Vec<String>,
    run: String,
    dept: usize,
    count: u64,
) -> Result<u64, ClientError> {
    let mut config = ProducerConfig::new(bootstrap);
    config.client_id = format!("payroll-{}", DEPARTMENTS[dept]);
    let producer = Producer::new(config).await?;
    let mut seqs = vec![0u64; EMPLOYEES as usize];
    let mut deliveries = Vec::new();
    for i in 0..count {
        let employee = (i % u64::from(EMPLOYEES)) as usize;
        let key = format!("{}-{employee}", DEPARTMENTS[dept]);
        let seq = seqs[employee];
        seqs[employee] += 1;
        let salary = 50_000 + 1_000 * seq + employee as u64;
        let record = ProducerRecord::new(TOPIC, update_value(&run, seq, salary)).key(key);
        deliveries.push(producer.send(record).await);
    }
    let mut sent = 0;
    let mut failure = None;
    for delivery in deliveries {
        match delivery.await {
            Ok(_) => sent += 1,
            Err(e) => {
                failure.get_or_insert(e.error);
            }
        }
    }
    producer.close().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(sent),
    }
}

/// The payroll's books, shared by the two consumers.
#[derive(Debug, Default)]
struct Books {
    /// Per employee: the last sequence number applied and its salary.
    last: HashMap<String, (u64, u64)>,
    report: Report,
}

impl Books {
    /// Applies one update; at-least-once delivery may bring one again, which changes
    /// nothing.
    fn apply(&mut self, consumer: usize, record: &ConsumerRecord, run: &str) {
        let (Some(key), Some(value)) = (record.key.as_deref(), record.value.as_deref()) else { return };
        let Some((r, seq, salary)) = parse_value(value) else { return };
        if r != run {
            return;
        }
        let employee = String::from_utf8_lossy(key).into_owned();
        match self.last.get(&employee) {
            Some(&(last, _)) if seq <= last => {
                self.report.redelivered += 1;
                return;
            }
            // A gap: this update came before one sent earlier.
            Some(&(last, _)) if seq != last + 1 => self.report.out_of_order += 1,
            None if seq != 0 => self.report.out_of_order += 1,
            _ => {}
        }
        self.last.insert(employee.clone(), (seq, salary));
        self.report.salaries.insert(employee, salary);
        self.report.applied += 1;
        self.report.per_consumer[consumer] += 1;
    }
}

/// One consumer of the group: applies updates until `done`.
async fn payroll_consumer(
    bootstrap: Vec<String>,
    group: String,
    index: usize,
    run: String,
    books: Arc<Mutex<Books>>,
    done: Arc<AtomicBool>,
) -> Result<(), ClientError> {
    let mut config = ConsumerConfig::new(bootstrap).with_group(group);
    config.client_id = format!("payroll-{index}");
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = Duration::from_millis(500);
    config.session_timeout = Duration::from_secs(10);
    let mut consumer = Consumer::new(config)?;
    consumer.subscribe([TOPIC])?;
    while !done.load(Ordering::Relaxed) {
        for record in consumer.poll(Duration::from_millis(200)).await? {
            books.lock().unwrap_or_else(std::sync::PoisonError::into_inner).apply(index, &record, &run);
        }
    }
    consumer.close().await
}

/// Runs the payroll: `updates` salary updates over three departments, applied by a group
/// of two consumers, against the cluster at `bootstrap`.
pub(crate) async fn run(bootstrap: Vec<String>, updates: u64) -> Result<Report, ClientError> {
    ensure_topic(&bootstrap).await?;
    let run = format!("{}-{}", std::process::id(), unix_ms());
    let group = format!("payroll-{run}");
    let books = Arc::new(Mutex::new(Books::default()));
    let done = Arc::new(AtomicBool::new(false));
    let consumers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(payroll_consumer(
                bootstrap.clone(),
                group.clone(),
                i,
                run.clone(),
                books.clone(),
                done.clone(),
            ))
        })
        .collect();
    let per_department = updates / DEPARTMENTS.len() as u64;
    let producers: Vec<_> = (0..DEPARTMENTS.len())
        .map(|d| {
            let count = per_department + u64::from((d as u64) < updates % DEPARTMENTS.len() as u64);
            tokio::spawn(department(bootstrap.clone(), run.clone(), d, count))
        })
        .collect();
    let mut sent = 0;
    let mut failure = None;
    for p in producers {
        match p.await {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => failure = Some(e),
            Err(e) => {
                failure =
                    Some(ClientError::new(-1, "UNKNOWN_SERVER_ERROR", format!("a producer panicked: {e}")))
            }
        }
    }
    let deadline = Instant::now() + APPLY_DEADLINE;
    while failure.is_none() && Instant::now() < deadline {
        let applied = books.lock().unwrap_or_else(std::sync::PoisonError::into_inner).report.applied;
        if applied >= sent || consumers.iter().any(|c| c.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    for c in consumers {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(ClientError::new(
                    -1,
                    "UNKNOWN_SERVER_ERROR",
                    format!("a consumer panicked: {e}"),
                ));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut report = books.lock().unwrap_or_else(std::sync::PoisonError::into_inner).report.clone();
    report.sent = sent;
    Ok(report)
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let bootstrap: Vec<String> = std::env::var("RUNNEL_BOOTSTRAP")
        .unwrap_or_else(|_| "127.0.0.1:50051".to_owned())
        .split(',')
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    let updates = match std::env::args().nth(1).map(|a| a.parse::<u64>()) {
        None => 300,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: payroll [UPDATES (a positive number, default 300)]");
            return std::process::ExitCode::from(2);
        }
    };
    match run(bootstrap, updates).await {
        Ok(report) => {
            println!(
                "sent {} updates; applied {} (consumer 0: {}, consumer 1: {}); redelivered {}; out of order {}",
                report.sent,
                report.applied,
                report.per_consumer[0],
                report.per_consumer[1],
                report.redelivered,
                report.out_of_order
            );
            if report.out_of_order > 0 || report.applied < report.sent {
                eprintln!("error: updates were applied out of order or not at all");
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
