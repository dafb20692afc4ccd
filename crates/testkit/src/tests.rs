//! The harness against fake nodes: shell scripts that ignore their arguments and sleep, so
//! process control, readiness and cleanup are tested without a real `runnel node`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// Writes an executable `/bin/sh` script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The process state letter from /proc (R, S, T for stopped, Z for zombie), None when gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesized command name.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_for_state(pid: u32, want: Option<char>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(pid) != want {
        assert!(Instant::now() < deadline, "pid {pid} state {:?}, want {want:?}", proc_state(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sleeper(dir: &Path) -> ClusterOpts {
    let mut opts = ClusterOpts::new(script(dir, "fake-node", "echo \"fake $*\"\nexec sleep 600"));
    opts.stop_timeout = Duration::from_secs(5);
    opts
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports = free_ports(12).unwrap();
    let mut sorted = ports.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 12);
    for p in ports {
        TcpListener::bind(("127.0.0.1", p)).expect("released port binds again");
    }
}

#[test]
fn nodes_get_their_own_ports_dirs_and_the_voters_list() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::prepare(3, sleeper(tmp.path())).unwrap();
    assert_eq!(cluster.ids(), [1, 2, 3]);
    let voters: Vec<String> =
        cluster.ids().iter().map(|&id| format!("{id}@{}", cluster.node(id).grpc_addr())).collect();
    assert_eq!(cluster.voters(), voters.join(","));
    let args = cluster.node_args(2);
    let flag = |f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
    assert_eq!(args[0], "node");
    assert_eq!(flag("--id"), "2");
    assert_eq!(flag("--grpc-addr"), cluster.node(2).grpc_addr().to_string());
    assert_eq!(flag("--http-addr"), cluster.node(2).http_addr().to_string());
    assert_eq!(flag("--controller-voters"), cluster.voters());
    assert!(cluster.node(2).data_dir().starts_with(cluster.root()));
    assert_ne!(cluster.node(1).data_dir(), cluster.node(2).data_dir());
    assert!(cluster.bootstrap().split(',').all(|a| a.starts_with("127.0.0.1:")));
}

#[test]
fn pause_resume_kill_and_restart_drive_the_process() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::prepare(1, sleeper(tmp.path())).unwrap();
    cluster.spawn(1).unwrap();
    let pid = cluster.node(1).pid().unwrap();
    wait_for_state(pid, Some('S'));

    cluster.pause(1).unwrap();
    wait_for_state(pid, Some('T'));
    cluster.resume(1).unwrap();
    wait_for_state(pid, Some('S'));

    cluster.kill(1).unwrap();
    assert!(!cluster.node(1).is_running());
    wait_for_state(pid, None); // reaped, not a zombie
    assert!(cluster.kill(1).is_err(), "killing a dead node is an error");

    cluster.spawn(1).unwrap();
    let pid2 = cluster.node(1).pid().unwrap();
    assert_ne!(pid, pid2);
    let logs = cluster.node(1).logs();
    // One banner per start, on stdout and on stderr.
    assert_eq!(logs.matches("===== testkit: starting node 1").count(), 4, "{logs}");
    assert!(logs.contains("fake node --id 1"), "{logs}");
}

#[test]
fn stop_waits_for_exit_and_kills_a_node_that_ignores_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::prepare(1, sleeper(tmp.path())).unwrap();
    cluster.spawn(1).unwrap();
    // Paused first: stop must continue it so SIGTERM is acted on.
    cluster.pause(1).unwrap();
    let status = cluster.stop(1).unwrap();
    assert!(!status.success(), "sleep dies of SIGTERM");
    assert!(!cluster.node(1).is_running());

    let mut opts = ClusterOpts::new(script(tmp.path(), "stubborn", "trap '' TERM\nexec sleep 600"));
    opts.stop_timeout = Duration::from_millis(300);
    let mut cluster = Cluster::prepare(1, opts).unwrap();
    cluster.spawn(1).unwrap();
    let pid = cluster.node(1).pid().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let the trap be installed
    let started = Instant::now();
    assert!(cluster.stop(1).is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
    wait_for_state(pid, None);
}

