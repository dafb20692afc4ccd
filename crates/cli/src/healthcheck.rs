//! `runnel healthcheck`: one HTTP GET of a node's probe, for container HEALTHCHECKs and
//! scripts on images without curl.
//!
//! Plain TCP and HTTP/1.0 (the node's probe server closes after one answer): exit 0 when the
//! status is 200, 1 otherwise, with a one-line reason on stderr.

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

/// Splits `http://host:port/path` into the address to connect to, the Host header and the path.
fn parse_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest =
        url.strip_prefix("http://").with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
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
    let addr = if has_port { authority.to_owned() } else { format!("{authority}:80") };
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// GETs `url`; `Ok` holds the status code and the body's first line.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let (addr, host, path) = parse_url(url)?;
    let mut stream = TcpStream::connect(&addr).await.with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.with_context(|| format!("sending to {addr}"))?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .await
        .with_context(|| format!("reading from {addr}"))?;
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
async fn check(url: &str, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, get(url)).await {
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
    match runtime.block_on(check(&url, Duration::from_millis(args.timeout_ms))) {
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
        let line = check(&format!("http://{addr}/readyz"), Duration::from_secs(5)).await.unwrap();
        assert!(line.ends_with("200 ok"), "{line}");
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /readyz HTTP/1.0\r\n"), "{head}");
        assert!(head.contains(&format!("Host: {addr}\r\n")), "{head}");

        let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nbroker fenced\n").await;
        let reason = check(&format!("http://{addr}/readyz"), Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.ends_with("503 broker fenced"), "{reason}");
        server.await.unwrap();

        let (addr, server) = serve_once("SSH-2.0-OpenSSH\r\n").await;
        let reason = check(&format!("http://{addr}/"), Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.contains("did not answer HTTP"), "{reason}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_and_silent_servers_fail_in_time() {
        // A port just freed: connecting is refused.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let reason = check(&format!("http://{addr}/readyz"), Duration::from_secs(5)).await.unwrap_err();
        assert!(reason.contains("connecting to"), "{reason}");

        // A server that accepts and never answers: the timeout ends the check.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        let reason = check(&format!("http://{addr}/readyz"), Duration::from_millis(200)).await.unwrap_err();
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
        let parts = |u: &str| parse_url(u).unwrap();
        assert_eq!(
            parts("http://127.0.0.1:8080/readyz"),
            ("127.0.0.1:8080".into(), "127.0.0.1:8080".into(), "/readyz".into())
        );
        assert_eq!(parts("http://example"), ("example:80".into(), "example".into(), "/".into()));
        assert_eq!(parts("http://[::1]:81/x"), ("[::1]:81".into(), "[::1]:81".into(), "/x".into()));
        assert_eq!(parts("http://[::1]/x").0, "[::1]:80");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
