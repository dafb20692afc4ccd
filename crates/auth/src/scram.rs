//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them: the credential
//! the server stores for a user ([`ScramCredential`]) and the server's side of one exchange
//! ([`ScramServer`]), which SaslAuthenticate carries as exactly two client messages.
//!
//! Passwords are not normalized with SASLprep (Kafka does not either): a password is the
//! bytes of its UTF-8 encoding. User names are compared exactly as decoded from the
//! client's message.
//!
//! Channel binding is not supported: a client-first message with the `p=` flag is refused,
//! `n` and `y` are accepted. SCRAM extensions are refused, except Kafka's `tokenauth`
//! when it is not `true` (delegation tokens are not supported).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};

use crate::SaslError;

/// A SCRAM mechanism: the hash function under PBKDF2, HMAC and H.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mechanism {
    /// SCRAM-SHA-256 (RFC 7677): 32-byte keys.
    ScramSha256,
    /// SCRAM-SHA-512: 64-byte keys.
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, in the order of their `Ord`.
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    /// The SASL mechanism name, as Kafka spells it: "SCRAM-SHA-256" or "SCRAM-SHA-512".
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism whose [`name`](Self::name) is exactly `name` (case-sensitive, as
    /// Kafka's SaslHandshake compares mechanism names), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|mechanism| mechanism.name() == name)
    }

    /// The length in bytes of the hash's output, and so of the salted password, the stored
    /// key, the server key and the client proof: 32 or 64.
    pub fn digest_len(self) -> usize {
        match self {
            Mechanism::ScramSha256 => 32,
            Mechanism::ScramSha512 => 64,
        }
    }

    fn pbkdf2_algorithm(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::ScramSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::ScramSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn hmac_algorithm(self) -> hmac::Algorithm {
        match self {
            Mechanism::ScramSha256 => hmac::HMAC_SHA256,
            Mechanism::ScramSha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::ScramSha256 => &digest::SHA256,
            Mechanism::ScramSha512 => &digest::SHA512,
        }
    }

    /// HMAC(key, data) with this mechanism's hash.
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac_algorithm(), key), data).as_ref().to_vec()
    }

    /// H(data) with this mechanism's hash.
    fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_algorithm(), data).as_ref().to_vec()
    }

    /// SaltedPassword = PBKDF2-HMAC(password, salt, iterations), digest_len bytes.
    fn salted_password(self, password: &str, salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
        let mut out = vec![0; self.digest_len()];
        pbkdf2::derive(self.pbkdf2_algorithm(), iterations, salt, password.as_bytes(), &mut out);
        out
    }
}

impl fmt::Display for Mechanism {
    /// Writes the mechanism's [`name`](Self::name).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The iteration count [`ScramCredential::generate`] callers should use unless configured
/// otherwise (Kafka's default).
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// The smallest iteration count a credential may have (Kafka's bound; Kafka's clients
/// refuse a server-first message with fewer).
pub const ITERATIONS_MIN: u32 = 4096;
/// The largest iteration count a credential may have (Kafka's bound).
pub const ITERATIONS_MAX: u32 = 16384;
/// The largest salt a credential may have, in bytes.
pub const SALT_MAX_LEN: usize = 1024;
/// The length of the salt [`ScramCredential::generate`] draws, in bytes.
pub const SALT_LEN: usize = 32;

/// The length of the random part the server appends to the client's nonce, in bytes before
/// base64 (24 bytes are 32 printable characters).
const SERVER_NONCE_BYTES: usize = 24;

/// What the server stores for one user and mechanism (RFC 5802): never the password.
///
/// `stored_key` = H(HMAC(SaltedPassword, "Client Key")) and `server_key` =
/// HMAC(SaltedPassword, "Server Key"), where SaltedPassword = PBKDF2-HMAC(password, salt,
/// iterations). A credential is usable only if [`validate`](Self::validate) accepts it.
/// `Debug` does not print the keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The mechanism whose hash derived the keys.
    pub mechanism: Mechanism,
    /// The salt sent to the client in the server-first message.
    pub salt: Vec<u8>,
    /// H(ClientKey): checks the client's proof; digest_len bytes.
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key"): signs the server-final message; digest_len bytes.
    pub server_key: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("salt", &STANDARD.encode(&self.salt))
            .field("stored_key", &format_args!("<{} bytes>", self.stored_key.len()))
            .field("server_key", &format_args!("<{} bytes>", self.server_key.len()))
            .field("iterations", &self.iterations)
            .finish()
    }
}

impl ScramCredential {
    /// A credential for `password` with a fresh random salt of [`SALT_LEN`] bytes.
    ///
    /// # Panics
    ///
    /// Panics if the operating system's random number generator fails: without it no salt
    /// can be drawn, and there is nothing sensible to store instead.
    pub fn generate(mechanism: Mechanism, password: &str, iterations: u32) -> Self {
        let mut salt = [0u8; SALT_LEN];
        if SystemRandom::new().fill(&mut salt).is_err() {
            panic!("the operating system's random number generator failed: cannot draw a SCRAM salt");
        }
        ScramCredential::from_salt(mechanism, password, &salt, iterations)
    }