#[test]
fn drop_kills_and_reaps_every_node_even_on_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::prepare(3, sleeper(tmp.path())).unwrap();
    for id in cluster.ids() {
        cluster.spawn(id).unwrap();
    }
    cluster.pause(2).unwrap();
    let pids: Vec<u32> = cluster.ids().iter().map(|&id| cluster.node(id).pid().unwrap()).collect();
    drop(cluster);
    for pid in pids {
        wait_for_state(pid, None);
    }

    let opts = sleeper(tmp.path());
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let mut cluster = Cluster::prepare(2, opts).unwrap();
        cluster.spawn(1).unwrap();
        cluster.spawn(2).unwrap();
        tx.send((cluster.root().to_owned(), cluster.node(1).pid().unwrap(), cluster.node(2).pid().unwrap()))
            .unwrap();
        panic!("a failing test");
    });
    assert!(result.is_err());
    let (root, a, b) = rx.recv().unwrap();
    wait_for_state(a, None);
    wait_for_state(b, None);
    assert!(root.exists(), "a failed test keeps its temp dir for inspection");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn wait_ready_polls_readyz_and_fails_fast_when_the_node_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::prepare(1, sleeper(tmp.path())).unwrap();
    cluster.spawn(1).unwrap();
    assert!(cluster.wait_ready(1, Duration::from_millis(200)).is_err(), "nothing serves /readyz");

    // Stand in for the node's HTTP listener: 503 twice, then 200.
    let listener = TcpListener::bind(cluster.node(1).http_addr()).unwrap();
    let server = std::thread::spawn(move || {
        for code in ["503 Service Unavailable", "503 Service Unavailable", "200 OK"] {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "request ended early: {:?}", String::from_utf8_lossy(&req));
                req.extend_from_slice(&chunk[..n]);
            }
            assert!(String::from_utf8_lossy(&req).starts_with("GET /readyz HTTP/1.0\r\n"));
            write!(s, "HTTP/1.1 {code}\r\nContent-Length: 2\r\n\r\nok").unwrap();
        }
    });
    cluster.wait_ready(1, Duration::from_secs(5)).unwrap();
    server.join().unwrap();

    let mut cluster = Cluster::prepare(1, ClusterOpts::new(script(tmp.path(), "crash", "exit 3"))).unwrap();
    cluster.spawn(1).unwrap();
    let started = Instant::now();
    let err = cluster.wait_ready(1, Duration::from_secs(10)).unwrap_err();
    assert!(format!("{err}").contains("exited before it was ready"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!cluster.node(1).is_running());
}

#[test]
fn start_gives_up_after_its_attempts_with_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let opts =
        ClusterOpts::new(script(tmp.path(), "crash", "echo 'bind failed: address in use' >&2\nexit 1"));
    let err = Cluster::start(2, opts).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("address in use"), "{text}");
}

#[test]
fn cli_runs_are_captured_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "cli",
        "echo out \"$@\"\necho 'error: TOPIC_ALREADY_EXISTS (36): topic t exists' >&2\nexit 1",
    );
    let out = run_with_timeout(&sh, &["topic".into(), "list".into()], Duration::from_secs(5)).unwrap();
    assert_eq!(out.code, Some(1));
    assert!(!out.timed_out);
    assert_eq!(out.stdout, "out topic list\n");
    assert_eq!(out.error_name(), Some("TOPIC_ALREADY_EXISTS"));

    let slow = script(tmp.path(), "slow", "exec sleep 30");
    let out = run_with_timeout(&slow, &[], Duration::from_millis(200)).unwrap();
    assert!(out.timed_out);
    assert_eq!(out.code, None);
    assert!(out.elapsed < Duration::from_secs(3));

    let json = script(tmp.path(), "json", "echo '{\"a\": [1, 2]}'");
    let out = run_with_timeout(&json, &[], Duration::from_secs(5)).unwrap();
    assert_eq!(out.json().unwrap()["a"][1], 2);
}

#[test]
fn percentiles_by_nearest_rank() {
    let ms: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
    assert_eq!(percentile(&ms, 50.0), Duration::from_millis(50));
    assert_eq!(percentile(&ms, 99.0), Duration::from_millis(99));
    assert_eq!(percentile(&ms, 100.0), Duration::from_millis(100));
    assert_eq!(percentile(&ms[..1], 0.0), Duration::from_millis(100));
}
