//! Kafka's ACL administration (CreateAcls, DescribeAcls, DeleteAcls, v1 to v3), and the
//! helpers every handler's authorization uses: the refusal message and error, and the
//! authorized-operations bitfields.
//!
//! Creations and deletions go to the controller quorum; descriptions are answered from this
//! broker's view of the ACLs. With authorization off (no auth store), all three answer
//! SECURITY_DISABLED, as Kafka does without an authorizer.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use kafka_protocol::messages::create_acls_request::{AclCreation, CreateAclsRequest};
use kafka_protocol::messages::create_acls_response::{AclCreationResult, CreateAclsResponse};
use kafka_protocol::messages::delete_acls_request::{DeleteAclsFilter, DeleteAclsRequest};
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl, DeleteAclsResponse,
};
use kafka_protocol::messages::describe_acls_request::DescribeAclsRequest;
use kafka_protocol::messages::describe_acls_response::{
    AclDescription, DescribeAclsResource, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use runnel_auth::acl::{
    AclBinding, AclFilter, CLUSTER_RESOURCE_NAME, Operation, PatternFilter, PatternType, Permission,
    ResourceType,
};
use runnel_auth::{AuthStore, Principal};
use runnel_broker::BrokerError;

use super::{Client, code, s};
use crate::Context;

/// Kafka's message when there is no authorizer.
const NO_AUTHORIZER: &str = "No Authorizer is configured on the broker";
/// Kafka's wire code for ANY in a filter's enums.
const ANY: i8 = 1;
/// How long a CreateAcls or DeleteAcls waits for its change to reach this broker's view of
/// the ACLs, so that a DescribeAcls (or a request authorized) here right after sees it.
const ACLS_VISIBLE_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Authorization helpers for every handler.

/// The client's principal, for messages (`User:ANONYMOUS` where there is none).
fn principal(client: &Client) -> Principal {
    client.principal.clone().unwrap_or_else(Principal::anonymous)
}

/// The message of an authorization refusal: "User:alice is not authorized to WRITE TOPIC
/// orders".
pub(crate) fn denied(
    client: &Client,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> String {
    format!("{} is not authorized to {operation} {resource_type} {name}", principal(client))
}

/// Ok if the client may do `operation` on the resource; otherwise the refusal's message
/// ([`denied`]).
pub(crate) fn authorize(
    ctx: &Context,
    client: &Client,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> Result<(), String> {
    if client.allowed(ctx, operation, resource_type, name) {
        Ok(())
    } else {
        Err(denied(client, operation, resource_type, name))
    }
}

/// The refusal as a broker error (TOPIC_, GROUP_ or CLUSTER_AUTHORIZATION_FAILED), for the
/// handlers that log refusals ([`runnel_broker::error::Refusal`]).
pub(crate) fn unauthorized(
    client: &Client,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> BrokerError {
    BrokerError::unauthorized(&principal(client), operation, resource_type, name)
}

/// Whether the client may create the topic `name`: CREATE on the cluster or on the topic.
pub(crate) fn may_create_topic(ctx: &Context, client: &Client, name: &str) -> bool {
    client.allowed(ctx, Operation::Create, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
        || client.allowed(ctx, Operation::Create, ResourceType::Topic, name)
}

/// Kafka's authorized-operations bitfield: bit `code` set for each operation (other than
/// All) that applies to `resource_type` and that `allowed` grants.
fn operations_bitfield(resource_type: ResourceType, mut allowed: impl FnMut(Operation) -> bool) -> i32 {
    Operation::VALUES
        .iter()
        .copied()
        .filter(|&op| op != Operation::All && op.applies_to(resource_type) && allowed(op))
        .fold(0, |bits, op| bits | (1 << op.code()))
}

/// The operations the client may do on the resource, as Kafka's authorized-operations
/// bitfield (every operation of the type where authorization is off).
pub(crate) fn authorized_operations(
    ctx: &Context,
    client: &Client,
    resource_type: ResourceType,
    name: &str,
) -> i32 {
    operations_bitfield(resource_type, |op| client.allowed(ctx, op, resource_type, name))
}

// ---------------------------------------------------------------------------------------
// Conversions between Kafka's structs and runnel_auth's.

/// The value of `values` whose wire code is `code`, or why there is none.
fn known<T: Copy + fmt::Display>(
    what: &str,
    code: i8,
    values: &[T],
    code_of: fn(T) -> i8,
) -> Result<T, String> {
    values.iter().copied().find(|&v| code_of(v) == code).ok_or_else(|| {
        let expected: Vec<String> = values.iter().map(|&v| format!("{v} ({})", code_of(v))).collect();
        format!("the {what} code {code} is not one of {}", expected.join(", "))
    })
}

/// A filter's enum field: ANY (1) is `None`, otherwise one of `values`.
fn known_or_any<T: Copy + fmt::Display>(
    what: &str,
    code: i8,
    values: &[T],
    code_of: fn(T) -> i8,
) -> Result<Option<T>, String> {
    if code == ANY {
        return Ok(None);
    }
    known(what, code, values, code_of).map(Some).map_err(|e| format!("{e}, or ANY ({ANY})"))
}

/// One CreateAcls creation as a binding, checked as Kafka's CreateAcls checks it
/// ([`AclBinding::validate`]); the error says what is wrong.
pub(crate) fn creation_binding(creation: &AclCreation) -> Result<AclBinding, String> {
    let binding = AclBinding {
        principal: creation.principal.to_string(),
        host: creation.host.to_string(),
        resource_type: known(
            "resource type",
            creation.resource_type,
            ResourceType::VALUES,
            ResourceType::code,
        )?,
        resource_name: creation.resource_name.to_string(),
        pattern_type: known(
            "pattern type",
            creation.resource_pattern_type,
            PatternType::VALUES,
            PatternType::code,
        )?,
        operation: known("operation", creation.operation, Operation::VALUES, Operation::code)?,
        permission: known("permission", creation.permission_type, Permission::VALUES, Permission::code)?,
    };
    binding.validate()?;
    Ok(binding)
}

/// A filter's fields as DescribeAcls and DeleteAcls carry them.
struct FilterFields<'a> {
    resource_type: i8,
    resource_name: Option<&'a StrBytes>,
    pattern_type: i8,
    principal: Option<&'a StrBytes>,
    host: Option<&'a StrBytes>,
    operation: i8,
    permission: i8,
}

impl FilterFields<'_> {
    /// The filter: ANY (1) and null strings match anything; pattern type 1 is ANY, 2 MATCH,
    /// 3 LITERAL, 4 PREFIXED. The error says which code is wrong.
    fn filter(&self) -> Result<AclFilter, String> {
        let pattern = PatternFilter::from_code(self.pattern_type).ok_or_else(|| {
            format!(
                "the pattern type code {} is not one of ANY (1), MATCH (2), LITERAL (3), PREFIXED (4)",
                self.pattern_type
            )
        })?;
        Ok(AclFilter {
            principal: self.principal.map(ToString::to_string),
            host: self.host.map(ToString::to_string),
            resource_type: known_or_any(
                "resource type",
                self.resource_type,
                ResourceType::VALUES,
                ResourceType::code,
            )?,
            resource_name: self.resource_name.map(ToString::to_string),
            pattern,
            operation: known_or_any("operation", self.operation, Operation::VALUES, Operation::code)?,
            permission: known_or_any("permission", self.permission, Permission::VALUES, Permission::code)?,
        })
    }
}

/// DescribeAcls's filter.
pub(crate) fn describe_filter(r: &DescribeAclsRequest) -> Result<AclFilter, String> {
    FilterFields {
        resource_type: r.resource_type_filter,
        resource_name: r.resource_name_filter.as_ref(),
        pattern_type: r.pattern_type_filter,
        principal: r.principal_filter.as_ref(),
        host: r.host_filter.as_ref(),
        operation: r.operation,
        permission: r.permission_type,
    }
    .filter()
}

/// One DeleteAcls filter.
pub(crate) fn delete_filter(f: &DeleteAclsFilter) -> Result<AclFilter, String> {
    FilterFields {
        resource_type: f.resource_type_filter,
        resource_name: f.resource_name_filter.as_ref(),
        pattern_type: f.pattern_type_filter,
        principal: f.principal_filter.as_ref(),
        host: f.host_filter.as_ref(),
        operation: f.operation,
        permission: f.permission_type,
    }
    .filter()
}

/// The bindings grouped by resource (type, name, pattern type), as DescribeAcls answers
/// them: resources in (type, name, pattern type) order, each one's entries in the bindings'
/// order.
pub(crate) fn describe_resources<'a>(
    acls: impl IntoIterator<Item = &'a AclBinding>,
) -> Vec<DescribeAclsResource> {
    let mut by_resource: BTreeMap<(ResourceType, &str, PatternType), Vec<AclDescription>> = BTreeMap::new();
    for acl in acls {
        by_resource
            .entry((acl.resource_type, acl.resource_name.as_str(), acl.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(acl.principal.clone()))
                    .with_host(s(acl.host.clone()))
                    .with_operation(acl.operation.code())
                    .with_permission_type(acl.permission.code()),
            );
    }
    by_resource
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type.code())
                .with_resource_name(s(name))
                .with_pattern_type(pattern_type.code())
                .with_acls(acls)
        })
        .collect()
}