    /// The credential for `password` with the given salt and iteration count:
    /// SaltedPassword = PBKDF2-HMAC(password, salt, iterations), ClientKey =
    /// HMAC(SaltedPassword, "Client Key"), StoredKey = H(ClientKey), ServerKey =
    /// HMAC(SaltedPassword, "Server Key"). Deterministic.
    ///
    /// PBKDF2 is undefined for zero iterations: with `iterations == 0` the keys are empty,
    /// so that [`validate`](Self::validate) refuses the credential and no password verifies.
    pub fn from_salt(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Self {
        let (stored_key, server_key) = match NonZeroU32::new(iterations) {
            Some(count) => {
                let salted = mechanism.salted_password(password, salt, count);
                let client_key = mechanism.hmac(&salted, b"Client Key");
                (mechanism.hash(&client_key), mechanism.hmac(&salted, b"Server Key"))
            }
            None => (Vec::new(), Vec::new()),
        };
        ScramCredential { mechanism, salt: salt.to_vec(), stored_key, server_key, iterations }
    }

    /// Whether `password` is the password this credential was derived from: recomputes
    /// StoredKey with the stored salt and iteration count (one PBKDF2) and compares it with
    /// `stored_key` in constant time. False if the iteration count is zero.
    pub fn verify_password(&self, password: &str) -> bool {
        let Some(count) = NonZeroU32::new(self.iterations) else {
            return false;
        };
        let salted = self.mechanism.salted_password(password, &self.salt, count);
        let client_key = self.mechanism.hmac(&salted, b"Client Key");
        constant_time_eq(&self.mechanism.hash(&client_key), &self.stored_key)
    }

    /// Checks that the credential can be used: both keys are digest_len bytes, the salt is
    /// 1 to [`SALT_MAX_LEN`] bytes, and the iteration count is within
    /// [`ITERATIONS_MIN`]`..=`[`ITERATIONS_MAX`]. The error says which rule is broken.
    pub fn validate(&self) -> Result<(), String> {
        let expected = self.mechanism.digest_len();
        if self.stored_key.len() != expected {
            return Err(format!(
                "the stored key has {} bytes, but {} needs {expected}",
                self.stored_key.len(),
                self.mechanism
            ));
        }
        if self.server_key.len() != expected {
            return Err(format!(
                "the server key has {} bytes, but {} needs {expected}",
                self.server_key.len(),
                self.mechanism
            ));
        }
        if self.salt.is_empty() {
            return Err("the salt is empty".to_owned());
        }
        if self.salt.len() > SALT_MAX_LEN {
            return Err(format!(
                "the salt has {} bytes, more than the {SALT_MAX_LEN} allowed",
                self.salt.len()
            ));
        }
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&self.iterations) {
            return Err(format!(
                "the iteration count {} is outside {ITERATIONS_MIN}..={ITERATIONS_MAX}",
                self.iterations
            ));
        }
        Ok(())
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths (which are
/// public: digest_len).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The server's side of one SCRAM exchange (RFC 5802) for one mechanism: call
/// [`client_first`](Self::client_first) with the client's first message, then
/// [`client_final`](Self::client_final) with its second. Any error ends the exchange: every
/// later call returns [`SaslError::OutOfOrder`], as does a call out of that order.
///
/// An unknown user (or a stored credential that is unusable) does not fail the first step:
/// the server answers with a decoy salt derived from the user name (stable within a
/// process) and the default iteration count, and the second step fails with the same
/// [`SaslError::InvalidCredentials`] a wrong password gets, so that a client cannot tell
/// the two apart. [`failure_detail`](Self::failure_detail) says which it was, for the
/// server's log.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: Mechanism,
    state: State,
    /// Why the exchange failed, for the server's log; set by the first error.
    failure: Option<String>,
    /// Replaces the random part of the server nonce (tests only).
    nonce_suffix: Option<String>,
}

#[derive(Debug)]
enum State {
    /// Waiting for the client-first message.
    Initial,
    /// The server-first message was sent; waiting for the client-final message.
    FirstSent(Box<Exchange>),
    /// The exchange succeeded.
    Done,
    /// The exchange failed, or a call came out of order.
    Failed,
}

/// What the client-final step needs from the first step.
#[derive(Debug)]
struct Exchange {
    /// The decoded user name.
    user: String,
    /// The gs2 header exactly as received ("n,," or "y,,a=...,"), which `c=` must encode.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// The client's nonce followed by the server's.
    nonce: String,
    credential: ScramCredential,
    /// Set when the exchange must fail whatever the proof (unknown user, unusable
    /// credential): the reason, for the log.
    doomed: Option<String>,
}

/// The parts of a client-first message.
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    user: String,
    client_nonce: &'a str,
}

impl ScramServer {
    /// A server waiting for the client-first message of an exchange with `mechanism`.
    pub fn new(mechanism: Mechanism) -> Self {
        ScramServer { mechanism, state: State::Initial, failure: None, nonce_suffix: None }
    }

    /// A server whose nonce suffix is `suffix` instead of random bytes, for test vectors.
    #[cfg(test)]
    fn with_nonce_suffix(mechanism: Mechanism, suffix: &str) -> Self {
        ScramServer { nonce_suffix: Some(suffix.to_owned()), ..ScramServer::new(mechanism) }
    }

