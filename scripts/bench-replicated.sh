#!/usr/bin/env bash
# Replicated produce benchmark on the three-node cluster of scripts/cluster.sh (release
# build; all nodes and the load generator share this machine's cores):
#   1. one replica, acks=all (the single-node figure of the same run);
#   2. replication factor 3, acks=all, min.insync.replicas=2, fsync always (the default);
#   3. the same with fsync never;
#   4. replication factor 3 at half the throughput of 2 (latency under load);
#   5. replication factor 3 with one 1-record request in flight (the latency floor);
#   6. the disk alone at the pace of test 4 (scripts/disk-latency.py: three writers, 64 KiB
#      blocks with group-committed fdatasync): the latency floor any fsync=always system
#      has on this disk at that load.
# Tests 1-4 keep --max-in-flight 64 runs of 64 KiB in flight per worker (2 workers): the
# window at which the replicated rate stops growing here (16: ~100-130 MB/s, 32: ~150,
# 64: ~180-210, 128: ~210), so test 2 is the maximum and test 1 uses the same flags.
# Each test gets a fresh topic, deleted afterwards, so the disk holds one test's data at a
# time (3 copies of --records x 1 KiB). Prints one JSON line per test, then a table.
#
# Usage: scripts/bench-replicated.sh [--records N (default 1000000)]
# Uses its own RUNNEL_HOME (a temp dir) and the cluster.sh ports 50051-50053, 8081-8083.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/runnel

records=1000000
while [[ $# -gt 0 ]]; do
    case $1 in
        --records) records=$2; shift 2 ;;
        *) echo "bench-replicated.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

export RUNNEL_HOME
RUNNEL_HOME=$(mktemp -d)
cleanup() {
    scripts/cluster.sh down >/dev/null 2>&1 || true
    rm -rf "$RUNNEL_HOME"
}
trap cleanup EXIT
scripts/cluster.sh up >&2

results=$RUNNEL_HOME/results.jsonl
n=0
# bench NAME RF CONFIG... -- BENCH ARGS...: a fresh topic, one run, then the topic is deleted.
bench() {
    local label=$1 rf=$2
    shift 2
    local configs=()
    while [[ $1 != -- ]]; do configs+=(--config "$1"); shift; done
    shift
    n=$((n + 1))
    local topic="bench-$n"
    "$bin" topic create "$topic" --partitions 1 --replication-factor "$rf" "${configs[@]}" >/dev/null
    sync
    "$bin" bench produce --topic "$topic" --record-size 1024 --acks all --output json "$@" |
        python3 -c "import json,sys; r=json.load(sys.stdin); r['label']='$label'; print(json.dumps(r))" |
        tee -a "$results"
    "$bin" topic delete "$topic" >/dev/null
}

window=(--concurrency 2 --max-in-flight 64)
bench "1 replica" 1 -- --num-records "$records" "${window[@]}"
bench "3 replicas, fsync always" 3 min.insync.replicas=2 -- --num-records "$records" "${window[@]}"
bench "3 replicas, fsync never" 3 min.insync.replicas=2 fsync=never -- --num-records "$records" "${window[@]}"
max=$(python3 -c "import json; rs=[json.loads(l) for l in open('$results')]; print(int([r for r in rs if r['label']=='3 replicas, fsync always'][0]['records_per_s']))")
bench "3 replicas, half of max rate" 3 min.insync.replicas=2 -- --num-records "$((records / 2))" "${window[@]}" --throughput "$((max / 2))"
bench "3 replicas, 1 record, 1 in flight" 3 min.insync.replicas=2 -- --num-records 20000 --concurrency 1 --max-in-flight 1 --batch-size 1100 --linger-ms 0
# The disk alone, at test 4's pace and for as long: one 64 KiB block (63 records of 1 KiB)
# per batch per replica.
sync
python3 scripts/disk-latency.py --dir "$RUNNEL_HOME" --writers 3 --block-size 65536 \
    --rate "$(python3 -c "print(round($max / 2 / 63, 1))")" \
    --duration "$(python3 -c "print(min(600, max(1, round($records / 2 / ($max / 2)))))")" |
    tee "$RUNNEL_HOME/disk.json" >&2
# The disk's bandwidth for group-committed appends (1 MiB writes, fdatasync after each
# group), for one file and for three at once: what bounds tests 1 and 2 when they are not
# CPU-bound (test 2 writes every byte three times to this one disk).
sync
python3 scripts/disk-latency.py --dir "$RUNNEL_HOME" --writers 1 --block-size 1048576 --rate 1000 --duration 1 |
    tee "$RUNNEL_HOME/bw1.json" >&2
sync
python3 scripts/disk-latency.py --dir "$RUNNEL_HOME" --writers 3 --block-size 1048576 --rate 400 --duration 1 |
    tee "$RUNNEL_HOME/bw3.json" >&2

python3 - "$results" "$RUNNEL_HOME/disk.json" "$RUNNEL_HOME/bw1.json" "$RUNNEL_HOME/bw3.json" <<'EOF'
import json, sys
print()
print(f"{'test':<36} {'records/s':>10} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    l = r["latency_ms"]
    print(f"{r['label']:<36} {r['records_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {l['p50']:>8.2f} {l['p99']:>8.2f} {l['p999']:>9.2f} {l['max']:>8.2f}")
d = json.load(open(sys.argv[2]))
l = d["latency_ms"]
print(f"{'disk alone at the pace of test 4':<36} {'':>10} {d['mb_per_s'] / 3:>8.1f} {l['p50']:>8.2f} {l['p99']:>8.2f} {l['p999']:>9.2f} {l['max']:>8.2f}"
      f"   (late by over 5 ms {100 * d['late_over_5ms_share']:.1f}% of the time)")
bw1 = json.load(open(sys.argv[3]))["achieved_mb_per_s"]
bw3 = json.load(open(sys.argv[4]))["achieved_mb_per_s"]
print(f"disk bandwidth, group-committed 1 MiB appends: 1 file {bw1:.0f} MB/s, 3 files {bw3:.0f} MB/s in all"
      f" ({bw3 / 3:.0f} MB/s each)")
EOF
