#!/usr/bin/env python3
"""Runnel's Kafka listener as a kcat user meets it.

    python kcat_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3] [--kcat kcat]
    (or env KAFKA_BOOTSTRAP, KAFKA_BROKERS, KCAT)

Needs kcat on PATH (Debian's package `kcat`; .ci/run installs it) and confluent-kafka (to
create the test's topic; kcat cannot). Against a running cluster whose nodes all serve Kafka
it checks, one line per phase:

  1. the listener answers ApiVersions and names every broker (raw socket, no client);
  2. `kcat -L` lists every broker, at the Kafka address the test knows it by, and for a
     3-partition RF 3 topic every partition with a leader among the brokers, 3 distinct
     replicas and an ISR equal to them, without an error (`-L -t TOPIC` the same);
  3. `kcat -P -K:` with `-H` headers (a repeated name, an empty value) produces keyed records
     (a value holding the delimiter too), and `kcat -C -e -J` reads every record back, each once,
     with its key, value and headers in order; `kcat -C -e -K:` prints the same key:value lines.

Every kcat run has a timeout. Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from kafka_testlib import Failure, Phases, check, deadline_after, eq, parse_bootstrap, wait_for_kafka

LISTENER_TIMEOUT_S = 30.0
KCAT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 20.0
PARTITIONS = 3

BROKER_RE = re.compile(r"^  broker (-?\d+) at (\S+):(\d+)( \(controller\))?$")
TOPIC_RE = re.compile(r'^  topic "([^"]+)" with (\d+) partitions:(.*)$')
PARTITION_RE = re.compile(r"^    partition (\d+), leader (-?\d+), replicas: ([\d,]*), isrs: ([\d,]*)(, (.*))?$")


def resolve(host):
    """The IPv4 address of `host` (so that 'localhost' and '127.0.0.1' compare equal)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def ids(s):
    return [int(x) for x in s.split(",") if x]


def parse_metadata(text):
    """`kcat -L`'s text as {brokers: {id: (host, port, controller)}, topics: {name: {...}}}."""
    brokers, topics, topic = {}, {}, None
    for line in text.splitlines():
        if m := BROKER_RE.match(line):
            brokers[int(m[1])] = (m[2], int(m[3]), bool(m[4]))
        elif m := TOPIC_RE.match(line):
            topic = {"partitions": {}, "count": int(m[2]), "error": m[3].strip() or None}
            topics[m[1]] = topic
        elif m := PARTITION_RE.match(line):
            check(topic is not None, f"a partition line before any topic line: {line!r}")
            topic["partitions"][int(m[1])] = {"leader": int(m[2]), "replicas": ids(m[3]), "isrs": ids(m[4]),
                                              "error": m[6]}
    return brokers, topics


