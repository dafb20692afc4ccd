//! A node's live view of the users and ACLs ([`AuthStore`]): the controller's metadata
//! replaces it whole; every connection reads it.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ring::digest;

use crate::acl::{Operation, ResourceType};
use crate::authorizer::{self, Principal, Security};
use crate::scram::{ITERATIONS_DEFAULT, Mechanism, ScramCredential};

/// The most password checks the cache remembers.
pub const PASSWORD_CACHE_CAPACITY: usize = 1024;

/// One successful password check: the user, the SHA-256 of the password, and the credential
/// it verified against (its mechanism and stored key, so that a changed credential misses).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    user: String,
    password_sha256: Vec<u8>,
    mechanism: Mechanism,
    stored_key: Vec<u8>,
}

/// The node's live view of the users and ACLs (replaced whole from the metadata), plus the
/// super users from its config, plus a bounded cache of successful password checks.
///
/// Shared between connections (`Send + Sync`): readers take a snapshot
/// ([`security`](Self::security)) and never wait for a password check.
#[derive(Debug)]
pub struct AuthStore {
    super_users: HashSet<Principal>,
    security: RwLock<Arc<Security>>,
    /// At most [`PASSWORD_CACHE_CAPACITY`] entries.
    password_cache: Mutex<HashSet<CacheKey>>,
}

impl AuthStore {
    /// A store with no users and no ACLs, whose super users are `super_users`.
    pub fn new(super_users: Vec<Principal>) -> Self {
        AuthStore {
            super_users: super_users.into_iter().collect(),
            security: RwLock::new(Arc::new(Security::default())),
            password_cache: Mutex::new(HashSet::new()),
        }
    }

