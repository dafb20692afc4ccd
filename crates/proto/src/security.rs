//! Users, credentials and ACLs on the wire: conversions between the protobuf messages and
//! [`runnel_auth`]'s types (which know nothing of gRPC), and the gRPC client credentials.
//!
//! A client authenticates on the gRPC API with the `authorization` metadata entry holding
//! `Basic base64(user ":" password)` (RFC 7617), checked against the same SCRAM credentials
//! the Kafka listener's SASL uses. Send it only over TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use runnel_auth::acl::{
    AclBinding, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType,
};
use runnel_auth::scram::{Mechanism, ScramCredential};
use runnel_auth::{AuthStore, Principal, Security};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::pb::runnel::v1 as pb;

/// The gRPC metadata key of a client's credentials.
pub const AUTHORIZATION: &str = "authorization";

/// Kafka's code for ANY in a filter's enums.
const ANY: i32 = 1;

/// A client's credentials, sent with every call (or nothing, for a cluster without
/// authentication): a tonic interceptor.
#[derive(Clone, Default)]
pub struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(if self.0.is_some() { "Credentials(Basic ***)" } else { "Credentials(none)" })
    }
}

impl Credentials {
    /// No credentials.
    pub fn none() -> Self {
        Credentials(None)
    }

    /// `user` and `password`, as Basic credentials; a user name with `:` or control
    /// characters is refused.
    pub fn basic(user: &str, password: &str) -> Result<Self, String> {
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(format!(
                "{user:?} cannot be a user name here (empty, or it has ':' or control characters)"
            ));
        }
        let value = basic_credentials(user, password)
            .parse()
            .map_err(|_| "the credentials are not valid gRPC metadata".to_owned())?;
        Ok(Credentials(Some(value)))
    }

    /// Whether there are any.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the client's [`Credentials`] with every call.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>;

/// The `authorization` value for `user` and `password`.
pub fn basic_credentials(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// The user and password of an `authorization` value, if it is well-formed Basic credentials.
pub fn parse_basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

/// Who made a gRPC call on a listener where authentication is on: put in the request's
/// extensions by [`Authenticated`], read by the handlers to authorize each resource. A call
/// without one came where authentication is off (or from another node, on the internal
/// listener), and is not checked.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated user, or `User:ANONYMOUS` while the cluster has no user at all.
    pub principal: Principal,
    /// Whether the caller proved who it is (false only for the anonymous first caller).
    pub authenticated: bool,
    /// Its address.
    pub addr: SocketAddr,
    /// The users and ACLs to check it against.
    pub store: Arc<AuthStore>,
}

impl Caller {
    /// Whether the caller may do `operation` on the resource.
    pub fn allowed(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        self.store.authorize(&self.principal, self.addr.ip(), operation, resource_type, name)
    }

    /// Whether the caller may use an idempotent producer, as Kafka since 3.0 (KIP-679) has
    /// it: IDEMPOTENT_WRITE on the cluster, or WRITE on at least one topic (some ALLOW
    /// binding for WRITE or ALL on a topic naming the caller or everyone).
    pub fn may_produce_idempotently(&self) -> bool {
        self.store.may_produce_idempotently(&self.principal, self.addr.ip())
    }

    /// For a long-lived call (a stream), checked again as it goes on: the user still exists
    /// (it was not deleted since the call began) and still may do `operation`.
    pub fn recheck(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), tonic::Status> {
        if self.authenticated && !self.store.security().users.contains_key(self.principal.name()) {
            return Err(kafka_status(
                tonic::Code::Unauthenticated,
                format!("user {} no longer exists", self.principal.name()),
                58,
                "SASL_AUTHENTICATION_FAILED",
            ));
        }
        self.check(operation, resource_type, name)
    }

    /// Ok if the caller may do `operation` on the resource, PERMISSION_DENIED naming them all
    /// otherwise (Kafka's *_AUTHORIZATION_FAILED).
    pub fn check(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), tonic::Status> {
        if self.allowed(operation, resource_type, name) {
            return Ok(());
        }
        Err(denied(&self.principal, operation, resource_type, name))
    }
}

