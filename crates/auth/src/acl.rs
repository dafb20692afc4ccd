//! Kafka's ACL model: a binding allows or denies one principal, from one host, one
//! operation on the resources one pattern names ([`AclBinding`]), and a filter selects
//! bindings as DescribeAcls and DeleteAcls do ([`AclFilter`]).
//!
//! Each enum's `code` is Kafka's wire code, its `Display` Kafka's name ("TOPIC",
//! "DESCRIBE_CONFIGS"), and its `FromStr` accepts that name in any case, with `_`, `-` or
//! no separator between words.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of the one Cluster resource.
pub const CLUSTER_RESOURCE_NAME: &str = "kafka-cluster";
/// The principal and host that match every principal and host, and the literal resource
/// name that matches every resource of its type.
pub const WILDCARD: &str = "*";
/// The principal that matches every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The prefix of every principal: Kafka's principal type for users.
pub const USER_PREFIX: &str = "User:";
/// The longest resource name a binding may have, in bytes.
pub const RESOURCE_NAME_MAX_LEN: usize = 255;

/// A string that does not name a value of one of this module's enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{input}`: expected one of {expected}")]
pub struct ParseAclError {
    kind: &'static str,
    input: String,
    expected: String,
}

/// `name` without `-` and `_`, in upper case: the form `FromStr` compares.
fn normalize(name: &str) -> String {
    name.chars().filter(|&c| c != '-' && c != '_').map(|c| c.to_ascii_uppercase()).collect()
}

/// Defines one of Kafka's ACL enums with its wire codes and names.
macro_rules! kafka_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $code:literal, $kafka:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in wire-code order.
            pub const VALUES: &'static [$name] = &[$($name::$variant),+];

            /// Kafka's wire code.
            pub fn code(self) -> i8 {
                match self {
                    $( $name::$variant => $code, )+
                }
            }

            /// The value whose wire code is `code`, or `None` (Kafka's UNKNOWN and ANY codes,
            /// and values this crate does not model, are `None`).
            pub fn from_code(code: i8) -> Option<Self> {
                match code {
                    $( $code => Some($name::$variant), )+
                    _ => None,
                }
            }

            /// Kafka's name, in upper case with `_` between words.
            pub fn kafka_name(self) -> &'static str {
                match self {
                    $( $name::$variant => $kafka, )+
                }
            }
        }

        impl fmt::Display for $name {
            /// Writes Kafka's name.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.kafka_name())
            }
        }

        impl FromStr for $name {
            type Err = ParseAclError;

            /// Parses Kafka's name in any case, with `_`, `-` or no separator between words.
            fn from_str(input: &str) -> Result<Self, ParseAclError> {
                let wanted = normalize(input);
                $name::VALUES.iter().copied().find(|value| normalize(value.kafka_name()) == wanted).ok_or_else(|| {
                    ParseAclError {
                        kind: $kind,
                        input: input.to_owned(),
                        expected: $name::VALUES
                            .iter()
                            .map(|value| value.kafka_name())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })
            }
        }
    };
}

kafka_enum! {
    /// The kind of resource a binding protects.
    ResourceType ("resource type") {
        /// A topic, named by the topic name.
        Topic = 2, "TOPIC";
        /// A consumer group, named by the group id.
        Group = 3, "GROUP";
        /// The cluster itself, named [`CLUSTER_RESOURCE_NAME`].
        Cluster = 4, "CLUSTER";
        /// A transactional producer, named by its transactional.id.
        TransactionalId = 5, "TRANSACTIONAL_ID";
    }
}

kafka_enum! {
    /// How a binding's resource name selects resources.
    PatternType ("pattern type") {
        /// The resource whose name equals the binding's; the name [`WILDCARD`] selects every
        /// resource of the type.
        Literal = 3, "LITERAL";
        /// Every resource whose name starts with the binding's.
        Prefixed = 4, "PREFIXED";
    }
}

