//! The error a SASL exchange ends with. Its `Display` text is meant to be sent to the client
//! (Kafka's SaslAuthenticate error message): it never says whether a user exists, and never
//! repeats a password or a key.

/// Why a SASL message (SCRAM or PLAIN) was refused. Every variant ends the exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message does not follow the mechanism's grammar (RFC 5802 for SCRAM, RFC 4616
    /// for PLAIN), or a value in it is inconsistent with the exchange so far (a changed
    /// nonce, channel binding data that does not match the gs2 header). The text says what
    /// is wrong, and repeats no secret.
    #[error("authentication failed: malformed SASL message: {0}")]
    Malformed(String),
    /// The user is unknown, or the password or proof is wrong. The text is the same in both
    /// cases, so that a client cannot learn which user names exist; the reason is only in
    /// the server's log (see `ScramServer::failure_detail`).
    #[error("authentication failed: invalid credentials for SASL mechanism {mechanism}")]
    InvalidCredentials {
        /// The SASL mechanism's name, as Kafka spells it: "SCRAM-SHA-256", "PLAIN".
        mechanism: String,
    },
    /// The message is well formed but asks for something this server does not do: channel
    /// binding, an authorization id other than the user name, a SCRAM extension, delegation
    /// tokens. The text names the feature.
    #[error("authentication failed: {0}")]
    Unsupported(String),
    /// A message arrived when the exchange did not expect one: a second client-first
    /// message, a client-final message before the client-first one, or any message after
    /// the exchange succeeded or failed.
    #[error("authentication failed: unexpected SASL message for the state of the exchange")]
    OutOfOrder,
}