/// The PERMISSION_DENIED status for `principal` lacking `operation` on a resource.
pub fn denied(
    principal: &Principal,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> tonic::Status {
    let (code, kafka_name) = match resource_type {
        ResourceType::Topic => (29, "TOPIC_AUTHORIZATION_FAILED"),
        ResourceType::Group => (30, "GROUP_AUTHORIZATION_FAILED"),
        ResourceType::Cluster => (31, "CLUSTER_AUTHORIZATION_FAILED"),
        ResourceType::TransactionalId => (53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"),
    };
    kafka_status(
        tonic::Code::PermissionDenied,
        format!("{principal} is not authorized to {operation} {resource_type} {name}"),
        code,
        kafka_name,
    )
}

/// A status carrying Kafka's error `code` and `name` (`runnel-error-code`, `runnel-error-name`).
pub fn kafka_status(grpc: tonic::Code, message: String, code: i16, name: &'static str) -> tonic::Status {
    let mut status = tonic::Status::new(grpc, message);
    let metadata = status.metadata_mut();
    if let Ok(v) = code.to_string().parse() {
        metadata.insert("runnel-error-code", v);
    }
    metadata.insert("runnel-error-name", tonic::metadata::MetadataValue::from_static(name));
    status
}

/// The caller of a request, if authentication is on where it came in.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

/// Checks `operation` on a resource for the caller of `request`: always Ok where
/// authentication is off.
pub fn check<T>(
    request: &tonic::Request<T>,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> Result<(), tonic::Status> {
    caller(request).map_or(Ok(()), |c| c.check(operation, resource_type, name))
}

/// The caller's address, if the transport knows it.
fn remote_addr(request: &http::Request<Body>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr).or_else(|| {
        extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr())
    })
}

/// A gRPC service that requires credentials: each call carries the `authorization` entry
/// ([`basic_credentials`]) of a user whose SCRAM credential the password matches, or is
/// refused with UNAUTHENTICATED; an accepted call gets its [`Caller`]. While the cluster has
/// no user at all, a call without credentials passes as `User:ANONYMOUS`, which no ACL
/// names: it can do only what needs no authorization (create the first super user from the
/// node's loopback, see the controller's UpsertUser).
///
/// A password not checked before costs a PBKDF2 (milliseconds of CPU): it runs on the
/// blocking pool, at most [`PASSWORD_CHECKS_MAX`] at once per service, so that a client
/// sending wrong passwords on many streams cannot take the async workers (heartbeats, Raft)
/// from the node; a password checked before is answered from the store's cache at once.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    store: Arc<AuthStore>,
    checks: Arc<tokio::sync::Semaphore>,
}

/// Passwords checked at once (PBKDF2) per [`Authenticated`] service.
pub const PASSWORD_CHECKS_MAX: usize = 2;

impl<S: NamedService> Authenticated<S> {
    /// `inner`, behind the users of `store`.
    pub fn new(inner: S, store: Arc<AuthStore>) -> Self {
        Authenticated { inner, store, checks: Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS_MAX)) }
    }
}

/// What a call's credentials need before it may go on.
enum Login {
    /// Decided now.
    Decided(Result<Caller, String>),
    /// A password to check (PBKDF2) first.
    Check { user: String, password: String },
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: NamedService
        + Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // Host-scoped ACLs need the caller's address: without it, refuse rather than guess.
        let Some(addr) = remote_addr(&request) else {
            let status = tonic::Status::unauthenticated("the caller's address is unknown");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let header = request.headers().get(AUTHORIZATION).map(|v| v.to_str().map(str::to_owned));
        let store = Arc::clone(&self.store);
        let caller_store = Arc::clone(&store);
        let user_caller = move |user: &str| Caller {
            principal: Principal::user(user),
            authenticated: true,
            addr,
            store: Arc::clone(&caller_store),
        };
        let login = match header {
            Some(Ok(value)) => match parse_basic_credentials(&value) {
                Some((user, password)) if store.verified_before(&user, &password) => {
                    Login::Decided(Ok(user_caller(&user)))
                }
                Some((user, password)) => Login::Check { user, password },
                None => Login::Decided(Err(
                    "malformed authorization metadata: expected `Basic base64(user:password)`".to_owned(),
                )),
            },
            Some(Err(_)) => Login::Decided(Err("malformed authorization metadata: not ASCII".to_owned())),
            None if !store.has_users() => Login::Decided(Ok(Caller {
                principal: Principal::anonymous(),
                authenticated: false,
                addr,
                store: Arc::clone(&store),
            })),
            None => Login::Decided(Err("this cluster requires authentication: give a user and password (runnel --user, RUNNEL_USER and RUNNEL_PASSWORD)".to_owned())),
        };
        let refuse = move |message: String| {
            tracing::info!(client = %addr, service = S::NAME, "grpc: refused an unauthenticated call: {message}");
            // Kafka's SASL_AUTHENTICATION_FAILED, so clients name it.
            kafka_status(tonic::Code::Unauthenticated, message, 58, "SASL_AUTHENTICATION_FAILED").into_http()
        };
        match login {
            Login::Decided(Ok(caller)) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Login::Decided(Err(message)) => Box::pin(std::future::ready(Ok(refuse(message)))),
            Login::Check { user, password } => {
                // The service made ready goes into the future; a fresh clone stays behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let checks = Arc::clone(&self.checks);
                Box::pin(async move {
                    let verified = {
                        let _slot = checks.acquire_owned().await;
                        let (store, user) = (Arc::clone(&store), user.clone());
                        tokio::task::spawn_blocking(move || store.verify_password(&user, &password))
                            .await
                            .unwrap_or(false)
                    };
                    if !verified {
                        return Ok(refuse(format!(
                            "authentication failed for user {user}: invalid credentials"
                        )));
                    }
                    request.extensions_mut().insert(user_caller(&user));
                    inner.call(request).await
                })
            }
        }
    }
}