    /// The mechanism this exchange uses.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Why the exchange failed, in more detail than the error sent to the client (it says
    /// whether the user was unknown or the proof wrong, and names the user): for the
    /// server's log, never for the client. `None` while the exchange has not failed.
    pub fn failure_detail(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Takes the client-first message and returns the server-first message
    /// `r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>`.
    ///
    /// `lookup` is called once, with the decoded user name, after the message is parsed;
    /// it returns the user's credential for this mechanism, or `None` if there is none.
    pub fn client_first(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<Vec<u8>, SaslError> {
        let result = self.client_first_inner(message, lookup);
        if let Err(error) = &result {
            self.record_failure(error);
        }
        result
    }

    /// Takes the client-final message and, if the client's proof verifies, returns the
    /// authenticated user name and the server-final message `v=<base64 server signature>`.
    pub fn client_final(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
        let result = self.client_final_inner(message);
        if let Err(error) = &result {
            self.record_failure(error);
        }
        result
    }

    fn record_failure(&mut self, error: &SaslError) {
        self.state = State::Failed;
        if self.failure.is_none() {
            self.failure = Some(error.to_string());
        }
    }

    fn invalid_credentials(&self) -> SaslError {
        SaslError::InvalidCredentials { mechanism: self.mechanism.name().to_owned() }
    }

    fn client_first_inner(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<Vec<u8>, SaslError> {
        if !matches!(std::mem::replace(&mut self.state, State::Failed), State::Initial) {
            return Err(SaslError::OutOfOrder);
        }
        let first = parse_client_first(message)?;

        let (credential, doomed) = match lookup(&first.user) {
            Some(credential) if credential.mechanism != self.mechanism => (
                None,
                format!(
                    "user `{}` has a credential for {}, not {}",
                    first.user, credential.mechanism, self.mechanism
                ),
            ),
            Some(credential) => match credential.validate() {
                Ok(()) => (Some(credential), String::new()),
                Err(problem) => (
                    None,
                    format!(
                        "the stored {} credential of user `{}` is unusable: {problem}",
                        self.mechanism, first.user
                    ),
                ),
            },
            None => (None, format!("unknown user `{}` for {}", first.user, self.mechanism)),
        };
        let (credential, doomed) = match credential {
            Some(credential) => (credential, None),
            None => match decoy_credential(self.mechanism, &first.user) {
                Some(decoy) => (decoy, Some(doomed)),
                None => {
                    self.failure = Some(doomed);
                    return Err(self.invalid_credentials());
                }
            },
        };

        let suffix = match &self.nonce_suffix {
            Some(suffix) => suffix.clone(),
            None => random_nonce()?,
        };
        let nonce = format!("{}{suffix}", first.client_nonce);
        let server_first =
            format!("r={nonce},s={},i={}", STANDARD.encode(&credential.salt), credential.iterations);
        let reply = server_first.clone().into_bytes();
        self.state = State::FirstSent(Box::new(Exchange {
            user: first.user,
            gs2_header: first.gs2_header.to_owned(),
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
            credential,
            doomed,
        }));
        Ok(reply)
    }

    fn client_final_inner(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
        let State::FirstSent(exchange) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(SaslError::OutOfOrder);
        };
        let text =
            std::str::from_utf8(message).map_err(|_| malformed("the client-final message is not UTF-8"))?;
        // The proof is the last attribute; base64 has no ','.
        let (without_proof, proof_attribute) =
            text.rsplit_once(',').ok_or_else(|| malformed("the client-final message has no proof"))?;
        let proof = proof_attribute
            .strip_prefix("p=")
            .ok_or_else(|| malformed("the client-final message must end with the proof `p=`"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("c="))
            .ok_or_else(|| malformed("the client-final message must start with the channel binding `c=`"))?;
        let nonce = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("r="))
            .ok_or_else(|| malformed("the client-final message must give the nonce `r=` after `c=`"))?;
        if attributes.next().is_some() {
            return Err(SaslError::Unsupported(
                "SCRAM extensions in the client-final message are not supported".to_owned(),
            ));
        }
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| malformed("the channel binding `c=` is not valid base64"))?;
        if binding != exchange.gs2_header.as_bytes() {
            return Err(malformed(
                "the channel binding `c=` does not match the gs2 header of the client-first message",
            ));
        }
        if nonce != exchange.nonce {
            return Err(malformed("the nonce `r=` is not the one the server sent"));
        }
        let proof =
            STANDARD.decode(proof).map_err(|_| malformed("the client proof `p=` is not valid base64"))?;
        let digest_len = self.mechanism.digest_len();
        if proof.len() != digest_len {
            return Err(malformed(&format!(
                "the client proof has {} bytes, but {} needs {digest_len}",
                proof.len(),
                self.mechanism
            )));
        }

        let auth_message =
            format!("{},{},{without_proof}", exchange.client_first_bare, exchange.server_first);
        let credential = &exchange.credential;
        let client_signature = self.mechanism.hmac(&credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        let proof_verifies = constant_time_eq(&self.mechanism.hash(&client_key), &credential.stored_key);
        if let Some(reason) = exchange.doomed {
            self.failure = Some(reason);
            return Err(self.invalid_credentials());
        }
        if !proof_verifies {
            self.failure = Some(format!(
                "wrong password for user `{}` with {} (the client proof does not verify)",
                exchange.user, self.mechanism
            ));
            return Err(self.invalid_credentials());
        }
        let server_signature = self.mechanism.hmac(&credential.server_key, auth_message.as_bytes());
        self.state = State::Done;
        Ok((exchange.user, format!("v={}", STANDARD.encode(server_signature)).into_bytes()))
    }
}

fn malformed(what: &str) -> SaslError {
    SaslError::Malformed(what.to_owned())
}

/// Parses `gs2-header client-first-message-bare` (RFC 5802 section 7).
fn parse_client_first(message: &[u8]) -> Result<ClientFirst<'_>, SaslError> {
    let text =
        std::str::from_utf8(message).map_err(|_| malformed("the client-first message is not UTF-8"))?;
    let (flag, rest) =
        text.split_once(',').ok_or_else(|| malformed("the client-first message has no gs2 header"))?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => {
            return Err(SaslError::Unsupported("SCRAM channel binding is not supported".to_owned()));
        }
        _ => return Err(malformed("the gs2 channel binding flag must be `n`, `y` or `p=`")),
    }
    let (authzid, bare) =
        rest.split_once(',').ok_or_else(|| malformed("the gs2 header does not end with `,`"))?;
    let authzid = if authzid.is_empty() {
        None
    } else {
        let encoded = authzid
            .strip_prefix("a=")
            .ok_or_else(|| malformed("the gs2 header's second field must be empty or `a=`"))?;
        Some(decode_saslname(encoded)?)
    };
    // `bare` is a suffix of `text`: the header is what precedes it.
    let gs2_header = text
        .get(..text.len().saturating_sub(bare.len()))
        .ok_or_else(|| malformed("the gs2 header is malformed"))?;