kafka_enum! {
    /// What a principal does to a resource.
    Operation ("operation") {
        /// Every operation.
        All = 2, "ALL";
        /// Consume from a topic, join or commit to a group.
        Read = 3, "READ";
        /// Produce to a topic, use a transactional id.
        Write = 4, "WRITE";
        /// Create topics.
        Create = 5, "CREATE";
        /// Delete topics, groups, records.
        Delete = 6, "DELETE";
        /// Change a resource (partitions, ACLs).
        Alter = 7, "ALTER";
        /// See a resource's metadata.
        Describe = 8, "DESCRIBE";
        /// What brokers do to each other (replication).
        ClusterAction = 9, "CLUSTER_ACTION";
        /// Read a resource's configuration.
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        /// Change a resource's configuration.
        AlterConfigs = 11, "ALTER_CONFIGS";
        /// Produce idempotently (get a producer id).
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
    }
}

kafka_enum! {
    /// Whether a binding grants or forbids its operation.
    Permission ("permission") {
        /// Forbids the operation; a deny overrides every allow.
        Deny = 2, "DENY";
        /// Grants the operation (and the operations it implies; see `authorize`).
        Allow = 3, "ALLOW";
    }
}

impl Operation {
    /// Whether the operation ever applies to resources of `resource_type` (Kafka's table):
    /// Topic: Read, Write, Create, Delete, Alter, Describe, DescribeConfigs, AlterConfigs;
    /// Group: Read, Describe, Delete; Cluster: Create, ClusterAction, DescribeConfigs,
    /// AlterConfigs, IdempotentWrite, Alter, Describe; TransactionalId: Describe, Write.
    /// All applies to every type.
    pub fn applies_to(self, resource_type: ResourceType) -> bool {
        use Operation::*;
        match resource_type {
            ResourceType::Topic => matches!(
                self,
                All | Read | Write | Create | Delete | Alter | Describe | DescribeConfigs | AlterConfigs
            ),
            ResourceType::Group => matches!(self, All | Read | Describe | Delete),
            ResourceType::Cluster => matches!(
                self,
                All | Create
                    | ClusterAction
                    | DescribeConfigs
                    | AlterConfigs
                    | IdempotentWrite
                    | Alter
                    | Describe
            ),
            ResourceType::TransactionalId => matches!(self, All | Describe | Write),
        }
    }
}

/// One ACL: `permission` for `principal` connecting from `host` to do `operation` on the
/// resources of `resource_type` that `resource_name` and `pattern_type` select.
///
/// Bindings are only meaningful if [`validate`](Self::validate) accepts them. The derived
/// `Ord` sorts by principal first, which `authorize` relies on to find a principal's
/// bindings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// `User:<name>`, or [`WILDCARD_PRINCIPAL`] for every principal.
    pub principal: String,
    /// An IP address, or [`WILDCARD`] for every host.
    pub host: String,
    /// The kind of resource.
    pub resource_type: ResourceType,
    /// The resource name, name prefix or [`WILDCARD`], as `pattern_type` says.
    pub resource_name: String,
    /// How `resource_name` selects resources.
    pub pattern_type: PatternType,
    /// The operation granted or forbidden (All: every operation).
    pub operation: Operation,
    /// Grant or forbid.
    pub permission: Permission,
}