class Run:
    def __init__(self, args, phases):
        self.phases = phases
        self.bootstrap = args.bootstrap
        self.brokers = args.brokers
        self.kcat = args.kcat
        self.topic = f"kcat-{uuid.uuid4().hex[:8]}"

    def run_kcat(self, args, stdin=None, timeout=KCAT_TIMEOUT_S):
        cmd = [self.kcat, "-b", self.bootstrap, *args]
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise Failure(f"{' '.join(cmd)} did not finish within {timeout}s; stdout {e.stdout!r} stderr {e.stderr!r}")
        if done.returncode != 0:
            raise Failure(f"{' '.join(cmd)} exited {done.returncode}\nstdout: {done.stdout.decode(errors='replace')}"
                          f"\nstderr: {done.stderr.decode(errors='replace')}")
        return done.stdout, done.stderr

    def listener(self):
        return wait_for_kafka(self.bootstrap, self.brokers, LISTENER_TIMEOUT_S)

    def list_metadata(self):
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        fs = admin.create_topics([NewTopic(self.topic, num_partitions=PARTITIONS, replication_factor=min(3, self.brokers))],
                                 request_timeout=READY_TIMEOUT_S)
        fs[self.topic].result(timeout=READY_TIMEOUT_S)

        want_addrs = set(parse_bootstrap(self.bootstrap))
        deadline = deadline_after(READY_TIMEOUT_S)
        while True:
            # -m: kcat's own bound on the Metadata request, in seconds.
            out, _ = self.run_kcat(["-L", "-m", "10"])
            text = out.decode(errors="replace")
            brokers, topics = parse_metadata(text)
            problems = self.metadata_problems(brokers, topics, want_addrs)
            if not problems:
                break
            check(time.monotonic() < deadline and not problems[0].startswith("!"),
                  f"kcat -L not as expected within {READY_TIMEOUT_S}s: {problems}\n----- kcat -L -----\n{text}")
            time.sleep(0.1)
        print("  kcat -L:\n" + "\n".join("    " + l for l in text.splitlines()), flush=True)
        controllers = [b for b, (_, _, c) in brokers.items() if c]
        if len(controllers) != 1:
            # Kafka names one; kcat only shows it. (kafka-python's admin client needs it: its
            # test fails there if it is missing.)
            self.phases.note(f"{len(controllers)} brokers marked (controller) in kcat -L: {controllers}")
        t = topics[self.topic]
        leaders = [t["partitions"][p]["leader"] for p in range(PARTITIONS)]
        # Once more for the one topic, as a user would ask.
        out, _ = self.run_kcat(["-L", "-m", "10", "-t", self.topic])
        _, only = parse_metadata(out.decode(errors="replace"))
        eq(sorted(only), [self.topic], f"kcat -L -t {self.topic}: topics listed")
        eq(only[self.topic]["partitions"], t["partitions"], f"kcat -L -t {self.topic}: partitions")
        return f"{len(brokers)} brokers at the bootstrap addresses; {self.topic} leaders {leaders}, ISRs full"

    def metadata_problems(self, brokers, topics, want_addrs):
        """What differs from a healthy cluster; a problem that waiting cannot fix starts with '!'."""
        problems = []
        if len(brokers) != self.brokers:
            problems.append(f"{len(brokers)} brokers listed, want {self.brokers}: {brokers}")
        addrs = {(resolve(h), p) for h, p, _ in brokers.values()}
        if len(brokers) == self.brokers and addrs != {(resolve(h), p) for h, p in want_addrs}:
            problems.append(f"! brokers advertise {sorted(brokers.values())}, but the Kafka listeners are "
                            f"{sorted(want_addrs)}")
        t = topics.get(self.topic)
        if t is None:
            problems.append(f"topic {self.topic} not listed (topics: {sorted(topics)})")
            return problems
        if t["error"] or t["count"] != PARTITIONS or len(t["partitions"]) != PARTITIONS:
            problems.append(f"topic {self.topic}: {t['count']} partitions ({len(t['partitions'])} lines), "
                            f"error {t['error']}")
        for p, info in sorted(t["partitions"].items()):
            replicas, isrs = info["replicas"], info["isrs"]
            if (info["error"] or info["leader"] not in brokers or len(replicas) != min(3, self.brokers)
                    or len(set(replicas)) != len(replicas) or not set(replicas) <= set(brokers)
                    or sorted(isrs) != sorted(replicas) or info["leader"] not in isrs):
                problems.append(f"partition {p}: {info}")
        return problems

    def round_trip(self):
        batches = [
            # (kcat -H arguments, input lines)
            (["-H", "source=kcat", "-H", "batch=1", "-H", "batch=again"],
             [b"k1:value one", b"k2:value two", b"k3:value:with:colons", b"k1:value one again"]),
            (["-H", "source=kcat", "-H", "empty="],
             [b"k4:value four", b"k5:", b"\xc3\xa9t\xc3\xa9:\xc3\xa9t\xc3\xa9 (UTF-8)"]),
        ]
        expected = []
        for headers, lines in batches:
            self.run_kcat(["-P", "-t", self.topic, "-K:", *headers], stdin=b"\n".join(lines) + b"\n")
            hdrs = []
            for i in range(1, len(headers), 2):
                name, _, value = headers[i].partition("=")
                hdrs.append((name, value))
            for line in lines:
                key, _, value = line.partition(b":")
                expected.append((key.decode(), value.decode(), hdrs))

        # -e: exit at the end of every partition; -J: a JSON envelope per record.
        out, err = self.run_kcat(["-C", "-t", self.topic, "-o", "beginning", "-e", "-J", "-q"])
        got = []
        for line in out.decode().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            flat = rec.get("headers") or []
            hdrs = list(zip(flat[0::2], flat[1::2]))
            got.append(((rec["key"], rec["payload"], hdrs), (rec["partition"], rec["offset"])))
        check(len(got) == len(expected),
              f"kcat -C -e -J read {len(got)} records, want {len(expected)}:\n{out.decode()}\nstderr: {err.decode()}")
        # Order holds within a partition; across partitions compare as multisets.
        eq(sorted(repr(g[0]) for g in got), sorted(repr(e) for e in expected),
           "records read back by kcat -C -J (key, value, headers)")
        by_partition = {}
        for rec, (p, o) in got:
            by_partition.setdefault(p, []).append(o)
        for p, offsets in by_partition.items():
            eq(offsets, list(range(len(offsets))), f"partition {p}: offsets read back")
        # The same key always lands on the same partition.
        key_parts = {}
        for (k, _, _), (p, _) in got:
            key_parts.setdefault(k, set()).add(p)
        check(all(len(ps) == 1 for ps in key_parts.values()), f"a key on more than one partition: {key_parts}")

        out, _ = self.run_kcat(["-C", "-t", self.topic, "-o", "beginning", "-e", "-q", "-K:"])
        lines = sorted(l for l in out.split(b"\n") if l)
        eq(lines, sorted(line for _, ls in batches for line in ls), "kcat -C -e -K: output lines")
        return (f"{len(expected)} records with keys and headers round-trip over {len(by_partition)} partition(s); "
                f"-K: output matches the input")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka listeners host:port[,...] (env KAFKA_BOOTSTRAP; default 127.0.0.1:9092)")
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    parser.add_argument("--kcat", default=os.environ.get("KCAT", "kcat"), help="the kcat binary (env KCAT)")
    args = parser.parse_args()

    phases = Phases(f"kcat against {args.bootstrap}")
    path = shutil.which(args.kcat)
    if path is None:
        print(f"FAIL setup: {args.kcat!r} not found on PATH: install Debian's kcat package (apt-get install kcat)")
        return 1
    version = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    print(f"{path}: {' '.join(version[-1:])}", flush=True)
    run = Run(args, phases)
    phases.run("listener", run.listener)
    phases.run("kcat -L", run.list_metadata, needs=["listener"])
    phases.run("kcat -P/-C round trip", run.round_trip, needs=["kcat -L"])
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
