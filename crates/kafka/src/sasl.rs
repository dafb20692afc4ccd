//! SASL on a Kafka connection (Kafka's SaslHandshake v1 and SaslAuthenticate): PLAIN,
//! SCRAM-SHA-256 and SCRAM-SHA-512, checked against the users in the cluster metadata.
//!
//! A connection on a listener with authentication starts unauthenticated: it may send
//! ApiVersions, then SaslHandshake naming a mechanism, then SaslAuthenticate with the
//! mechanism's messages (one for PLAIN, two for SCRAM). Any other request before the
//! exchange succeeds closes the connection, as Kafka does; so does a failed exchange, after
//! its SASL_AUTHENTICATION_FAILED answer. Once authenticated, the connection's requests run
//! as the user's principal (`User:<name>`), authorized against the ACLs.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
use runnel_auth::{AuthStore, Mechanism, Principal, SaslError, ScramServer, parse_plain};

use crate::handlers::s;

/// The mechanisms a SaslHandshake may name, in the order its answer lists them.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// 33: the mechanism is not enabled.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// 34: a SASL request out of place (a second handshake, SaslAuthenticate before one).
const ILLEGAL_SASL_STATE: i16 = 34;
/// 58: wrong credentials, or a malformed SASL message.
const SASL_AUTHENTICATION_FAILED: i16 = 58;

#[derive(Debug)]
enum State {
    /// Waiting for SaslHandshake.
    Start,
    /// PLAIN chosen: one SaslAuthenticate carries the user and password.
    Plain,
    /// SCRAM chosen: the exchange so far, and whether its first message was answered.
    Scram(Box<ScramServer>, bool),
    /// Authenticated as this principal.
    Done(Principal),
    /// The exchange failed: the connection closes.
    Failed,
}

/// What a SASL request did to the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer and keep going.
    Continue,
    /// Answer; the connection is now authenticated as this principal.
    Authenticated(Principal),
    /// Answer, then close the connection.
    Close,
}

/// One connection's SASL state.
#[derive(Debug)]
pub struct Session {
    store: Arc<AuthStore>,
    state: State,
    peer: SocketAddr,
}

impl Session {
    /// A new connection from `peer`, checked against `store`.
    pub fn new(store: Arc<AuthStore>, peer: SocketAddr) -> Self {
        Session { store, state: State::Start, peer }
    }

    /// The principal, once authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        match &self.state {
            State::Done(principal) => Some(principal),
            _ => None,
        }
    }

    /// A SaslHandshake naming `mechanism`.
    pub fn handshake(&mut self, mechanism: &str) -> (SaslHandshakeResponse, Step) {
        let enabled = MECHANISMS.iter().map(|m| s(*m)).collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(enabled);
        if !matches!(self.state, State::Start) {
            tracing::info!(client = %self.peer, "kafka: a second SaslHandshake on a connection; closing it");
            self.state = State::Failed;
            return (response.with_error_code(ILLEGAL_SASL_STATE), Step::Close);
        }
        self.state = match mechanism {
            "PLAIN" => State::Plain,
            other => match Mechanism::from_name(other) {
                Some(m) => State::Scram(Box::new(ScramServer::new(m)), false),
                None => {
                    // Kafka answers and lets the client try another mechanism.
                    tracing::info!(client = %self.peer, mechanism = other, "kafka: SaslHandshake for a mechanism not enabled");
                    return (response.with_error_code(UNSUPPORTED_SASL_MECHANISM), Step::Continue);
                }
            },
        };
        (response, Step::Continue)
    }

    /// A SaslAuthenticate carrying `bytes`.
    pub fn authenticate(&mut self, bytes: &[u8]) -> (SaslAuthenticateResponse, Step) {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let result: Result<(State, Vec<u8>, Option<Principal>), SaslError> = match state {
            State::Plain => parse_plain(bytes).and_then(|(user, password)| {
                if self.store.verify_password(&user, &password) {
                    let principal = Principal::user(&user);
                    Ok((State::Done(principal.clone()), Vec::new(), Some(principal)))
                } else {
                    tracing::info!(client = %self.peer, user, mechanism = "PLAIN", "kafka: authentication failed: invalid credentials");
                    Err(SaslError::InvalidCredentials { mechanism: "PLAIN".into() })
                }
            }),
            State::Scram(mut scram, first_answered) => {
                if !first_answered {
                    let store = Arc::clone(&self.store);
                    let mechanism = scram.mechanism();
                    match scram.client_first(bytes, |user| store.credential(user, mechanism)) {
                        Ok(answer) => Ok((State::Scram(scram, true), answer, None)),
                        Err(e) => {
                            self.log_scram_failure(&scram, &e);
                            Err(e)
                        }
                    }
                } else {
                    match scram.client_final(bytes) {
                        Ok((user, answer)) => {
                            let principal = Principal::user(&user);
                            Ok((State::Done(principal.clone()), answer, Some(principal)))
                        }
                        Err(e) => {
                            self.log_scram_failure(&scram, &e);
                            Err(e)
                        }
                    }
                }
            }
            State::Start | State::Done(_) | State::Failed => Err(SaslError::OutOfOrder),
        };
        match result {
            Ok((state, answer, principal)) => {
                self.state = state;
                let response = SaslAuthenticateResponse::default().with_auth_bytes(answer.into());
                match principal {
                    Some(principal) => {
                        tracing::debug!(client = %self.peer, %principal, "kafka: authenticated");
                        (response, Step::Authenticated(principal))
                    }
                    None => (response, Step::Continue),
                }
            }
            Err(e) => {
                let code =
                    if e == SaslError::OutOfOrder { ILLEGAL_SASL_STATE } else { SASL_AUTHENTICATION_FAILED };
                let response = SaslAuthenticateResponse::default()
                    .with_error_code(code)
                    .with_error_message(Some(s(e.to_string())));
                (response, Step::Close)
            }
        }
    }

    fn log_scram_failure(&self, scram: &ScramServer, error: &SaslError) {
        let detail = scram.failure_detail().unwrap_or("");
        tracing::info!(client = %self.peer, mechanism = scram.mechanism().name(), "kafka: authentication failed: {error} {detail}");
    }
}
