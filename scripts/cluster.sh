#!/usr/bin/env bash
# A local 3-node Runnel cluster: every node runs the controller and broker roles.
#
#   scripts/cluster.sh up [--tls] [--auth] | down | status | logs N | kill N | pause N | resume N | restart N
#                      | isolate N | heal N|all      (isolate and heal: netns mode only)
#                      | bootstrap | kafka-bootstrap (the gRPC / Kafka addresses, comma-separated)
#
# Node N (1-3): gRPC 127.0.0.1:5005N, HTTP 127.0.0.1:808N, Kafka 127.0.0.1:909(1+N) (node 1 on 9092).
# RUNNEL_PORT_OFFSET=K adds K to every port (a second cluster on one machine, or one beside a
# node started by hand on the default ports); the scripts that call this one inherit it.
# Data, logs and pid files live in ${RUNNEL_HOME:-<repo>/.runnel}/node-N/. The binary is
# ${CARGO_TARGET_DIR:-<repo>/target}/release/runnel, rebuilt when older than the sources;
# RUNNEL_BIN overrides it (no build).
#
# TLS mode: `scripts/cluster.sh up --tls` writes a throwaway CA and node certificates
# (`runnel tls generate`) to $RUNNEL_HOME/tls and starts every node with them: gRPC on TLS,
# inter-node calls checked against the caller's certificate. Clients pass
# `--tls-ca $RUNNEL_HOME/tls/ca.pem` (or RUNNEL_TLS_CA); the Kafka and HTTP listeners stay
# plaintext. The mode is remembered (restarts keep it) until `down`, which deletes the files.
#
# Auth mode: `scripts/cluster.sh up --auth` starts every node with `--auth` (SASL on Kafka,
# credentials on gRPC, ACLs) and an internal listener for inter-node calls (127.0.0.1:5006N),
# creates the super user `admin` with a random password, and prints how to use it
# (RUNNEL_USER=admin, RUNNEL_PASSWORD from $RUNNEL_HOME/auth/admin-password). With `--tls` too,
# Kafka clients use SASL_SSL. Remembered until `down`.
#
# Netns mode (root only): `RUNNEL_NETNS=1 scripts/cluster.sh up` runs node N in its own network
# namespace rnc-node-N with the address 10.213.7.N (RUNNEL_NETNS_SUBNET=a.b.c changes 10.213.7),
# on a bridge rncbr0 (10.213.7.254) through which this host reaches every node; the ports stay
# the same. `isolate N` then cuts node N off from the other nodes (their packets are silently
# dropped: the neighbour entries between them point at a MAC nobody owns) while clients on this
# host still reach it; `heal N` or `heal all` reconnects. The mode is remembered in
# $RUNNEL_HOME/netns until `down`, which also removes the namespaces and the bridge. One netns
# cluster per machine (the names are fixed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${RUNNEL_HOME:-$repo/.runnel}
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${RUNNEL_BIN:-$target/release/runnel}
nodes=(1 2 3)
ready_timeout_s=${RUNNEL_READY_TIMEOUT_S:-30}
stop_timeout_s=${RUNNEL_STOP_TIMEOUT_S:-10}
port_offset=${RUNNEL_PORT_OFFSET:-0}
[[ $port_offset =~ ^[0-9]+$ ]] && ((port_offset < 10000)) ||
    { echo "cluster.sh: RUNNEL_PORT_OFFSET must be 0-9999 (got '$port_offset')" >&2; exit 1; }
http_port() { echo $((8080 + port_offset + $1)); }
grpc_port() { echo $((50050 + port_offset + $1)); }
kafka_port() { echo $((9091 + port_offset + $1)); }
internal_port() { echo $((50060 + port_offset + $1)); }

die() { echo "cluster.sh: $*" >&2; exit 1; }
dir() { echo "$home/node-$1"; }
pid_of() { cat "$(dir "$1")/pid" 2>/dev/null || true; }
alive() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }
check_node() { [[ $1 =~ ^[1-3]$ ]] || die "node must be 1, 2 or 3 (got '$1')"; }

