//! Child processes a test runs (a Python client, kcat, pip): bounded in time, in their own
//! process group so that whatever they start goes with them, with their output captured.
//!
//! [`run_with_timeout`] runs one command to completion or kills its group at the deadline;
//! [`python_env`] builds or reuses the pinned virtualenv of `tests/python/requirements.txt`
//! (through `scripts/python-env.sh`); [`skip_python`] honours `RUNNEL_SKIP_PYTHON=1`;
//! [`LineChild`] runs one that reports as it goes, its stdout read line by line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process_group};

use crate::POLL_INTERVAL;

/// Bounds building the venv: the script bounds `pip install` at 300 s itself
/// (`RUNNEL_PIP_TIMEOUT_S`); this covers that, creating the venv, and waiting for a parallel
/// run that holds the build lock.
pub const PYTHON_ENV_TIMEOUT: Duration = Duration::from_secs(480);

/// A finished (or killed) child: its exit, output and wall time.
#[derive(Debug)]
pub struct Finished {
    /// How it exited (after SIGKILL when it timed out).
    pub status: ExitStatus,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
    /// Everything on stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Everything on stderr (invalid UTF-8 replaced).
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// Exited 0 within its timeout.
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// How `what` ended, with its whole output: for failure messages and reports.
    pub fn describe(&self, what: &str) -> String {
        let how =
            if self.timed_out { "was killed after its timeout".to_owned() } else { self.status.to_string() };
        format!(
            "{what} {how} after {:.1?}\n----- stdout -----\n{}\n----- stderr -----\n{}",
            self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Kills the child's whole process group when dropped: pip, protoc and anything else the
/// child started go with it, also when the test panics.
struct GroupGuard(Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = Pid::from_raw(self.0.id() as i32) {
            // ESRCH (the group is gone already) is what a clean run ends with.
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// Runs `command` in its own process group with stdin closed and output to temp files (so no
/// pipe can block on a grandchild that inherited it), killing the group after `timeout`.
/// When the command ends its group is killed too, so nothing it started outlives it.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> anyhow::Result<Finished> {
    let mut out = tempfile::tempfile().context("temp file for stdout")?;
    let mut err = tempfile::tempfile().context("temp file for stderr")?;
    let start = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let mut guard = GroupGuard(child);
    let (status, timed_out) = loop {
        if let Some(status) = guard.0.try_wait()? {
            break (status, false);
        }
        if start.elapsed() >= timeout {
            if let Some(pid) = Pid::from_raw(guard.0.id() as i32) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            break (guard.0.wait()?, true);
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    drop(guard);
    let elapsed = start.elapsed();
    let read = |f: &mut File| -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        f.rewind()?;
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok(Finished { status, timed_out, stdout: read(&mut out)?, stderr: read(&mut err)?, elapsed })
}

/// Whether `RUNNEL_SKIP_PYTHON=1` asks to skip the Python tests. When it does, says so on
/// stderr past libtest's capture (which only takes the print macros): a skip must be seen.
pub fn skip_python(test: &str) -> bool {
    if std::env::var("RUNNEL_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: RUNNEL_SKIP_PYTHON=1; this Python client test did NOT run ***\n"
        );
        return true;
    }
    false
}

/// Builds or reuses the venv of `<repo_root>/tests/python/requirements.txt` under `base`
/// (one directory per set of pins, see `scripts/python-env.sh`); answers its directory, whose
/// `bin/python` runs the tests. Fails with the script's output and what the machine needs.
pub fn python_env(repo_root: &Path, base: &Path) -> anyhow::Result<PathBuf> {
    let run = run_with_timeout(
        Command::new("bash").arg(repo_root.join("scripts/python-env.sh")).arg(base).current_dir(repo_root),
        PYTHON_ENV_TIMEOUT,
    )?;
    if !run.success() {
        bail!(
            "{}\n\nThe Python client tests need python3 (3.9 or newer, with venv and pip) and access to \
             PyPI. Set RUNNEL_SKIP_PYTHON=1 to skip them.",
            run.describe("scripts/python-env.sh"),
        );
    }
    let venv = run.stdout.lines().last().context("python-env.sh printed no venv path")?.trim();
    println!("python venv {venv} ready in {:.1?}\n{}", run.elapsed, run.stderr);
    Ok(PathBuf::from(venv))
}

/// A child whose stdout is read line by line while it runs (a workload reporting progress):
/// in its own process group, stdin a pipe it may treat as its stop signal, stderr kept in a
/// temp file. Dropping it kills the whole group, also when the test panics.
pub struct LineChild {
    guard: GroupGuard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: File,
    started: Instant,
}

impl LineChild {
    /// Spawns `command` with stdin and stdout piped; a thread forwards stdout's lines.
    pub fn spawn(command: &mut Command) -> anyhow::Result<LineChild> {
        let err = tempfile::tempfile().context("temp file for stderr")?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err.try_clone()?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the child's stdout")?;
        let guard = GroupGuard(child);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LineChild { guard, stdin, lines, stderr: err, started: Instant::now() })
    }

    /// The next line, waiting at most `timeout`: `Ok(None)` when none came in time,
    /// `Err(())` once stdout is closed and every line was taken.
    #[allow(clippy::result_unit_err)]
    pub fn next_line(&self, timeout: Duration) -> Result<Option<String>, ()> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// Writes `line` and a newline to the child's stdin (a step signal of a child driven in
    /// phases); fails once stdin is closed.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the child's stdin is closed")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the child's stdin (the stop signal of a child that watches it for EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.guard.0.id()
    }

    /// Whether it has exited, and how.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.guard.0.try_wait()?)
    }

    /// Waits at most `timeout` for it to exit; past that kills its group. Answers the exit
    /// status and whether it was killed.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.0.try_wait()? {
                return Ok((status, false));
            }
            if Instant::now() >= deadline {
                if let Some(pid) = Pid::from_raw(self.guard.0.id() as i32) {
                    let _ = kill_process_group(pid, Signal::KILL);
                }
                return Ok((self.guard.0.wait()?, true));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Everything it wrote on stderr so far (invalid UTF-8 replaced).
    pub fn stderr(&mut self) -> String {
        let mut bytes = Vec::new();
        if self.stderr.rewind().is_ok() {
            let _ = self.stderr.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Time since it was spawned.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl std::fmt::Debug for LineChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineChild").field("pid", &self.guard.0.id()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit() {
        let done = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(!done.success() && !done.timed_out);
        assert_eq!(done.status.code(), Some(3));
        assert_eq!((done.stdout.as_str(), done.stderr.as_str()), ("out\n", "err\n"));
    }

    #[test]
    fn line_child_streams_lines_and_stops_on_stdin_eof() {
        // Prints a line, waits for its stdin to close, prints another and exits.
        let mut child = LineChild::spawn(
            Command::new("sh").args(["-c", "echo ready; cat >/dev/null; echo bye; echo err >&2"]),
        )
        .unwrap();
        assert_eq!(child.next_line(Duration::from_secs(10)), Ok(Some("ready".to_owned())));
        assert_eq!(child.next_line(Duration::from_millis(50)), Ok(None), "nothing before stdin closes");
        child.close_stdin();
        assert_eq!(child.next_line(Duration::from_secs(10)), Ok(Some("bye".to_owned())));
        let (status, killed) = child.wait(Duration::from_secs(10)).unwrap();
        assert!(status.success() && !killed);
        assert_eq!(child.next_line(Duration::from_secs(10)), Err(()), "stdout closed");
        assert_eq!(child.stderr(), "err\n");
    }

    #[test]
    fn kills_the_whole_group_at_the_deadline() {
        // A grandchild holding the output files open must not keep the call waiting.
        let start = Instant::now();
        let done = run_with_timeout(
            Command::new("sh").args(["-c", "sleep 30 & echo started; wait"]),
            // Long enough for `echo` on a loaded machine; the sleep outlasts it either way.
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(done.timed_out && !done.success(), "{done:?}");
        assert_eq!(done.stdout, "started\n");
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    }
}
