//! Consumer groups on the command line: `runnel consume --group G` (a member of G that
//! prints what it is assigned and commits as it goes) and `runnel group list | describe |
//! reset-offsets`, over the brokers' GroupService (`proto/runnel/v1/group.proto`).
//!
//! JSON output (`--output json`) is one object per command, documented in the README; fields
//! are only ever added.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runnel_client::consumer::{Consumer, ConsumerConfig, OffsetReset, TopicPartition};
use runnel_client::error::{code, error};
use runnel_client::fetch::list_offset;
use runnel_client::membership::from_pb;
use runnel_client::router::Router;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::Record;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientArgs, ClientError, Output};
use crate::data::consume::{PrintOptions, write_record};

/// Deadline of one ListGroups call to one broker.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one DescribeGroup or ResetOffsets attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll of `consume --group` waits before it checks for Ctrl-C again.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// `runnel group ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum GroupCommand {
    /// Every group, from every broker's ListGroups.
    List,
    /// A group's state, members with their owned and target partitions, and per partition
    /// its committed offset, log end offset and lag.
    Describe {
        /// The group id.
        group: String,
    },
    /// Sets a group's committed offsets for a topic; refused (NON_EMPTY_GROUP) while the
    /// group has members.
    ResetOffsets(ResetArgs),
}

/// `runnel group reset-offsets`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).multiple(false)))]
pub(crate) struct ResetArgs {
    /// The group id.
    group: String,
    /// The topic whose offsets are reset.
    #[arg(long)]
    topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    partition: Option<u32>,
    /// To each partition's log start offset.
    #[arg(long, group = "to")]
    to_earliest: bool,
    /// To each partition's high watermark (skip everything there is now).
    #[arg(long, group = "to")]
    to_latest: bool,
    /// To this offset (clamped into each partition's range).
    #[arg(long, group = "to", value_parser = clap::value_parser!(i64).range(0..))]
    to_offset: Option<i64>,
}

/// The group flags of `runnel consume`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GroupConsumeArgs {
    /// Consume as a member of this group: partitions are assigned by the group's
    /// coordinator, reading starts at the committed offsets, and positions are committed
    /// (every --auto-commit-interval-ms, before a partition is given up, and at exit). Runs
    /// until --max-messages, Ctrl-C or SIGTERM.
    #[arg(long, conflicts_with_all = ["partition", "offset", "follow"])]
    pub(crate) group: Option<String>,
    /// How long the coordinator waits for a heartbeat before giving this member's
    /// partitions to the others.
    #[arg(long, default_value_t = 45_000, requires = "group", value_parser = clap::value_parser!(u32).range(1000..=1_800_000))]
    pub(crate) session_timeout_ms: u32,
    /// How often positions are committed.
    #[arg(long, default_value_t = 5000, requires = "group", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) auto_commit_interval_ms: u64,
    /// The member's client id, shown by `runnel group describe`.
    #[arg(long, default_value = "runnel-cli", requires = "group")]
    pub(crate) client_id: String,
}