/// A deleted binding, as DeleteAcls answers it.
pub(crate) fn matching_acl(acl: &AclBinding) -> DeleteAclsMatchingAcl {
    DeleteAclsMatchingAcl::default()
        .with_resource_type(acl.resource_type.code())
        .with_resource_name(s(acl.resource_name.clone()))
        .with_pattern_type(acl.pattern_type.code())
        .with_principal(s(acl.principal.clone()))
        .with_host(s(acl.host.clone()))
        .with_operation(acl.operation.code())
        .with_permission_type(acl.permission.code())
}

// ---------------------------------------------------------------------------------------
// The handlers.

/// The auth store, or the code and message every answer carries without one (or without
/// `operation` on the cluster).
fn admit<'a>(
    ctx: &'a Context,
    client: &Client,
    operation: Operation,
) -> Result<&'a AuthStore, (i16, String)> {
    authorize(ctx, client, operation, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
        .map_err(|message| (code::CLUSTER_AUTHORIZATION_FAILED, message))?;
    ctx.auth.as_deref().ok_or_else(|| (code::SECURITY_DISABLED, NO_AUTHORIZER.to_owned()))
}

fn creation_result(error: i16, message: Option<String>) -> AclCreationResult {
    AclCreationResult::default().with_error_code(error).with_error_message(message.map(s))
}

