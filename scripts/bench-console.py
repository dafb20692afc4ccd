#!/usr/bin/env python3
"""What serving the console and /metrics costs the broker, measured two ways in one run on
the three-node cluster of scripts/cluster.sh (release build):

  1. Produce throughput (RF 3, acks=all, 1 KiB records, `runnel bench produce`) in rounds
     without observers and with them, interleaved A B B A A B ... so drift cancels: the
     observers are what an open console page does (GET /api/v1/cluster on node 2 once a
     second, which makes node 2 ask nodes 1 and 3 for /api/v1/local) plus a Prometheus
     scraping /metrics on all three nodes once a second (15 s is Prometheus' default: this
     is 15 times that load).
  2. The CPU the three nodes spend serving one round of those observers (one page refresh,
     three scrapes), from /proc/<pid>/stat over a burst of rounds back to back on the idle
     cluster, less its idle CPU: one second's cost, which, set against the CPU the nodes
     burn at the benchmark's load (also measured), bounds the throughput share far more
     finely than run-to-run noise allows in 1.

    scripts/bench-console.py [--records N] [--rounds R] [--idle-seconds S] [--burst B]

Uses its own RUNNEL_HOME (a temp dir) and cluster.sh's default ports. Prints one line per
round, then a summary. Every loop is bounded; the cluster is stopped on exit.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "scripts", "cluster.sh")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
BIN = os.environ.get("RUNNEL_BIN", os.path.join(TARGET, "release", "runnel"))
OFFSET = int(os.environ.get("RUNNEL_PORT_OFFSET", "0"))
HTTP = [f"127.0.0.1:{8080 + OFFSET + n}" for n in (1, 2, 3)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every runnel command here talks to this cluster.
os.environ["RUNNEL_BOOTSTRAP"] = ",".join(f"127.0.0.1:{50050 + OFFSET + n}" for n in (1, 2, 3))


class Observers:
    """A console page and a Prometheus, as HTTP load: once a second until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.requests = 0
        self.failures = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def get(self, addr, path):
        try:
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
                r.read()
            self.requests += 1
        except OSError:
            self.failures += 1

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            self.get(HTTP[1], "/api/v1/cluster")
            for addr in HTTP:
                self.get(addr, "/metrics")
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def pids(home):
    out = []
    for n in (1, 2, 3):
        with open(os.path.join(home, f"node-{n}", "pid")) as f:
            out.append(int(f.read().strip()))
    return out


def cpu_seconds(pid_list):
    total = 0
    for pid in pid_list:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def produce(topic, records):
    out = subprocess.run(
        [BIN, "bench", "produce", "--topic", topic, "--record-size", "1024", "--acks", "all", "--output", "json",
         "--num-records", str(records), "--concurrency", "2", "--max-in-flight", "64"],
        check=True, capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=300_000, help="records per round (1 KiB each)")
    p.add_argument("--rounds", type=int, default=8, help="rounds in all, half of them observed")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="each idle CPU window")
    p.add_argument("--burst", type=int, default=300, help="observer rounds for the CPU cost")
    args = p.parse_args()

    home = tempfile.mkdtemp(prefix="runnel-bench-console-")
    env = dict(os.environ, RUNNEL_HOME=home)
    try:
        sh(CLUSTER, "up", env=env, stdout=sys.stderr)
        nodes = pids(home)
        # Plan: A B B A A B B A ...
        plan = [("observed" if (i % 4) in (1, 2) else "plain") for i in range(args.rounds)]
        results = {"plain": [], "observed": []}
        busy = []
        for i, kind in enumerate(plan):
            topic = f"bench-console-{i}"
            sh(BIN, "topic", "create", topic, "--partitions", "1", "--replication-factor", "3",
               "--config", "min.insync.replicas=2", stdout=subprocess.DEVNULL)
            cpu0, t0 = cpu_seconds(nodes), time.monotonic()
            if kind == "observed":
                with Observers() as o:
                    r = produce(topic, args.records)
                note = f"observer requests {o.requests}, failed {o.failures}"
            else:
                r = produce(topic, args.records)
                note = ""
            busy.append((cpu_seconds(nodes) - cpu0) / (time.monotonic() - t0))
            results[kind].append(r["mb_per_s"])
            print(f"round {i + 1:>2} {kind:<8} {r['mb_per_s']:8.1f} MB/s  p99 {r['latency_ms']['p99']:7.2f} ms  {note}",
                  flush=True)
            sh(BIN, "topic", "delete", topic,
               stdout=subprocess.DEVNULL)

        # The CPU of serving the observers: on the idle cluster, the nodes' CPU rate with
        # nothing asked (before and after), then over a burst of observer rounds back to
        # back; the excess over the idle rate, per round, is what one second of an open page
        # and 1 s scrapes costs. 100 Hz process clocks need the burst to be long.
        def idle_rate():
            cpu0, t0 = cpu_seconds(nodes), time.monotonic()
            time.sleep(args.idle_seconds)
            return (cpu_seconds(nodes) - cpu0) / (time.monotonic() - t0)

        idle_before = idle_rate()
        o = Observers()
        cpu0, t0 = cpu_seconds(nodes), time.monotonic()
        for _ in range(args.burst):
            o.get(HTTP[1], "/api/v1/cluster")
            for addr in HTTP:
                o.get(addr, "/metrics")
        burst_cpu, burst_s = cpu_seconds(nodes) - cpu0, time.monotonic() - t0
        assert o.failures == 0, f"{o.failures} observer requests failed"
        idle_after = idle_rate()
        idle = (idle_before + idle_after) / 2
        serving = (burst_cpu - idle * burst_s) / args.burst

        plain, observed = statistics.median(results["plain"]), statistics.median(results["observed"])
        load_cpu = statistics.median(busy)
        print()
        print(f"produce, RF 3, acks=all: plain median {plain:.1f} MB/s {sorted(results['plain'])}")
        print(f"                         observed median {observed:.1f} MB/s {sorted(results['observed'])}")
        print(f"  throughput difference: {100 * (plain - observed) / plain:+.1f}% (positive: observed slower); "
              f"run-to-run spread of plain rounds: {100 * (max(results['plain']) - min(results['plain'])) / plain:.1f}%")
        print(f"idle cluster CPU {idle_before:.4f} / {idle_after:.4f} s/s; {args.burst} observer rounds back to back took "
              f"{burst_s:.1f} s and {burst_cpu:.2f} s of the nodes' CPU -> one second of an open console page and 1 s "
              f"scrapes of 3 nodes costs {1000 * serving:.2f} ms of CPU")
        print(f"nodes' CPU at the benchmark load: {load_cpu:.2f} s/s -> serving share "
              f"{100 * serving / load_cpu:.2f}% of the brokers' CPU at that load")
    finally:
        subprocess.run([CLUSTER, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
