//! The client commands (`runnel cluster ...`, `runnel topic ...`), through the client crate's
//! [`Admin`] (any controller voter answers; the bootstrap list is tried in order when one
//! cannot be reached, and a NOT_CONTROLLER answer's `runnel-leader` hint is followed once).
//!
//! JSON output (`--output json`) is one object per command, documented in the README; fields
//! are only ever added.

use std::time::Duration;

use runnel_client::admin::{Admin, NewTopic, TopicDescription};
use serde_json::{Value, json};

/// Deadline of asking one voter about itself in `cluster status` (a paused voter must not
/// hold the command up for long).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The cluster CA (PEM) when its nodes serve TLS (`runnel node --tls-ca`): connect over
    /// TLS, trusting it [default: plaintext].
    #[arg(long, global = true, env = "RUNNEL_TLS_CA")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) login: Login,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

impl ClientArgs {
    /// `--bootstrap`, `--tls-ca` and the credentials, read.
    pub(crate) fn target(&self) -> anyhow::Result<Target> {
        Target::new(&self.bootstrap, self.tls_ca.as_deref(), &self.login)
    }
}

/// Who the command authenticates as, on a cluster started with `--auth`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Login {
    /// The user to authenticate as (a cluster with --auth) [default: none].
    #[arg(long, global = true, env = "RUNNEL_USER", requires = "password")]
    pub(crate) user: Option<String>,
    /// Its password; prefer the RUNNEL_PASSWORD environment variable to the flag, which
    /// other users of the host can see.
    #[arg(long, global = true, env = "RUNNEL_PASSWORD", hide_env_values = true, requires = "user")]
    pub(crate) password: Option<String>,
}

impl Login {
    /// The credentials to send.
    pub(crate) fn credentials(&self) -> anyhow::Result<runnel_proto::security::Credentials> {
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => runnel_proto::security::Credentials::basic(user, password)
                .map_err(|e| anyhow::anyhow!("--user: {e}")),
            _ => Ok(runnel_proto::security::Credentials::none()),
        }
    }
}

/// Where the cluster is and how to reach it: the bootstrap addresses and, with TLS, the CA
/// to trust. Derefs to the addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    addrs: Vec<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    credentials: runnel_proto::security::Credentials,
}

impl Target {
    /// `bootstrap` (`host:port[,...]`), over TLS trusting the CA in `tls_ca` when given.
    pub(crate) fn new(
        bootstrap: &str,
        tls_ca: Option<&std::path::Path>,
        login: &Login,
    ) -> anyhow::Result<Target> {
        let tls = match tls_ca {
            Some(path) => {
                let pem = anyhow::Context::with_context(std::fs::read(path), || {
                    format!("reading --tls-ca {}", path.display())
                })?;
                Some(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
            }
            None => None,
        };
        Ok(Target { addrs: self::bootstrap(bootstrap), tls, credentials: login.credentials()? })
    }

    /// The credentials sent with every call.
    pub(crate) fn credentials(&self) -> runnel_proto::security::Credentials {
        self.credentials.clone()
    }

    /// The TLS to use (the CA to trust), if any.
    pub(crate) fn tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.tls.clone()
    }

    /// An admin client of the controllers.
    pub(crate) fn admin(&self) -> Admin {
        Admin::new(self.addrs.clone()).with_tls(self.tls.clone()).with_credentials(self.credentials.clone())
    }

    /// A router over the brokers.
    pub(crate) fn router(&self) -> runnel_client::router::Router {
        runnel_client::router::Router::new(self.addrs.clone())
            .with_tls(self.tls.clone())
            .with_credentials(self.credentials.clone())
    }

    /// Group `group`'s coordinator.
    pub(crate) fn coordinator(&self, group: &str) -> runnel_client::coordinator::Coordinator {
        runnel_client::coordinator::Coordinator::new(self.addrs.clone(), group)
            .with_tls(self.tls.clone())
            .with_credentials(self.credentials.clone())
    }
}

impl std::ops::Deref for Target {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.addrs
    }
}

pub(crate) use runnel_client::ClientError;

/// Parses `--bootstrap`.
pub(crate) fn bootstrap(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
}

