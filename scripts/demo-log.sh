#!/usr/bin/env bash
# Builds runnel, writes a demo partition log with the storage engine and dumps it.
# Usage: scripts/demo-log.sh [DIR]   (default: .runnel/demo/orders-0 in the repo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=${1:-.runnel/demo/orders-0}
cargo build --release --quiet -p runnel
cargo build --release --quiet -p runnel-storage --example write_log
rm -rf "$dir"
./target/release/examples/write_log "$dir" 1000
./target/release/runnel log dump "$dir" --records | tail -n 8
