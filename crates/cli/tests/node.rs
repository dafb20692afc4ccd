//! `runnel node` as a process: settings precedence (flags > env > TOML > defaults), the ready
//! line, the probes, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn runnel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    for (key, _) in std::env::vars() {
        if key.starts_with("RUNNEL_") {
            command.env_remove(key);
        }
    }
    command
}

fn print_config(command: &mut Command) -> serde_json::Value {
    let out = command.arg("--print-config").output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn flags_beat_env_which_beats_the_file_which_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "id = 2\ndata_dir = \"/file\"\ncontroller_voters = \"1@h:1,2@h:2,3@h:3\"\n\
         heartbeat_interval_ms = 300\nsession_timeout_ms = 2500\nhttp_addr = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    let value = print_config(
        runnel()
            .args(["node", "--data-dir", "/flag"])
            .env("RUNNEL_CONFIG", &file)
            .env("RUNNEL_DATA_DIR", "/env")
            .env("RUNNEL_HEARTBEAT_INTERVAL_MS", "200")
            .env("RUNNEL_LOG_FORMAT", "json"),
    );
    assert_eq!(value["id"], 2, "from the file");
    assert_eq!(value["data_dir"], "/flag", "the flag beats env and file");
    assert_eq!(value["heartbeat_interval_ms"], 200, "env beats the file");
    assert_eq!(value["session_timeout_ms"], 2500, "the file beats the default");
    assert_eq!(value["http_addr"], "127.0.0.1:9999");
    assert_eq!(value["grpc_addr"], "127.0.0.1:50052", "the default follows the id");
    assert_eq!(value["log_format"], "json");
    assert_eq!(value["voters"], "1@h:1,2@h:2,3@h:3");
}