    /// Replaces the users and ACLs with `security`, and forgets the cached password checks
    /// whose credential is no longer in it (a removed user, a changed credential).
    pub fn set(&self, security: Security) {
        let security = Arc::new(security);
        *self.security.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&security);
        let mut cache = self.password_cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|key| {
            security
                .users
                .get(&key.user)
                .and_then(|credentials| credentials.get(&key.mechanism))
                .is_some_and(|credential| credential.stored_key == key.stored_key)
        });
    }

    /// The current users and ACLs: a snapshot that later [`set`](Self::set)s do not change.
    pub fn security(&self) -> Arc<Security> {
        Arc::clone(&self.security.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether at least one user has a credential entry.
    pub fn has_users(&self) -> bool {
        !self.security().users.is_empty()
    }

    /// The credential of `user` for `mechanism`, if there is one.
    pub fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential> {
        self.security().users.get(user).and_then(|credentials| credentials.get(&mechanism)).cloned()
    }

    /// For PLAIN (Kafka) and gRPC basic credentials: whether `password` matches any of the
    /// SCRAM credentials of `user`.
    ///
    /// Successful checks are cached (key: the user, the SHA-256 of the password, and the
    /// credential's mechanism and stored key, so that a changed credential misses), at most
    /// [`PASSWORD_CACHE_CAPACITY`] of them (an arbitrary one is evicted when full), so that
    /// PBKDF2's cost is paid once per user and password rather than per request. Failed
    /// checks are not cached: each costs one PBKDF2 per credential of the user. An unknown
    /// user costs nothing and is false.
    pub fn verify_password(&self, user: &str, password: &str) -> bool {
        let security = self.security();
        let Some(credentials) = security.users.get(user) else {
            // As long as a wrong password takes, so timing does not tell which users exist.
            let decoy = ScramCredential::from_salt(
                Mechanism::ScramSha256,
                password,
                b"runnel-decoy",
                ITERATIONS_DEFAULT,
            );
            std::hint::black_box(decoy);
            return false;
        };
        let password_sha256 = sha256(password.as_bytes());
        let key_of = |credential: &ScramCredential| CacheKey {
            user: user.to_owned(),
            password_sha256: password_sha256.clone(),
            mechanism: credential.mechanism,
            stored_key: credential.stored_key.clone(),
        };
        let keys: Vec<CacheKey> = credentials.values().map(key_of).collect();
        {
            let cache = self.password_cache.lock().unwrap_or_else(PoisonError::into_inner);
            if keys.iter().any(|key| cache.contains(key)) {
                return true;
            }
        }
        // PBKDF2 runs without the lock.
        let Some(key) = credentials
            .values()
            .zip(keys)
            .find_map(|(credential, key)| credential.verify_password(password).then_some(key))
        else {
            return false;
        };
        let mut cache = self.password_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= PASSWORD_CACHE_CAPACITY
            && let Some(evicted) = cache.iter().next().cloned()
        {
            cache.remove(&evicted);
        }
        cache.insert(key);
        true
    }

    /// Whether `password` was checked right for `user` before and the user's credential is
    /// unchanged since: true is [`verify_password`](Self::verify_password)'s answer without
    /// its PBKDF2; false means only that it has to be checked.
    pub fn verified_before(&self, user: &str, password: &str) -> bool {
        let security = self.security();
        let Some(credentials) = security.users.get(user) else { return false };
        let password_sha256 = sha256(password.as_bytes());
        let cache = self.password_cache.lock().unwrap_or_else(PoisonError::into_inner);
        credentials.values().any(|credential| {
            cache.contains(&CacheKey {
                user: user.to_owned(),
                password_sha256: password_sha256.clone(),
                mechanism: credential.mechanism,
                stored_key: credential.stored_key.clone(),
            })
        })
    }

    /// Whether `principal`, from `host`, may use an idempotent producer, as Kafka since 3.0
    /// (KIP-679) has it: IDEMPOTENT_WRITE on the cluster, or WRITE on at least one topic (an
    /// ALLOW binding for WRITE or ALL on a topic, naming it or everyone, that the ACLs let
    /// through for it).
    pub fn may_produce_idempotently(&self, principal: &Principal, host: IpAddr) -> bool {
        use crate::acl::{CLUSTER_RESOURCE_NAME, Permission};
        if self.authorize(
            principal,
            host,
            Operation::IdempotentWrite,
            ResourceType::Cluster,
            CLUSTER_RESOURCE_NAME,
        ) {
            return true;
        }
        self.security().acls.iter().any(|acl| {
            acl.permission == Permission::Allow
                && acl.resource_type == ResourceType::Topic
                && matches!(acl.operation, Operation::Write | Operation::All)
                && (acl.principal == principal.as_str() || acl.principal == "User:*")
                && self.authorize(principal, host, Operation::Write, ResourceType::Topic, &acl.resource_name)
        })
    }

    /// Whether `principal` is one of the configured super users.
    pub fn is_super_user(&self, principal: &Principal) -> bool {
        self.super_users.contains(principal)
    }

    /// Whether `principal`, connected from `host`, may do `operation` on the resource of
    /// `resource_type` named `resource_name`: super users may do anything; everyone else
    /// as [`authorizer::authorize`] decides over the current ACLs.
    pub fn authorize(
        &self,
        principal: &Principal,
        host: IpAddr,
        operation: Operation,
        resource_type: ResourceType,
        resource_name: &str,
    ) -> bool {
        self.is_super_user(principal)
            || authorizer::authorize(
                &self.security().acls,
                principal,
                host,
                operation,
                resource_type,
                resource_name,
            )
    }

    /// The number of cached password checks (for tests and metrics).
    pub fn cached_passwords(&self) -> usize {
        self.password_cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::acl::{AclBinding, PatternType, Permission};
    use crate::scram::ITERATIONS_MIN;

    const HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn security(users: &[(&str, &ScramCredential)]) -> Security {
        let mut security = Security::default();
        for (user, credential) in users {
            security
                .users
                .entry((*user).to_owned())
                .or_insert_with(BTreeMap::new)
                .insert(credential.mechanism, (*credential).clone());
        }
        security
    }

    #[test]
    fn verify_password_and_cache() {
        let first = ScramCredential::generate(Mechanism::ScramSha256, "secret", ITERATIONS_MIN);
        let store = AuthStore::new(Vec::new());
        assert!(!store.has_users());
        assert!(!store.verify_password("alice", "secret"));
        store.set(security(&[("alice", &first)]));
        assert!(store.has_users());
        assert_eq!(store.credential("alice", Mechanism::ScramSha256), Some(first.clone()));
        assert_eq!(store.credential("alice", Mechanism::ScramSha512), None);

        assert!(!store.verified_before("alice", "secret"), "not checked yet");
        assert!(store.verify_password("alice", "secret"));
        assert_eq!(store.cached_passwords(), 1);
        assert!(store.verified_before("alice", "secret"));
        assert!(!store.verified_before("alice", "wrong"));
        // Cached: the same answers.
        assert!(store.verify_password("alice", "secret"));
        assert_eq!(store.cached_passwords(), 1);
        assert!(!store.verify_password("alice", "wrong"));
        assert!(!store.verify_password("bob", "secret"));
        assert_eq!(store.cached_passwords(), 1);

        // A changed credential (new password) invalidates the cached check.
        let second = ScramCredential::generate(Mechanism::ScramSha256, "changed", ITERATIONS_MIN);
        store.set(security(&[("alice", &second)]));
        assert_eq!(store.cached_passwords(), 0);
        assert!(!store.verify_password("alice", "secret"));
        assert!(store.verify_password("alice", "changed"));

        // A cached entry for a credential that is no longer current misses even before set
        // prunes it: the key includes the stored key.
        store.set(security(&[("alice", &first)]));
        assert!(store.verify_password("alice", "secret"));
        assert!(!store.verify_password("alice", "changed"));

        // A removed user no longer verifies, cached or not.
        store.set(Security::default());
        assert!(!store.verify_password("alice", "secret"));
        assert_eq!(store.cached_passwords(), 0);
    }

    #[test]
    fn cache_is_bounded() {
        let credential = ScramCredential::generate(Mechanism::ScramSha256, "secret", ITERATIONS_MIN);
        let store = AuthStore::new(Vec::new());
        store.set(security(&[("alice", &credential)]));
        // Fill the cache with fake entries (no PBKDF2), then check one more password.
        {
            let mut cache = store.password_cache.lock().unwrap();
            for index in 0..PASSWORD_CACHE_CAPACITY {
                cache.insert(CacheKey {
                    user: format!("user{index}"),
                    password_sha256: vec![0; 32],
                    mechanism: Mechanism::ScramSha256,
                    stored_key: Vec::new(),
                });
            }
        }
        assert!(store.verify_password("alice", "secret"));
        assert_eq!(store.cached_passwords(), PASSWORD_CACHE_CAPACITY);
        assert!(store.verify_password("alice", "secret"));
        assert_eq!(store.cached_passwords(), PASSWORD_CACHE_CAPACITY);
    }

    #[test]
    fn super_users_and_acls() {
        let admin = Principal::user("admin");
        let store = AuthStore::new(vec![admin.clone()]);
        let alice = Principal::user("alice");
        assert!(store.is_super_user(&admin));
        assert!(!store.is_super_user(&alice));
        assert!(store.authorize(&admin, HOST, Operation::Alter, ResourceType::Cluster, "kafka-cluster"));
        assert!(!store.authorize(&alice, HOST, Operation::Read, ResourceType::Topic, "orders"));

        let mut security = Security::default();
        security.acls.insert(AclBinding::any_host(
            "User:alice",
            ResourceType::Topic,
            "orders",
            PatternType::Literal,
            Operation::Read,
            Permission::Allow,
        ));
        store.set(security.clone());
        assert_eq!(*store.security(), security);
        assert!(store.authorize(&alice, HOST, Operation::Read, ResourceType::Topic, "orders"));
        assert!(!store.authorize(&alice, HOST, Operation::Write, ResourceType::Topic, "orders"));
        // A DENY does not bind a super user.
        let mut denied = security.clone();
        denied.acls.insert(AclBinding::any_host(
            "User:*",
            ResourceType::Topic,
            "orders",
            PatternType::Literal,
            Operation::All,
            Permission::Deny,
        ));
        store.set(denied);
        assert!(store.authorize(&admin, HOST, Operation::Read, ResourceType::Topic, "orders"));
        assert!(!store.authorize(&alice, HOST, Operation::Read, ResourceType::Topic, "orders"));
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<AuthStore>();
        check::<crate::scram::ScramServer>();
    }

    #[test]
    fn an_idempotent_producer_needs_idempotent_write_or_write_on_some_topic() {
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let binding = |principal: &str, resource_type, name: &str, operation, permission| {
            AclBinding::any_host(principal, resource_type, name, PatternType::Literal, operation, permission)
        };
        let store = AuthStore::new(vec![Principal::user("root")]);
        let mut security = Security::default();
        security.acls.insert(binding(
            "User:writer",
            ResourceType::Topic,
            "t",
            Operation::Write,
            Permission::Allow,
        ));
        security.acls.insert(binding(
            "User:reader",
            ResourceType::Topic,
            "t",
            Operation::Read,
            Permission::Allow,
        ));
        security.acls.insert(binding(
            "User:denied",
            ResourceType::Topic,
            "t",
            Operation::Write,
            Permission::Allow,
        ));
        security.acls.insert(binding(
            "User:denied",
            ResourceType::Topic,
            "t",
            Operation::All,
            Permission::Deny,
        ));
        security.acls.insert(binding(
            "User:cluster",
            ResourceType::Cluster,
            crate::acl::CLUSTER_RESOURCE_NAME,
            Operation::IdempotentWrite,
            Permission::Allow,
        ));
        store.set(security);
        let may = |user: &str| store.may_produce_idempotently(&Principal::user(user), host);
        assert!(may("writer"), "WRITE on a topic");
        assert!(may("cluster"), "IDEMPOTENT_WRITE on the cluster");
        assert!(may("root"), "a super user");
        assert!(!may("reader"), "READ only");
        assert!(!may("denied"), "its WRITE is denied");
        assert!(!may("nobody"));
    }
}
