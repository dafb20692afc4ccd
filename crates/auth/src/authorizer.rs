//! Who is calling ([`Principal`]), what the controller's metadata holds about users and
//! ACLs ([`Security`]), and Kafka's StandardAuthorizer decision over the ACLs
//! ([`authorize`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::acl::{
    AclBinding, Operation, PatternType, Permission, ResourceType, USER_PREFIX, WILDCARD, WILDCARD_PRINCIPAL,
};
use crate::scram::{Mechanism, ScramCredential};

/// Who is calling: Kafka's KafkaPrincipal, written `User:<name>`. The string always starts
/// with `User:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    /// The principal of the user `name`: `User:<name>`. `name` is taken as is.
    pub fn user(name: &str) -> Self {
        Principal(format!("{USER_PREFIX}{name}"))
    }

    /// The principal of a client that did not authenticate: `User:ANONYMOUS`.
    pub fn anonymous() -> Self {
        Principal::user("ANONYMOUS")
    }

    /// The whole principal, `User:<name>`: what an [`AclBinding`]'s principal is compared
    /// with.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user name: what follows `User:`.
    pub fn name(&self) -> &str {
        self.0.strip_prefix(USER_PREFIX).unwrap_or(&self.0)
    }
}

impl fmt::Display for Principal {
    /// Writes `User:<name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Principal {
    type Err = String;

    /// Parses `User:<name>` with a non-empty name (as in a `super.users` setting).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix(USER_PREFIX) {
            Some(name) if !name.is_empty() => Ok(Principal::user(name)),
            _ => Err(format!("the principal `{text}` is not of the form `User:<name>`")),
        }
    }
}

/// The users and ACLs the controller's metadata holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Each user's SCRAM credentials, by user name and then mechanism. Each credential's
    /// `mechanism` should equal its key; `ScramServer` treats a credential of another
    /// mechanism as no credential.
    pub users: BTreeMap<String, BTreeMap<Mechanism, ScramCredential>>,
    /// Every ACL binding.
    pub acls: BTreeSet<AclBinding>,
}

/// Kafka's StandardAuthorizer decision with `allow.everyone.if.no.acl.found=false`:
/// whether `principal`, connected from `host`, may do `operation` on the resource of
/// `resource_type` named `resource_name`. Super users are the caller's business.
///
/// A binding applies if its principal is `principal` or `User:*`, its host is `*` or the
/// same address as `host` (compared as addresses, IPv4-mapped IPv6 as IPv4), its resource
/// type is `resource_type`, and its pattern selects `resource_name`
/// ([`AclBinding::pattern_matches`]). Then:
/// - an applicable DENY whose operation is `operation` or All denies, whatever allows;
/// - otherwise an applicable ALLOW grants if its operation is `operation` or All; an ALLOW
///   of Read, Write, Delete or Alter also grants Describe, and an ALLOW of AlterConfigs
///   also grants DescribeConfigs;
/// - with no such ALLOW, the operation is denied.
pub fn authorize(
    acls: &BTreeSet<AclBinding>,
    principal: &Principal,
    host: IpAddr,
    operation: Operation,
    resource_type: ResourceType,
    resource_name: &str,
) -> bool {
    let host = host.to_canonical();
    let mut allowed = false;
    let wildcard = (principal.as_str() != WILDCARD_PRINCIPAL).then_some(WILDCARD_PRINCIPAL);
    let principals = std::iter::once(principal.as_str()).chain(wildcard);
    for binding in principals.flat_map(|principal| bindings_of(acls, principal)) {
        let applies = binding.resource_type == resource_type
            && host_matches(&binding.host, host)
            && binding.pattern_matches(resource_name);
        if !applies {
            continue;
        }
        match binding.permission {
            Permission::Deny => {
                if binding.operation == operation || binding.operation == Operation::All {
                    return false;
                }
            }
            Permission::Allow => allowed |= grants(binding.operation, operation),
        }
    }
    allowed
}

/// The bindings whose principal is exactly `principal`: a range of the set, since
/// `AclBinding`'s derived `Ord` compares the principal first.
fn bindings_of<'a>(
    acls: &'a BTreeSet<AclBinding>,
    principal: &'a str,
) -> impl Iterator<Item = &'a AclBinding> {
    // The smallest binding with this principal: the empty host and name, and each enum's
    // first variant, are the smallest values of their fields.
    let lowest = AclBinding {
        principal: principal.to_owned(),
        host: String::new(),
        resource_type: ResourceType::Topic,
        resource_name: String::new(),
        pattern_type: PatternType::Literal,
        operation: Operation::All,
        permission: Permission::Deny,
    };
    acls.range(lowest..).take_while(move |binding| binding.principal == principal)
}

