#!/usr/bin/env bash
# Check Runnel's promise yourself: on the cluster scripts/cluster.sh started, produce at
# acks=all for a while, killing, pausing, restarting (and, in netns mode, isolating) partition
# leaders one at a time, then read everything back and print the verdict.
#
#   scripts/chaos.sh [--duration SECONDS] [--faults kill,pause,restart,isolate] [--partitions P]
#                    [--replication-factor R] [--min-insync-replicas M] [--seed N]
#                    [--idempotent | --client-producer | --client kafka [--kafka-rate N]] ...
#
# Defaults: 60 s, faults kill,pause,restart (plus isolate when the cluster runs in netns mode:
# RUNNEL_NETNS=1 scripts/cluster.sh up, root only; on loopback a node cannot be cut off from the
# others while clients still reach it), a fresh topic chaos-<time> with 3 partitions,
# replication factor 3, min.insync.replicas 2. `--help` lists every option.
#
# By default the workload never retries a record (each value is one attempt). `--idempotent`
# produces through the client crate's idempotent Producer instead, which retries the same
# records across leader changes: duplicates must stay 0. `--client-producer` does the same
# without idempotence, where retries can duplicate. `--client kafka` produces through a Kafka
# client instead: librdkafka's idempotent producer (confluent-kafka from the pinned venv of
# tests/python/requirements.txt, built by scripts/python-env.sh on first use; acks=all, the
# client's defaults otherwise) over the nodes' Kafka listeners, as tests/python/kafka_failover.py,
# which prints each delivery report for the driver's history: same faults, same final read,
# same checker; duplicates must stay 0, and the client must end without a fatal error.
#
# Prints each fault as it happens, each fault's failover (the longest stretch without an
# acknowledged produce on a partition the node led), then the verdict: records attempted,
# acknowledged, lost, duplicated, out of order, unknown outcome, the longest window with no
# acknowledged produce. Exit status 0 when nothing was lost, duplicated or otherwise wrong; 1 when
# something was; 2 when the run could not be done.
#
# It starts only the runnel-chaos driver and the cluster.sh calls it makes; every node it takes
# down it brings back (restart, resume, heal), also on Ctrl-C, so the cluster ends as it began.
# Uses the same RUNNEL_HOME and RUNNEL_BIN as cluster.sh.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${RUNNEL_HOME:-$repo/.runnel}
target=${CARGO_TARGET_DIR:-$repo/target}
cluster="$repo/scripts/cluster.sh"

die() { echo "chaos.sh: $*" >&2; exit 2; }

for n in 1 2 3; do
    pid=$(cat "$home/node-$n/pid" 2>/dev/null || true)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null ||
        die "node $n is not running (no live pid in $home/node-$n/pid): start the cluster with scripts/cluster.sh up"
done

args=("$@")
user_faults=false
for a in "$@"; do
    [[ $a == --faults || $a == --faults=* ]] && user_faults=true
    if [[ $a == --help || $a == -h ]]; then user_faults=true; fi
done
if [[ -f $home/netns ]]; then
    $user_faults || args=(--faults kill,pause,restart,isolate "${args[@]}")
else
    for a in "$@"; do
        [[ $a == *isolate* ]] && die "isolating a node needs the cluster in netns mode: scripts/cluster.sh down," \
            "then RUNNEL_NETNS=1 scripts/cluster.sh up (root)"
    done
fi

# The driver, built like the node (release). Restarts must not rebuild the node mid-run, so
# cluster.sh gets the binary it is running now.
echo "building runnel-chaos" >&2
(cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release --quiet -p runnel-testkit --bin runnel-chaos)
export RUNNEL_BIN=${RUNNEL_BIN:-$target/release/runnel}
[[ -x $RUNNEL_BIN ]] || die "$RUNNEL_BIN is missing: scripts/cluster.sh up builds it"
export RUNNEL_HOME=$home

kafka=false
prev=
for a in "$@"; do
    [[ $a == --client=kafka || ( $prev == --client && $a == kafka ) ]] && kafka=true
    prev=$a
done
if $kafka; then
    echo "preparing the Python venv (scripts/python-env.sh)" >&2
    venv=$(bash "$repo/scripts/python-env.sh" "$target/pyenv" | tail -n1) || die "no Python venv for the Kafka client"
    args+=(--python "$venv/bin/python" --kafka-script "$repo/tests/python/kafka_failover.py"
        --kafka-bootstrap "$("$cluster" kafka-bootstrap)")
fi

exec "$target/release/runnel-chaos" --bootstrap "$("$cluster" bootstrap)" --cluster-script "$cluster" "${args[@]}"
