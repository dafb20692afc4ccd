#!/usr/bin/env bash
# Broker data-plane benchmark on ONE local `runnel node` (release build; replication is
# not measured here), beside the loopback TCP bandwidth of the same machine:
#   1. iperf3 over 127.0.0.1, one TCP stream, 10 s (installs iperf3 with apt-get if missing);
#   2. the storage log's append alone (criterion), for the same machine and disk;
#   3. `runnel bench produce`: 1 KiB and 100-byte records, acks=1, then 1 KiB at acks=all;
#   4. `runnel bench consume`: one consumer reading one partition, from the page cache.
# The node and the load generator share the machine's cores, as the targets assume.
# Every figure is printed as one JSON line, then a summary table. MB = 10^6 bytes.
#
# Usage: scripts/bench-broker.sh [--records-1k N] [--records-100 N] [--concurrency C]
# Honours CARGO_TARGET_DIR. Uses ports 50091 (gRPC), 8131 (HTTP), 5299 (iperf3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/runnel

records_1k=1000000
records_100=5000000
concurrency=2
while [[ $# -gt 0 ]]; do
    case $1 in
        --records-1k) records_1k=$2; shift 2 ;;
        --records-100) records_100=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        *) echo "bench-broker.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v iperf3 >/dev/null; then
    echo "installing iperf3" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
fi
cargo build --release --locked -p runnel --bin runnel >&2

work=$(mktemp -d)
node_pid=""
iperf_pid=""
cleanup() {
    [[ -n $node_pid ]] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
    [[ -n $iperf_pid ]] && kill "$iperf_pid" 2>/dev/null && wait "$iperf_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

results=$work/results.jsonl

# 1. Loopback TCP bandwidth.
iperf3 -s -p 5299 >"$work/iperf-server.log" 2>&1 &
iperf_pid=$!
# The client is retried until the server listens (a bare connect probe would count as a test).
for _ in $(seq 50); do
    iperf3 -c 127.0.0.1 -p 5299 -t 10 -J >"$work/iperf.json" 2>/dev/null && break
    sleep 0.1
done
kill "$iperf_pid" 2>/dev/null; wait "$iperf_pid" 2>/dev/null || true
grep -q sum_received "$work/iperf.json" ||
    { echo "iperf3 failed:" >&2; cat "$work/iperf.json" "$work/iperf-server.log" >&2; exit 1; }
iperf_pid=""
python3 - "$work/iperf.json" >>"$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
bps = r["end"]["sum_received"]["bits_per_second"]
print(json.dumps({"test": "iperf3 loopback, 1 stream, 10 s", "mb_per_s": round(bps / 8 / 1e6, 1)}))
EOF
tail -n1 "$results"

# 2. The storage engine's append, in the same run (criterion; policy never, one writer,
#    batches of 100 records of 1 KiB), for the cost of the log itself without the network.
RUNNEL_BENCH_DIR="$work" cargo bench --locked -p runnel-storage --bench log -- \
    'append_1KiB_x100/never/1_writers' --noplot >"$work/criterion.txt" 2>&1
python3 - "$work/criterion.txt" >>"$results" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"thrpt:\s*\[\S+ \S+ ([0-9.]+) (\S+)", text)
if not m:
    sys.exit("no throughput in the criterion output:\n" + text[-2000:])
value, unit = float(m.group(1)), m.group(2)
scale = {"GiB/s": 1024**3, "MiB/s": 1024**2, "KiB/s": 1024, "B/s": 1}[unit]
print(json.dumps({"test": "storage append (criterion, never)", "mb_per_s": round(value * scale / 1e6, 1)}))
EOF
tail -n1 "$results"

# 3. One node.
grpc=127.0.0.1:50091
"$bin" node --id 1 --data-dir "$work/node" --controller-voters "1@$grpc" --grpc-addr "$grpc" \
    --http-addr 127.0.0.1:8131 --kafka-addr 127.0.0.1:9191 >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
ready=""
for _ in $(seq 300); do
    code=$( (exec 3<>/dev/tcp/127.0.0.1/8131 && printf 'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n' >&3 &&
        timeout 2 head -n1 <&3 | awk '{print $2}') 2>/dev/null || true)
    [[ $code == 200 ]] && { ready=1; break; }
    sleep 0.1
done
[[ -n $ready ]] || { echo "the node did not become ready" >&2; cat "$work/node.err" >&2; exit 1; }

runnel() { "$bin" "$@" --bootstrap "$grpc"; }
runnel topic create bench-1k --partitions 1 --replication-factor 1 >&2
runnel topic create bench-100 --partitions 1 --replication-factor 1 >&2
runnel topic create bench-all --partitions 1 --replication-factor 1 >&2

# Each test starts with no dirty pages left by the one before: the kernel's writeback of
# gigabytes would otherwise compete with it for the two cores.
bench() { sync; runnel bench "$@" --output json | tee -a "$results"; }
bench produce --topic bench-1k --record-size 1024 --num-records "$records_1k" --acks 1 \
    --concurrency "$concurrency"
bench produce --topic bench-100 --record-size 100 --num-records "$records_100" --acks 1 \
    --concurrency "$concurrency"
bench produce --topic bench-all --record-size 1024 --num-records "$records_1k" --acks all \
    --concurrency "$concurrency"
bench consume --topic bench-1k --num-records "$records_1k"
bench consume --topic bench-100 --num-records "$records_100"

python3 - "$results" <<'EOF'
import json, sys
print()
print(f"{'test':<44} {'records/s':>12} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["test"] in ("produce", "consume"):
        name = f"{r['test']} {r['topic']}" + (f" acks={r['acks']} x{r['concurrency']}" if r["test"] == "produce" else "")
    else:
        name = r["test"]
    lat = r.get("latency_ms", {})
    cell = lambda k: f"{lat[k]:.2f}" if k in lat else "-"
    rps = f"{r['records_per_s']:.0f}" if "records_per_s" in r else "-"
    print(f"{name:<44} {rps:>12} {r['mb_per_s']:>8.1f} {cell('p50'):>8} {cell('p99'):>8} {cell('p999'):>9} {cell('max'):>8}")
EOF