impl AclBinding {
    /// A binding that applies from any host (`*`), as `runnel acl add` makes by default.
    pub fn any_host(
        principal: &str,
        resource_type: ResourceType,
        resource_name: &str,
        pattern_type: PatternType,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            principal: principal.to_owned(),
            host: WILDCARD.to_owned(),
            resource_type,
            resource_name: resource_name.to_owned(),
            pattern_type,
            operation,
            permission,
        }
    }

    /// Checks the binding as Kafka's CreateAcls does: the principal is `User:<name>` with a
    /// non-empty name (or `User:*`); the host is `*` or an IP address; the resource name is
    /// 1 to [`RESOURCE_NAME_MAX_LEN`] bytes; a Cluster binding is literal and names
    /// [`CLUSTER_RESOURCE_NAME`]; a prefixed binding does not name `*`; and the operation
    /// applies to the resource type ([`Operation::applies_to`]). The error says which rule
    /// is broken.
    pub fn validate(&self) -> Result<(), String> {
        match self.principal.strip_prefix(USER_PREFIX) {
            Some(name) if !name.is_empty() => {}
            _ => {
                return Err(format!(
                    "the principal `{}` is not of the form `User:<name>` or `User:*`",
                    self.principal
                ));
            }
        }
        if self.host != WILDCARD && self.host.parse::<IpAddr>().is_err() {
            return Err(format!("the host `{}` is neither `*` nor an IP address", self.host));
        }
        if self.resource_name.is_empty() {
            return Err("the resource name is empty".to_owned());
        }
        if self.resource_name.len() > RESOURCE_NAME_MAX_LEN {
            return Err(format!(
                "the resource name has {} bytes, more than the {RESOURCE_NAME_MAX_LEN} allowed",
                self.resource_name.len()
            ));
        }
        if self.resource_type == ResourceType::Cluster
            && (self.resource_name != CLUSTER_RESOURCE_NAME || self.pattern_type != PatternType::Literal)
        {
            return Err(format!("a CLUSTER binding must be LITERAL and name `{CLUSTER_RESOURCE_NAME}`"));
        }
        if self.pattern_type == PatternType::Prefixed && self.resource_name == WILDCARD {
            return Err("a PREFIXED binding cannot name `*` (use a LITERAL `*`)".to_owned());
        }
        if !self.operation.applies_to(self.resource_type) {
            return Err(format!(
                "the operation {} does not apply to {} resources",
                self.operation, self.resource_type
            ));
        }
        Ok(())
    }

    /// Whether the binding's pattern selects the resource named `name` (of the binding's
    /// resource type): a literal binding its own name and, if it is `*`, every name; a
    /// prefixed binding every name that starts with its own.
    pub fn pattern_matches(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.resource_name == name || self.resource_name == WILDCARD,
            PatternType::Prefixed => name.starts_with(self.resource_name.as_str()),
        }
    }
}

/// How an [`AclFilter`] selects bindings by pattern (Kafka's PatternType in a filter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternFilter {
    /// Wire code 1 (ANY): bindings of either pattern type; a filter name must equal the
    /// binding's name.
    #[default]
    Any,
    /// Wire code 2 (MATCH): the bindings that apply to the resource the filter names (a
    /// literal binding with that name or `*`, a prefixed binding whose name is a prefix of
    /// it); with no filter name, every binding.
    Match,
    /// Wire code 3 (LITERAL) or 4 (PREFIXED): bindings of that pattern type; a filter name
    /// must equal the binding's name.
    Exactly(PatternType),
}

impl PatternFilter {
    /// The filter whose wire code is `code`: 1 Any, 2 Match, 3 and 4 Exactly; `None`
    /// otherwise.
    pub fn from_code(code: i8) -> Option<Self> {
        match code {
            1 => Some(PatternFilter::Any),
            2 => Some(PatternFilter::Match),
            _ => PatternType::from_code(code).map(PatternFilter::Exactly),
        }
    }

    /// Kafka's wire code: 1 Any, 2 Match, the pattern type's code for Exactly.
    pub fn code(self) -> i8 {
        match self {
            PatternFilter::Any => 1,
            PatternFilter::Match => 2,
            PatternFilter::Exactly(pattern_type) => pattern_type.code(),
        }
    }
}