/// A token cancelled on Ctrl-C (SIGINT) or SIGTERM, so that a consumer stopped either way
/// commits and leaves its group.
pub(crate) fn cancel_on_ctrl_c(runtime: &tokio::runtime::Runtime) -> CancellationToken {
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    runtime.spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_err() { return },
            () = terminate => {}
        }
        on_interrupt.cancel();
    });
    cancel
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// `runnel consume TOPIC --group G`: prints records until --max-messages, Ctrl-C or SIGTERM, then
/// commits and leaves the group. Exits 1 on an error.
pub(crate) fn run_group_consume(
    topic: String,
    group: &GroupConsumeArgs,
    target: &client::Target,
    from_beginning: bool,
    max_messages: Option<u64>,
    print: PrintOptions,
) -> anyhow::Result<ExitCode> {
    let Some(group_id) = group.group.clone() else { anyhow::bail!("--group is required") };
    let mut config = ConsumerConfig::new(target.to_vec()).with_group(group_id);
    config.tls = target.tls();
    config.credentials = target.credentials();
    config.client_id = group.client_id.clone();
    config.auto_offset_reset = if from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    config.session_timeout = Duration::from_millis(u64::from(group.session_timeout_ms));
    config.auto_commit_interval = Duration::from_millis(group.auto_commit_interval_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cancel = cancel_on_ctrl_c(&runtime);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = runtime.block_on(async {
        let mut consumer = Consumer::new(config)?;
        consumer.subscribe([topic.clone()])?;
        let limit = max_messages.unwrap_or(u64::MAX);
        let mut printed = 0u64;
        let mut failure = None;
        'poll: while printed < limit && !cancel.is_cancelled() {
            let records = tokio::select! {
                () = cancel.cancelled() => break,
                records = consumer.poll(POLL_WAIT) => records,
            };
            let records = match records {
                Ok(records) => records,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            for r in records {
                if printed >= limit {
                    // Not printed, so not processed: the next member starts here.
                    let tp = r.topic_partition();
                    consumer.seek(&tp, r.offset)?;
                    break;
                }
                let record = Record {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                };
                if let Err(e) = write_record(&mut out, &r.topic, r.partition, &record, &print) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        failure = Some(error(-1, "UNKNOWN_SERVER_ERROR", format!("writing stdout: {e}")));
                    }
                    break 'poll;
                }
                printed += 1;
            }
            // Printed (and flushed) before the next poll, whose auto-commit counts them as
            // processed.
            if let Err(e) = out.flush() {
                failure = Some(error(-1, "UNKNOWN_SERVER_ERROR", format!("writing stdout: {e}")));
                break;
            }
        }
        let closed = consumer.close().await;
        match (failure, closed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(printed),
        }
    });
    let _ = out.flush();
    match result {
        Ok(n) => {
            eprintln!("consumed {n} records from {topic}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(&e)),
    }
}

/// Runs `runnel group ...`.
pub(crate) fn run(client: ClientArgs, command: GroupCommand) -> anyhow::Result<ExitCode> {
    let addrs = client.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(async {
        match command {
            GroupCommand::List => list(&addrs).await,
            GroupCommand::Describe { group } => describe(&addrs, &group).await,
            GroupCommand::ResetOffsets(a) => {
                let to = match (a.to_earliest, a.to_latest, a.to_offset) {
                    (_, _, Some(n)) => To::Offset(n),
                    (_, true, None) => To::Latest,
                    _ => To::Earliest,
                };
                reset_offsets(&addrs, &a.group, &a.topic, a.partition, to).await
            }
        }
    });
    let value = match answer {
        Ok(value) => value,
        Err(e) => return Ok(fail(&e)),
    };
    let text = match client.output {
        Output::Json => format!("{value}\n"),
        Output::Text => text(&value),
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The brokers' gRPC addresses, from the first bootstrap address that answers Metadata.
async fn brokers(router: &Router, addrs: &client::Target) -> Result<Vec<(u32, String)>, ClientError> {
    let mut last = error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", "no bootstrap address");
    for addr in addrs.iter() {
        let mut c = router.client(addr)?;
        match tokio::time::timeout(LIST_TIMEOUT, c.metadata(pb::MetadataRequest { topics: Vec::new() })).await
        {
            Ok(Ok(answer)) if !answer.get_ref().brokers.is_empty() => {
                let mut brokers: Vec<(u32, String)> =
                    answer.into_inner().brokers.into_iter().map(|b| (b.broker_id, b.grpc)).collect();
                brokers.sort();
                return Ok(brokers);
            }
            Ok(Ok(_)) => {
                last = error(
                    code::LEADER_NOT_AVAILABLE,
                    "LEADER_NOT_AVAILABLE",
                    format!("{addr} has no metadata yet"),
                )
            }
            Ok(Err(status)) => last = ClientError::from(status),
            Err(_) => {
                last =
                    error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", format!("{addr}: Metadata timed out"))
            }
        }
    }
    Err(last)
}

/// `runnel group list`: every broker's ListGroups, merged. A broker that does not answer is
/// listed under `unreachable` (its groups may be missing).
async fn list(addrs: &client::Target) -> Result<Value, ClientError> {
    let router = addrs.router();
    let brokers = brokers(&router, addrs).await?;
    let lookup = addrs.coordinator("");
    let mut groups: BTreeMap<String, Value> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for (id, addr) in &brokers {
        let mut c = lookup.client(addr)?;
        match tokio::time::timeout(LIST_TIMEOUT, c.list_groups(pb::ListGroupsRequest {})).await {
            Ok(Ok(answer)) => {
                for g in answer.into_inner().groups {
                    // During a coordinator move two brokers may both list a group: keep the
                    // one with members.
                    let keep = groups
                        .get(&g.group_id)
                        .is_none_or(|v| v["members"].as_u64() < Some(u64::from(g.member_count)));
                    if keep {
                        groups.insert(
                            g.group_id.clone(),
                            json!({"group_id": g.group_id, "state": g.state, "members": g.member_count, "coordinator": id}),
                        );
                    }
                }
            }
            Ok(Err(status)) => {
                unreachable.push(json!({"broker": id, "error": ClientError::from(status).to_string()}))
            }
            Err(_) => unreachable.push(json!({"broker": id, "error": "ListGroups timed out"})),
        }
    }
    Ok(
        json!({"kind": "group_list", "groups": groups.into_values().collect::<Vec<_>>(), "unreachable": unreachable}),
    )
}

fn partitions_json(list: &[pb::TopicPartitions]) -> Value {
    Value::Array(
        from_pb(list).iter().map(|tp| json!({"topic": tp.topic, "partition": tp.partition})).collect(),
    )
}

/// `runnel group describe G`.
async fn describe(addrs: &client::Target, group: &str) -> Result<Value, ClientError> {
    let coordinator = addrs.coordinator(group);
    let request = pb::DescribeGroupRequest { group_id: group.to_owned() };
    let d = coordinator
        .call(CALL_TIMEOUT, |mut c| {
            let request = request.clone();
            async move { c.describe_group(request).await.map(tonic::Response::into_inner) }
        })
        .await?;
    let router = Arc::new(addrs.router());
    // Every partition of a subscribed or committed topic, with its committed offset and
    // owner.
    let mut topics: BTreeSet<String> = d.offsets.iter().map(|o| o.topic.clone()).collect();
    for m in &d.members {
        topics.extend(m.subscribed_topics.iter().cloned());
    }
    let mut owners: BTreeMap<TopicPartition, &str> = BTreeMap::new();
    for m in &d.members {
        for tp in from_pb(&m.assignment) {
            owners.insert(tp, &m.member_id);
        }
    }
    let committed: BTreeMap<TopicPartition, i64> =
        d.offsets.iter().map(|o| (TopicPartition::new(o.topic.clone(), o.partition), o.offset)).collect();
    let mut partitions = Vec::new();
    for topic in &topics {
        let count = match router.partition_count(topic).await {
            Ok(n) => n,
            // A committed offset of a deleted topic: show what the group has.
            Err(_) => {
                committed.keys().filter(|tp| &tp.topic == topic).map(|tp| tp.partition + 1).max().unwrap_or(0)
            }
        };
        for p in 0..count {
            let tp = TopicPartition::new(topic.clone(), p);
            let offset = committed.get(&tp).copied().filter(|&o| o >= 0);
            let log_end = list_offset(&router, topic, p, pb::OffsetSpec::Latest).await.ok();
            let lag = match (offset, log_end) {
                (Some(c), Some(end)) => Some((end - c).max(0)),
                (None, Some(end)) => Some(end),
                _ => None,
            };
            partitions.push(json!({
                "topic": topic, "partition": p, "committed": offset, "log_end": log_end, "lag": lag,
                "owner": owners.get(&tp),
            }));
        }
    }
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                "member_epoch": m.member_epoch, "subscribed_topics": m.subscribed_topics,
                "assignment": partitions_json(&m.assignment),
                "target_assignment": partitions_json(&m.target_assignment),
            })
        })
        .collect();
    Ok(json!({
        "kind": "group", "group_id": d.group_id, "state": d.state, "group_epoch": d.group_epoch,
        "assignor": d.assignor, "coordinator": d.coordinator, "members": members, "partitions": partitions,
    }))
}

