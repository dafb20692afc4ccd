//! Runnel's client authentication and authorization, free of any transport: SASL
//! SCRAM-SHA-256/512 ([`scram`]) and PLAIN ([`plain`]) as Kafka's SaslAuthenticate carries
//! them, Kafka's ACL model ([`acl`]) and StandardAuthorizer rules ([`authorizer`]), and the
//! node's live view of users and ACLs ([`store`]).
//!
//! Everything that parses bytes from the network returns an error for bad input; nothing
//! here panics on input.

pub mod acl;
pub mod authorizer;
pub mod error;
pub mod plain;
pub mod scram;
pub mod store;

pub use acl::{AclBinding, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType};
pub use authorizer::{Principal, Security, authorize};
pub use error::SaslError;
pub use plain::parse_plain;
pub use scram::{Mechanism, ScramCredential, ScramServer};
pub use store::AuthStore;