# Netns mode: the subnet's first three octets live in this file while the mode is on.
netns_file=$home/netns
bridge=rncbr0
dead_mac=02:00:00:de:ad:01
netns_mode() { [[ -f $netns_file ]]; }
subnet() { cat "$netns_file"; }
ns() { echo "rnc-node-$1"; }
host() { if netns_mode; then echo "$(subnet).$1"; else echo 127.0.0.1; fi; }
http() { echo "$(host "$1"):$(http_port "$1")"; }
grpc() { echo "$(host "$1"):$(grpc_port "$1")"; }
internal() { echo "$(host "$1"):$(internal_port "$1")"; }
voters() {
    if auth_mode; then echo "1@$(internal 1),2@$(internal 2),3@$(internal 3)"; else echo "1@$(grpc 1),2@$(grpc 2),3@$(grpc 3)"; fi
}
bootstrap() { echo "$(grpc 1),$(grpc 2),$(grpc 3)"; }
kafka() { echo "$(host "$1"):$(kafka_port "$1")"; }
kafka_bootstrap() { echo "$(kafka 1),$(kafka 2),$(kafka 3)"; }
isolated() { [[ -f $(dir "$1")/isolated ]]; }

# TLS mode: on while $home/tls holds the CA.
tls_dir=$home/tls
tls_mode() { [[ -f $tls_dir/ca.pem ]]; }
tls_client_flags() { if tls_mode; then echo "--tls-ca $tls_dir/ca.pem"; fi; }
# Auth mode: on while $home/auth exists; the admin's password is in it.
auth_dir=$home/auth
auth_mode() { [[ -d $auth_dir ]]; }
auth_env() { if auth_mode; then echo "RUNNEL_USER=admin RUNNEL_PASSWORD=$(cat "$auth_dir/admin-password")"; fi; }
auth_up() {
    auth_mode && return 0
    local n
    for n in "${nodes[@]}"; do
        alive "$n" && die "node $n runs without --auth; scripts/cluster.sh down first"
    done
    if netns_mode || [[ ${RUNNEL_NETNS:-0} == 1 ]]; then
        tls_mode || die "--auth in netns mode needs --tls too (the internal listeners are off loopback)"
    fi
    mkdir -p "$auth_dir"
    chmod 700 "$auth_dir"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$auth_dir/admin-password"
}
# The first administrator: made once every node is ready, from loopback, without credentials.
auth_admin() {
    auth_mode || return 0
    local deadline=$((SECONDS + ready_timeout_s)) tls=()
    if tls_mode; then tls=(--tls-ca "$tls_dir/ca.pem"); fi
    until RUNNEL_USER_PASSWORD=$(cat "$auth_dir/admin-password") \
        "$bin" user create admin --bootstrap "$(bootstrap)" "${tls[@]}" >/dev/null 2>"$auth_dir/last-error"; do
        # Once made, a repeat needs credentials: the admin exists already.
        RUNNEL_USER=admin RUNNEL_PASSWORD=$(cat "$auth_dir/admin-password") "$bin" user list \
            --bootstrap "$(bootstrap)" "${tls[@]}" >/dev/null 2>&1 && return 0
        ((SECONDS < deadline)) || die "could not create the admin user: $(cat "$auth_dir/last-error")"
        sleep 0.2
    done
}

tls_up() {
    tls_mode && return 0
    local n hosts=localhost
    for n in "${nodes[@]}"; do
        alive "$n" && die "node $n runs without TLS; scripts/cluster.sh down first"
    done
    for n in "${nodes[@]}"; do [[ ,$hosts, == *,$(host "$n"),* ]] || hosts+=",$(host "$n")"; done
    "$bin" tls generate --dir "$tls_dir" --nodes 1,2,3 --hosts "$hosts"
}

