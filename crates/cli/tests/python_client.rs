//! Runnel's gRPC API from Python: a client whose stubs are generated from `proto/` at test time
//! (`tests/python/runnel_client_test.py`) produces and consumes records against a real
//! one-node cluster.
//!
//! The first run builds a virtualenv with the pinned packages of
//! `tests/python/requirements.txt` under the target dir (`scripts/python-env.sh`, which needs
//! `python3` with venv and pip, and PyPI); later runs reuse it until a pin changes. A missing
//! Python or a failed install fails the test: CI has both. `RUNNEL_SKIP_PYTHON=1` skips it, and
//! says so on stderr past the test harness's capture.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runnel_testkit::process::{python_env, run_with_timeout, skip_python};
use runnel_testkit::{Cluster, ClusterOpts};

/// Bounds the Python client. Every call it makes has its own deadline and a healthy run takes
/// well under a second of RPCs plus about a second of start-up; this is the backstop.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repo root exists")
}

/// The cargo target dir this test was built into (`<target>/<profile>/runnel`), so the venv
/// lives next to the build and `cargo clean` removes it.
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_runnel"));
    bin.parent().and_then(Path::parent).expect("the runnel binary sits in <target>/<profile>/").to_owned()
}

#[test]
fn python_client_produces_and_consumes() {
    if skip_python("python_client_produces_and_consumes") {
        return;
    }
    let root = repo_root();
    let venv = python_env(&root, &target_dir().join("pyenv")).unwrap_or_else(|e| panic!("{e:#}"));

    let mut cluster = Cluster::start(1, ClusterOpts::new(env!("CARGO_BIN_EXE_runnel")))
        .unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let addr = cluster.node(1).grpc_addr();
    let client = run_with_timeout(
        Command::new(venv.join("bin/python"))
            .arg(root.join("tests/python/runnel_client_test.py"))
            .args(["--bootstrap", &addr.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            // Nothing written into the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&root),
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("running the Python client: {e:#}"));
    let report = client.describe("tests/python/runnel_client_test.py");
    // The testkit prints the node's logs when this panics.
    assert!(client.success(), "{report}");
    println!("{report}");

    // A node that served streams to a Python client still stops cleanly.
    for (id, status) in cluster.stop_all().expect("nodes stop") {
        assert!(status.success(), "node {id} exited with {status} on SIGTERM\n{}", cluster.all_logs());
    }
}
