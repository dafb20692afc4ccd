#!/usr/bin/env python3
"""The disk's own commit latency at a fixed pace: the floor under any replicated produce
latency on this machine.

Each of --writers threads (one per replica) appends --block-size bytes to a file of its own,
--rate times a second, for --duration seconds, and fdatasyncs: what a replica does for each
batch with fsync=always, with the log's group commit (every block due when an fdatasync
starts is written before it, and that one fdatasync covers them all). Block i is due at
start + i / rate; its latency runs from its due time to the end of the fdatasync that
covers it, so a stalled fsync counts against every block that waited behind it (no
coordinated omission), as it would against the produce requests waiting for it. Prints one JSON object: percentiles in ms, the longest stall, and
the share of the run during which some write was more than 5 ms late. With a --rate the disk
cannot keep, achieved_mb_per_s is its group-committed bandwidth for --writers files.

Usage: scripts/disk-latency.py [--dir DIR] [--rate N] [--block-size B] [--writers W]
                               [--duration S]
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time


def writer(path, rate, block, duration, start, out):
    data = os.urandom(block)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lat = []
    late_spans = []
    total = int(duration * rate)
    try:
        i = 0
        while i < total:
            due = start + i / rate
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
                now = time.monotonic()
            # Group commit, as the log does: every write due by now, then one fdatasync.
            # (At most 16 MiB per write, so a backlog needs no huge buffer.)
            n = min(total, int((now - start) * rate) + 1, i + max(1, (16 << 20) // block)) - i
            os.write(fd, data * n)
            os.fdatasync(fd)
            done = time.monotonic()
            for j in range(i, i + n):
                d = start + j / rate
                lat.append(done - d)
                if done - d > 0.005:
                    late_spans.append((d + 0.005, done))
            i += n
    finally:
        os.close(fd)
        os.unlink(path)
    out.append((lat, late_spans))


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def union_length(spans):
    total, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--rate", type=float, default=800.0, help="writes per second per writer")
    ap.add_argument("--block-size", type=int, default=65536)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds")
    a = ap.parse_args()
    if a.rate <= 0 or a.block_size <= 0 or a.writers <= 0 or not 0 < a.duration <= 600:
        print("disk-latency.py: rate, block size and writers must be positive, "
              "duration in (0, 600]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="disk-latency-") as d:
        out = []
        start = time.monotonic() + 0.05
        threads = [threading.Thread(target=writer,
                                    args=(os.path.join(d, f"w{w}"), a.rate, a.block_size,
                                          a.duration, start, out))
                   for w in range(a.writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    lat = sorted(x for l, _ in out for x in l)
    spans = [s for _, ss in out for s in ss]
    ms = lambda s: round(s * 1000, 3)
    print(json.dumps({
        "writers": a.writers,
        "rate_per_writer": a.rate,
        "block_size": a.block_size,
        "writes": len(lat),
        "mb_per_s": round(len(lat) * a.block_size / a.duration / 1e6, 1),
        # What the disk took: above the pace asked for only if it kept up.
        "achieved_mb_per_s": round(len(lat) * a.block_size / max(elapsed, a.duration) / 1e6, 1),
        "latency_ms": {"p50": ms(percentile(lat, 50)), "p99": ms(percentile(lat, 99)),
                       "p999": ms(percentile(lat, 99.9)), "max": ms(lat[-1] if lat else 0)},
        "late_over_5ms_share": round(union_length(spans) / max(elapsed, a.duration), 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