netns_up() {
    [[ $(id -u) == 0 ]] || die "RUNNEL_NETNS=1 needs root: it creates network namespaces, veths and a bridge"
    command -v ip >/dev/null || die "RUNNEL_NETNS=1 needs iproute2's ip"
    local subnet=${RUNNEL_NETNS_SUBNET:-10.213.7} n
    [[ $subnet =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "RUNNEL_NETNS_SUBNET must be three octets like 10.213.7"
    ip link show "$bridge" >/dev/null 2>&1 &&
        die "bridge $bridge exists: a netns cluster already runs here (scripts/cluster.sh down with its RUNNEL_HOME)"
    ip -4 route show | grep -q "^$subnet\.0/24 " && die "$subnet.0/24 is routed already; choose RUNNEL_NETNS_SUBNET"
    mkdir -p "$home"
    echo "$subnet" >"$netns_file"
    ip link add "$bridge" type bridge
    ip addr add "$subnet.254/24" dev "$bridge"
    ip link set "$bridge" up
    # A Docker engine sets the FORWARD policy to DROP, and with br_netfilter on, frames between
    # two nodes on this bridge go through it: let the bridge's own traffic through.
    if [[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null) == 1 ]] &&
        iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD DROP'; then
        iptables -I FORWARD -i "$bridge" -o "$bridge" -j ACCEPT ||
            die "could not let bridge $bridge's traffic through iptables' FORWARD chain"
    fi
    for n in "${nodes[@]}"; do
        ip netns add "$(ns "$n")"
        ip link add "rncv$n" type veth peer name eth0 netns "$(ns "$n")"
        ip link set "rncv$n" master "$bridge" up
        ip -n "$(ns "$n")" link set lo up
        ip -n "$(ns "$n")" addr add "$subnet.$n/24" dev eth0
        ip -n "$(ns "$n")" link set eth0 up
    done
    echo "netns mode: node N is $subnet.N in namespace rnc-node-N, bridge $bridge is $subnet.254"
}

netns_down() {
    local n
    for n in "${nodes[@]}"; do
        ip link del "rncv$n" 2>/dev/null || true
        ip netns del "$(ns "$n")" 2>/dev/null || true
        rm -f "$(dir "$n")/isolated"
    done
    ip link del "$bridge" 2>/dev/null || true
    while iptables -D FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null; do :; done
    rm -f "$netns_file"
    echo "netns mode: namespaces and bridge removed"
}

# Packets between nodes $1 and $2 are dropped (cut) or flow again (join), both ways.
cut() {
    ip -n "$(ns "$1")" neigh replace "$(subnet).$2" lladdr "$dead_mac" dev eth0 nud permanent
    ip -n "$(ns "$2")" neigh replace "$(subnet).$1" lladdr "$dead_mac" dev eth0 nud permanent
}
join() {
    ip -n "$(ns "$1")" neigh del "$(subnet).$2" dev eth0 2>/dev/null || true
    ip -n "$(ns "$2")" neigh del "$(subnet).$1" dev eth0 2>/dev/null || true
}

isolate() {
    local n=$1 m
    netns_mode || die "isolate needs the netns mode: scripts/cluster.sh down, then RUNNEL_NETNS=1 scripts/cluster.sh up (root)"
    for m in "${nodes[@]}"; do
        [[ $m == "$n" ]] || cut "$n" "$m"
    done
    touch "$(dir "$n")/isolated"
    echo "node $n isolated from the other nodes (clients on this host still reach $(grpc "$n"))"
}

heal() {
    local n=$1 m
    netns_mode || die "heal needs the netns mode (see isolate)"
    rm -f "$(dir "$n")/isolated"
    for m in "${nodes[@]}"; do
        # A pair stays cut while its other end is isolated.
        [[ $m == "$n" ]] || isolated "$m" || join "$n" "$m"
    done
    echo "node $n healed"
}

# HTTP status of /readyz (000 when unreachable), using bash's /dev/tcp so curl is optional.
readyz() {
    (
        exec 3<>"/dev/tcp/$(host "$1")/$(http_port "$1")" || { echo 000; exit; }
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
    local port h
    h=$(host "$n")
    local ports=("$(grpc_port "$n")" "$(http_port "$n")" "$(kafka_port "$n")")
    if auth_mode; then ports+=("$(internal_port "$n")"); fi
    for port in "${ports[@]}"; do
        if (exec 3<>"/dev/tcp/$h/$port") 2>/dev/null; then
            die "port $h:$port is already in use by another process, so node $n cannot start" \
                "(another cluster with a different RUNNEL_HOME?)"
        fi
    done
    mkdir -p "$d"
    local run=() tls=() auth=() kafka_addr
    kafka_addr=$(kafka "$n")
    if netns_mode; then run=(ip netns exec "$(ns "$n")"); fi
    if tls_mode; then tls=(--tls-cert "$tls_dir/node-$n.pem" --tls-key "$tls_dir/node-$n.key" --tls-ca "$tls_dir/ca.pem"); fi
    if auth_mode; then
        auth=(--auth --internal-addr "$(internal "$n")")
        if tls_mode; then kafka_addr="SASL_SSL://$kafka_addr"; fi
    fi
    # setsid: the node gets a session of its own, so a Ctrl-C in the terminal that ran this
    # script (or scripts/chaos.sh, which restarts nodes) never reaches it. setsid, nohup and
    # ip netns exec all exec, so $! is the node's pid.
    setsid nohup "${run[@]}" "$bin" node --id "$n" --data-dir "$d/data" --controller-voters "$(voters)" \
        --grpc-addr "$(grpc "$n")" --http-addr "$(http "$n")" \
        --kafka-addr "$kafka_addr" "${tls[@]}" "${auth[@]}" >>"$d/node.log" 2>&1 </dev/null &
    echo $! >"$d/pid"
    echo "node $n started (pid $!)"
}

wait_ready() {
    local deadline=$((SECONDS + ready_timeout_s)) n
    for n in "$@"; do
        # Our own process must be alive too: another process on the port could answer.
        until alive "$n" && [[ $(readyz "$n") == 200 ]]; do
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
        echo "node $n: grpc=$(grpc "$n") http=http://$(http "$n") kafka=$(kafka "$n")"
    done
    echo "console: http://$(http 1)/"
    if tls_mode; then echo "tls: gRPC serves TLS; clients pass $(tls_client_flags)"; fi
    if auth_mode; then
        echo "auth: every client authenticates; the super user: export $(auth_env)"
        echo "      Kafka clients: SASL (PLAIN or SCRAM-SHA-256/512) as admin, or as users made with '$bin user create'"
    fi
    if auth_mode; then
        echo "try: $(auth_env) $bin topic create orders --partitions 3 --replication-factor 3 --bootstrap $(bootstrap) $(tls_client_flags)"
    elif netns_mode || ((port_offset > 0)) || tls_mode; then
        echo "try: $bin topic create orders --partitions 3 --replication-factor 3 --bootstrap $(bootstrap) $(tls_client_flags)"
    else
        echo "try: $bin topic create orders --partitions 3 --replication-factor 3"
    fi
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
    want_tls=0 want_auth=0
    for flag in "${@:2}"; do
        case $flag in
        --tls) want_tls=1 ;;
        --auth) want_auth=1 ;;
        *) die "up takes --tls, --auth or nothing (got '$flag')" ;;
        esac
    done
    build
    if ((want_tls)); then tls_up; fi
    if ((want_auth)); then auth_up; fi
    if [[ ${RUNNEL_NETNS:-0} == 1 ]] && ! netns_mode; then
        for n in "${nodes[@]}"; do
            alive "$n" && die "node $n runs on loopback; scripts/cluster.sh down first"
        done
        netns_up
    fi
    for n in "${nodes[@]}"; do start "$n"; done
    wait_ready "${nodes[@]}"
    auth_admin
    echo "cluster ready"
    endpoints
    ;;
