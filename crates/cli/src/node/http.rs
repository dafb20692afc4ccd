//! The node's HTTP listener: `/healthz`, `/readyz` and Prometheus `/metrics` (what
//! [`super::metrics`] registers, in the Prometheus text format 0.0.4).
//!
//! A deliberately tiny HTTP/1.1 server: one GET per connection (`Connection: close`), a
//! request head of at most [`REQUEST_HEAD_BYTES_MAX`] bytes, read within
//! [`REQUEST_READ_TIMEOUT`]. It serves probes and scrapes, nothing else.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use runnel_broker::BrokerStatus;
use runnel_controller::controller::MetadataMachine;
use runnel_controller::raft::Raft;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

    fn answer(&self, registry: &Registry, path: &str) -> (u16, String, &'static str) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/healthz" => (200, "ok\n".into(), TEXT),
            "/readyz" => match self.readiness() {
                Ok(()) => (200, "ready\n".into(), TEXT),
                Err(why) => (503, format!("not ready: {why}\n"), TEXT),
            },
            "/metrics" => {
                let mut body = String::new();
                match prometheus_text::encode(&mut body, registry) {
                    Ok(()) => (200, body, prometheus_text::CONTENT_TYPE),
                    Err(e) => (500, format!("encoding metrics: {e}\n"), TEXT),
                }
            }
            _ => (404, "not found\n".into(), TEXT),
        }
    }
}

/// Serves until `cancel`.
pub(crate) async fn serve(
    listener: TcpListener,
    probes: Arc<Probes>,
    registry: Arc<Registry>,
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
            Ok((stream, _)) => {
                let probes = Arc::clone(&probes);
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = connection(stream, &probes, &registry).await {
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

async fn connection(mut stream: TcpStream, probes: &Probes, registry: &Registry) -> std::io::Result<()> {
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
    let (status, body, content_type) = match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => probes.answer(registry, target.split('?').next().unwrap_or(target)),
        (Some(_), Some(_)) => (405, "only GET\n".into(), "text/plain; charset=utf-8"),
        _ => (400, "bad request\n".into(), "text/plain; charset=utf-8"),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
