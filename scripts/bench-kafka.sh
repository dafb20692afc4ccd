#!/usr/bin/env bash
# Produce and consume over the Kafka protocol (librdkafka, scripts/bench-kafka.py) against the
# same over gRPC (`runnel bench produce|consume`), in one run on one three-node cluster of
# scripts/cluster.sh (release build; all nodes and the load generators share this machine's
# cores). 1 KiB records, acks=all, fsync always (the default), each test on a fresh
# one-partition topic:
#   1. gRPC, replication factor 3, min.insync.replicas 2 (as scripts/bench-replicated.sh:
#      2 workers, 64 batches of 64 KiB in flight each);
#   2. Kafka, the same topic settings (librdkafka's defaults but acks=all: it queues up to
#      100,000 records, so its latency is mostly time queued in the client);
#   3. Kafka, the same with queue.buffering.max.kbytes=8192: at most 8 MiB queued or in
#      flight, the gRPC bench's window (2 x 64 x 64 KiB), for latencies that compare;
#   4. gRPC, one replica;
#   5. Kafka, one replica (its topic is kept for 6 to 8);
#   6. Kafka consume of test 5's partition from its start (one consumer, no group), defaults;
#   7. the same with fetch.queue.backoff.ms=10: by default librdkafka stops fetching for 1 s
#      whenever its local queue is full (64 MB), which a Python loop slower than the broker
#      hits again and again;
#   8. gRPC consume of the same (`runnel bench consume`).
# --rounds R runs the eight R times (fresh topics each time). Prints one JSON line per test,
# then a table, and each Kafka figure as a share of the gRPC one (medians over the rounds).
#
# Usage: scripts/bench-kafka.sh [--records N (default 1000000)] [--rounds R (default 1)]
#                               [--kafka-config key=value ...]   (librdkafka producer properties)
# Uses its own RUNNEL_HOME (a temp dir) and the ports of scripts/cluster.sh (RUNNEL_PORT_OFFSET
# moves them); builds the Python venv of tests/python/requirements.txt if it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/runnel

records=1000000
rounds=1
kafka_config=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --records) records=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --kafka-config) kafka_config+=(--config "$2"); shift 2 ;;
        *) echo "bench-kafka.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

venv=$(bash scripts/python-env.sh "$target/pyenv" | tail -n1)
py=$venv/bin/python

export RUNNEL_HOME
RUNNEL_HOME=$(mktemp -d)
cleanup() {
    scripts/cluster.sh down >/dev/null 2>&1 || true
    rm -rf "$RUNNEL_HOME"
}
trap cleanup EXIT
scripts/cluster.sh up >&2
export RUNNEL_BOOTSTRAP
RUNNEL_BOOTSTRAP=$(scripts/cluster.sh bootstrap)
kafka=$(scripts/cluster.sh kafka-bootstrap)

results=$RUNNEL_HOME/results.jsonl
n=0
# topic RF [CONFIG...]: a fresh one-partition topic; prints its name.
topic() {
    local rf=$1
    shift
    local configs=()
    for c in "$@"; do configs+=(--config "$c"); done
    n=$((n + 1))
    local name="bench-$n"
    "$bin" topic create "$name" --partitions 1 --replication-factor "$rf" "${configs[@]}" >/dev/null
    echo "$name"
}
label() { "$py" -c "import json,sys; r=json.load(sys.stdin); r['label']=sys.argv[1]; print(json.dumps(r))" "$1"; }

for round in $(seq "$rounds"); do
    t=$(topic 3 min.insync.replicas=2)
    sync
    "$bin" bench produce --topic "$t" --record-size 1024 --acks all --num-records "$records" \
        --concurrency 2 --max-in-flight 64 --output json | label "gRPC produce, 3 replicas" | tee -a "$results"
    "$bin" topic delete "$t" >/dev/null

    t=$(topic 3 min.insync.replicas=2)
    sync
    "$py" scripts/bench-kafka.py produce --bootstrap "$kafka" --topic "$t" --records "$records" \
        --record-size 1024 --acks all "${kafka_config[@]}" | label "Kafka produce, 3 replicas" | tee -a "$results"
    "$bin" topic delete "$t" >/dev/null

    t=$(topic 3 min.insync.replicas=2)
    sync
    "$py" scripts/bench-kafka.py produce --bootstrap "$kafka" --topic "$t" --records "$records" \
        --record-size 1024 --acks all --config queue.buffering.max.kbytes=8192 "${kafka_config[@]}" |
        label "Kafka produce, 3 replicas, 8 MiB queue" | tee -a "$results"
    "$bin" topic delete "$t" >/dev/null

    t=$(topic 1)
    sync
    "$bin" bench produce --topic "$t" --record-size 1024 --acks all --num-records "$records" \
        --concurrency 2 --max-in-flight 64 --output json | label "gRPC produce, 1 replica" | tee -a "$results"
    "$bin" topic delete "$t" >/dev/null

    t=$(topic 1)
    sync
    "$py" scripts/bench-kafka.py produce --bootstrap "$kafka" --topic "$t" --records "$records" \
        --record-size 1024 --acks all "${kafka_config[@]}" | label "Kafka produce, 1 replica" | tee -a "$results"
    "$py" scripts/bench-kafka.py consume --bootstrap "$kafka" --topic "$t" |
        label "Kafka consume, 1 partition" | tee -a "$results"
    "$py" scripts/bench-kafka.py consume --bootstrap "$kafka" --topic "$t" --config fetch.queue.backoff.ms=10 |
        label "Kafka consume, 1 partition, 10 ms fetch backoff" | tee -a "$results"
    "$bin" bench consume --topic "$t" --output json | label "gRPC consume, 1 partition" | tee -a "$results"
    "$bin" topic delete "$t" >/dev/null
done

"$py" - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print(f"{'test':<48} {'records/s':>10} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for r in rows:
    l = r.get("latency_ms")
    lat = f"{l['p50']:>8.2f} {l['p99']:>8.2f} {l['max']:>8.2f}" if l else f"{'':>8} {'':>8} {'':>8}"
    print(f"{r['label']:<48} {r['records_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {lat}")
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r["mb_per_s"])
med = {k: statistics.median(v) for k, v in by.items()}
print()
for kafka, grpc in (
    ("Kafka produce, 3 replicas", "gRPC produce, 3 replicas"),
    ("Kafka produce, 3 replicas, 8 MiB queue", "gRPC produce, 3 replicas"),
    ("Kafka produce, 1 replica", "gRPC produce, 1 replica"),
    ("Kafka consume, 1 partition", "gRPC consume, 1 partition"),
    ("Kafka consume, 1 partition, 10 ms fetch backoff", "gRPC consume, 1 partition"),
):
    g, k = med.get(grpc), med.get(kafka)
    if g and k:
        print(f"{kafka}: {k:.1f} MB/s, {100 * k / g:.0f}% of {grpc}: {g:.1f} MB/s (medians of {len(by[kafka])})")
EOF