/// A credential as the wire carries it.
pub fn credential_to_pb(credential: &ScramCredential) -> pb::ScramCredential {
    pb::ScramCredential {
        mechanism: credential.mechanism.name().to_owned(),
        salt: credential.salt.clone(),
        stored_key: credential.stored_key.clone(),
        server_key: credential.server_key.clone(),
        iterations: credential.iterations,
    }
}

/// A credential off the wire; an unknown mechanism or a credential invalid for its
/// mechanism is refused with the reason.
pub fn credential_from_pb(credential: pb::ScramCredential) -> Result<ScramCredential, String> {
    let mechanism = mechanism_from_name(&credential.mechanism)?;
    let credential = ScramCredential {
        mechanism,
        salt: credential.salt,
        stored_key: credential.stored_key,
        server_key: credential.server_key,
        iterations: credential.iterations,
    };
    credential.validate()?;
    Ok(credential)
}

/// The mechanism Kafka names `name`.
pub fn mechanism_from_name(name: &str) -> Result<Mechanism, String> {
    Mechanism::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        format!("unknown SASL mechanism '{name}' (known: {})", known.join(", "))
    })
}

fn code(value: i32, what: &str) -> Result<i8, String> {
    i8::try_from(value).map_err(|_| format!("{what} code {value} is out of range"))
}

fn resource_type(value: i32) -> Result<ResourceType, String> {
    ResourceType::from_code(code(value, "resource type")?)
        .ok_or_else(|| format!("unknown resource type code {value}"))
}

fn pattern_type(value: i32) -> Result<PatternType, String> {
    PatternType::from_code(code(value, "pattern type")?)
        .ok_or_else(|| format!("unknown pattern type code {value}"))
}

fn operation(value: i32) -> Result<Operation, String> {
    Operation::from_code(code(value, "operation")?).ok_or_else(|| format!("unknown operation code {value}"))
}

fn permission(value: i32) -> Result<Permission, String> {
    Permission::from_code(code(value, "permission")?)
        .ok_or_else(|| format!("unknown permission code {value}"))
}

/// A binding as the wire carries it.
pub fn acl_to_pb(acl: &AclBinding) -> pb::AclBinding {
    pb::AclBinding {
        principal: acl.principal.clone(),
        host: acl.host.clone(),
        resource_type: acl.resource_type.code().into(),
        resource_name: acl.resource_name.clone(),
        pattern_type: acl.pattern_type.code().into(),
        operation: acl.operation.code().into(),
        permission: acl.permission.code().into(),
    }
}

/// A binding off the wire, checked ([`AclBinding::validate`]).
pub fn acl_from_pb(acl: pb::AclBinding) -> Result<AclBinding, String> {
    let binding = AclBinding {
        principal: acl.principal,
        host: acl.host,
        resource_type: resource_type(acl.resource_type)?,
        resource_name: acl.resource_name,
        pattern_type: pattern_type(acl.pattern_type)?,
        operation: operation(acl.operation)?,
        permission: permission(acl.permission)?,
    };
    binding.validate()?;
    Ok(binding)
}

