"""Drives the web console in headless Chromium for crates/cli/tests/console.rs.

Chromium is spoken to over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads
NUL-terminated JSON commands on fd 3 and writes answers and events on fd 4), so this needs
nothing but the standard library and a Chromium binary.

The test drives the phases through stdin and stdout, one line each:
  out "before leader=L"             the page shows every node up and a leader for each
                                    partition of the topic; before.png taken
  in  "killed"                      the Rust side has just killed node L (SIGKILL)
  out "after leader=M delay_ms=D"   the page shows node L down and partition 0 led by M != L,
                                    D ms after "killed" arrived; after.png taken just after
  in  "quorum-lost"                 another node was killed: the serving node has no quorum
  out "stale reason=..."            the page shows its stale banner; stale.png taken
Every wait polls the DOM (every 50 ms) with a deadline; a miss exits non-zero with what the
page showed. The browser is closed (killed if need be) on every way out.
"""

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

POLL_S = 0.05


class Chromium:
    """A headless Chromium and one page of it, spoken to over the DevTools pipe."""

    def __init__(self, binary, profile):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The child's ends, moved above 2..4 so that placing them on 3 and 4 cannot clobber.
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        for fd in (to_child_r, from_child_w):
            os.close(fd)

        def place_pipes():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [
            binary,
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            "--window-size=1280,1000",
            "about:blank",
        ]
        if os.geteuid() == 0:
            # Chromium refuses to run as root with its sandbox on.
            args.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(profile, "chromium.log"), "wb"),
            pass_fds=(3, 4),
            preexec_fn=place_pipes,
        )
        os.close(child_in)
        os.close(child_out)
        self.wfd = to_child_w
        self.rfd = from_child_r
        self.buf = b""
        self.next_id = 0
        self.session = None

    def _read_message(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no DevTools message in time")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buf += chunk
        message, self.buf = self.buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, timeout=30.0, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self.wfd, data):]
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=False
        )
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
        )
        self.call("Page.navigate", {"url": url})

    def eval(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path):
        shot = self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self):
        try:
            self.call("Browser.close", timeout=5.0, session=False)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass


# What the test reads from the page: only the data-* attributes and the banner.
STATE_JS = """(() => {
  if (!document.getElementById('banner')) return null;
  const nodes = {};
  for (const n of document.querySelectorAll('#nodes [data-node-id]')) {
    nodes[n.dataset.nodeId] = n.dataset.nodeState;
  }
  const partitions = {};
  for (const r of document.querySelectorAll('#topics tr[data-topic=%s]')) {
    partitions[r.dataset.partition] = r.dataset.leader;
  }
  const banner = document.getElementById('banner');
  return {
    loaded: document.body.dataset.loaded === 'true',
    stale: document.body.dataset.stale === 'true',
    banner: banner.hidden ? '' : banner.textContent,
    refreshed: Number(document.getElementById('last-refresh').dataset.refreshedMs),
    nodes, partitions,
    groups: document.querySelectorAll('#groups tr[data-group]').length,
  };
})()"""


def wait_for(browser, state_js, what, timeout, done):
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        try:
            state = browser.eval(state_js)
        except RuntimeError as e:
            # The page is still loading (no document yet, or its context was just replaced).
            state = {"error": str(e)}
            time.sleep(POLL_S)
            continue
        if state and done(state):
            return state
        time.sleep(POLL_S)
    sys.exit(f"console_browser: {what} not shown within {timeout}s; the page showed {json.dumps(state)}")


def say(line):
    print(line, flush=True)


def expect(line):
    got = sys.stdin.readline().strip()
    if got != line:
        sys.exit(f"console_browser: expected {line!r} on stdin, got {got!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    state_js = STATE_JS % json.dumps(args.topic)
    profile = tempfile.mkdtemp(prefix="runnel-chromium-")
    browser = Chromium(args.chromium, profile)
    try:
        browser.open(args.url)

        def healthy(s):
            return (
                s["loaded"]
                and not s["stale"]
                and len(s["nodes"]) == args.nodes
                and all(v == "up" for v in s["nodes"].values())
                and len(s["partitions"]) == args.partitions
                and all(v != "none" for v in s["partitions"].values())
                and s["groups"] > 0
            )

        state = wait_for(browser, state_js, "every node up and every partition led", args.timeout_s, healthy)
        browser.screenshot(os.path.join(args.out_dir, "before.png"))
        leader = state["partitions"]["0"]
        say(f"before leader={leader}")

        expect("killed")
        killed_at = time.monotonic()

        def moved(s):
            return s["nodes"].get(leader) == "down" and s["partitions"].get("0") not in (None, "none", leader)

        state = wait_for(browser, state_js, f"node {leader} down and partition 0 led elsewhere", args.timeout_s, moved)
        delay_ms = int((time.monotonic() - killed_at) * 1000)
        say(f"after leader={state['partitions']['0']} delay_ms={delay_ms}")
        # Wait for the view to settle (the new controller, if it moved, answering) before the
        # picture, so it shows the cluster rather than the moment of the change.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (browser.eval(state_js) or {}).get("stale", True):
            time.sleep(POLL_S)
        browser.screenshot(os.path.join(args.out_dir, "after.png"))

        expect("quorum-lost")
        state = wait_for(
            browser, state_js, "the stale banner", args.timeout_s, lambda s: s["stale"] and "Not current" in s["banner"]
        )
        browser.screenshot(os.path.join(args.out_dir, "stale.png"))
        say(f"stale reason={state['banner']}")
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
