#!/usr/bin/env bash
# A local 3-node Runnel cluster: every node runs the controller and broker roles.
#
#   scripts/cluster.sh up | down | status | logs N | kill N | pause N | resume N | restart N
#
# Node N (1-3): gRPC 127.0.0.1:5005N, HTTP 127.0.0.1:808N, Kafka 127.0.0.1:909(1+N) (reserved).
# Data, logs and pid files live in ${RUNNEL_HOME:-<repo>/.runnel}/node-N/. The binary is
# ${CARGO_TARGET_DIR:-<repo>/target}/release/runnel, rebuilt when older than the sources;
# RUNNEL_BIN overrides it (no build).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${RUNNEL_HOME:-$repo/.runnel}
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${RUNNEL_BIN:-$target/release/runnel}
nodes=(1 2 3)
voters="1@127.0.0.1:50051,2@127.0.0.1:50052,3@127.0.0.1:50053"
ready_timeout_s=${RUNNEL_READY_TIMEOUT_S:-30}
stop_timeout_s=${RUNNEL_STOP_TIMEOUT_S:-10}

die() { echo "cluster.sh: $*" >&2; exit 1; }
dir() { echo "$home/node-$1"; }
pid_of() { cat "$(dir "$1")/pid" 2>/dev/null || true; }
alive() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }
http() { echo "127.0.0.1:$((8080 + $1))"; }
check_node() { [[ $1 =~ ^[1-3]$ ]] || die "node must be 1, 2 or 3 (got '$1')"; }

# HTTP status of /readyz (000 when unreachable), using bash's /dev/tcp so curl is optional.
readyz() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$((8080 + $1))" || { echo 000; exit; }
        printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n' >&3
        code=$(timeout 2 head -n1 <&3 | awk '{print $2}')
        echo "${code:-000}"
    ) 2>/dev/null
}

build() {
    if [[ -n ${RUNNEL_BIN:-} ]]; then return; fi
    if [[ ! -x $bin ]] || [[ -n $(find "$repo/crates" "$repo/proto" "$repo/Cargo.toml" "$repo/Cargo.lock" \
            -newer "$bin" -type f \( -name '*.rs' -o -name '*.proto' -o -name '*.toml' -o -name '*.lock' \) \
            -print -quit) ]]; then
        echo "building $bin"
        (cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release -p runnel)
    fi
}

start() {
    local n=$1 d
    d=$(dir "$n")
    if alive "$n"; then echo "node $n already running (pid $(pid_of "$n"))"; return; fi
    mkdir -p "$d"
    nohup "$bin" node --id "$n" --data-dir "$d/data" --controller-voters "$voters" \
        --grpc-addr "127.0.0.1:$((50050 + n))" --http-addr "$(http "$n")" \
        --kafka-addr "127.0.0.1:$((9091 + n))" >>"$d/node.log" 2>&1 </dev/null &
    echo $! >"$d/pid"
    echo "node $n started (pid $!)"
}

wait_ready() {
    local deadline=$((SECONDS + ready_timeout_s)) n
    for n in "$@"; do
        until [[ $(readyz "$n") == 200 ]]; do
            alive "$n" || die "node $n exited; see $(dir "$n")/node.log"
            ((SECONDS < deadline)) || die "node $n not ready after ${ready_timeout_s}s; see $(dir "$n")/node.log"
            sleep 0.2
        done
    done
}

stop() {
    local n=$1 pid deadline
    alive "$n" || { rm -f "$(dir "$n")/pid"; return 0; }
    pid=$(pid_of "$n")
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid"
    deadline=$((SECONDS + stop_timeout_s))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "node $n did not stop in ${stop_timeout_s}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(dir "$n")/pid"
    echo "node $n stopped"
}

endpoints() {
    local n
    for n in "${nodes[@]}"; do
        echo "node $n: grpc=127.0.0.1:$((50050 + n)) http=http://$(http "$n") kafka=127.0.0.1:$((9091 + n)) (reserved)"
    done
    echo "try: $bin topic create orders --partitions 3 --replication-factor 3"
}

signal_node() {
    check_node "$1"
    alive "$1" || die "node $1 is not running"
    kill "-$2" "$(pid_of "$1")"
    echo "node $1: sent SIG$2"
}

cmd=${1:-}
case $cmd in
up)
    build
    for n in "${nodes[@]}"; do start "$n"; done
    wait_ready "${nodes[@]}"
    echo "cluster ready"
    endpoints
    ;;
down)
    for n in "${nodes[@]}"; do stop "$n"; done
    ;;
status)
    for n in "${nodes[@]}"; do
        if alive "$n"; then state="running (pid $(pid_of "$n"))"; else state="down"; fi
        echo "node $n: $state, /readyz $(readyz "$n")"
    done
    "$bin" cluster status --bootstrap 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 || true
    ;;
logs)
    check_node "${2:-}"
    tail -n "${LINES_SHOWN:-100}" -F "$(dir "$2")/node.log"
    ;;
kill) signal_node "${2:-}" KILL; rm -f "$(dir "$2")/pid" ;;
pause) signal_node "${2:-}" STOP ;;
resume) signal_node "${2:-}" CONT ;;
restart)
    check_node "${2:-}"
    build
    stop "$2"
    start "$2"
    wait_ready "$2"
    ;;
*)
    echo "usage: $0 up|down|status|logs N|kill N|pause N|resume N|restart N" >&2
    exit 2
    ;;
esac
