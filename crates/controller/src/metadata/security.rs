//! Users and ACLs in the image: the commands that change them. The whole [`Security`] state
//! travels in one delta ([`MetadataDelta::SecurityChanged`]) whenever it changes: it is
//! small (bounded by [`USERS_MAX`] and [`ACLS_MAX`]) and changes rarely, and brokers swap
//! it in whole.

use runnel_auth::Security;
use runnel_auth::acl::{AclBinding, AclFilter};
use runnel_auth::scram::{Mechanism, ScramCredential};

use super::command::{MetadataDelta, Outcome};
use super::error::{CommandError, ErrorCode};
use super::image::ClusterMetadata;

/// The most users the cluster holds.
pub const USERS_MAX: usize = 10_000;
/// The most ACL bindings the cluster holds.
pub const ACLS_MAX: usize = 10_000;
/// The longest user name, in bytes.
pub const USER_NAME_LEN_MAX: usize = 256;

type Change = Result<(Outcome, Vec<MetadataDelta>), CommandError>;

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::new(ErrorCode::InvalidRequest, message)
}

/// Whether `name` may name a user: 1 to [`USER_NAME_LEN_MAX`] bytes, no control characters,
/// not `*`.
pub fn check_user_name(name: &str) -> Result<(), CommandError> {
    if name.is_empty() || name.len() > USER_NAME_LEN_MAX {
        return Err(invalid(format!("a user name has 1 to {USER_NAME_LEN_MAX} bytes, not {}", name.len())));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("a user name has no control characters"));
    }
    if name == "*" {
        // Its principal would be User:*, the wildcard every binding for everyone names.
        return Err(invalid("* cannot be a user name: User:* means every user"));
    }
    Ok(())
}

impl ClusterMetadata {
    /// The users and ACLs.
    pub fn security(&self) -> &Security {
        &self.security
    }

    fn security_changed(security: Security, outcome: Outcome) -> Change {
        Ok((outcome, vec![MetadataDelta::SecurityChanged(security)]))
    }

    pub(super) fn upsert_user(
        &self,
        name: &str,
        credentials: &[ScramCredential],
        only_if_no_users: bool,
    ) -> Change {
        check_user_name(name)?;
        if only_if_no_users && !self.security.users.is_empty() {
            return Err(CommandError::new(
                ErrorCode::ClusterAuthorizationFailed,
                format!("the cluster has users already: {name} cannot be created without credentials"),
            ));
        }
        if credentials.is_empty() {
            return Err(invalid(format!("user {name}: give at least one credential")));
        }
        for (i, credential) in credentials.iter().enumerate() {
            credential.validate().map_err(|e| {
                CommandError::new(ErrorCode::UnsupportedSaslMechanism, format!("user {name}: {e}"))
            })?;
            if credentials[..i].iter().any(|c| c.mechanism == credential.mechanism) {
                return Err(invalid(format!("user {name}: two {} credentials", credential.mechanism.name())));
            }
        }
        if !self.security.users.contains_key(name) && self.security.users.len() >= USERS_MAX {
            return Err(CommandError::new(
                ErrorCode::PolicyViolation,
                format!("the cluster holds {USERS_MAX} users, the most it may"),
            ));
        }
        let outcome = Outcome::UserUpserted { name: name.to_owned() };
        let mut security = self.security.clone();
        let entry = security.users.entry(name.to_owned()).or_default();
        for credential in credentials {
            entry.insert(credential.mechanism, credential.clone());
        }
        if security == self.security {
            return Ok((outcome, Vec::new()));
        }
        Self::security_changed(security, outcome)
    }

    pub(super) fn delete_user(&self, name: &str, mechanism: Option<Mechanism>) -> Change {
        let not_found = || {
            let what = mechanism.map_or_else(String::new, |m| format!(" has no {} credential", m.name()));
            CommandError::new(
                ErrorCode::ResourceNotFound,
                if what.is_empty() { format!("no user {name}") } else { format!("user {name}{what}") },
            )
        };
        let credentials = self.security.users.get(name).ok_or_else(not_found)?;
        let mut security = self.security.clone();
        match mechanism {
            None => {
                security.users.remove(name);
            }
            Some(m) => {
                if !credentials.contains_key(&m) {
                    return Err(not_found());
                }
                let left = security.users.get_mut(name).map(|c| {
                    c.remove(&m);
                    c.is_empty()
                });
                if left == Some(true) {
                    security.users.remove(name);
                }
            }
        }
        Self::security_changed(security, Outcome::UserDeleted { name: name.to_owned() })
    }

    pub(super) fn create_acls(&self, acls: &[AclBinding]) -> Change {
        for acl in acls {
            acl.validate().map_err(|e| invalid(format!("ACL {acl:?}: {e}")))?;
        }
        let mut security = self.security.clone();
        let before = security.acls.len();
        security.acls.extend(acls.iter().cloned());
        let created = security.acls.len() - before;
        if security.acls.len() > ACLS_MAX {
            return Err(CommandError::new(
                ErrorCode::PolicyViolation,
                format!(
                    "the cluster would hold {} ACLs, more than the {ACLS_MAX} it may",
                    security.acls.len()
                ),
            ));
        }
        let outcome = Outcome::AclsCreated { created };
        if created == 0 {
            return Ok((outcome, Vec::new()));
        }
        Self::security_changed(security, outcome)
    }

    pub(super) fn delete_acls(&self, filters: &[AclFilter]) -> Change {
        let deleted: Vec<Vec<AclBinding>> = filters
            .iter()
            .map(|f| self.security.acls.iter().filter(|acl| f.matches(acl)).cloned().collect())
            .collect();
        let mut security = self.security.clone();
        security.acls.retain(|acl| !filters.iter().any(|f| f.matches(acl)));
        let changed = security.acls.len() != self.security.acls.len();
        let outcome = Outcome::AclsDeleted { deleted };
        if !changed {
            return Ok((outcome, Vec::new()));
        }
        Self::security_changed(security, outcome)
    }

    /// Checks the users and ACLs of a loaded snapshot.
    pub(super) fn check_security(&self) -> Result<(), String> {
        for (name, credentials) in &self.security.users {
            check_user_name(name).map_err(|e| e.message)?;
            if credentials.is_empty() {
                return Err(format!("user {name} has no credential"));
            }
            for (mechanism, credential) in credentials {
                if credential.mechanism != *mechanism {
                    return Err(format!(
                        "user {name}'s {} credential is filed under {}",
                        credential.mechanism.name(),
                        mechanism.name()
                    ));
                }
                credential.validate().map_err(|e| format!("user {name}: {e}"))?;
            }
        }
        for acl in &self.security.acls {
            acl.validate().map_err(|e| format!("ACL {acl:?}: {e}"))?;
        }
        Ok(())
    }
}