/// CreateAcls: needs ALTER on the cluster. Each creation is checked here (INVALID_REQUEST
/// with the reason); the valid ones go to the controller in one call, and share its outcome.
pub(crate) async fn create_acls(ctx: &Context, r: CreateAclsRequest, client: &Client) -> CreateAclsResponse {
    let store = match admit(ctx, client, Operation::Alter) {
        Ok(store) => store,
        Err((error, message)) => {
            let results = vec![creation_result(error, Some(message)); r.creations.len()];
            return CreateAclsResponse::default().with_results(results);
        }
    };
    let converted: Vec<Result<AclBinding, String>> = r.creations.iter().map(creation_binding).collect();
    let valid: Vec<AclBinding> = converted.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
    let outcome = if valid.is_empty() { Ok(()) } else { ctx.admin.create_acls(valid.clone()).await };
    match &outcome {
        Ok(()) if !valid.is_empty() => {
            tracing::info!(
                client = %client.addr,
                principal = %principal(client),
                count = valid.len(),
                "kafka: created ACLs"
            );
            let visible = || {
                let security = store.security();
                valid.iter().all(|acl| security.acls.contains(acl))
            };
            ctx.admin.wait_for_metadata(ACLS_VISIBLE_WAIT, visible).await;
        }
        Ok(()) => {}
        Err(e) => tracing::info!(client = %client.addr, "kafka: creating ACLs failed: {e}"),
    }
    let results = converted
        .into_iter()
        .map(|c| match (c, &outcome) {
            (Err(reason), _) => creation_result(code::INVALID_REQUEST, Some(reason)),
            (Ok(_), Ok(())) => creation_result(code::NONE, None),
            (Ok(_), Err(e)) => creation_result(e.code, Some(e.message.clone())),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

fn filter_result(error: i16, message: Option<String>) -> DeleteAclsFilterResult {
    DeleteAclsFilterResult::default().with_error_code(error).with_error_message(message.map(s))
}

/// DeleteAcls: needs ALTER on the cluster. Each filter is checked here (INVALID_REQUEST with
/// the reason); the valid ones go to the controller in one call, and each filter's result
/// lists the deleted bindings it matches.
pub(crate) async fn delete_acls(ctx: &Context, r: DeleteAclsRequest, client: &Client) -> DeleteAclsResponse {
    let store = match admit(ctx, client, Operation::Alter) {
        Ok(store) => store,
        Err((error, message)) => {
            let results = vec![filter_result(error, Some(message)); r.filters.len()];
            return DeleteAclsResponse::default().with_filter_results(results);
        }
    };
    let converted: Vec<Result<AclFilter, String>> = r.filters.iter().map(delete_filter).collect();
    let valid: Vec<AclFilter> = converted.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
    let outcome = if valid.is_empty() { Ok(Vec::new()) } else { ctx.admin.delete_acls(valid).await };
    match &outcome {
        Ok(deleted) if !deleted.is_empty() => {
            tracing::info!(
                client = %client.addr,
                principal = %principal(client),
                count = deleted.len(),
                "kafka: deleted ACLs"
            );
            let gone = || {
                let security = store.security();
                deleted.iter().all(|acl| !security.acls.contains(acl))
            };
            ctx.admin.wait_for_metadata(ACLS_VISIBLE_WAIT, gone).await;
        }
        Ok(_) => {}
        Err(e) => tracing::info!(client = %client.addr, "kafka: deleting ACLs failed: {e}"),
    }
    let results = converted
        .into_iter()
        .map(|c| match (c, &outcome) {
            (Err(reason), _) => filter_result(code::INVALID_REQUEST, Some(reason)),
            (Ok(filter), Ok(deleted)) => filter_result(code::NONE, None).with_matching_acls(
                deleted.iter().filter(|acl| filter.matches(acl)).map(matching_acl).collect(),
            ),
            (Ok(_), Err(e)) => filter_result(e.code, Some(e.message.clone())),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

/// DescribeAcls: needs DESCRIBE on the cluster; the bindings the filter matches in this
/// broker's view, grouped by resource.
pub(crate) fn describe_acls(ctx: &Context, r: &DescribeAclsRequest, client: &Client) -> DescribeAclsResponse {
    let refuse = |error: i16, message: String| {
        DescribeAclsResponse::default().with_error_code(error).with_error_message(Some(s(message)))
    };
    let store = match admit(ctx, client, Operation::Describe) {
        Ok(store) => store,
        Err((error, message)) => return refuse(error, message),
    };
    let filter = match describe_filter(r) {
        Ok(filter) => filter,
        Err(reason) => return refuse(code::INVALID_REQUEST, reason),
    };
    let security = store.security();
    DescribeAclsResponse::default()
        .with_resources(describe_resources(security.acls.iter().filter(|acl| filter.matches(acl))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creation(resource_type: i8, name: &str, pattern: i8, operation: i8, permission: i8) -> AclCreation {
        AclCreation::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_resource_pattern_type(pattern)
            .with_principal(s("User:alice"))
            .with_host(s("*"))
            .with_operation(operation)
            .with_permission_type(permission)
    }

    fn binding(
        principal: &str,
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
        operation: Operation,
    ) -> AclBinding {
        AclBinding::any_host(principal, resource_type, name, pattern_type, operation, Permission::Allow)
    }

    #[test]
    fn creations_become_bindings_with_kafkas_codes() {
        let acl = creation_binding(&creation(2, "orders", 4, 3, 3)).unwrap();
        assert_eq!(
            acl,
            binding("User:alice", ResourceType::Topic, "orders", PatternType::Prefixed, Operation::Read)
        );
        let cluster = creation_binding(&creation(4, CLUSTER_RESOURCE_NAME, 3, 7, 2)).unwrap();
        assert_eq!(
            (cluster.resource_type, cluster.operation, cluster.permission),
            (ResourceType::Cluster, Operation::Alter, Permission::Deny)
        );
        let group = creation_binding(&creation(3, "g", 3, 6, 3).with_host(s("10.0.0.1"))).unwrap();
        assert_eq!((group.resource_type, group.host.as_str()), (ResourceType::Group, "10.0.0.1"));
    }

    #[test]
    fn bad_creations_are_refused_with_the_reason() {
        // ANY and UNKNOWN codes, MATCH, codes Runnel does not model, and out-of-range ones.
        for (c, needle) in [
            (creation(1, "t", 3, 3, 3), "resource type code 1"),
            (creation(0, "t", 3, 3, 3), "resource type code 0"),
            (creation(7, "t", 3, 3, 3), "resource type code 7"),
            (creation(2, "t", 2, 3, 3), "pattern type code 2"),
            (creation(2, "t", 1, 3, 3), "pattern type code 1"),
            (creation(2, "t", 3, 1, 3), "operation code 1"),
            (creation(2, "t", 3, 13, 3), "operation code 13"),
            (creation(2, "t", 3, 3, 1), "permission code 1"),
            (creation(2, "t", 3, 3, -5), "permission code -5"),
        ] {
            let e = creation_binding(&c).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        // What AclBinding::validate refuses.
        for c in [
            creation(2, "t", 3, 3, 3).with_principal(s("alice")),
            creation(2, "t", 3, 3, 3).with_host(s("example.com")),
            creation(2, "", 3, 3, 3),
            creation(4, "other", 3, 7, 3),
            creation(2, "*", 4, 3, 3),
            creation(3, "g", 3, 4, 3),
        ] {
            assert!(creation_binding(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn filters_take_any_match_and_null_strings() {
        // What a client sends for "any": the ANY codes and null strings (the structs'
        // defaults are empty strings, which match only empty names).
        let any = DescribeAclsRequest::default()
            .with_resource_type_filter(1)
            .with_resource_name_filter(None)
            .with_pattern_type_filter(1)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1);
        assert_eq!(describe_filter(&any), Ok(AclFilter::default()));
        let empty = describe_filter(&any.clone().with_principal_filter(Some(s("")))).unwrap();
        assert_eq!(empty.principal.as_deref(), Some(""));
        let exact = DeleteAclsFilter::default()
            .with_resource_type_filter(2)
            .with_resource_name_filter(Some(s("orders")))
            .with_pattern_type_filter(3)
            .with_principal_filter(Some(s("User:bob")))
            .with_host_filter(Some(s("*")))
            .with_operation(4)
            .with_permission_type(2);
        assert_eq!(
            delete_filter(&exact),
            Ok(AclFilter {
                principal: Some("User:bob".into()),
                host: Some("*".into()),
                resource_type: Some(ResourceType::Topic),
                resource_name: Some("orders".into()),
                pattern: PatternFilter::Exactly(PatternType::Literal),
                operation: Some(Operation::Write),
                permission: Some(Permission::Deny),
            })
        );
        let matching = any.clone().with_pattern_type_filter(2).with_resource_name_filter(Some(s("orders-1")));
        let filter = describe_filter(&matching).unwrap();
        assert_eq!(filter.pattern, PatternFilter::Match);
        assert!(filter.matches(&binding(
            "User:a",
            ResourceType::Topic,
            "orders",
            PatternType::Prefixed,
            Operation::Read
        )));
        assert_eq!(
            describe_filter(&any.clone().with_pattern_type_filter(4)).unwrap().pattern,
            PatternFilter::Exactly(PatternType::Prefixed)
        );
    }

    #[test]
    fn filters_with_bad_codes_are_refused_with_the_reason() {
        let any = DeleteAclsFilter::default()
            .with_resource_type_filter(1)
            .with_pattern_type_filter(1)
            .with_operation(1)
            .with_permission_type(1);
        for (f, needle) in [
            (any.clone().with_resource_type_filter(0), "resource type code 0"),
            (any.clone().with_resource_type_filter(6), "resource type code 6"),
            (any.clone().with_pattern_type_filter(0), "pattern type code 0"),
            (any.clone().with_pattern_type_filter(5), "pattern type code 5"),
            (any.clone().with_operation(0), "operation code 0"),
            (any.clone().with_operation(99), "operation code 99"),
            (any.clone().with_permission_type(0), "permission code 0"),
            (any.clone().with_permission_type(4), "permission code 4"),
        ] {
            let e = delete_filter(&f).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn descriptions_are_grouped_by_resource() {
        let acls: std::collections::BTreeSet<AclBinding> = [
            binding("User:bob", ResourceType::Topic, "orders", PatternType::Literal, Operation::Read),
            binding("User:alice", ResourceType::Topic, "orders", PatternType::Literal, Operation::Write),
            binding("User:alice", ResourceType::Topic, "orders", PatternType::Prefixed, Operation::Read),
            binding("User:alice", ResourceType::Group, "g", PatternType::Literal, Operation::Read),
            binding(
                "User:carol",
                ResourceType::Cluster,
                CLUSTER_RESOURCE_NAME,
                PatternType::Literal,
                Operation::Alter,
            ),
        ]
        .into_iter()
        .collect();
        let resources = describe_resources(&acls);
        // (resource type, name, pattern type, [(principal, operation)]) per resource.
        type Shape<'a> = Vec<(i8, &'a str, i8, Vec<(&'a str, i8)>)>;
        let shape: Shape<'_> = resources
            .iter()
            .map(|r| {
                (
                    r.resource_type,
                    r.resource_name.as_str(),
                    r.pattern_type,
                    r.acls.iter().map(|a| (a.principal.as_str(), a.operation)).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (2, "orders", 3, vec![("User:alice", 4), ("User:bob", 3)]),
                (2, "orders", 4, vec![("User:alice", 3)]),
                (3, "g", 3, vec![("User:alice", 3)]),
                (4, CLUSTER_RESOURCE_NAME, 3, vec![("User:carol", 7)]),
            ]
        );
        assert!(
            resources.iter().flat_map(|r| &r.acls).all(|a| a.host.as_str() == "*" && a.permission_type == 3)
        );
        assert!(describe_resources(std::iter::empty()).is_empty());
    }

    #[test]
    fn deleted_bindings_are_answered_with_kafkas_codes() {
        let acl = binding("User:alice", ResourceType::Group, "g", PatternType::Prefixed, Operation::Delete);
        let m = matching_acl(&acl);
        assert_eq!((m.error_code, m.resource_type, m.resource_name.as_str(), m.pattern_type), (0, 3, "g", 4));
        assert_eq!(
            (m.principal.as_str(), m.host.as_str(), m.operation, m.permission_type),
            ("User:alice", "*", 6, 3)
        );
    }

    #[test]
    fn the_acl_answers_encode_at_every_served_version() {
        use kafka_protocol::messages::{ApiKey, ResponseKind};
        let acl =
            binding("User:alice", ResourceType::Topic, "orders", PatternType::Prefixed, Operation::Read);
        let responses = [
            (
                ApiKey::DescribeAcls,
                ResponseKind::DescribeAcls(
                    DescribeAclsResponse::default().with_resources(describe_resources([&acl])),
                ),
            ),
            (
                ApiKey::DescribeAcls,
                ResponseKind::DescribeAcls(
                    DescribeAclsResponse::default()
                        .with_error_code(code::SECURITY_DISABLED)
                        .with_error_message(Some(s(NO_AUTHORIZER))),
                ),
            ),
            (
                ApiKey::CreateAcls,
                ResponseKind::CreateAcls(CreateAclsResponse::default().with_results(vec![
                    creation_result(code::NONE, None),
                    creation_result(code::INVALID_REQUEST, Some("bad".into())),
                ])),
            ),
            (
                ApiKey::DeleteAcls,
                ResponseKind::DeleteAcls(DeleteAclsResponse::default().with_filter_results(vec![
                    filter_result(code::NONE, None).with_matching_acls(vec![matching_acl(&acl)]),
                    filter_result(code::CLUSTER_AUTHORIZATION_FAILED, Some("no".into())),
                ])),
            ),
        ];
        for (key, response) in &responses {
            let range = crate::versions::served(*key).unwrap();
            for version in range.min..=range.max {
                crate::codec::encode(*key, version, 7, response)
                    .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            }
        }
    }

    #[test]
    fn authorized_operations_are_kafkas_bitfields() {
        // Topic: READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8, DESCRIBE_CONFIGS
        // 10, ALTER_CONFIGS 11. Cluster: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
        // DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12. Group: READ 3, DELETE 6,
        // DESCRIBE 8.
        const TOPIC_OPERATIONS: i32 =
            (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
        const CLUSTER_OPERATIONS: i32 =
            (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
        const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);
        assert_eq!(operations_bitfield(ResourceType::Topic, |_| true), TOPIC_OPERATIONS);
        assert_eq!(operations_bitfield(ResourceType::Cluster, |_| true), CLUSTER_OPERATIONS);
        assert_eq!(operations_bitfield(ResourceType::Group, |_| true), GROUP_OPERATIONS);
        assert_eq!(operations_bitfield(ResourceType::Topic, |_| false), 0);
        assert_eq!(
            operations_bitfield(ResourceType::Topic, |op| matches!(
                op,
                Operation::Read | Operation::Describe
            )),
            (1 << 3) | (1 << 8)
        );
    }
}
