//! The node's HTTP listener: `/healthz`, `/readyz`, Prometheus `/metrics` (what
//! [`super::metrics`] registers, in the Prometheus text format 0.0.4), and the web console
//! (`/`, its assets and `/api/v1/...`, see [`super::console`]).
//!
//! A deliberately tiny HTTP/1.1 server: one GET per connection (`Connection: close`), a
//! request head of at most [`REQUEST_HEAD_BYTES_MAX`] bytes, read within
//! [`REQUEST_READ_TIMEOUT`]. It serves probes, scrapes and the console, nothing else.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use runnel_broker::BrokerStatus;
use runnel_controller::controller::MetadataMachine;
use runnel_controller::raft::Raft;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::console::{self, Console};

/// Largest request head accepted.
pub(crate) const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub(crate) const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the accept queue.
pub(crate) const CONNECTIONS_MAX: usize = 64;

/// What the probes look at.
#[derive(Clone)]
pub(crate) struct Probes {
    pub(crate) node_id: u32,
    pub(crate) raft: Option<Raft<MetadataMachine>>,
    pub(crate) broker: Option<watch::Receiver<BrokerStatus>>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Probes {
    /// `Ok` when ready, else why not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        if let Some(raft) = &self.raft
            && raft.metrics().borrow().current_leader.is_none()
        {
            return Err("no controller leader known".into());
        }
        if let Some(broker) = &self.broker {
            let status = broker.borrow().clone();
            if let Some(reason) = &status.storage_failure {
                return Err(format!("storage failed, out of the cluster until it works again: {reason}"));
            }
            if self.raft.is_none() && status.controller.is_none() {
                return Err("no controller reachable".into());
            }
            if status.epoch == 0 {
                return Err("broker not registered".into());
            }
            if status.fenced {
                return Err(format!("broker fenced (epoch {})", status.epoch));
            }
        }
        Ok(())
    }
}

/// What the listener serves from.
#[derive(Debug)]
pub(crate) struct Site {
    pub(crate) probes: Probes,
    pub(crate) registry: Registry,
    pub(crate) console: Console,
    /// With `--auth`: everything but the probes (`/healthz`, `/readyz`) needs HTTP Basic
    /// credentials of a user with DESCRIBE on the cluster (the console and `/metrics` show
    /// every topic and group).
    pub(crate) auth: Option<Arc<runnel_auth::AuthStore>>,
}

/// Whether the request head `head` carries credentials of a user who may see the whole
/// cluster (DESCRIBE on it) from `peer`: `Err` with the answer otherwise (401 asks for
/// credentials, 403 refuses the ones given).
async fn authorize(
    store: &Arc<runnel_auth::AuthStore>,
    head: &[u8],
    peer: std::net::IpAddr,
) -> Result<(), Answer> {
    use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
    let head = String::from_utf8_lossy(head);
    let header = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("authorization").then(|| value.trim().to_owned())
    });
    let challenge = |body: &str| Answer { challenge: true, ..Answer::text(401, body) };
    let Some((user, password)) = header.and_then(|v| runnel_proto::security::parse_basic_credentials(&v))
    else {
        return Err(challenge("this node runs with --auth: give a user's credentials\n"));
    };
    let verified = store.verified_before(&user, &password) || {
        let (store, user) = (Arc::clone(store), user.clone());
        tokio::task::spawn_blocking(move || store.verify_password(&user, &password)).await.unwrap_or(false)
    };
    if !verified {
        return Err(challenge("invalid credentials\n"));
    }
    let principal = runnel_auth::Principal::user(&user);
    if !store.authorize(&principal, peer, Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME) {
        return Err(Answer::text(403, format!("{principal} is not authorized to DESCRIBE the cluster\n")));
    }
    Ok(())
}

/// One answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    /// The page's Content-Security-Policy, for HTML.
    pub(crate) csp: bool,
    /// Ask for HTTP Basic credentials (a 401).
    pub(crate) challenge: bool,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Answer { status, content_type: TEXT, body: body.into().into_bytes(), csp: false, challenge: false }
    }

    fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Answer { status: 200, content_type: JSON, body, csp: false, challenge: false },
            Err(e) => Answer::text(500, format!("encoding JSON: {e}\n")),
        }
    }
}

impl Site {
    /// The answer to `method` `path` (the query already cut off).
    pub(crate) async fn answer(&self, method: &str, path: &str) -> Answer {
        if method != "GET" {
            return Answer::text(405, "only GET\n");
        }
        match path {
            "/healthz" => Answer::text(200, "ok\n"),
            "/readyz" => match self.probes.readiness() {
                Ok(()) => Answer::text(200, "ready\n"),
                Err(why) => Answer::text(503, format!("not ready: {why}\n")),
            },
            "/metrics" => {
                let mut body = String::new();
                match prometheus_text::encode(&mut body, &self.registry) {
                    Ok(()) => Answer {
                        status: 200,
                        content_type: prometheus_text::CONTENT_TYPE,
                        body: body.into_bytes(),
                        csp: false,
                        challenge: false,
                    },
                    Err(e) => Answer::text(500, format!("encoding metrics: {e}\n")),
                }
            }
            "/api/v1/local" => Answer::json(&self.console.local().await),
            "/api/v1/cluster" => Answer::json(&self.console.cluster().await),
            _ => match console::ASSETS.iter().find(|(p, _, _)| *p == path) {
                Some((_, content_type, body)) => Answer {
                    status: 200,
                    content_type,
                    body: body.as_bytes().to_vec(),
                    csp: content_type.starts_with("text/html"),
                    challenge: false,
                },
                None => Answer::text(404, "not found\n"),
            },
        }
    }
}

/// Serves until `cancel`; over TLS when `tls` is set (`--http-tls`).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    site: Arc<Site>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let site = Arc::clone(&site);
                let peer = peer.ip();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let served = match tls {
                        None => connection(stream, &site, peer).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(REQUEST_READ_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => connection(stream, &site, peer).await,
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                            }
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!("http connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection<S>(mut stream: S, site: &Site, peer: std::net::IpAddr) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > REQUEST_HEAD_BYTES_MAX {
                return Err(std::io::Error::other("request head too large"));
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    });
    read.await.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let answer = match (parts.next(), parts.next()) {
        (Some(method), Some(target)) => {
            let path = target.split('?').next().unwrap_or(target);
            let checked = match &site.auth {
                Some(store) if !matches!(path, "/healthz" | "/readyz") => authorize(store, &head, peer).await,
                _ => Ok(()),
            };
            match checked {
                Ok(()) => site.answer(method, path).await,
                Err(refused) => refused,
            }
        }
        _ => Answer::text(400, "bad request\n"),
    };
    let reason = match answer.status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         X-Content-Type-Options: nosniff\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    if answer.status == 405 {
        head.push_str("Allow: GET\r\n");
    }
    if answer.challenge {
        head.push_str("WWW-Authenticate: Basic realm=\"runnel\", charset=\"UTF-8\"\r\n");
    }
    if answer.csp {
        head.push_str(&format!("Content-Security-Policy: {}\r\n", console::CONTENT_SECURITY_POLICY));
    }
    // Nothing is cached: the API changes every second, and the page must match the binary.
    head.push_str("Cache-Control: no-store\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&answer.body).await?;
    stream.shutdown().await
}
