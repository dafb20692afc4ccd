//! The client commands (`runnel cluster ...`, `runnel topic ...`) over the controller's gRPC
//! API. Any controller voter answers (followers forward to the leader); the bootstrap list
//! is tried in order when one cannot be reached, and a NOT_CONTROLLER answer's
//! `runnel-leader` hint is followed once.
//!
//! JSON output (`--output json`) is one object per command, documented in the README; fields
//! are only ever added.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

/// Deadline of one call (a write waits up to the controller's own 5 s write timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// Deadline of asking one voter about itself in `cluster status` (a paused voter must not
/// hold the command up for long).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to try connecting to one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `topic create` without `--replication-factor`: 3, or the number of live brokers if fewer.
const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// Largest answer accepted.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How the answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// One JSON object, for scripts.
    Json,
}

/// Where to reach the cluster and how to print.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// Controller addresses, host:port[,host:port...]; the next is tried when one is down.
    #[arg(long, global = true, env = "RUNNEL_BOOTSTRAP", default_value = "127.0.0.1:50051")]
    pub(crate) bootstrap: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

pub(crate) use runnel_client::{ClientError, unreachable};

fn connect(addr: &str, timeout: Duration) -> Result<ControllerServiceClient<Channel>, tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .connect_lazy();
    Ok(ControllerServiceClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX))
}

/// Calls `call` on the bootstrap addresses in turn until one answers.
macro_rules! call {
    ($addrs:expr, $method:ident, $request:expr) => {
        call!($addrs, $method, $request, CALL_TIMEOUT)
    };
    ($addrs:expr, $method:ident, $request:expr, $timeout:expr) => {{
        let mut addrs: Vec<String> = $addrs.clone();
        let mut last = tonic::Status::unavailable("no bootstrap address");
        let mut followed = false;
        let mut i = 0;
        loop {
            let Some(addr) = addrs.get(i).cloned() else { break Err(last) };
            i += 1;
            let answer = match connect(&addr, $timeout) {
                Ok(mut client) => client.$method($request.clone()).await,
                Err(status) => Err(status),
            };
            match answer {
                Ok(response) => break Ok(response.into_inner()),
                Err(status) if unreachable(&status) => {
                    last = tonic::Status::unavailable(format!("{addr}: {}", status.message()));
                }
                Err(status) => {
                    let hint = status.metadata().get("runnel-leader").and_then(|v| v.to_str().ok());
                    match hint {
                        Some(leader) if !followed => {
                            followed = true;
                            addrs.insert(i, leader.to_owned());
                            last = status;
                        }
                        _ => break Err(status),
                    }
                }
            }
        }
    }};
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `--bootstrap`.
pub(crate) fn bootstrap(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
}

/// `runnel cluster status`.
pub(crate) async fn cluster_status(addrs: &[String]) -> Result<Value, ClientError> {
    let addrs = addrs.to_vec();
    let cluster: pb::DescribeClusterResponse =
        call!(addrs, describe_cluster, pb::DescribeClusterRequest {}, PROBE_TIMEOUT)?;
    // Each voter knows its own term and indexes exactly: ask each one.
    let mut voters = Vec::new();
    for voter in &cluster.voters {
        let own: Result<pb::DescribeClusterResponse, _> = call!(
            vec![voter.address.clone()],
            describe_cluster,
            pb::DescribeClusterRequest {},
            PROBE_TIMEOUT
        );
        let own = own.ok().and_then(|c| c.voters.into_iter().find(|v| v.node_id == voter.node_id));
        voters.push(json!({
            "id": voter.node_id,
            "address": voter.address,
            "reachable": own.is_some(),
            "is_leader": voter.node_id == cluster.leader_id,
            "term": own.as_ref().map(|v| v.term),
            "last_log_index": own.as_ref().map(|v| v.matched_index),
            "applied_index": own.as_ref().map(|v| v.applied_index),
        }));
    }
    let brokers: Vec<Value> = cluster
        .brokers
        .iter()
        .map(|b| {
            let e = b.endpoints.clone().unwrap_or_default();
            json!({"id": b.broker_id, "epoch": b.broker_epoch, "fenced": b.fenced,
                   "grpc": e.grpc, "kafka": e.kafka, "http": e.http})
        })
        .collect();
    Ok(json!({
        "leader_id": (cluster.leader_id != 0).then_some(cluster.leader_id),
        "leader_address": (!cluster.leader_address.is_empty()).then_some(cluster.leader_address),
        "answered_by": cluster.answered_by,
        "metadata_version": cluster.metadata_version,
        "voters": voters,
        "brokers": brokers,
    }))
}

fn topic_json(topic: &pb::TopicInfo) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|p| {
            json!({"partition": p.partition, "leader": (p.leader >= 0).then_some(p.leader),
                   "replicas": p.replicas, "isr": p.isr, "leader_epoch": p.leader_epoch,
                   "partition_epoch": p.partition_epoch})
        })
        .collect();
    let configs: BTreeMap<&String, &String> = topic.configs.iter().collect();
    json!({"name": topic.name, "topic_id": hex(&topic.topic_id), "configs": configs, "partitions": partitions})
}

