#!/usr/bin/env bash
# Storage benchmarks next to the raw disk, measured in the same run on the same disk:
#   1. fio: sequential buffered write of 1 MiB blocks (no fsync), and 1 MiB write+fdatasync;
#   2. criterion: log append (1 KiB records, batches of 100) per fsync policy, and
#      sequential reads from the page cache.
# fio writes the same 1 GiB burst the append benchmark writes per sample. Each fio job runs twice and the second run counts: this VM hands idle memory back to its
# host, so first-touch writes are slow until memory is warm.
# Usage: scripts/bench-storage.sh            (installs fio with apt-get if it is missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v fio >/dev/null; then
  echo "installing fio" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi

data=target/bench-data
mkdir -p "$data/fio"
fio_mbps() { # name, extra fio args...
  local name=$1; shift
  local out
  for _ in warmup measure; do
    out=$(fio --name="$name" --filename="$data/fio/$name.dat" --rw=write --bs=1M --ioengine=psync \
      --output-format=json "$@" 2>/dev/null)
    rm -f "$data/fio/$name.dat"
  done
  python3 -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6))' <<<"$out"
}
buffered=$(fio_mbps buffered --size=1G)
fdatasync=$(fio_mbps fdatasync --size=1G --fdatasync=1)

RUNNEL_BENCH_DIR="$data" cargo bench -p runnel-storage --bench log -- --noplot 2>&1 | tee "$data/criterion.txt"

echo
echo "fio buffered write, 1 MiB blocks:        $buffered MB/s"
echo "fio write+fdatasync, 1 MiB blocks:       $fdatasync MB/s"
echo "runnel (criterion, median throughput):"
python3 - "$data/criterion.txt" <<'PY'
import re, sys
name = None
units = {"B/s": 1e-6, "KiB/s": 1024 / 1e6, "MiB/s": 1024**2 / 1e6, "GiB/s": 1024**3 / 1e6}
for line in open(sys.argv[1]):
    m = re.match(r"^(\S+/\S+)", line)
    if m and "thrpt" not in line and "time:" in line or (m and line.rstrip().endswith(m.group(1))):
        name = m.group(1)
    t = re.search(r"thrpt:\s*\[\S+ \S+ (\S+) (\S+) ", line)
    if t and name:
        print(f"  {name:45s} {float(t.group(1)) * units[t.group(2)]:8.0f} MB/s")
PY