#[test]
fn missing_required_settings_fail() {
    let out = runnel().args(["node", "--id", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir is required"));
}

/// `runnel tls generate` writes a CA and node certificates that `runnel node` takes, and
/// TLS settings that cannot work are refused at start with the reason.
#[test]
fn tls_generate_writes_certificates_the_node_takes_and_bad_tls_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let out =
        runnel().args(["tls", "generate", "--dir"]).arg(&tls).args(["--nodes", "1,2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key"] {
        assert!(tls.join(file).is_file(), "{file} missing");
    }
    let file = |name: &str| tls.join(name).display().to_string();
    let node = |cert: &str, key: &str| {
        let mut command = runnel();
        command.args(["node", "--id", "1", "--data-dir", "/d", "--controller-voters", "1@127.0.0.1:50051"]);
        command.args(["--tls-cert", &file(cert), "--tls-key", &file(key), "--tls-ca", &file("ca.pem")]);
        command
    };
    let value = print_config(&mut node("node-1.pem", "node-1.key"));
    assert_eq!(value["tls_files"][0], file("node-1.pem"));
    let refused = |command: &mut Command, why: &str| {
        let out = command.arg("--print-config").output().unwrap();
        assert!(!out.status.success(), "{why}: accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
    };
    refused(&mut node("node-2.pem", "node-2.key"), "is node 2's certificate");
    refused(&mut node("ca.pem", "ca.key"), "is not runnel-node-<node id>");
    refused(&mut node("node-1.key", "node-1.key"), "holds no PEM CERTIFICATE");
    refused(&mut node("missing.pem", "node-1.key"), "missing.pem");
    refused(
        runnel().args([
            "node",
            "--id",
            "1",
            "--data-dir",
            "/d",
            "--controller-voters",
            "1@h:1",
            "--tls-cert",
            "x",
        ]),
        "give all three or none",
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split("\r\n\r\n").nth(1)?.to_owned()))
}

#[test]
fn a_single_voter_node_becomes_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let kafka = format!("127.0.0.1:{}", free_port());
    let mut child = runnel()
        .args(["node", "--id", "1", "--controller-voters", &format!("1@{grpc}"), "--grpc-addr", &grpc])
        .args(["--http-addr", &http, "--kafka-addr", &kafka, "--heartbeat-interval-ms", "100"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("runnel node 1 ready: grpc={grpc} http={http} kafka={kafka}"));

    assert_eq!(get(&http, "/healthz").map(|r| r.0), Some(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = get(&http, "/readyz");
        if ready.as_ref().is_some_and(|r| r.0 == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {ready:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, metrics) = get(&http, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in ["runnel_raft_term 1", "runnel_raft_is_leader 1", "runnel_broker_fenced 0"] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    assert_eq!(get(&http, "/nope").map(|r| r.0), Some(404));

    // The client commands, against this node (after an unreachable bootstrap address).
    let bootstrap = format!("127.0.0.1:1,{grpc}");
    let client = |args: &[&str]| {
        runnel().args(args).args(["--bootstrap", &bootstrap, "--output", "json"]).output().unwrap()
    };
    let out = client(&["topic", "create", "orders", "--partitions", "2", "--replication-factor", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["partitions"][1]["leader"], 1);
    assert_eq!(created["partitions"][1]["isr"], serde_json::json!([1]));
    let again = client(&["topic", "create", "orders", "--partitions", "2", "--replication-factor", "1"]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.starts_with("error: TOPIC_ALREADY_EXISTS (36): "), "{stderr}");
    let listed: serde_json::Value = serde_json::from_slice(&client(&["topic", "list"]).stdout).unwrap();
    assert_eq!(listed["topics"][0]["name"], "orders");
    let status: serde_json::Value = serde_json::from_slice(&client(&["cluster", "status"]).stdout).unwrap();
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["voters"][0]["term"], 1);
    assert_eq!(status["brokers"][0]["fenced"], false);
    assert!(client(&["topic", "delete", "orders"]).status.success());
    assert_eq!(client(&["topic", "describe", "orders"]).status.code(), Some(1));
    assert_eq!(client(&["topic", "create"]).status.code(), Some(2), "usage errors exit 2");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// `--http-tls`: the probes, metrics and console are served over TLS with the node's
/// certificate; `runnel healthcheck` checks them with the cluster CA, and neither plaintext nor
/// a client trusting another CA gets an answer.
#[test]
fn the_http_listener_serves_tls_with_http_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, other) = (dir.path().join("tls"), dir.path().join("other"));
    for d in [&tls, &other] {
        let out = runnel().args(["tls", "generate", "--nodes", "1", "--dir"]).arg(d).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let kafka = format!("127.0.0.1:{}", free_port());
    let mut child = runnel()
        .args(["node", "--id", "1", "--controller-voters", &format!("1@{grpc}"), "--grpc-addr", &grpc])
        .args(["--http-addr", &http, "--kafka-addr", &kafka, "--http-tls"])
        .arg("--tls-cert")
        .arg(tls.join("node-1.pem"))
        .arg("--tls-key")
        .arg(tls.join("node-1.key"))
        .arg("--tls-ca")
        .arg(tls.join("ca.pem"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("runnel node 1 ready"), "{line}");

    let healthcheck = |url: &str, ca: Option<&std::path::Path>| {
        let mut command = runnel();
        command.args(["healthcheck", "--url", url]);
        if let Some(ca) = ca {
            command.arg("--tls-ca").arg(ca);
        }
        command.output().unwrap()
    };
    let url = format!("https://{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = healthcheck(&url, Some(&tls.join("ca.pem")));
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("200"), "{out:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready over TLS: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Plaintext gets no HTTP answer; nor does a client that trusts another CA, or none.
    assert_eq!(get(&http, "/readyz"), None, "plaintext HTTP was answered");
    let untrusted = healthcheck(&url, Some(&other.join("ca.pem")));
    assert!(!untrusted.status.success(), "{untrusted:?}");
    assert!(!healthcheck(&url, None).status.success(), "https without a CA");
    assert!(
        !healthcheck(&format!("http://{http}/readyz"), None).status.success(),
        "http:// to a TLS listener"
    );

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
