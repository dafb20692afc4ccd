#!/usr/bin/env bash
# Applies what the gate checks for: formatting and clippy's machine-applicable fixes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all
cargo clippy --workspace --all-targets --fix --allow-dirty --allow-staged -- -D warnings
cargo fmt --all
