"""Shared by the Kafka client tests (tests/python/kafka_*.py): checks, a phase runner, and a
raw-socket Kafka probe that needs no client library.

The probe speaks just enough of the wire protocol (ApiVersions v0 and Metadata v1, both with
request header v1 and response header v0) to tell "nothing listens" from "a broker answers"
and to count the brokers a node reports, so every test starts with a clear verdict on the
listener before any client library's retries and timeouts hide it.
"""

import os
import socket
import struct
import sys
import time
import traceback

POLL_INTERVAL_S = 0.05
SOCKET_TIMEOUT_S = 5.0

API_PRODUCE = 0
API_METADATA = 3
API_VERSIONS = 18


class Failure(Exception):
    """A check that did not hold; the message says what was expected and what came back."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def deadline_after(seconds):
    return time.monotonic() + seconds


def left(deadline):
    return max(0.0, deadline - time.monotonic())


def env_default(name, default):
    return os.environ.get(name, default)


def parse_bootstrap(bootstrap):
    """'h1:p1,h2:p2' as [(host, port)]."""
    out = []
    for part in bootstrap.split(","):
        part = part.strip()
        if not part:
            continue
        host, _, port = part.rpartition(":")
        check(host and port.isdigit(), f"bad bootstrap address {part!r} (want host:port)")
        out.append((host.strip("[]"), int(port)))
    check(out, f"empty bootstrap {bootstrap!r}")
    return out


# --- the raw wire protocol ------------------------------------------------------------------

def kstring(s):
    """A Kafka STRING / NULLABLE_STRING (int16 length, -1 for null)."""
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request_frame(api_key, api_version, correlation_id, body, client_id="runnel-test"):
    """A whole request: int32 size, then request header v1 (key, version, correlation id,
    client id), then the body."""
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + kstring(client_id)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_response(sock, correlation_id):
    """Reads one response frame; answers its body after the correlation id (header v0)."""
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    check(4 <= size <= 64 << 20, f"response frame size {size} out of range")
    frame = recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", frame)
    eq(got, correlation_id, "response correlation id")
    return frame[4:]


def connect(host, port, timeout=SOCKET_TIMEOUT_S):
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def roundtrip(host, port, api_key, api_version, body, correlation_id=1, timeout=SOCKET_TIMEOUT_S):
    with connect(host, port, timeout) as sock:
        sock.sendall(request_frame(api_key, api_version, correlation_id, body))
        return read_response(sock, correlation_id)


class Reader:
    """Reads big-endian Kafka primitives off a response body."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s


def parse_api_versions_v0(body):
    """ApiVersions v0 response body: error code, [api key, min, max]."""
    r = Reader(body)
    error = r.take(">h")
    n = r.take(">i")
    apis = {}
    for _ in range(max(n, 0)):
        key, lo, hi = r.take(">hhh")
        apis[key] = (lo, hi)
    return error, apis


def api_versions(host, port, timeout=SOCKET_TIMEOUT_S):
    """ApiVersions v0: (error code, {api key: (min, max)})."""
    return parse_api_versions_v0(roundtrip(host, port, API_VERSIONS, 0, b"", timeout=timeout))


def metadata_brokers(host, port, timeout=SOCKET_TIMEOUT_S):
    """Metadata v1 for no topics (an empty array; null would mean all): [(id, host, port)]."""
    r = Reader(roundtrip(host, port, API_METADATA, 1, struct.pack(">i", 0), timeout=timeout))
    brokers = []
    for _ in range(r.take(">i")):
        node_id = r.take(">i")
        bhost = r.string()
        bport = r.take(">i")
        r.string()  # rack
        brokers.append((node_id, bhost, bport))
    return sorted(brokers)


def metadata_topics(host, port, timeout=SOCKET_TIMEOUT_S):
    """Metadata v1 for all topics (a null array: v1 never auto-creates on it):
    {name: (error code, {partition: (error code, leader, replicas, isr)})}."""
    r = Reader(roundtrip(host, port, API_METADATA, 1, struct.pack(">i", -1), timeout=timeout))
    for _ in range(r.take(">i")):
        r.take(">i")
        r.string()
        r.take(">i")
        r.string()
    r.take(">i")  # controller id
    topics = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string()
        r.take(">?")  # is_internal
        partitions = {}
        for _ in range(r.take(">i")):
            perror, index, leader = r.take(">hii")
            replicas = [r.take(">i") for _ in range(r.take(">i"))]
            isr = [r.take(">i") for _ in range(r.take(">i"))]
            partitions[index] = (perror, leader, replicas, isr)
        topics[name] = (error, partitions)
    return topics


INT32_MIN = -(1 << 31)