/// Whether a binding's host (`*` or an address) matches the caller's canonical address.
fn host_matches(binding_host: &str, host: IpAddr) -> bool {
    binding_host == WILDCARD
        || binding_host.parse::<IpAddr>().is_ok_and(|address| address.to_canonical() == host)
}

/// Whether an ALLOW of `granted` permits `wanted`.
fn grants(granted: Operation, wanted: Operation) -> bool {
    granted == wanted
        || granted == Operation::All
        || match wanted {
            Operation::Describe => {
                matches!(granted, Operation::Read | Operation::Write | Operation::Delete | Operation::Alter)
            }
            Operation::DescribeConfigs => granted == Operation::AlterConfigs,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    fn alice() -> Principal {
        Principal::user("alice")
    }

    /// An ALLOW or DENY on a topic pattern, for any host.
    fn rule(
        principal: &str,
        name: &str,
        pattern_type: PatternType,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding::any_host(principal, ResourceType::Topic, name, pattern_type, operation, permission)
    }

    fn allow(principal: &str, name: &str, operation: Operation) -> AclBinding {
        rule(principal, name, PatternType::Literal, operation, Permission::Allow)
    }

    fn acls(bindings: impl IntoIterator<Item = AclBinding>) -> BTreeSet<AclBinding> {
        bindings.into_iter().collect()
    }

    fn may(acls: &BTreeSet<AclBinding>, principal: &Principal, operation: Operation, topic: &str) -> bool {
        authorize(acls, principal, LOCAL, operation, ResourceType::Topic, topic)
    }

    #[test]
    fn principal_forms() {
        let principal = alice();
        assert_eq!(principal.as_str(), "User:alice");
        assert_eq!(principal.name(), "alice");
        assert_eq!(principal.to_string(), "User:alice");
        assert_eq!(Principal::anonymous().as_str(), "User:ANONYMOUS");
        assert_eq!("User:alice".parse::<Principal>(), Ok(principal));
        assert!("alice".parse::<Principal>().is_err());
        assert!("User:".parse::<Principal>().is_err());
        assert_eq!(Principal::user("a:b").name(), "a:b");
    }

    #[test]
    fn no_acl_denies() {
        assert!(!may(&BTreeSet::new(), &alice(), Operation::Read, "orders"));
        // Another principal's ALLOW does not apply.
        let set = acls([allow("User:bob", "orders", Operation::Read)]);
        assert!(!may(&set, &alice(), Operation::Read, "orders"));
        assert!(may(&set, &Principal::user("bob"), Operation::Read, "orders"));
    }

    #[test]
    fn allow_grants_only_its_operation_and_resource() {
        let set = acls([allow("User:alice", "orders", Operation::Read)]);
        assert!(may(&set, &alice(), Operation::Read, "orders"));
        assert!(!may(&set, &alice(), Operation::Write, "orders"));
        assert!(!may(&set, &alice(), Operation::Read, "payments"));
        assert!(!may(&set, &alice(), Operation::Read, "orders-eu"));
        assert!(!authorize(&set, &alice(), LOCAL, Operation::Read, ResourceType::Group, "orders"));
    }

    #[test]
    fn deny_beats_allow() {
        let deny =
            |operation| rule("User:alice", "orders", PatternType::Literal, operation, Permission::Deny);
        let set = acls([allow("User:alice", "orders", Operation::All), deny(Operation::Write)]);
        assert!(may(&set, &alice(), Operation::Read, "orders"));
        assert!(!may(&set, &alice(), Operation::Write, "orders"));
        // A DENY of All denies everything; a wildcard DENY applies to everyone.
        let set = acls([allow("User:alice", "orders", Operation::Read), deny(Operation::All)]);
        assert!(!may(&set, &alice(), Operation::Read, "orders"));
        let set = acls([
            allow("User:alice", "orders", Operation::Read),
            rule("User:*", "ord", PatternType::Prefixed, Operation::Read, Permission::Deny),
        ]);
        assert!(!may(&set, &alice(), Operation::Read, "orders"));
        // A DENY of Read does not deny the Describe an ALLOW of Describe grants.
        let set = acls([allow("User:alice", "orders", Operation::Describe), deny(Operation::Read)]);
        assert!(may(&set, &alice(), Operation::Describe, "orders"));
    }

    #[test]
    fn wildcard_principal_and_resource() {
        let set =
            acls([allow("User:*", "orders", Operation::Read), allow("User:bob", "*", Operation::Write)]);
        assert!(may(&set, &alice(), Operation::Read, "orders"));
        assert!(may(&set, &Principal::anonymous(), Operation::Read, "orders"));
        assert!(!may(&set, &alice(), Operation::Write, "orders"));
        assert!(may(&set, &Principal::user("bob"), Operation::Write, "anything"));
        assert!(may(&set, &Principal::user("bob"), Operation::Read, "orders"));
    }

    #[test]
    fn prefixed() {
        let set =
            acls([rule("User:alice", "orders-", PatternType::Prefixed, Operation::Read, Permission::Allow)]);
        assert!(may(&set, &alice(), Operation::Read, "orders-eu"));
        assert!(may(&set, &alice(), Operation::Read, "orders-"));
        assert!(!may(&set, &alice(), Operation::Read, "orders"));
        assert!(!may(&set, &alice(), Operation::Read, "xorders-eu"));
    }

    #[test]
    fn host_match() {
        let from = |host: &str| AclBinding {
            host: host.to_owned(),
            ..allow("User:alice", "orders", Operation::Read)
        };
        let set = acls([from("10.0.0.1"), from("::1")]);
        let check =
            |host: IpAddr| authorize(&set, &alice(), host, Operation::Read, ResourceType::Topic, "orders");
        assert!(check(LOCAL));
        assert!(!check(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
        assert!(check(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        // An IPv4 client seen through a dual-stack socket.
        assert!(check(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())));
        // Another spelling of the same IPv6 address.
        let set = acls([from("0:0:0:0:0:0:0:1")]);
        assert!(authorize(
            &set,
            &alice(),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            Operation::Read,
            ResourceType::Topic,
            "orders"
        ));
    }

    #[test]
    fn implied_operations() {
        for granted in [Operation::Read, Operation::Write, Operation::Delete, Operation::Alter] {
            let set = acls([allow("User:alice", "orders", granted)]);
            assert!(may(&set, &alice(), Operation::Describe, "orders"), "{granted}");
            assert!(!may(&set, &alice(), Operation::DescribeConfigs, "orders"), "{granted}");
        }
        let set = acls([allow("User:alice", "orders", Operation::Create)]);
        assert!(!may(&set, &alice(), Operation::Describe, "orders"));
        let set = acls([allow("User:alice", "orders", Operation::AlterConfigs)]);
        assert!(may(&set, &alice(), Operation::DescribeConfigs, "orders"));
        assert!(!may(&set, &alice(), Operation::Describe, "orders"));
        // Describe implies nothing.
        let set = acls([allow("User:alice", "orders", Operation::Describe)]);
        assert!(!may(&set, &alice(), Operation::Read, "orders"));
    }

    #[test]
    fn all_grants_everything() {
        let set = acls([allow("User:alice", "orders", Operation::All)]);
        for &operation in Operation::VALUES {
            assert!(may(&set, &alice(), operation, "orders"), "{operation}");
        }
        assert!(!may(&set, &Principal::user("bob"), Operation::Read, "orders"));
    }

    #[test]
    fn principal_ranges_do_not_leak() {
        // Principals that sort next to each other do not share bindings.
        let set = acls([
            allow("User:alic", "t", Operation::Read),
            allow("User:alice2", "t", Operation::Read),
            allow("User:alicf", "t", Operation::Read),
        ]);
        assert!(!may(&set, &alice(), Operation::Read, "t"));
        assert!(may(&set, &Principal::user("alice2"), Operation::Read, "t"));
    }

    #[test]
    fn security_serde_round_trip() {
        let mut security = Security::default();
        security.acls.insert(allow("User:alice", "orders", Operation::Read));
        let credential = crate::scram::ScramCredential {
            mechanism: Mechanism::ScramSha256,
            salt: vec![1, 2, 3],
            stored_key: vec![4; 32],
            server_key: vec![5; 32],
            iterations: 4096,
        };
        security.users.entry("alice".to_owned()).or_default().insert(Mechanism::ScramSha256, credential);
        let json = serde_json::to_string(&security).unwrap();
        assert_eq!(serde_json::from_str::<Security>(&json).unwrap(), security);
    }
}