    let mut attributes = bare.split(',');
    let user_attribute = attributes.next().unwrap_or_default();
    if user_attribute.starts_with("m=") {
        return Err(SaslError::Unsupported("mandatory SCRAM extensions (`m=`) are not supported".to_owned()));
    }
    let user = user_attribute
        .strip_prefix("n=")
        .ok_or_else(|| malformed("the client-first message must give the user name `n=` first"))?;
    let user = decode_saslname(user)?;
    let client_nonce = attributes
        .next()
        .and_then(|attribute| attribute.strip_prefix("r="))
        .ok_or_else(|| malformed("the client-first message must give the nonce `r=` after `n=`"))?;
    if client_nonce.is_empty() {
        return Err(malformed("the client nonce is empty"));
    }
    if !client_nonce.bytes().all(|byte| (0x21..=0x7e).contains(&byte) && byte != b',') {
        return Err(malformed("the client nonce must be printable ASCII without `,`"));
    }
    for extension in attributes {
        let (key, value) = extension
            .split_once('=')
            .ok_or_else(|| malformed("a SCRAM extension must have the form `key=value`"))?;
        if key.is_empty() || !key.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            return Err(malformed("a SCRAM extension's key must be letters"));
        }
        if key == "tokenauth" {
            if value.eq_ignore_ascii_case("true") {
                return Err(SaslError::Unsupported(
                    "delegation token authentication (SCRAM extension `tokenauth=true`) is not supported"
                        .to_owned(),
                ));
            }
            // Kafka reads any other value as false: an ordinary exchange.
            continue;
        }
        return Err(SaslError::Unsupported(if key.len() <= 64 {
            format!("the SCRAM extension `{key}` is not supported")
        } else {
            "SCRAM extensions are not supported".to_owned()
        }));
    }
    if let Some(authzid) = authzid
        && authzid != user
    {
        return Err(SaslError::Unsupported(
            "an authorization id different from the user name is not supported".to_owned(),
        ));
    }
    Ok(ClientFirst { gs2_header, bare, user, client_nonce })
}

/// Decodes an RFC 5802 `saslname`: `=2C` is ',', `=3D` is '=', any other '=' is an error;
/// the result must be non-empty and have no NUL.
fn decode_saslname(encoded: &str) -> Result<String, SaslError> {
    let mut decoded = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((before, after)) = rest.split_once('=') {
        decoded.push_str(before);
        if let Some(tail) = after.strip_prefix("2C") {
            decoded.push(',');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("3D") {
            decoded.push('=');
            rest = tail;
        } else {
            return Err(malformed("a SCRAM name has an `=` that is not `=2C` or `=3D`"));
        }
    }
    decoded.push_str(rest);
    if decoded.is_empty() {
        return Err(malformed("a SCRAM name is empty"));
    }
    if decoded.contains('\0') {
        return Err(malformed("a SCRAM name contains NUL"));
    }
    Ok(decoded)
}

/// The random part of a server nonce: base64 of [`SERVER_NONCE_BYTES`] random bytes, which
/// is printable and has no ','.
fn random_nonce() -> Result<String, SaslError> {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| {
        SaslError::Unsupported(
            "the server cannot draw a random nonce (its random number generator failed)".to_owned(),
        )
    })?;
    Ok(STANDARD.encode(bytes))
}

