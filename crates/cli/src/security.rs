//! `runnel user ...` and `runnel acl ...`: the users (SCRAM credentials) and ACLs of a cluster
//! started with `--auth`, through the controllers' UpsertUser, DeleteUser, ListUsers,
//! CreateAcls, DeleteAcls and ListAcls.
//!
//! A new user's password is turned into its SCRAM credentials here (a random salt, the stored
//! and server keys, RFC 5802), for both SCRAM mechanisms unless one is named: the password
//! itself is never sent. The same users authenticate Kafka clients (SASL PLAIN and SCRAM) and
//! gRPC clients (`--user`, `RUNNEL_USER` / `RUNNEL_PASSWORD`).

use std::io::Write;
use std::process::ExitCode;

use runnel_auth::acl::{
    AclBinding, AclFilter, CLUSTER_RESOURCE_NAME, Operation, PatternFilter, PatternType, Permission,
    ResourceType,
};
use runnel_auth::scram::{ITERATIONS_DEFAULT, ITERATIONS_MAX, ITERATIONS_MIN, Mechanism};
use serde_json::{Value, json};

use crate::client::{ClientArgs, ClientError, Output};

/// `runnel user ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user, or change its password (its SCRAM credentials).
    ///
    /// While the cluster has no user at all, a super user (`runnel node --super-users`,
    /// User:admin by default) may be created without credentials from a node's own host:
    /// that is how the first administrator is made.
    Create {
        /// The user name.
        name: String,
        /// The new user's password; prefer RUNNEL_USER_PASSWORD to the flag.
        #[arg(long, env = "RUNNEL_USER_PASSWORD", hide_env_values = true)]
        user_password: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512 [default: both].
        #[arg(long)]
        mechanism: Option<String>,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = ITERATIONS_DEFAULT,
              value_parser = clap::value_parser!(u32).range(i64::from(ITERATIONS_MIN)..=i64::from(ITERATIONS_MAX)))]
        iterations: u32,
    },
    /// Delete a user (or only its credential for one mechanism). Its ACLs stay.
    Delete {
        /// The user name.
        name: String,
        /// Only this mechanism's credential.
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// List the users and their mechanisms.
    List,
}

/// The resource and principal flags of `runnel acl ...`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AclArgs {
    /// The principal, User:NAME or User:* (everyone).
    #[arg(long)]
    principal: Option<String>,
    /// The client host (IP address) it applies to [default: * for add].
    #[arg(long)]
    host: Option<String>,
    /// Operations, comma separated: all, read, write, create, delete, alter, describe,
    /// cluster-action, describe-configs, alter-configs, idempotent-write.
    #[arg(long, value_delimiter = ',')]
    operation: Vec<String>,
    /// A topic ("*" for every topic).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group ("*" for every group).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// A transactional id.
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The name is a prefix: the binding applies to every resource whose name starts with it.
    #[arg(long)]
    prefixed: bool,
    /// A DENY binding (deny wins over any allow) [default: ALLOW].
    #[arg(long)]
    deny: bool,
}

/// `runnel acl ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AclCommand {
    /// Add ACL bindings: one per operation given, for the principal, host and resource.
    Add(AclArgs),
    /// Remove the ACL bindings matching the flags (a flag left out matches anything).
    Remove(AclArgs),
    /// List the ACL bindings matching the flags (a flag left out matches anything).
    List(AclArgs),
}

fn mechanisms(name: Option<&str>) -> anyhow::Result<Vec<Mechanism>> {
    match name {
        None => Ok(Mechanism::ALL.to_vec()),
        Some(name) => runnel_proto::security::mechanism_from_name(name)
            .map(|m| vec![m])
            .map_err(|e| anyhow::anyhow!("--mechanism: {e}")),
    }
}

impl AclArgs {
    fn resource(&self) -> Option<(ResourceType, String)> {
        if let Some(t) = &self.topic {
            Some((ResourceType::Topic, t.clone()))
        } else if let Some(g) = &self.group {
            Some((ResourceType::Group, g.clone()))
        } else if self.cluster {
            Some((ResourceType::Cluster, CLUSTER_RESOURCE_NAME.to_owned()))
        } else {
            self.transactional_id.as_ref().map(|t| (ResourceType::TransactionalId, t.clone()))
        }
    }

    fn operations(&self) -> anyhow::Result<Vec<Operation>> {
        self.operation
            .iter()
            .map(|o| o.parse::<Operation>().map_err(|e| anyhow::anyhow!("--operation: {e}")))
            .collect()
    }

    fn pattern_type(&self) -> PatternType {
        if self.prefixed { PatternType::Prefixed } else { PatternType::Literal }
    }

