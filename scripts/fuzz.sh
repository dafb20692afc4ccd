#!/usr/bin/env bash
# Fuzzes Runnel's parsers and request handlers with cargo-fuzz (libFuzzer, nightly Rust):
# builds every target of fuzz/ once, then runs each named target (default: all five, in
# the order below) for --seconds N (default 60) one after the other, one fuzzer process at
# a time (-jobs=1 -workers=1), with bounded memory (-rss_limit_mb=2048, any single
# allocation over 512 MiB is a finding) and a 30 s per-input timeout. It prints each
# target's executions and executions per second (libFuzzer's final stats) and exits
# non-zero if any target crashed, naming the artifact that reproduces it
# (`cargo +nightly fuzz run <target> <artifact>` replays one).
#
# How long: the first build takes 10 to 20 minutes on two cores (every dependency is
# rebuilt with sanitizer instrumentation), later ones seconds; then N seconds per target,
# so the default is about five minutes.
#
# Targets (see each file's top comment in fuzz/fuzz_targets/ and docs/architecture.md,
# "Fuzzing"): record_batch, index, epoch_checkpoint, kafka_request, grpc_messages.
#
# The corpus grows in fuzz/corpus/<target>; each target first writes its own seeds there
# (valid inputs made by the code that defines the formats, see runnel_fuzz::write_seeds).
# Crashes land in fuzz/artifacts/<target>, and each run's libFuzzer output is kept in
# fuzz/logs/<target>.log. All three are ignored by git.
#
# Usage: scripts/fuzz.sh [--seconds N] [target...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

all_targets=(record_batch index epoch_checkpoint kafka_request grpc_messages)

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

seconds=60
targets=()
while (($#)); do
  case "$1" in
    --seconds)
      [[ $# -ge 2 ]] || { echo "fuzz.sh: --seconds needs a value" >&2; exit 2; }
      seconds=$2
      shift 2
      ;;
    --seconds=*)
      seconds=${1#--seconds=}
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*)
      echo "fuzz.sh: unknown option '$1' (try --help)" >&2
      exit 2
      ;;
    *)
      if [[ ! " ${all_targets[*]} " == *" $1 "* ]]; then
        echo "fuzz.sh: unknown target '$1' (targets: ${all_targets[*]})" >&2
        exit 2
      fi
      targets+=("$1")
      shift
      ;;
  esac
done
if [[ ! "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: --seconds must be a positive whole number, not '$seconds'" >&2
  exit 2
fi
((${#targets[@]})) || targets=("${all_targets[@]}")

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

# Scratch directories the targets lay logs down in: tmpfs when there is one.
tmp_base=/dev/shm
[[ -d "$tmp_base" && -w "$tmp_base" ]] || tmp_base=${TMPDIR:-/tmp}
export RUNNEL_FUZZ_TMP
RUNNEL_FUZZ_TMP=$(mktemp -d "$tmp_base/runnel-fuzz.XXXXXX")
trap 'rm -rf "$RUNNEL_FUZZ_TMP"' EXIT

echo "==> building the fuzz targets (cargo +nightly fuzz build)"
cargo +nightly fuzz build --fuzz-dir "$root/fuzz"

mkdir -p "$root/fuzz/logs"
summary=()
crashed=()
for t in "${targets[@]}"; do
  corpus="$root/fuzz/corpus/$t"
  artifacts="$root/fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  # -jobs=1 runs the fuzzer in one child process whose output goes to fuzz-0.log in the
  # working directory: run from a directory of its own and keep that log.
  work=$(mktemp -d "$RUNNEL_FUZZ_TMP/$t.XXXXXX")
  echo "==> $t: fuzzing for ${seconds}s"
  status=0
  (cd "$work" && RUNNEL_FUZZ_SEEDS="$corpus" cargo +nightly fuzz run --fuzz-dir "$root/fuzz" "$t" "$corpus" -- \
    -max_total_time="$seconds" -jobs=1 -workers=1 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=30 \
    -print_final_stats=1 -artifact_prefix="$artifacts/") || status=$?
  log="$root/fuzz/logs/$t.log"
  cat "$work"/fuzz-*.log > "$log" 2>/dev/null || true
  stat() { awk -v k="stat::$1:" '$1 == k { v = $2 } END { print v }' "$log"; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  units=$(stat new_units_added)
  rss=$(stat peak_rss_mb)
  line="$t: ${execs:-?} executions in ${seconds}s (${rate:-?} exec/s), ${units:-?} new corpus units, peak RSS ${rss:-?} MB"
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
  if ((status != 0)) || [[ -n "$artifact" ]]; then
    line="$line: FAILED (exit $status)${artifact:+, artifact $artifact}"
    crashed+=("$t")
    grep -m 5 -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "$log" | sed 's/^/    /' || true
  fi
  echo "$line (log: fuzz/logs/$t.log)"
  summary+=("$line")
done

echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
if ((${#crashed[@]})); then
  echo "fuzz.sh: ${#crashed[@]} target(s) failed: ${crashed[*]}" >&2
  exit 1
fi
