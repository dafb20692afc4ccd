#!/usr/bin/env bash
# Creates, or reuses, the Python virtualenv that runs the gRPC client test
# (tests/python/runnel_client_test.py), the Kafka client tests (tests/python/kafka_*.py) and the
# metrics test's parser (tests/python/metrics_parse.py), and prints its path on stdout
# (everything else goes to stderr). The Rust tests crates/cli/tests/python_client.rs,
# kafka_clients.rs and metrics.rs call this script (through
# runnel_testkit::process::python_env).
#
#   scripts/python-env.sh [BASE_DIR]     # default BASE_DIR: ${CARGO_TARGET_DIR:-target}/pyenv
#
# The venv lives in BASE_DIR/<key>, the key a hash of tests/python/requirements.txt and of the
# interpreter's version, so a changed pin or a new Python builds a fresh venv. A venv is used
# only once its install finished (the `.ready` marker); an interrupted one is rebuilt.
#
# Environment: RUNNEL_PYTHON (default python3) the interpreter; RUNNEL_PIP_TIMEOUT_S (default
# 300) the bound on `pip install`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
req="$root/tests/python/requirements.txt"
python=${RUNNEL_PYTHON:-python3}
base=${1:-${CARGO_TARGET_DIR:-$root/target}/pyenv}
pip_timeout_s=${RUNNEL_PIP_TIMEOUT_S:-300}

die() { printf 'python-env: %s\n' "$*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 \
  || die "'$python' not found on PATH: install CPython 3.9 or newer with venv and pip (or set RUNNEL_PYTHON)"
version=$("$python" -c 'import sys; print(sys.version.replace("\n", " "))') \
  || die "'$python' does not run"
key=$({ cat "$req"; printf '%s\n' "$version"; } | sha256sum | cut -c1-16)
venv="$base/$key"

mkdir -p "$base"
# One builder at a time: parallel test runs sharing a target dir wait here rather than
# installing into the same directory.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$base/.lock"
  flock -w "$((pip_timeout_s + 60))" 9 || die "timed out waiting for the lock on $base/.lock"
fi

if [[ -f "$venv/.ready" ]]; then
  printf '%s\n' "$venv"
  exit 0
fi

start=$(date +%s)
printf 'python-env: building %s for %s\n' "$venv" "$version" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2 \
  || die "'$python -m venv' failed (on Debian and Ubuntu: apt-get install python3-venv)"
# --timeout is pip's per-socket timeout; `timeout` bounds the whole install.
timeout "$pip_timeout_s" "$venv/bin/python" -m pip install \
  --disable-pip-version-check --no-input --timeout 30 -r "$req" >&2 \
  || die "pip install -r $req failed or took over ${pip_timeout_s}s (does this machine reach PyPI?)"
# confluent-kafka's native extension loads its bundled librdkafka here: a wheel built for
# another platform fails now rather than in a test.
"$venv/bin/python" -c '
import grpc, grpc_tools.protoc, google.protobuf
import kafka, kafka.admin, kafka.partitioner.default
import confluent_kafka, confluent_kafka.admin
import aiokafka
import prometheus_client.parser
assert confluent_kafka.libversion()[0].startswith("2."), confluent_kafka.libversion()
' >&2 \
  || die "the packages installed but do not import"
touch "$venv/.ready"
printf 'python-env: built in %ss\n' "$(( $(date +%s) - start ))" >&2

# Venvs of older pins are dead weight (tens of MB each); we hold the lock, so none is in use
# by a builder. A test still running from one would be running stale pins anyway.
for old in "$base"/*/; do
  old=${old%/}
  [[ "$old" == "$venv" ]] || rm -rf "$old"
done
printf '%s\n' "$venv"
