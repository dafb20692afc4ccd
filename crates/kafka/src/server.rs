//! The listener: one reader and one writer per connection.
//!
//! The reader decodes requests in arrival order and starts each one at once
//! ([`handlers::start`]); what must happen in order (a Produce's appends) happens there, so
//! pipelined produce requests keep their order in the log. The started requests go to the
//! writer through a bounded channel, and the writer answers them in the same order, while
//! their waits (acks=all, fetch long polls, group rebalances) overlap.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use crate::codec::{self, CodecError, Decoded};
use crate::handlers::{self, Reply, Started};
use crate::sasl::{Session, Step};
use crate::{Context, IN_FLIGHT_MAX};

/// How long a connection on a listener with authentication may go without authenticating
/// (ApiVersions alone does not hold a connection slot for good); at most the idle timeout
/// (`connections.max.idle.ms`) when that is shorter.
const SASL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a client has to finish the TLS handshake on an SSL listener.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One bound Kafka listener.
pub struct Listener {
    /// Its name, which decides the addresses its clients are told.
    pub name: String,
    /// The socket.
    pub socket: TcpListener,
    /// TLS (Kafka's SSL security protocol) when set: every connection starts with a handshake.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("socket", &self.socket)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Serves Kafka clients on `listeners` until `cancel`; every connection ends with it.
pub async fn serve(listeners: Vec<Listener>, context: Arc<Context>, cancel: CancellationToken) {
    let mut accepts = JoinSet::new();
    for Listener { name, socket: listener, tls } in listeners {
        let name: Arc<str> = name.into();
        let context = Arc::clone(&context);
        let cancel = cancel.clone();
        accepts.spawn(async move {
            let mut connections = JoinSet::new();
            let mut last_refusal_logged: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) if connections.len() >= context.config.max_connections => {
                            // One line a second at most: a flood of connections is not a flood of logs.
                            // The line is written before the close, so whoever sees the close can find it.
                            if last_refusal_logged.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                                last_refusal_logged = Some(tokio::time::Instant::now());
                                tracing::warn!(client = %peer, listener = %name, max_connections = context.config.max_connections,
                                    "kafka: refused a connection: max.connections are open");
                            }
                            drop(stream);
                        }
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            let (name, context, cancel) = (Arc::clone(&name), Arc::clone(&context), cancel.clone());
                            match tls.clone() {
                                None => {
                                    connections.spawn(connection(stream, peer, name, context, cancel));
                                }
                                Some(acceptor) => {
                                    connections.spawn(async move {
                                        let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                                        match handshake.await {
                                            Ok(Ok(stream)) => connection(stream, peer, name, context, cancel).await,
                                            Ok(Err(e)) => tracing::info!(client = %peer, listener = %name, "kafka: TLS handshake failed: {e}"),
                                            Err(_) => tracing::info!(client = %peer, listener = %name,
                                                "kafka: no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
                                        }
                                    });
                                }
                            }
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: keep serving the others.
                            tracing::warn!("kafka listener: accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            connections.shutdown().await;
        });
    }
    while accepts.join_next().await.is_some() {}
}

/// One connection, until the client closes it, a request closes it, or `cancel`.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    listener: Arc<str>,
    context: Arc<Context>,
    cancel: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Started>(IN_FLIGHT_MAX);
    let reader_context = Arc::clone(&context);
    let reader = tokio::spawn(async move {
        let mut read = BufReader::new(read);
        // With authentication on, the connection's SASL exchange and, after it, its principal.
        let mut session = reader_context.auth.as_ref().map(|store| Session::new(Arc::clone(store), peer));
        let opened = tokio::time::Instant::now();
        let sasl_deadline = SASL_DEADLINE.min(reader_context.config.connections_max_idle);
        loop {
            if session.as_ref().is_some_and(|s| s.principal().is_none()) && opened.elapsed() > sasl_deadline {
                tracing::info!(client = %peer, listener = %listener,
                    "kafka: no SASL authentication within {sasl_deadline:?}; closing the connection");
                return;
            }
            let frame = match codec::read_frame(&mut read, reader_context.config.request_max_bytes).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    log_closed(peer, &e);
                    return;
                }
            };
            let mut close = false;
            let started = match codec::decode(frame) {
                Ok(Decoded::Request { header, request }) => match (*request, session.as_mut()) {
                    (RequestKind::SaslHandshake(r), Some(session)) => {
                        let (response, step) = session.handshake(r.mechanism.as_str());
                        close = step == Step::Close;
                        handlers::answer(
                            &header,
                            ApiKey::SaslHandshake,
                            ResponseKind::SaslHandshake(response),
                        )
                    }
                    (RequestKind::SaslAuthenticate(r), Some(session)) => {
                        // PLAIN runs a PBKDF2 for a password not seen before: off the workers.
                        let (response, step) =
                            runnel_broker::off_the_workers(|| session.authenticate(&r.auth_bytes));
                        close = step == Step::Close;
                        handlers::answer(
                            &header,
                            ApiKey::SaslAuthenticate,
                            ResponseKind::SaslAuthenticate(response),
                        )
                    }
                    (RequestKind::SaslHandshake(_) | RequestKind::SaslAuthenticate(_), None) => {
                        tracing::info!(client = %peer, listener = %listener,
                            "kafka: a SASL request on a listener without authentication; closing the connection");
                        return;
                    }
                    (request, Some(session))
                        if session.principal().is_none()
                            && !matches!(request, RequestKind::ApiVersions(_)) =>
                    {
                        let key = ApiKey::try_from(header.request_api_key)
                            .map_or_else(|_| format!("key {}", header.request_api_key), |k| format!("{k:?}"));
                        tracing::info!(client = %peer, listener = %listener,
                            "kafka: {key} before SASL authentication; closing the connection");
                        return;
                    }
                    (request, session) => {
                        let principal = session.and_then(|s| s.principal().cloned());
                        handlers::start(&reader_context, header, request, peer, &listener, principal)
                    }
                },
                Ok(Decoded::ApiVersionsTooNew { correlation_id }) => {
                    handlers::api_versions_too_new(correlation_id)
                }
                Err(e) => {
                    log_closed(peer, &e);
                    return;
                }
            };
            if tx.send(started).await.is_err() || close {
                return;
            }
        }
    });

    let mut write = BufWriter::new(write);
    let mut pending = FuturesOrdered::new();
    let mut reading = true;
    let idle = context.config.connections_max_idle;
    // The last request received or answered: with nothing pending, the idle clock.
    let mut active_at = tokio::time::Instant::now();
    // Until the reader is done (the client closed, or a request closed the connection) and
    // every started request is answered.
    while reading || !pending.is_empty() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(active_at + idle), if pending.is_empty() => {
                tracing::debug!(client = %peer, "kafka: closing a connection idle for {idle:?} (connections.max.idle.ms)");
                break;
            }
            started = rx.recv(), if reading => match started {
                Some(started) => {
                    active_at = tokio::time::Instant::now();
                    pending.push_back(started.run());
                }
                None => reading = false,
            },
            Some(reply) = pending.next(), if !pending.is_empty() => {
                let reply: Reply = reply;
                let Some(frame) = reply.frame else { continue };
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        tracing::warn!(client = %peer, api = ?reply.key, "kafka: cannot encode a response, closing the connection: {e:#}");
                        break;
                    }
                };
                if write.write_all(&frame).await.is_err() {
                    break;
                }
                active_at = tokio::time::Instant::now();
                if pending.is_empty() && write.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = write.flush().await;
    reader.abort();
}

fn log_closed(peer: SocketAddr, error: &CodecError) {
    match error {
        // A client going away mid-frame is ordinary; the rest is a broken or hostile client.
        CodecError::Io(_) => tracing::debug!(client = %peer, "kafka: connection closed: {error}"),
        _ => tracing::warn!(client = %peer, "kafka: closing the connection: {error}"),
    }
}