/// The credential the server pretends an unknown user has: a salt of [`SALT_LEN`] bytes
/// that is HMAC(process key, mechanism, user) (so that a client asking twice sees the same
/// salt, as for a real user), the default iteration count, and all-zero keys (no proof can
/// verify, and the exchange is failed regardless). `None` if the random number generator
/// cannot give the process key.
fn decoy_credential(mechanism: Mechanism, user: &str) -> Option<ScramCredential> {
    static KEY: OnceLock<Option<hmac::Key>> = OnceLock::new();
    let key =
        KEY.get_or_init(|| hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok()).as_ref()?;
    let mut context = hmac::Context::with_key(key);
    context.update(mechanism.name().as_bytes());
    context.update(&[0]);
    context.update(user.as_bytes());
    let salt = context.sign().as_ref().to_vec();
    Some(ScramCredential {
        mechanism,
        salt,
        stored_key: vec![0; mechanism.digest_len()],
        server_key: vec![0; mechanism.digest_len()],
        iterations: ITERATIONS_DEFAULT,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    const RFC_USER: &str = "user";
    const RFC_PASSWORD: &str = "pencil";
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// The RFC 7677 user's credential (one PBKDF2, shared by the tests).
    fn rfc_credential() -> ScramCredential {
        static CREDENTIAL: OnceLock<ScramCredential> = OnceLock::new();
        CREDENTIAL
            .get_or_init(|| {
                let salt = STANDARD.decode(RFC_SALT).unwrap();
                ScramCredential::from_salt(Mechanism::ScramSha256, RFC_PASSWORD, &salt, 4096)
            })
            .clone()
    }

    /// A credential for "alice" with password "secret" for each mechanism (two PBKDF2s,
    /// shared by the tests).
    fn alice(mechanism: Mechanism) -> ScramCredential {
        static CREDENTIALS: OnceLock<[ScramCredential; 2]> = OnceLock::new();
        let credentials = CREDENTIALS.get_or_init(|| {
            Mechanism::ALL.map(|mechanism| ScramCredential::generate(mechanism, "secret", ITERATIONS_DEFAULT))
        });
        credentials[mechanism as usize].clone()
    }

    /// A test-only SCRAM client (RFC 5802 section 3), independent of the server code.
    struct Client {
        mechanism: Mechanism,
        gs2_header: String,
        first_bare: String,
        password: String,
        /// Computed by `client_final`: the expected server-final message.
        expected_server_final: Option<String>,
    }

    impl Client {
        fn new(mechanism: Mechanism, user: &str, password: &str, nonce: &str) -> Self {
            Client::with_header(mechanism, "n,,", user, password, nonce)
        }

        fn with_header(
            mechanism: Mechanism,
            gs2_header: &str,
            user: &str,
            password: &str,
            nonce: &str,
        ) -> Self {
            let user = user.replace('=', "=3D").replace(',', "=2C");
            Client {
                mechanism,
                gs2_header: gs2_header.to_owned(),
                first_bare: format!("n={user},r={nonce}"),
                password: password.to_owned(),
                expected_server_final: None,
            }
        }

        fn client_first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.first_bare).into_bytes()
        }

        /// The client-final message for `server_first`, with the nonce the server sent.
        fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
            let server_first = std::str::from_utf8(server_first).unwrap();
            let nonce = server_first.split(',').find_map(|a| a.strip_prefix("r=")).unwrap().to_owned();
            self.client_final_with(server_first, &nonce, &STANDARD.encode(&self.gs2_header))
        }

        fn client_final_with(&mut self, server_first: &str, nonce: &str, binding: &str) -> Vec<u8> {
            let mut salt = None;
            let mut iterations = None;
            for attribute in server_first.split(',') {
                if let Some(value) = attribute.strip_prefix("s=") {
                    salt = Some(STANDARD.decode(value).unwrap());
                }
                if let Some(value) = attribute.strip_prefix("i=") {
                    iterations = Some(value.parse::<u32>().unwrap());
                }
            }
            let (salt, iterations) = (salt.unwrap(), iterations.unwrap());
            let (pbkdf2, hmac_algorithm, digest_algorithm) = match self.mechanism {
                Mechanism::ScramSha256 => (pbkdf2::PBKDF2_HMAC_SHA256, hmac::HMAC_SHA256, &digest::SHA256),
                Mechanism::ScramSha512 => (pbkdf2::PBKDF2_HMAC_SHA512, hmac::HMAC_SHA512, &digest::SHA512),
            };
            let sign = |key: &[u8], data: &[u8]| hmac::sign(&hmac::Key::new(hmac_algorithm, key), data);
            let mut salted = vec![0; self.mechanism.digest_len()];
            pbkdf2::derive(
                pbkdf2,
                NonZeroU32::new(iterations).unwrap(),
                &salt,
                self.password.as_bytes(),
                &mut salted,
            );
            let client_key = sign(&salted, b"Client Key");
            let stored_key = digest::digest(digest_algorithm, client_key.as_ref());
            let without_proof = format!("c={binding},r={nonce}");
            let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
            let client_signature = sign(stored_key.as_ref(), auth_message.as_bytes());
            let proof: Vec<u8> =
                client_key.as_ref().iter().zip(client_signature.as_ref()).map(|(k, s)| k ^ s).collect();
            let server_key = sign(&salted, b"Server Key");
            let server_signature = sign(server_key.as_ref(), auth_message.as_bytes());
            self.expected_server_final = Some(format!("v={}", STANDARD.encode(server_signature.as_ref())));
            format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
        }
    }

    fn lookup_alice(mechanism: Mechanism) -> impl FnOnce(&str) -> Option<ScramCredential> {
        move |user| (user == "alice").then(|| alice(mechanism))
    }

    fn invalid(mechanism: Mechanism) -> SaslError {
        SaslError::InvalidCredentials { mechanism: mechanism.name().to_owned() }
    }

    #[test]
    fn mechanism_names() {
        for mechanism in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(mechanism.name()), Some(mechanism));
            assert_eq!(mechanism.to_string(), mechanism.name());
        }
        assert_eq!(Mechanism::ScramSha256.name(), "SCRAM-SHA-256");
        assert_eq!(Mechanism::ScramSha512.name(), "SCRAM-SHA-512");
        assert_eq!(Mechanism::from_name("scram-sha-256"), None);
        assert_eq!(Mechanism::from_name("PLAIN"), None);
        assert_eq!(Mechanism::ScramSha256.digest_len(), 32);
        assert_eq!(Mechanism::ScramSha512.digest_len(), 64);
    }

    #[test]
    fn rfc7677_vector() {
        let mut server = ScramServer::with_nonce_suffix(Mechanism::ScramSha256, RFC_SERVER_NONCE);
        let server_first = server
            .client_first(RFC_CLIENT_FIRST.as_bytes(), |user| (user == RFC_USER).then(rfc_credential))
            .unwrap();
        assert_eq!(std::str::from_utf8(&server_first).unwrap(), RFC_SERVER_FIRST);
        let (user, server_final) = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(user, RFC_USER);
        assert_eq!(std::str::from_utf8(&server_final).unwrap(), RFC_SERVER_FINAL);
        assert_eq!(server.failure_detail(), None);
        // The exchange is over.
        assert_eq!(server.client_final(RFC_CLIENT_FINAL.as_bytes()), Err(SaslError::OutOfOrder));
    }

    #[test]
    fn rfc7677_vector_test_client() {
        // The test client computes the RFC's proof and server signature.
        let mut client = Client::new(Mechanism::ScramSha256, RFC_USER, RFC_PASSWORD, RFC_CLIENT_NONCE);
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let client_final = client.client_final(RFC_SERVER_FIRST.as_bytes());
        assert_eq!(std::str::from_utf8(&client_final).unwrap(), RFC_CLIENT_FINAL);
        assert_eq!(client.expected_server_final.as_deref(), Some(RFC_SERVER_FINAL));
    }

    #[test]
    fn rfc7677_wrong_proof_refused() {
        let mut server = ScramServer::with_nonce_suffix(Mechanism::ScramSha256, RFC_SERVER_NONCE);
        server.client_first(RFC_CLIENT_FIRST.as_bytes(), |_| Some(rfc_credential())).unwrap();
        // Flip one bit of the proof (the first base64 character 'd' becomes 'e').
        let tampered = RFC_CLIENT_FINAL.replace("p=dHzb", "p=eHzb");
        assert_eq!(server.client_final(tampered.as_bytes()), Err(invalid(Mechanism::ScramSha256)));
        assert!(server.failure_detail().unwrap().contains("wrong password"));
    }

    #[test]
    fn credential_matches_rfc_keys() {
        // The RFC 7677 credential (whose keys `rfc7677_vector` proves) verifies its password
        // and nothing else.
        let credential = rfc_credential();
        assert!(credential.validate().is_ok());
        assert!(credential.verify_password(RFC_PASSWORD));
        assert!(!credential.verify_password("pencil "));
        assert!(!credential.verify_password(""));
    }

    #[test]
    fn end_to_end_both_mechanisms() {
        for mechanism in Mechanism::ALL {
            for header in ["n,,", "y,,", "n,a=alice,"] {
                let mut server = ScramServer::new(mechanism);
                let mut client =
                    Client::with_header(mechanism, header, "alice", "secret", "fyko+d2lbbFgONRv9qkxdawL");
                let server_first =
                    server.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
                let text = std::str::from_utf8(&server_first).unwrap();
                let nonce = text.split(',').next().unwrap().strip_prefix("r=").unwrap();
                assert!(nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL"));
                assert!(nonce.len() >= "fyko+d2lbbFgONRv9qkxdawL".len() + 24);
                assert!(text.ends_with(&format!(",i={ITERATIONS_DEFAULT}")));
                let (user, server_final) = server.client_final(&client.client_final(&server_first)).unwrap();
                assert_eq!(user, "alice");
                assert_eq!(
                    std::str::from_utf8(&server_final).unwrap(),
                    client.expected_server_final.unwrap()
                );
            }
        }
    }

    #[test]
    fn server_nonces_differ() {
        let first = || {
            let mut server = ScramServer::new(Mechanism::ScramSha256);
            server.client_first(b"n,,n=alice,r=abc", lookup_alice(Mechanism::ScramSha256)).unwrap()
        };
        assert_ne!(first(), first());
    }

    #[test]
    fn wrong_password_refused() {
        for mechanism in Mechanism::ALL {
            let mut server = ScramServer::new(mechanism);
            let mut client = Client::new(mechanism, "alice", "not-secret", "nonce");
            let server_first = server.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
            let error = server.client_final(&client.client_final(&server_first)).unwrap_err();
            assert_eq!(error, invalid(mechanism));
            assert_eq!(
                error.to_string(),
                format!("authentication failed: invalid credentials for SASL mechanism {}", mechanism.name())
            );
            assert!(server.failure_detail().unwrap().contains("wrong password for user `alice`"));
        }
    }

    #[test]
    fn unknown_user_looks_like_wrong_password() {
        let mechanism = Mechanism::ScramSha256;
        let mut server = ScramServer::new(mechanism);
        let mut client = Client::new(mechanism, "mallory", "secret", "nonce");
        let server_first = server.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
        // The decoy salt is stable for a user name, like a real one.
        let mut again = ScramServer::new(mechanism);
        let second = again.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
        let salt_of =
            |message: &[u8]| std::str::from_utf8(message).unwrap().split(',').nth(1).unwrap().to_owned();
        assert_eq!(salt_of(&server_first), salt_of(&second));
        let error = server.client_final(&client.client_final(&server_first)).unwrap_err();
        assert_eq!(error, invalid(mechanism));
        assert!(server.failure_detail().unwrap().contains("unknown user `mallory`"));
    }

    #[test]
    fn unusable_credentials_refused() {
        // A credential for the other mechanism, and one that fails validate(), are treated
        // as an unknown user: the exchange goes on with a decoy and fails at the end.
        let mechanism = Mechanism::ScramSha512;
        let mut weak = alice(mechanism);
        weak.iterations = 1;
        let cases = [(alice(Mechanism::ScramSha256), "not SCRAM-SHA-512"), (weak, "unusable")];
        for (credential, detail) in cases {
            let mut server = ScramServer::with_nonce_suffix(mechanism, "SERVER");
            let server_first = server.client_first(b"n,,n=alice,r=abc", |_| Some(credential)).unwrap();
            assert!(std::str::from_utf8(&server_first).unwrap().ends_with(",i=4096"));
            assert_eq!(server.failure_detail(), None);
            let final_message = format!("c=biws,r=abcSERVER,p={}", STANDARD.encode([0u8; 64]));
            assert_eq!(server.client_final(final_message.as_bytes()), Err(invalid(mechanism)));
            let logged = server.failure_detail().unwrap();
            assert!(logged.contains(detail), "{logged}");
        }
    }

    #[test]
    fn channel_binding_refused() {
        let mechanism = Mechanism::ScramSha256;
        let mut server = ScramServer::new(mechanism);
        let error = server.client_first(b"p=tls-unique,,n=alice,r=abc", lookup_alice(mechanism)).unwrap_err();
        assert!(matches!(error, SaslError::Unsupported(_)), "{error:?}");
        assert_eq!(
            server.client_first(b"n,,n=alice,r=abc", lookup_alice(mechanism)),
            Err(SaslError::OutOfOrder)
        );

        // `c=` must encode the gs2 header the client sent: a client that said `y` cannot
        // claim `n` in the final message.
        let mut server = ScramServer::new(mechanism);
        let mut client = Client::with_header(mechanism, "y,,", "alice", "secret", "abc");
        let server_first = server.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
        let text = std::str::from_utf8(&server_first).unwrap().to_owned();
        let nonce = text.split(',').next().unwrap().strip_prefix("r=").unwrap().to_owned();
        let final_message = client.client_final_with(&text, &nonce, "biws");
        let error = server.client_final(&final_message).unwrap_err();
        assert!(
            matches!(&error, SaslError::Malformed(text) if text.contains("channel binding")),
            "{error:?}"
        );
    }

    #[test]
    fn nonce_tampering_refused() {
        let mechanism = Mechanism::ScramSha256;
        let mut server = ScramServer::new(mechanism);
        let mut client = Client::new(mechanism, "alice", "secret", "abc");
        let server_first = server.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
        let text = std::str::from_utf8(&server_first).unwrap().to_owned();
        let nonce = text.split(',').next().unwrap().strip_prefix("r=").unwrap().to_owned();
        // The proof is computed over the changed nonce, so only the nonce check can refuse.
        let final_message = client.client_final_with(&text, &format!("{nonce}x"), "biws");
        let error = server.client_final(&final_message).unwrap_err();
        assert!(matches!(&error, SaslError::Malformed(text) if text.contains("nonce")), "{error:?}");
        // A client nonce alone (without the server's part) is refused too.
        let mut server = ScramServer::new(mechanism);
        server.client_first(&client.client_first(), lookup_alice(mechanism)).unwrap();
        let proof = STANDARD.encode([0u8; 32]);
        let error = server.client_final(format!("c=biws,r=abc,p={proof}").as_bytes()).unwrap_err();
        assert!(matches!(&error, SaslError::Malformed(text) if text.contains("nonce")), "{error:?}");
    }

    #[test]
    fn authzid_mismatch_refused() {
        let mechanism = Mechanism::ScramSha256;
        let mut server = ScramServer::new(mechanism);
        let error = server.client_first(b"n,a=admin,n=alice,r=abc", lookup_alice(mechanism)).unwrap_err();
        assert!(
            matches!(&error, SaslError::Unsupported(text) if text.contains("authorization id")),
            "{error:?}"
        );
        // An escaped authzid equal to the escaped user name is accepted.
        let mut server = ScramServer::new(mechanism);
        let mut looked_up = String::new();
        server
            .client_first(b"n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=abc", |user| {
                looked_up = user.to_owned();
                None
            })
            .unwrap();
        assert_eq!(looked_up, "a,b=c");
    }

    #[test]
    fn out_of_order_refused() {
        let mechanism = Mechanism::ScramSha256;
        // Final before first.
        let mut server = ScramServer::new(mechanism);
        assert_eq!(server.client_final(b"c=biws,r=abc,p=AAAA"), Err(SaslError::OutOfOrder));
        // Anything after a failure.
        assert_eq!(
            server.client_first(b"n,,n=alice,r=abc", lookup_alice(mechanism)),
            Err(SaslError::OutOfOrder)
        );
        // First twice.
        let mut server = ScramServer::new(mechanism);
        server.client_first(b"n,,n=alice,r=abc", lookup_alice(mechanism)).unwrap();
        assert_eq!(
            server.client_first(b"n,,n=alice,r=abc", lookup_alice(mechanism)),
            Err(SaslError::OutOfOrder)
        );
        assert_eq!(server.client_final(b"c=biws,r=abc,p=AAAA"), Err(SaslError::OutOfOrder));
        assert!(server.failure_detail().is_some());
        // A malformed first message ends the exchange too.
        let mut server = ScramServer::new(mechanism);
        assert!(server.client_first(b"garbage", lookup_alice(mechanism)).is_err());
        assert_eq!(
            server.client_first(b"n,,n=alice,r=abc", lookup_alice(mechanism)),
            Err(SaslError::OutOfOrder)
        );
    }

    #[test]
    fn tokenauth_refused() {
        let mechanism = Mechanism::ScramSha256;
        for message in [&b"n,,n=alice,r=abc,tokenauth=true"[..], b"n,,n=alice,r=abc,tokenauth=TRUE"] {
            let mut server = ScramServer::new(mechanism);
            let error = server.client_first(message, lookup_alice(mechanism)).unwrap_err();
            assert!(
                matches!(&error, SaslError::Unsupported(text) if text.contains("delegation token")),
                "{error:?}"
            );
        }
        // `tokenauth=false` is an ordinary exchange, as in Kafka.
        let mut server = ScramServer::new(mechanism);
        assert!(server.client_first(b"n,,n=alice,r=abc,tokenauth=false", lookup_alice(mechanism)).is_ok());
    }

    #[test]
    fn client_first_grammar() {
        let mechanism = Mechanism::ScramSha256;
        let unsupported = [
            &b"n,,n=alice,r=abc,foo=bar"[..],
            b"n,,m=ext,n=alice,r=abc",
            b"p=tls-server-end-point,,n=alice,r=abc",
        ];
        for message in unsupported {
            let mut server = ScramServer::new(mechanism);
            let error = server.client_first(message, lookup_alice(mechanism)).unwrap_err();
            assert!(matches!(error, SaslError::Unsupported(_)), "{message:?}: {error:?}");
        }
        let malformed = [
            &b""[..],
            b"n",
            b"n,",
            b"x,,n=alice,r=abc",
            b"n,b=x,n=alice,r=abc",
            b"n,,r=abc,n=alice",
            b"n,,n=,r=abc",
            b"n,,n=al=2Xce,r=abc",
            b"n,,n=al=ce,r=abc",
            b"n,,n=alice=,r=abc",
            b"n,,n=al\0ice,r=abc",
            b"n,,n=alice",
            b"n,,n=alice,r=",
            b"n,,n=alice,r=a b",
            b"n,,n=alice,r=ab\x7f",
            b"n,,n=alice,r=abc,",
            b"n,,n=alice,r=abc,1=2",
            b"n,,n=alice,r=abc,noequals",
            b"n,,n=\xff,r=abc",
        ];
        for message in malformed {
            let mut server = ScramServer::new(mechanism);
            let error = server.client_first(message, lookup_alice(mechanism)).unwrap_err();
            assert!(matches!(error, SaslError::Malformed(_)), "{message:?}: {error:?}");
        }
    }

    #[test]
    fn client_final_grammar() {
        let mechanism = Mechanism::ScramSha256;
        let proof = STANDARD.encode([0u8; 32]);
        let start = || {
            let mut server = ScramServer::with_nonce_suffix(mechanism, "SERVER");
            server.client_first(b"n,,n=alice,r=abc", lookup_alice(mechanism)).unwrap();
            server
        };
        type Check = fn(&SaslError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (format!("c=biws,r=abcSERVER,x=1,p={proof}"), |e| matches!(e, SaslError::Unsupported(_))),
            (format!("r=abcSERVER,c=biws,p={proof}"), |e| matches!(e, SaslError::Malformed(_))),
            (format!("c=biws,r=abcSERVER,p={proof},"), |e| matches!(e, SaslError::Malformed(_))),
            ("c=biws,r=abcSERVER,p=AAAA".to_owned(), |e| matches!(e, SaslError::Malformed(_))),
            ("c=biws,r=abcSERVER,p=***".to_owned(), |e| matches!(e, SaslError::Malformed(_))),
            (format!("c=bi,r=abcSERVER,p={proof}"), |e| matches!(e, SaslError::Malformed(_))),
            (format!("c=eSws,r=abcSERVER,p={proof}"), |e| matches!(e, SaslError::Malformed(_))),
            (format!("c=biws,p={proof}"), |e| matches!(e, SaslError::Malformed(_))),
            ("c=biws,r=abcSERVER".to_owned(), |e| matches!(e, SaslError::Malformed(_))),
            // Well formed, wrong proof.
            (format!("c=biws,r=abcSERVER,p={proof}"), |e| matches!(e, SaslError::InvalidCredentials { .. })),
        ];
        for (message, expected) in cases {
            let error = start().client_final(message.as_bytes()).unwrap_err();
            assert!(expected(&error), "{message}: {error:?}");
        }
    }

    #[test]
    fn credential_validate() {
        let good = alice(Mechanism::ScramSha256);
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(good.salt.len(), SALT_LEN);
        type Breaker = fn(&mut ScramCredential);
        let broken: [(Breaker, &str); 7] = [
            (|c| c.stored_key.truncate(31), "stored key"),
            (|c| c.server_key.push(0), "server key"),
            (|c| c.salt.clear(), "salt is empty"),
            (|c| c.salt = vec![1; SALT_MAX_LEN + 1], "salt has"),
            (|c| c.iterations = ITERATIONS_MIN - 1, "iteration count"),
            (|c| c.iterations = ITERATIONS_MAX + 1, "iteration count"),
            (|c| c.mechanism = Mechanism::ScramSha512, "stored key"),
        ];
        for (breaker, message) in broken {
            let mut credential = good.clone();
            breaker(&mut credential);
            let error = credential.validate().unwrap_err();
            assert!(error.contains(message), "{error} does not contain {message}");
        }
        let mut salt_max = good.clone();
        salt_max.salt = vec![1; SALT_MAX_LEN];
        assert_eq!(salt_max.validate(), Ok(()));
    }

    #[test]
    fn credential_verify_password() {
        for mechanism in Mechanism::ALL {
            let credential = alice(mechanism);
            assert_eq!(credential.stored_key.len(), mechanism.digest_len());
            assert!(credential.verify_password("secret"));
            assert!(!credential.verify_password("Secret"));
        }
        let zero = ScramCredential::from_salt(Mechanism::ScramSha256, "secret", b"salt", 0);
        assert!(zero.stored_key.is_empty() && zero.validate().is_err());
        assert!(!zero.verify_password("secret"));
        // Two generated credentials for one password differ by salt.
        assert_ne!(alice(Mechanism::ScramSha256).salt, alice(Mechanism::ScramSha512).salt);
    }

    #[test]
    fn credential_debug_hides_keys() {
        let credential = alice(Mechanism::ScramSha256);
        let text = format!("{credential:?}");
        assert!(text.contains("<32 bytes>"), "{text}");
        assert!(!text.contains(&format!("{:?}", credential.stored_key)), "{text}");
    }

    #[test]
    fn credential_serde_round_trip() {
        let credential = alice(Mechanism::ScramSha512);
        let json = serde_json::to_string(&credential).unwrap();
        assert_eq!(serde_json::from_str::<ScramCredential>(&json).unwrap(), credential);
    }

    proptest! {
        #[test]
        fn client_first_never_panics(message in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut server = ScramServer::new(Mechanism::ScramSha256);
            let _ = server.client_first(&message, |_| Some(rfc_credential()));
        }

        #[test]
        fn client_first_shaped_never_panics(
            message in "[nyp]?(=[a-z-]*)?,(a=[a-z=,23CD]*)?,(m=x,)?n=[a-z=,23CD\u{0}é]*,r=[!-~ ]*(,[a-z]+=[a-z]*)*"
        ) {
            let mut server = ScramServer::new(Mechanism::ScramSha512);
            let _ = server.client_first(message.as_bytes(), |_| None);
        }

        #[test]
        fn client_final_never_panics(message in proptest::collection::vec(any::<u8>(), 0..160)) {
            let mut server = ScramServer::new(Mechanism::ScramSha256);
            server.client_first(RFC_CLIENT_FIRST.as_bytes(), |_| Some(rfc_credential())).unwrap();
            let _ = server.client_final(&message);
        }

        #[test]
        fn client_final_shaped_never_panics(
            message in "c=[a-zA-Z0-9+/=]*,r=rOprNGfwEbeRWgbNEkqO[!-~]*(,[a-z]+=[a-z]*)*,p=[a-zA-Z0-9+/=]{0,100}"
        ) {
            let mut server = ScramServer::new(Mechanism::ScramSha256);
            server.client_first(RFC_CLIENT_FIRST.as_bytes(), |_| None).unwrap();
            let _ = server.client_final(message.as_bytes());
        }
    }
}