/// Where `reset-offsets` moves a group.
#[derive(Debug, Clone, Copy)]
enum To {
    Earliest,
    Latest,
    Offset(i64),
}

/// `runnel group reset-offsets G --topic T --to-...`.
async fn reset_offsets(
    addrs: &client::Target,
    group: &str,
    topic: &str,
    partition: Option<u32>,
    to: To,
) -> Result<Value, ClientError> {
    let router = addrs.router();
    let partitions = crate::data::consume::partitions_to_read(&router, topic, partition).await?;
    let mut offsets = Vec::new();
    for p in partitions {
        let earliest = list_offset(&router, topic, p, pb::OffsetSpec::Earliest).await?;
        let latest = list_offset(&router, topic, p, pb::OffsetSpec::Latest).await?;
        let offset = match to {
            To::Earliest => earliest,
            To::Latest => latest,
            To::Offset(n) => n.clamp(earliest, latest),
        };
        offsets.push(pb::OffsetCommitPartition {
            topic: topic.to_owned(),
            partition: p,
            offset,
            metadata: String::new(),
        });
    }
    let coordinator = addrs.coordinator(group);
    let request = pb::ResetOffsetsRequest { group_id: group.to_owned(), offsets: offsets.clone() };
    coordinator
        .call(CALL_TIMEOUT, |mut c| {
            let request = request.clone();
            async move { c.reset_offsets(request).await.map(|_| ()) }
        })
        .await?;
    let offsets: Vec<Value> = offsets
        .iter()
        .map(|o| json!({"topic": o.topic, "partition": o.partition, "offset": o.offset}))
        .collect();
    Ok(json!({"kind": "group_reset", "group_id": group, "offsets": offsets}))
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn tps_text(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|tp| format!("{}-{}", opt(&tp["topic"]), opt(&tp["partition"])))
        .collect();
    if parts.is_empty() { "-".to_owned() } else { parts.join(",") }
}