/// Kafka's AclBindingFilter, which DescribeAcls and DeleteAcls carry: every field that is
/// `None` matches any value; the others must equal the binding's (the resource name as
/// [`PatternFilter`] says).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    /// The principal, exactly as the binding spells it (`User:*` matches only wildcard
    /// bindings).
    pub principal: Option<String>,
    /// The host, exactly as the binding spells it.
    pub host: Option<String>,
    /// The resource type.
    pub resource_type: Option<ResourceType>,
    /// The resource name; compared as `pattern` says.
    pub resource_name: Option<String>,
    /// How the resource name and pattern type select bindings.
    pub pattern: PatternFilter,
    /// The operation (All matches only bindings whose operation is All).
    pub operation: Option<Operation>,
    /// The permission.
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// Whether the filter selects `binding`.
    pub fn matches(&self, binding: &AclBinding) -> bool {
        fn field<T: PartialEq + ?Sized>(filter: Option<&T>, value: &T) -> bool {
            filter.is_none_or(|wanted| wanted == value)
        }
        if !(field(self.principal.as_deref(), binding.principal.as_str())
            && field(self.host.as_deref(), binding.host.as_str())
            && field(self.resource_type.as_ref(), &binding.resource_type)
            && field(self.operation.as_ref(), &binding.operation)
            && field(self.permission.as_ref(), &binding.permission))
        {
            return false;
        }
        match self.pattern {
            PatternFilter::Any => field(self.resource_name.as_deref(), binding.resource_name.as_str()),
            PatternFilter::Exactly(pattern_type) => {
                pattern_type == binding.pattern_type
                    && field(self.resource_name.as_deref(), binding.resource_name.as_str())
            }
            PatternFilter::Match => {
                self.resource_name.as_deref().is_none_or(|name| binding.pattern_matches(name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks Display, FromStr (in several spellings) and the wire code of every value.
    fn round_trips<T>(values: &[T])
    where
        T: Copy + fmt::Display + FromStr<Err = ParseAclError> + PartialEq + fmt::Debug,
    {
        for &value in values {
            let name = value.to_string();
            assert!(name.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{name}");
            let camel: String =
                name.split('_').map(|word| word[..1].to_owned() + &word[1..].to_ascii_lowercase()).collect();
            for spelling in [
                name.clone(),
                name.to_ascii_lowercase(),
                name.replace('_', "-"),
                name.replace('_', ""),
                camel,
            ] {
                assert_eq!(spelling.parse::<T>(), Ok(value), "{spelling}");
            }
        }
    }

    #[test]
    fn names_and_codes_round_trip() {
        round_trips(ResourceType::VALUES);
        round_trips(PatternType::VALUES);
        round_trips(Operation::VALUES);
        round_trips(Permission::VALUES);
        for &value in ResourceType::VALUES {
            assert_eq!(ResourceType::from_code(value.code()), Some(value));
        }
        for &value in PatternType::VALUES {
            assert_eq!(PatternType::from_code(value.code()), Some(value));
        }
        for &value in Operation::VALUES {
            assert_eq!(Operation::from_code(value.code()), Some(value));
        }
        for &value in Permission::VALUES {
            assert_eq!(Permission::from_code(value.code()), Some(value));
        }
        assert_eq!(ResourceType::VALUES.len(), 4);
        assert_eq!(Operation::VALUES.len(), 11);
    }

    #[test]
    fn kafka_codes_and_names() {
        let resource_types =
            [(ResourceType::Topic, 2, "TOPIC"), (ResourceType::TransactionalId, 5, "TRANSACTIONAL_ID")];
        for (value, code, name) in resource_types {
            assert_eq!((value.code(), value.to_string().as_str()), (code, name));
        }
        assert_eq!((ResourceType::Group.code(), ResourceType::Cluster.code()), (3, 4));
        assert_eq!((PatternType::Literal.code(), PatternType::Prefixed.code()), (3, 4));
        assert_eq!((Permission::Deny.code(), Permission::Allow.code()), (2, 3));
        let operations = [
            (Operation::All, 2),
            (Operation::Read, 3),
            (Operation::Write, 4),
            (Operation::Create, 5),
            (Operation::Delete, 6),
            (Operation::Alter, 7),
            (Operation::Describe, 8),
            (Operation::ClusterAction, 9),
            (Operation::DescribeConfigs, 10),
            (Operation::AlterConfigs, 11),
            (Operation::IdempotentWrite, 12),
        ];
        for (operation, code) in operations {
            assert_eq!(operation.code(), code);
        }
        assert_eq!(Operation::IdempotentWrite.to_string(), "IDEMPOTENT_WRITE");
        for code in [-1, 0, 1, 13, i8::MAX] {
            assert_eq!(Operation::from_code(code), None);
        }
        assert_eq!(ResourceType::from_code(1), None);
        assert_eq!(ResourceType::from_code(6), None);
    }

    #[test]
    fn parse_errors_name_the_accepted_values() {
        let error = "describe configs".parse::<Operation>().unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("unknown operation `describe configs`"), "{text}");
        assert!(text.contains("DESCRIBE_CONFIGS") && text.contains("IDEMPOTENT_WRITE"), "{text}");
        assert!("".parse::<Permission>().unwrap_err().to_string().contains("DENY, ALLOW"));
        assert!("any".parse::<PatternType>().is_err());
        assert!("user".parse::<ResourceType>().is_err());
    }

    #[test]
    fn pattern_filter_codes() {
        let filters = [
            (PatternFilter::Any, 1),
            (PatternFilter::Match, 2),
            (PatternFilter::Exactly(PatternType::Literal), 3),
            (PatternFilter::Exactly(PatternType::Prefixed), 4),
        ];
        for (filter, code) in filters {
            assert_eq!(filter.code(), code);
            assert_eq!(PatternFilter::from_code(code), Some(filter));
        }
        assert_eq!(PatternFilter::from_code(0), None);
        assert_eq!(PatternFilter::from_code(5), None);
        assert_eq!(PatternFilter::default(), PatternFilter::Any);
    }

    fn topic_read(name: &str, pattern_type: PatternType) -> AclBinding {
        AclBinding::any_host(
            "User:alice",
            ResourceType::Topic,
            name,
            pattern_type,
            Operation::Read,
            Permission::Allow,
        )
    }

    #[test]
    fn validate_accepts() {
        use PatternType::*;
        let good = [
            topic_read("orders", Literal),
            topic_read("orders-", Prefixed),
            topic_read("*", Literal),
            AclBinding { principal: "User:*".to_owned(), ..topic_read("orders", Literal) },
            AclBinding { host: "10.0.0.1".to_owned(), ..topic_read("orders", Literal) },
            AclBinding { host: "::1".to_owned(), ..topic_read("orders", Literal) },
            AclBinding { resource_name: "x".repeat(RESOURCE_NAME_MAX_LEN), ..topic_read("", Literal) },
            AclBinding::any_host(
                "User:a",
                ResourceType::Cluster,
                "kafka-cluster",
                Literal,
                Operation::IdempotentWrite,
                Permission::Allow,
            ),
            AclBinding::any_host(
                "User:a",
                ResourceType::Group,
                "g",
                Prefixed,
                Operation::Delete,
                Permission::Deny,
            ),
            AclBinding::any_host(
                "User:a",
                ResourceType::TransactionalId,
                "t",
                Literal,
                Operation::Write,
                Permission::Allow,
            ),
        ];
        for binding in good {
            assert_eq!(binding.validate(), Ok(()), "{binding:?}");
        }
    }

    #[test]
    fn validate_refuses() {
        use PatternType::*;
        let bad = [
            (AclBinding { principal: "alice".to_owned(), ..topic_read("t", Literal) }, "principal"),
            (AclBinding { principal: "User:".to_owned(), ..topic_read("t", Literal) }, "principal"),
            (AclBinding { principal: "Group:x".to_owned(), ..topic_read("t", Literal) }, "principal"),
            (AclBinding { host: "example.com".to_owned(), ..topic_read("t", Literal) }, "host"),
            (AclBinding { host: String::new(), ..topic_read("t", Literal) }, "host"),
            (topic_read("", Literal), "empty"),
            (
                AclBinding {
                    resource_name: "x".repeat(RESOURCE_NAME_MAX_LEN + 1),
                    ..topic_read("", Literal)
                },
                "256 bytes",
            ),
            (topic_read("*", Prefixed), "PREFIXED"),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::Cluster,
                    "other",
                    Literal,
                    Operation::Alter,
                    Permission::Allow,
                ),
                "CLUSTER",
            ),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::Cluster,
                    "kafka-cluster",
                    Prefixed,
                    Operation::Alter,
                    Permission::Allow,
                ),
                "CLUSTER",
            ),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::Group,
                    "g",
                    Literal,
                    Operation::Write,
                    Permission::Allow,
                ),
                "WRITE",
            ),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::Topic,
                    "t",
                    Literal,
                    Operation::ClusterAction,
                    Permission::Allow,
                ),
                "CLUSTER_ACTION",
            ),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::Topic,
                    "t",
                    Literal,
                    Operation::IdempotentWrite,
                    Permission::Deny,
                ),
                "IDEMPOTENT_WRITE",
            ),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::TransactionalId,
                    "t",
                    Literal,
                    Operation::Read,
                    Permission::Allow,
                ),
                "READ",
            ),
            (
                AclBinding::any_host(
                    "User:a",
                    ResourceType::Cluster,
                    "kafka-cluster",
                    Literal,
                    Operation::Read,
                    Permission::Allow,
                ),
                "READ",
            ),
        ];
        for (binding, message) in bad {
            let error = binding.validate().unwrap_err();
            assert!(error.contains(message), "{binding:?}: {error}");
        }
    }

    #[test]
    fn operation_table() {
        let count =
            |resource_type| Operation::VALUES.iter().filter(|op| op.applies_to(resource_type)).count();
        assert_eq!(count(ResourceType::Topic), 9);
        assert_eq!(count(ResourceType::Group), 4);
        assert_eq!(count(ResourceType::Cluster), 8);
        assert_eq!(count(ResourceType::TransactionalId), 3);
    }

    #[test]
    fn filter_any_and_exactly() {
        use PatternType::*;
        let literal = topic_read("orders", Literal);
        let prefixed = topic_read("orders", Prefixed);
        let wildcard = topic_read("*", Literal);
        let any = AclFilter::default();
        assert!(any.matches(&literal) && any.matches(&prefixed) && any.matches(&wildcard));

        let named = AclFilter { resource_name: Some("orders".to_owned()), ..AclFilter::default() };
        assert!(named.matches(&literal) && named.matches(&prefixed));
        assert!(!named.matches(&wildcard));
        let prefix_of = AclFilter { resource_name: Some("orders-eu".to_owned()), ..AclFilter::default() };
        assert!(!prefix_of.matches(&prefixed), "Any compares names exactly");

        let exactly = AclFilter { pattern: PatternFilter::Exactly(Prefixed), ..named.clone() };
        assert!(exactly.matches(&prefixed) && !exactly.matches(&literal));
        let exactly_any_name = AclFilter { pattern: PatternFilter::Exactly(Literal), ..AclFilter::default() };
        assert!(exactly_any_name.matches(&literal) && exactly_any_name.matches(&wildcard));
        assert!(!exactly_any_name.matches(&prefixed));
    }

    #[test]
    fn filter_match() {
        use PatternType::*;
        let filter = AclFilter {
            resource_name: Some("orders-eu".to_owned()),
            pattern: PatternFilter::Match,
            ..AclFilter::default()
        };
        assert!(filter.matches(&topic_read("orders-eu", Literal)));
        assert!(filter.matches(&topic_read("*", Literal)));
        assert!(filter.matches(&topic_read("orders-", Prefixed)));
        assert!(filter.matches(&topic_read("orders-eu", Prefixed)));
        assert!(!filter.matches(&topic_read("orders", Literal)));
        assert!(!filter.matches(&topic_read("orders-eu-1", Prefixed)));
        assert!(!filter.matches(&topic_read("payments", Prefixed)));
        let everything = AclFilter { pattern: PatternFilter::Match, ..AclFilter::default() };
        assert!(everything.matches(&topic_read("orders", Prefixed)));
        assert!(everything.matches(&topic_read("x", Literal)));
    }

    #[test]
    fn filter_other_fields() {
        let target = topic_read("orders", PatternType::Literal);
        let cases = [
            (AclFilter { principal: Some("User:alice".to_owned()), ..AclFilter::default() }, true),
            (AclFilter { principal: Some("User:*".to_owned()), ..AclFilter::default() }, false),
            (AclFilter { host: Some("*".to_owned()), ..AclFilter::default() }, true),
            (AclFilter { host: Some("10.0.0.1".to_owned()), ..AclFilter::default() }, false),
            (AclFilter { resource_type: Some(ResourceType::Topic), ..AclFilter::default() }, true),
            (AclFilter { resource_type: Some(ResourceType::Group), ..AclFilter::default() }, false),
            (AclFilter { operation: Some(Operation::Read), ..AclFilter::default() }, true),
            (AclFilter { operation: Some(Operation::All), ..AclFilter::default() }, false),
            (AclFilter { permission: Some(Permission::Allow), ..AclFilter::default() }, true),
            (AclFilter { permission: Some(Permission::Deny), ..AclFilter::default() }, false),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&target), expected, "{filter:?}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let binding = topic_read("orders", PatternType::Prefixed);
        let json = serde_json::to_string(&binding).unwrap();
        assert_eq!(serde_json::from_str::<AclBinding>(&json).unwrap(), binding);
        let filter =
            AclFilter { pattern: PatternFilter::Exactly(PatternType::Literal), ..AclFilter::default() };
        let json = serde_json::to_string(&filter).unwrap();
        assert_eq!(serde_json::from_str::<AclFilter>(&json).unwrap(), filter);
    }
}