/// A filter as the wire carries it.
pub fn filter_to_pb(filter: &AclFilter) -> pb::AclFilter {
    pb::AclFilter {
        principal: filter.principal.clone(),
        host: filter.host.clone(),
        resource_type: filter.resource_type.map_or(ANY, |t| t.code().into()),
        resource_name: filter.resource_name.clone(),
        pattern_type: filter.pattern.code().into(),
        operation: filter.operation.map_or(ANY, |o| o.code().into()),
        permission: filter.permission.map_or(ANY, |p| p.code().into()),
    }
}

/// A filter off the wire: 0 (unset) and 1 (ANY) mean any.
pub fn filter_from_pb(filter: pb::AclFilter) -> Result<AclFilter, String> {
    let any = |v: i32| v == 0 || v == ANY;
    Ok(AclFilter {
        principal: filter.principal,
        host: filter.host,
        resource_type: if any(filter.resource_type) {
            None
        } else {
            Some(resource_type(filter.resource_type)?)
        },
        resource_name: filter.resource_name,
        pattern: if filter.pattern_type == 0 {
            PatternFilter::Any
        } else {
            PatternFilter::from_code(code(filter.pattern_type, "pattern type")?)
                .ok_or_else(|| format!("unknown pattern type code {}", filter.pattern_type))?
        },
        operation: if any(filter.operation) { None } else { Some(operation(filter.operation)?) },
        permission: if any(filter.permission) { None } else { Some(permission(filter.permission)?) },
    })
}

/// The users and ACLs as the metadata watch carries them.
pub fn security_to_pb(security: &Security) -> pb::SecurityState {
    pb::SecurityState {
        users: security
            .users
            .iter()
            .map(|(name, credentials)| pb::UserCredentials {
                name: name.clone(),
                credentials: credentials.values().map(credential_to_pb).collect(),
            })
            .collect(),
        acls: security.acls.iter().map(acl_to_pb).collect(),
    }
}

/// The users and ACLs off the metadata watch, every credential and binding checked.
pub fn security_from_pb(state: pb::SecurityState) -> Result<Security, String> {
    let mut security = Security::default();
    for user in state.users {
        let credentials = security.users.entry(user.name.clone()).or_default();
        for credential in user.credentials {
            let credential =
                credential_from_pb(credential).map_err(|e| format!("user {}: {e}", user.name))?;
            credentials.insert(credential.mechanism, credential);
        }
    }
    for acl in state.acls {
        security.acls.insert(acl_from_pb(acl)?);
    }
    Ok(security)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_round_trip_and_garbage_is_refused() {
        let value = basic_credentials("alice", "pa:ss word");
        assert_eq!(parse_basic_credentials(&value), Some(("alice".to_owned(), "pa:ss word".to_owned())));
        for bad in ["", "Basic", "Bearer abc", "Basic !!!", "Basic bm9jb2xvbg==", "Basic OnB3"] {
            assert_eq!(parse_basic_credentials(bad), None, "{bad}");
        }
    }

    #[test]
    fn bindings_filters_and_credentials_round_trip() {
        let acl = AclBinding::any_host(
            "User:alice",
            ResourceType::Topic,
            "orders",
            PatternType::Prefixed,
            Operation::Read,
            Permission::Allow,
        );
        assert_eq!(acl_from_pb(acl_to_pb(&acl)), Ok(acl.clone()));
        let filter = AclFilter {
            resource_type: Some(ResourceType::Topic),
            resource_name: Some("orders-1".to_owned()),
            pattern: PatternFilter::Match,
            ..AclFilter::default()
        };
        assert_eq!(filter_from_pb(filter_to_pb(&filter)), Ok(filter.clone()));
        assert!(filter.matches(&acl));
        let mut wire = acl_to_pb(&acl);
        wire.operation = 99;
        assert!(acl_from_pb(wire).is_err());
        let credential = ScramCredential::from_salt(Mechanism::ScramSha512, "secret", b"salt", 4096);
        assert_eq!(credential_from_pb(credential_to_pb(&credential)), Ok(credential.clone()));
        let mut short = credential_to_pb(&credential);
        short.stored_key.truncate(3);
        assert!(credential_from_pb(short).is_err());
        let mut security = Security::default();
        security.users.entry("alice".to_owned()).or_default().insert(credential.mechanism, credential);
        security.acls.insert(acl);
        assert_eq!(security_from_pb(security_to_pb(&security)), Ok(security));
    }
}