/// The text form of a `group` command's answer.
fn text(value: &Value) -> String {
    let mut out = String::new();
    match value["kind"].as_str() {
        Some("group_list") => {
            out += &format!("{:<32} {:<12} {:<8} {}\n", "GROUP", "STATE", "MEMBERS", "COORDINATOR");
            for g in value["groups"].as_array().into_iter().flatten() {
                out += &format!(
                    "{:<32} {:<12} {:<8} {}\n",
                    opt(&g["group_id"]),
                    opt(&g["state"]),
                    opt(&g["members"]),
                    opt(&g["coordinator"])
                );
            }
            for u in value["unreachable"].as_array().into_iter().flatten() {
                out += &format!("(broker {} did not answer: {})\n", opt(&u["broker"]), opt(&u["error"]));
            }
        }
        Some("group") => {
            out += &format!(
                "group {}  state {}  epoch {}  assignor {}  coordinator {}\n",
                opt(&value["group_id"]),
                opt(&value["state"]),
                opt(&value["group_epoch"]),
                opt(&value["assignor"]),
                opt(&value["coordinator"])
            );
            out +=
                "members:\n  MEMBER                                 CLIENT           EPOCH  OWNED / TARGET\n";
            for m in value["members"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:<38} {:<16} {:<6} {} / {}\n",
                    opt(&m["member_id"]),
                    opt(&m["client_id"]),
                    opt(&m["member_epoch"]),
                    tps_text(&m["assignment"]),
                    tps_text(&m["target_assignment"])
                );
            }
            out += "partitions:\n  TOPIC                PARTITION  COMMITTED  LOG-END  LAG      OWNER\n";
            for p in value["partitions"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:<20} {:<10} {:<10} {:<8} {:<8} {}\n",
                    opt(&p["topic"]),
                    opt(&p["partition"]),
                    opt(&p["committed"]),
                    opt(&p["log_end"]),
                    opt(&p["lag"]),
                    opt(&p["owner"])
                );
            }
        }
        _ => {
            out += &format!("group {}: committed offsets reset\n", opt(&value["group_id"]));
            for o in value["offsets"].as_array().into_iter().flatten() {
                out += &format!("  {}-{}  {}\n", opt(&o["topic"]), opt(&o["partition"]), opt(&o["offset"]));
            }
        }
    }
    out
}