/// `runnel topic create`.
pub(crate) async fn topic_create(
    addrs: &[String],
    name: String,
    partitions: u32,
    replication_factor: Option<u32>,
    configs: Vec<(String, String)>,
) -> Result<Value, ClientError> {
    let addrs = addrs.to_vec();
    let replication_factor = match replication_factor {
        Some(rf) => rf,
        None => {
            // Kafka's usual production default, capped by what the cluster can place.
            let cluster: pb::DescribeClusterResponse =
                call!(addrs, describe_cluster, pb::DescribeClusterRequest {})?;
            let live = cluster.brokers.iter().filter(|b| !b.fenced).count() as u32;
            DEFAULT_REPLICATION_FACTOR.min(live.max(1))
        }
    };
    let request = pb::CreateTopicRequest {
        name,
        partitions,
        replication_factor,
        configs: configs.into_iter().collect(),
    };
    let created: pb::CreateTopicResponse = call!(addrs, create_topic, request)?;
    Ok(created.topic.as_ref().map(topic_json).unwrap_or(Value::Null))
}

/// `runnel topic describe`.
pub(crate) async fn topic_describe(addrs: &[String], name: String) -> Result<Value, ClientError> {
    let addrs = addrs.to_vec();
    let request = pb::DescribeTopicRequest { name };
    let described: pb::DescribeTopicResponse = call!(addrs, describe_topic, request)?;
    Ok(described.topic.as_ref().map(topic_json).unwrap_or(Value::Null))
}

/// `runnel topic list`.
pub(crate) async fn topic_list(addrs: &[String]) -> Result<Value, ClientError> {
    let addrs = addrs.to_vec();
    let listed: pb::ListTopicsResponse = call!(addrs, list_topics, pb::ListTopicsRequest {})?;
    let topics: Vec<Value> = listed
        .topics
        .iter()
        .map(|t| {
            json!({"name": t.name, "topic_id": hex(&t.topic_id), "partitions": t.partitions,
                   "replication_factor": t.replication_factor})
        })
        .collect();
    Ok(json!({ "topics": topics }))
}

/// `runnel topic delete`.
pub(crate) async fn topic_delete(addrs: &[String], name: String) -> Result<Value, ClientError> {
    let addrs = addrs.to_vec();
    let request = pb::DeleteTopicRequest { name: name.clone() };
    let deleted: pb::DeleteTopicResponse = call!(addrs, delete_topic, request)?;
    Ok(json!({"deleted": name, "topic_id": hex(&deleted.topic_id)}))
}

fn opt(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value.as_array().map(|a| a.iter().map(opt).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

/// The text form of a command's answer.
pub(crate) fn text(kind: &str, value: &Value) -> String {
    let mut out = String::new();
    match kind {
        "cluster" => {
            out += &format!(
                "controller leader: {} ({})  answered by {}, metadata version {}\n",
                opt(&value["leader_id"]),
                opt(&value["leader_address"]),
                value["answered_by"],
                value["metadata_version"]
            );
            out += "voters:\n  ID  ADDRESS                LEADER  TERM  LAST_LOG  APPLIED\n";
            for v in value["voters"].as_array().into_iter().flatten() {
                let reachable = v["reachable"].as_bool().unwrap_or(false);
                out += &format!(
                    "  {:<3} {:<22} {:<7} {:<5} {:<9} {}{}\n",
                    opt(&v["id"]),
                    opt(&v["address"]),
                    if v["is_leader"].as_bool().unwrap_or(false) { "yes" } else { "no" },
                    opt(&v["term"]),
                    opt(&v["last_log_index"]),
                    opt(&v["applied_index"]),
                    if reachable { "" } else { "  (unreachable)" }
                );
            }
            out += "brokers:\n  ID  EPOCH  FENCED  GRPC\n";
            for b in value["brokers"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:<3} {:<6} {:<7} {}\n",
                    opt(&b["id"]),
                    opt(&b["epoch"]),
                    opt(&b["fenced"]),
                    opt(&b["grpc"])
                );
            }
        }
        "topic" => {
            out += &format!("topic {} (id {})\n", opt(&value["name"]), opt(&value["topic_id"]));
            if let Some(configs) = value["configs"].as_object().filter(|c| !c.is_empty()) {
                for (k, v) in configs {
                    out += &format!("  config {k}={}\n", opt(v));
                }
            }
            let rows: Vec<[String; 5]> = value["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    [
                        opt(&p["partition"]),
                        opt(&p["leader"]),
                        list(&p["replicas"]),
                        list(&p["isr"]),
                        p["leader_epoch"].to_string(),
                    ]
                })
                .collect();
            let header = ["PARTITION", "LEADER", "REPLICAS", "ISR", "LEADER_EPOCH"];
            let width =
                |i: usize| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0);
            let widths: Vec<usize> = (0..5).map(width).collect();
            for row in std::iter::once(header.map(String::from)).chain(rows) {
                let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                out += &format!("  {}\n", cells.join("  ").trim_end());
            }
        }
        "list" => {
            for t in value["topics"].as_array().into_iter().flatten() {
                out += &format!(
                    "{}  partitions={} replication_factor={}\n",
                    opt(&t["name"]),
                    t["partitions"],
                    t["replication_factor"]
                );
            }
        }
        _ => out += &format!("deleted topic {}\n", opt(&value["deleted"])),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_named_errors() {
        let mut status = tonic::Status::already_exists("topic t exists");
        status.metadata_mut().insert("runnel-error-code", "36".parse().unwrap());
        status.metadata_mut().insert("runnel-error-name", "TOPIC_ALREADY_EXISTS".parse().unwrap());
        assert_eq!(ClientError::from(status).to_string(), "TOPIC_ALREADY_EXISTS (36): topic t exists");
        let down = tonic::Status::unavailable("connection refused");
        assert!(unreachable(&down));
        assert_eq!(ClientError::from(down).to_string(), "NETWORK_EXCEPTION (13): connection refused");
        assert_eq!(bootstrap(" a:1, b:2,"), ["a:1", "b:2"]);
    }
}
