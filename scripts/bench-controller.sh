#!/usr/bin/env bash
# Controller benchmark on three local `runnel node` processes (release builds):
#   1. metadata commit latency: N sequential CreateTopic calls to the controller leader, p50/p99;
#   2. controller failover: kill -9 the leader, time to the next successful commit, over K kills.
# Usage: scripts/bench-controller.sh [--creates N] [--kills K] [--partitions P] [--rf R] [-- NODE ARGS]
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-target}

cargo build --release --locked -p runnel --bin runnel
cargo build --release --locked -p runnel-testkit --example bench_controller
"$target/release/examples/bench_controller" --binary "$target/release/runnel" "$@"