def metadata_v8_authorized_operations(host, port, topic, timeout=SOCKET_TIMEOUT_S):
    """Metadata v8 for `topic` (no auto-creation) asking for both authorized-operations
    bitfields: (cluster bitfield, {topic: (error code, topic bitfield)}). INT32_MIN is the
    field's "not provided" default."""
    body = (struct.pack(">i", 1) + kstring(topic) + struct.pack(">???", False, True, True))
    r = Reader(roundtrip(host, port, API_METADATA, 8, body, timeout=timeout))
    r.take(">i")  # throttle
    for _ in range(r.take(">i")):
        r.take(">i")
        r.string()
        r.take(">i")
        r.string()
    r.string()  # cluster id
    r.take(">i")  # controller id
    topics = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string()
        r.take(">?")
        for _ in range(r.take(">i")):
            r.take(">hiii")  # error, index, leader, leader epoch
            for _ in range(3):  # replicas, isr, offline replicas
                for _ in range(r.take(">i")):
                    r.take(">i")
        topics[name] = (error, r.take(">i"))
    return r.take(">i"), topics


def wait_for_kafka(bootstrap, brokers, timeout_s):
    """Polls every bootstrap address until it answers ApiVersions (error 0, with Produce,
    Fetch and Metadata listed) and its Metadata names `brokers` brokers; answers a summary.
    Fails naming the address and the last thing that went wrong: "connection refused" means
    nothing listens on the Kafka port at all. Env KAFKA_LISTENER_TIMEOUT_S overrides the bound."""
    timeout_s = float(os.environ.get("KAFKA_LISTENER_TIMEOUT_S", timeout_s))
    deadline = deadline_after(timeout_s)
    addrs = parse_bootstrap(bootstrap)
    seen = {}
    for host, port in addrs:
        last = None
        while True:
            try:
                error, apis = api_versions(host, port, timeout=min(SOCKET_TIMEOUT_S, max(left(deadline), 0.5)))
                eq(error, 0, f"ApiVersions v0 error code from {host}:{port}")
                for key, name in ((0, "Produce"), (1, "Fetch"), (3, "Metadata")):
                    check(key in apis, f"{host}:{port} ApiVersions does not list {name} (key {key}): {apis}")
                got = metadata_brokers(host, port)
                if len(got) >= brokers:
                    seen[(host, port)] = got
                    break
                last = f"Metadata names {len(got)} of {brokers} brokers: {got}"
            except (OSError, ConnectionError, struct.error) as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                hint = ""
                if last and ("refused" in last.lower() or "ConnectionRefused" in last):
                    hint = " -- nothing listens on this Kafka port: is the node's Kafka listener (--kafka-addr) built in?"
                raise Failure(f"no Kafka broker answering at {host}:{port} within {timeout_s}s; last: {last}{hint}")
            time.sleep(POLL_INTERVAL_S)
    ids = sorted({b[0] for got in seen.values() for b in got})
    return f"{len(addrs)} address(es) answer ApiVersions; brokers {ids}"


# --- the phase runner -----------------------------------------------------------------------

class Phases:
    """Runs named phases in order, one line each: `ok`, `FAIL` (with the reason) or `skip`
    (a phase it needs did not pass). Ends with a summary line and answers the exit code."""

    def __init__(self, title):
        self.title = title
        self.started = time.monotonic()
        self.results = {}  # name -> "ok" | "FAIL" | "skip"
        self.notes = []

    def note(self, msg):
        self.notes.append(msg)
        print(f"  note: {msg}", flush=True)

    def run(self, name, step, needs=()):
        missing = [n for n in needs if self.results.get(n) != "ok"]
        if missing:
            self.results[name] = "skip"
            print(f"skip {name}: needs {', '.join(missing)}", flush=True)
            return None
        t = time.monotonic()
        try:
            detail = step()
        except Failure as e:
            self.results[name] = "FAIL"
            print(f"FAIL {name}: {e} ({time.monotonic() - t:.1f}s)", flush=True)
            return None
        except Exception as e:  # noqa: BLE001 - any surprise is a failure, with its trace
            self.results[name] = "FAIL"
            traceback.print_exc(file=sys.stdout)
            print(f"FAIL {name}: {type(e).__name__}: {e} ({time.monotonic() - t:.1f}s)", flush=True)
            return None
        self.results[name] = "ok"
        print(f"ok   {name}: {detail} ({time.monotonic() - t:.1f}s)", flush=True)
        return detail

    def finish(self):
        counts = {k: sum(1 for v in self.results.values() if v == k) for k in ("ok", "FAIL", "skip")}
        failed = [n for n, v in self.results.items() if v != "ok"]
        took = time.monotonic() - self.started
        if self.notes:
            print("notes:\n" + "\n".join(f"  - {n}" for n in self.notes))
        # Deliberately not "N passed, N failed": CI reads such lines as a test runner's totals.
        print(f"phases: {counts['ok']} ok, {counts['FAIL']} FAIL, {counts['skip']} skipped, in {took:.1f}s")
        if failed:
            print(f"FAILED {self.title}: {', '.join(failed)}", flush=True)
            return 1
        print(f"PASS {self.title}", flush=True)
        return 0