down)
    for n in "${nodes[@]}"; do stop "$n"; done
    if netns_mode; then netns_down; fi
    rm -rf "$tls_dir" "$auth_dir"
    ;;
status)
    for n in "${nodes[@]}"; do
        if alive "$n"; then state="running (pid $(pid_of "$n"))"; else state="down"; fi
        if isolated "$n"; then state="$state, isolated"; fi
        echo "node $n: $state, /readyz $(readyz "$n")"
    done
    tls=()
    if tls_mode; then tls=(--tls-ca "$tls_dir/ca.pem"); fi
    if auth_mode; then
        RUNNEL_USER=admin RUNNEL_PASSWORD=$(cat "$auth_dir/admin-password") \
            "$bin" cluster status --bootstrap "$(bootstrap)" "${tls[@]}" || true
    else
        "$bin" cluster status --bootstrap "$(bootstrap)" "${tls[@]}" || true
    fi
    ;;
bootstrap) bootstrap ;;
kafka-bootstrap) kafka_bootstrap ;;
isolate) check_node "${2:-}"; isolate "$2" ;;
heal)
    if [[ ${2:-} == all ]]; then
        for n in "${nodes[@]}"; do rm -f "$(dir "$n")/isolated"; done
        for n in "${nodes[@]}"; do heal "$n"; done
    else
        check_node "${2:-}"
        heal "$2"
    fi
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
    echo "usage: $0 up|down|status|bootstrap|kafka-bootstrap|logs N|kill N|pause N|resume N|restart N|isolate N|heal N|all" >&2
    exit 2
    ;;
esac