/// `runnel cluster status`.
pub(crate) async fn cluster_status(addrs: &Target) -> Result<Value, ClientError> {
    let admin = addrs.admin();
    let cluster = admin.describe_cluster_at(addrs, PROBE_TIMEOUT).await?;
    // Each voter knows its own term and indexes exactly: ask each one.
    let mut voters = Vec::new();
    for voter in &cluster.voters {
        let own = admin.describe_cluster_at(std::slice::from_ref(&voter.address), PROBE_TIMEOUT).await;
        let own = own.ok().and_then(|c| c.voters.into_iter().find(|v| v.id == voter.id));
        voters.push(json!({
            "id": voter.id,
            "address": voter.address,
            "reachable": own.is_some(),
            "is_leader": Some(voter.id) == cluster.leader_id,
            "term": own.as_ref().map(|v| v.term),
            "last_log_index": own.as_ref().map(|v| v.matched_index),
            "applied_index": own.as_ref().map(|v| v.applied_index),
        }));
    }
    let brokers: Vec<Value> = cluster
        .brokers
        .iter()
        .map(|b| {
            json!({"id": b.id, "epoch": b.epoch, "fenced": b.fenced,
                   "grpc": b.grpc, "kafka": b.kafka, "http": b.http})
        })
        .collect();
    Ok(json!({
        "leader_id": cluster.leader_id,
        "leader_address": cluster.leader_address,
        "answered_by": cluster.answered_by,
        "metadata_version": cluster.metadata_version,
        "voters": voters,
        "brokers": brokers,
    }))
}

fn topic_json(topic: &TopicDescription) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|p| {
            json!({"partition": p.partition, "leader": p.leader,
                   "replicas": p.replicas, "isr": p.isr, "leader_epoch": p.leader_epoch,
                   "partition_epoch": p.partition_epoch})
        })
        .collect();
    json!({"name": topic.name, "topic_id": topic.id.to_string(), "configs": topic.configs,
           "partitions": partitions})
}

/// `runnel topic create`.
pub(crate) async fn topic_create(
    addrs: &Target,
    name: String,
    partitions: u32,
    replication_factor: Option<u32>,
    configs: Vec<(String, String)>,
) -> Result<Value, ClientError> {
    let topic = NewTopic { name, partitions, replication_factor, configs: configs.into_iter().collect() };
    let created = addrs.admin().create_topic(topic).await?;
    Ok(topic_json(&created))
}

/// `runnel topic alter-config`.
pub(crate) async fn topic_alter_config(
    addrs: &Target,
    name: String,
    set: Vec<(String, String)>,
    delete: Vec<String>,
    validate_only: bool,
) -> Result<Value, ClientError> {
    let configs =
        addrs.admin().alter_topic_config(&name, set.into_iter().collect(), delete, validate_only).await?;
    Ok(json!({"name": name, "configs": configs, "validate_only": validate_only}))
}

/// `runnel topic add-partitions`.
pub(crate) async fn topic_add_partitions(
    addrs: &Target,
    name: String,
    count: u32,
    validate_only: bool,
) -> Result<Value, ClientError> {
    let grown = addrs.admin().create_partitions(&name, count, validate_only).await?;
    Ok(topic_json(&grown))
}

/// `runnel topic describe`.
pub(crate) async fn topic_describe(addrs: &Target, name: String) -> Result<Value, ClientError> {
    let described = addrs.admin().describe_topic(&name).await?;
    Ok(topic_json(&described))
}

/// `runnel topic list`.
pub(crate) async fn topic_list(addrs: &Target) -> Result<Value, ClientError> {
    let listed = addrs.admin().list_topics().await?;
    let topics: Vec<Value> = listed
        .iter()
        .map(|t| {
            json!({"name": t.name, "topic_id": t.id.to_string(), "partitions": t.partitions,
                   "replication_factor": t.replication_factor})
        })
        .collect();
    Ok(json!({ "topics": topics }))
}

/// `runnel topic delete`.
pub(crate) async fn topic_delete(addrs: &Target, name: String) -> Result<Value, ClientError> {
    let id = addrs.admin().delete_topic(&name).await?;
    Ok(json!({"deleted": name, "topic_id": id.to_string()}))
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
        "configs" => {
            let checked =
                if value["validate_only"].as_bool().unwrap_or(false) { " (validated only)" } else { "" };
            out += &format!("topic {} config overrides{checked}:\n", opt(&value["name"]));
            let configs = value["configs"].as_object().filter(|c| !c.is_empty());
            for (k, v) in configs.into_iter().flatten() {
                out += &format!("  {k}={}\n", opt(v));
            }
            if configs.is_none() {
                out += "  (none: every config is the broker default)\n";
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
        assert!(runnel_client::unreachable(&down));
        assert_eq!(ClientError::from(down).to_string(), "NETWORK_EXCEPTION (13): connection refused");
        assert_eq!(bootstrap(" a:1, b:2,"), ["a:1", "b:2"]);
    }
}