    /// The bindings `acl add` creates.
    fn bindings(&self) -> anyhow::Result<Vec<AclBinding>> {
        let principal = self.principal.clone().ok_or_else(|| anyhow::anyhow!("--principal is required"))?;
        let (resource_type, resource_name) = self.resource().ok_or_else(|| {
            anyhow::anyhow!("name the resource: --topic, --group, --cluster or --transactional-id")
        })?;
        let operations = self.operations()?;
        if operations.is_empty() {
            anyhow::bail!("--operation is required");
        }
        let bindings: Vec<AclBinding> = operations
            .into_iter()
            .map(|operation| AclBinding {
                principal: principal.clone(),
                host: self.host.clone().unwrap_or_else(|| "*".to_owned()),
                resource_type,
                resource_name: resource_name.clone(),
                pattern_type: self.pattern_type(),
                operation,
                permission: if self.deny { Permission::Deny } else { Permission::Allow },
            })
            .collect();
        for b in &bindings {
            b.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(bindings)
    }

    /// The filters `acl remove` and `acl list` use: one per operation, or one for any.
    fn filters(&self) -> anyhow::Result<Vec<AclFilter>> {
        let resource = self.resource();
        let operations = self.operations()?;
        let base = AclFilter {
            principal: self.principal.clone(),
            host: self.host.clone(),
            resource_type: resource.as_ref().map(|(t, _)| *t),
            resource_name: resource.map(|(_, n)| n),
            pattern: if self.prefixed {
                PatternFilter::Exactly(PatternType::Prefixed)
            } else {
                PatternFilter::Any
            },
            operation: None,
            permission: self.deny.then_some(Permission::Deny),
        };
        if operations.is_empty() {
            return Ok(vec![base]);
        }
        Ok(operations
            .into_iter()
            .map(|operation| AclFilter { operation: Some(operation), ..base.clone() })
            .collect())
    }
}

fn binding_json(b: &AclBinding) -> Value {
    json!({
        "principal": b.principal,
        "host": b.host,
        "resource_type": b.resource_type.to_string(),
        "resource_name": b.resource_name,
        "pattern_type": b.pattern_type.to_string(),
        "operation": b.operation.to_string(),
        "permission": b.permission.to_string(),
    })
}

fn binding_text(b: &AclBinding) -> String {
    format!(
        "{} {} {} {} {}:{} from {}",
        b.principal, b.permission, b.operation, b.resource_type, b.pattern_type, b.resource_name, b.host
    )
}

fn print(output: Output, value: &Value, text: String) -> anyhow::Result<ExitCode> {
    let out = match output {
        Output::Json => format!("{value}\n"),
        Output::Text => text,
    };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn failed(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// Runs `runnel user ...`.
pub(crate) fn run_user(client: ClientArgs, command: UserCommand) -> anyhow::Result<ExitCode> {
    let admin = client.target()?.admin();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        UserCommand::Create { name, user_password, mechanism, iterations } => {
            if user_password.is_empty() {
                anyhow::bail!("--user-password must not be empty");
            }
            let mechanisms = mechanisms(mechanism.as_deref())?;
            if let Err(e) =
                runtime.block_on(admin.upsert_user(&name, &mechanisms, &user_password, iterations))
            {
                return Ok(failed(&e));
            }
            let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
            let value = json!({ "user": name, "mechanisms": names });
            print(client.output, &value, format!("user {name}: {} credentials set\n", names.join(", ")))
        }
        UserCommand::Delete { name, mechanism } => {
            let mechanism = match mechanism {
                Some(m) => Some(
                    runnel_proto::security::mechanism_from_name(&m)
                        .map_err(|e| anyhow::anyhow!("--mechanism: {e}"))?,
                ),
                None => None,
            };
            if let Err(e) = runtime.block_on(admin.delete_user(&name, mechanism)) {
                return Ok(failed(&e));
            }
            print(client.output, &json!({ "deleted": name }), format!("user {name} deleted\n"))
        }
        UserCommand::List => {
            let users = match runtime.block_on(admin.list_users()) {
                Ok(users) => users,
                Err(e) => return Ok(failed(&e)),
            };
            let value = json!({
                "users": users.iter().map(|u| json!({ "name": u.name, "mechanisms": u.mechanisms, "iterations": u.iterations })).collect::<Vec<_>>(),
            });
            let text: String =
                users.iter().map(|u| format!("{}\t{}\n", u.name, u.mechanisms.join(","))).collect();
            print(client.output, &value, text)
        }
    }
}

/// Runs `runnel acl ...`.
pub(crate) fn run_acl(client: ClientArgs, command: AclCommand) -> anyhow::Result<ExitCode> {
    let admin = client.target()?.admin();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        AclCommand::Add(args) => {
            let bindings = args.bindings()?;
            let created = match runtime.block_on(admin.create_acls(&bindings)) {
                Ok(created) => created,
                Err(e) => return Ok(failed(&e)),
            };
            let value =
                json!({ "created": created, "acls": bindings.iter().map(binding_json).collect::<Vec<_>>() });
            let text: String = bindings.iter().map(|b| format!("added {}\n", binding_text(b))).collect();
            print(client.output, &value, text)
        }
        AclCommand::Remove(args) => {
            let mut removed = Vec::new();
            for filter in args.filters()? {
                match runtime.block_on(admin.delete_acls(&filter)) {
                    Ok(deleted) => removed.extend(deleted),
                    Err(e) => return Ok(failed(&e)),
                }
            }
            let value = json!({ "removed": removed.iter().map(binding_json).collect::<Vec<_>>() });
            let text: String = removed.iter().map(|b| format!("removed {}\n", binding_text(b))).collect();
            print(client.output, &value, text)
        }
        AclCommand::List(args) => {
            let mut listed = Vec::new();
            for filter in args.filters()? {
                match runtime.block_on(admin.list_acls(&filter)) {
                    Ok(acls) => listed.extend(acls),
                    Err(e) => return Ok(failed(&e)),
                }
            }
            listed.sort();
            listed.dedup();
            let value = json!({ "acls": listed.iter().map(binding_json).collect::<Vec<_>>() });
            let text: String = listed.iter().map(|b| format!("{}\n", binding_text(b))).collect();
            print(client.output, &value, text)
        }
    }
}
