//! `runnel healthcheck`: one HTTP GET of a node's probe, for container HEALTHCHECKs and
//! scripts on images without curl.
//!
//! HTTP/1.0 (the node's probe server closes after one answer), over plain TCP, or over TLS
//! for an `https://` URL (a node with `--http-tls`; the server's certificate is checked
//! against `--tls-ca`): exit 0 when the status is 200, 1 otherwise, with a one-line reason on
//! stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read; probes answer a line or two.
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// `runnel healthcheck`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct HealthcheckArgs {
    /// The URL to GET, http://HOST:PORT/PATH [default: /readyz on RUNNEL_HTTP_ADDR's port, or
    /// http://127.0.0.1:8080/readyz].
    #[arg(long, env = "RUNNEL_HEALTHCHECK_URL")]
    url: Option<String>,
    /// The cluster CA (PEM) the node's certificate is checked against, for an https:// URL.
    #[arg(long, env = "RUNNEL_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Bound on the whole check: connect, send, read.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// The URL checked when none is given: the node's own HTTP listener (`RUNNEL_HTTP_ADDR`, a
/// wildcard host turned into loopback), else port 8080 on loopback.
fn default_url(http_addr: Option<&str>) -> String {
    let addr = match http_addr.and_then(|a| a.rsplit_once(':')) {
        Some((host, port)) => {
            let host = match host {
                "" | "0.0.0.0" => "127.0.0.1",
                "[::]" => "[::1]",
                h => h,
            };
            format!("{host}:{port}")
        }
        None => "127.0.0.1:8080".to_owned(),
    };
    format!("http://{addr}/readyz")
}

/// A parsed probe URL.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    /// `host:port` to connect to.
    addr: String,
    /// The Host header (the URL's authority).
    host: String,
    path: String,
    https: bool,
}

/// Splits `http://host:port/path` (or `https://`) into the address to connect to, the Host
/// header and the path.
fn parse_url(url: &str) -> anyhow::Result<Url> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => bail!("{url:?}: only http:// and https:// URLs are supported"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url:?} names no host");
    }
    // An IPv6 literal keeps its brackets; a port is whatever follows the last ':' after them.
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let default_port = if https { 443 } else { 80 };
    let addr = if has_port { authority.to_owned() } else { format!("{authority}:{default_port}") };
    Ok(Url { addr, host: authority.to_owned(), path: path.to_owned(), https })
}

/// A TLS client trusting only the CA in `ca` (PEM).
fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("reading --tls-ca {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.with_context(|| format!("{}: not a PEM certificate", ca.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca.display());
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// Sends the request on `stream` and reads the whole answer.
async fn exchange<S>(mut stream: S, url: &Url) -> anyhow::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Url { addr, host, path, .. } = url;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.with_context(|| format!("sending to {addr}"))?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .await
        .with_context(|| format!("reading from {addr}"))?;
    Ok(answer)
}

/// GETs `url`; `Ok` holds the status code and the body's first line.
async fn get(url: &str, tls_ca: Option<&std::path::Path>) -> anyhow::Result<(u16, String)> {
    let url = parse_url(url)?;
    let addr = &url.addr;
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let answer = if url.https {
        let ca = tls_ca
            .context("an https:// URL needs --tls-ca (or RUNNEL_TLS_CA): the CA to check the node with")?;
        let name = url.host.rsplit_once(':').map_or(url.host.as_str(), |(h, _)| h);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server = rustls_pki_types::ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name:?} is not a host name or address"))?;
        let stream = tls_connector(ca)?
            .connect(server, stream)
            .await
            .with_context(|| format!("TLS handshake with {addr}"))?;
        exchange(stream, &url).await?
    } else {
        exchange(stream, &url).await?
    };
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .with_context(|| format!("{addr} did not answer HTTP (first line {status_line:?})"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.lines().next().unwrap_or("").trim().to_owned()))
}

/// Checks `url` within `timeout`: `Ok` on 200, else the reason.
async fn check(url: &str, tls_ca: Option<&std::path::Path>, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, get(url, tls_ca)).await {
        Err(_) => Err(format!("{url}: no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(format!("{url}: {e:#}")),
        Ok(Ok((200, body))) => Ok(format!("{url}: 200 {body}")),
        Ok(Ok((status, body))) => Err(format!("{url}: {status} {body}")),
    }
}

/// Runs `runnel healthcheck`.
pub(crate) fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let url = args.url.unwrap_or_else(|| default_url(std::env::var("RUNNEL_HTTP_ADDR").ok().as_deref()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(check(&url, args.tls_ca.as_deref(), Duration::from_millis(args.timeout_ms))) {
        Ok(line) => {
            println!("healthy: {line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(line) => {
            eprintln!("unhealthy: {line}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-connection server that answers `answer` after reading the request head.
    async fn serve_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (addr, server)
    }

    #[tokio::test]
    async fn ok_on_200_and_not_otherwise() {
        let (addr, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
        let line = check(&format!("http://{addr}/readyz"), None, Duration::from_secs(5)).await.unwrap();
        assert!(line.ends_with("200 ok"), "{line}");
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /readyz HTTP/1.0\r\n"), "{head}");
        assert!(head.contains(&format!("Host: {addr}\r\n")), "{head}");

        let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nbroker fenced\n").await;
        let reason = check(&format!("http://{addr}/readyz"), None, Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.ends_with("503 broker fenced"), "{reason}");
        server.await.unwrap();

        let (addr, server) = serve_once("SSH-2.0-OpenSSH\r\n").await;
        let reason = check(&format!("http://{addr}/"), None, Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.contains("did not answer HTTP"), "{reason}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_and_silent_servers_fail_in_time() {
        // A port just freed: connecting is refused.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let reason = check(&format!("http://{addr}/readyz"), None, Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.contains("connecting to"), "{reason}");

        // A server that accepts and never answers: the timeout ends the check.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        let reason =
            check(&format!("http://{addr}/readyz"), None, Duration::from_millis(200)).await.unwrap_err();
        assert!(reason.contains("no answer within 200 ms"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }

    #[test]
    fn urls() {
        assert_eq!(default_url(None), "http://127.0.0.1:8080/readyz");
        assert_eq!(default_url(Some("0.0.0.0:8081")), "http://127.0.0.1:8081/readyz");
        assert_eq!(default_url(Some("[::]:8082")), "http://[::1]:8082/readyz");
        assert_eq!(default_url(Some("10.0.0.5:9000")), "http://10.0.0.5:9000/readyz");
        let parts = |u: &str| {
            let url = parse_url(u).unwrap();
            (url.addr, url.host, url.path, url.https)
        };
        assert_eq!(
            parts("http://127.0.0.1:8080/readyz"),
            ("127.0.0.1:8080".into(), "127.0.0.1:8080".into(), "/readyz".into(), false)
        );
        assert_eq!(parts("http://example"), ("example:80".into(), "example".into(), "/".into(), false));
        assert_eq!(parts("http://[::1]:81/x"), ("[::1]:81".into(), "[::1]:81".into(), "/x".into(), false));
        assert_eq!(parts("http://[::1]/x").0, "[::1]:80");
        assert_eq!(parts("https://x/"), ("x:443".into(), "x".into(), "/".into(), true));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
