#!/usr/bin/env bash
# The one gate: formatting, lints (warnings are errors) and every test. It only reads the
# tree; `scripts/fix.sh` applies formatting and clippy's suggestions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked
