#!/usr/bin/env bash
# The container test: builds the image, runs deploy/docker-compose.yml's three-node cluster and
# checks it from the host and from inside the cluster network, through faults.
#
#   scripts/docker-test.sh
#
# Steps (each prints its figure):
#   1. the release binary and the image (scripts/docker-image.sh: no registry needed)
#   2. `compose up`, every node's /readyz from the host, then Docker's own health status
#   3. Kafka through the published ports (the README's snippet, 1000 records) and from inside
#      the cluster network (the INTERNAL listener), with kafka-python from the pinned venv
#   4. gRPC: `runnel produce` / `consume` in a client container, `runnel cluster status`
#      through a published gRPC port
#   5. `docker kill` of a partition's leader under an idempotent acks=all producer: no
#      acknowledged record lost; the failover time
#   6. `docker network disconnect` of a partition's leader and back: nothing acknowledged lost,
#      the node rejoins (unfenced, back in the ISR)
#   7. `compose down` and `up`: every topic and record is still there (named volumes)
#   8. docker-compose.single.yml: one node answers the README's snippet
# Everything it started (containers, network, volumes, images) is removed on exit, pass or
# fail. Every wait has a deadline.
#
# No Docker engine answering: says so loudly and exits 0, so the rest of CI runs.
#
# Environment: RUNNEL_TEST_PORT_OFFSET (default 11000) is added to the compose file's host
# ports (Kafka 9092-9094, gRPC 50051-50053, HTTP 8081-8083), so the test does not collide
# with a cluster of scripts/cluster.sh or a developer's own compose cluster; the default puts
# every port outside Linux's ephemeral range (32768-60999), where an outgoing connection's
# local port could already hold it (10000 put gRPC at 60051-60053, and CI once lost 60052); RUNNEL_BIN a
# prebuilt binary (default: `cargo build --release -p runnel`); RUNNEL_KEEP=1 leaves the
# cluster up on failure for a look (still removed on success).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
t0=$(date +%s.%N)

# ---- helpers ---------------------------------------------------------------------------------
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf '\n==> [%5ss] %s\n' "$(since "$t0")" "$*"; }
say() { printf '    %s\n' "$*"; }
die() { printf '\ndocker-test: FAILED: %s\n' "$*" >&2; exit 1; }
# poll SECONDS WHAT CMD...: runs CMD until it succeeds, at most SECONDS; dies naming WHAT.
poll() {
  local limit=$1 what=$2 start
  shift 2
  start=$(now)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' \
      && die "$what: not within ${limit}s"
    sleep 0.2
  done
}

loud_skip() {
  printf '\n%s\n' "################################################################################"
  printf '# docker-test: SKIPPED: %s\n' "$*"
  printf '# The container image, the compose cluster and its fault tests did NOT run.\n'
  printf '%s\n\n' "################################################################################"
  exit 0
}

command -v docker >/dev/null 2>&1 || loud_skip "no docker command on this machine"
timeout 20 docker info >/dev/null 2>&1 || loud_skip "no Docker engine answers (docker info failed)"
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  loud_skip "neither 'docker compose' nor 'docker-compose' is installed"
fi
[[ $(id -u) == 0 ]] || say "not root: the in-network Kafka client step (nsenter) will be skipped"

project=runnel-dtest-$$
image=runnel:dtest-$$
offset=${RUNNEL_TEST_PORT_OFFSET:-11000}
kport() { echo $((9091 + $1 + offset)); }
gport() { echo $((50050 + $1 + offset)); }
hport() { echo $((8080 + $1 + offset)); }
export COMPOSE_PROJECT_NAME=$project RUNNEL_IMAGE=$image RUNNEL_PUBLISH_IP=127.0.0.1 RUNNEL_EXTERNAL_HOST=localhost
for n in 1 2 3; do
  export "RUNNEL_KAFKA_PORT_$n=$(kport $n)" "RUNNEL_GRPC_PORT_$n=$(gport $n)" "RUNNEL_HTTP_PORT_$n=$(hport $n)"
  for p in "$(kport $n)" "$(gport $n)" "$(hport $n)"; do
    ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && die "port $p is in use (set RUNNEL_TEST_PORT_OFFSET)"
  done
done
host_kafka="localhost:$(kport 1),localhost:$(kport 2),localhost:$(kport 3)"
net_kafka=runnel-1:29092,runnel-2:29092,runnel-3:29092
grpc_voters=runnel-1:50051,runnel-2:50051,runnel-3:50051
compose_file=$repo/deploy/docker-compose.yml
compose() { timeout 180 "${compose_cmd[@]}" -p "$project" -f "$compose_file" "$@"; }
single() { timeout 180 "${compose_cmd[@]}" -p "$project-single" -f "$repo/deploy/docker-compose.single.yml" "$@"; }
work=$(mktemp -d)
base_before=$(docker images -q 'runnel-base' | sort -u)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  touch "$work/stop" 2>/dev/null || true
  [[ -n ${producer_pid:-} ]] && kill "$producer_pid" 2>/dev/null
  if [[ $rc != 0 && ${RUNNEL_KEEP:-} == 1 ]]; then
    echo "docker-test: RUNNEL_KEEP=1: leaving project $project up (${compose_cmd[*]} -p $project -f $compose_file down -v)"
  else
    if [[ $rc != 0 ]]; then
      echo "---- last logs of each node ----"
      compose logs --no-color --tail 30 2>&1 | tail -100 || true
    fi
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    single down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    # Whatever a failed step left running or disconnected, by the projects' labels.
    local p
    for p in "$project" "$project-single"; do
      docker ps -aq --filter "label=com.docker.compose.project=$p" | xargs -r docker rm -fv >/dev/null 2>&1 || true
      docker volume ls -q --filter "label=com.docker.compose.project=$p" | xargs -r docker volume rm >/dev/null 2>&1 || true
      docker network ls -q --filter "label=com.docker.compose.project=$p" | xargs -r docker network rm >/dev/null 2>&1 || true
    done
    docker rmi "$image" >/dev/null 2>&1 || true
    # The base image, unless it was there before this run.
    for b in $(docker images -q runnel-base | sort -u); do
      grep -qx "$b" <<<"$base_before" || docker rmi -f "$b" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$work"
  echo "docker-test: $([[ $rc == 0 ]] && echo PASSED || echo FAILED) in $(since "$t0")s; containers, network, volumes and images removed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cid() { compose ps -q "runnel-$1"; }
net() { docker network ls -q --filter "label=com.docker.compose.project=$project" | head -1; }
ready_from_host() { "$bin" healthcheck --url "http://127.0.0.1:$(hport "$1")/readyz" --timeout-ms 1000; }
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")") == healthy ]]; }
# The runnel CLI in a throwaway container on the cluster network (gRPC to the nodes' names).
rn() { docker run --rm -i --network "$(net)" -e RUNNEL_BOOTSTRAP="$grpc_voters" -e RUNNEL_LOG=error "$image" "$@"; }
py() { timeout 120 "$venv/bin/python" "$repo/scripts/docker-test-client.py" "$@"; }
# py_in_net ARGS...: the Kafka client in node 1's network namespace, with its DNS (Docker's
# resolver at 127.0.0.11): a client inside the cluster network, no image needed.
py_in_net() {
  local c pid resolv
  c=$(cid 1)
  pid=$(docker inspect -f '{{.State.Pid}}' "$c")
  resolv=$(docker inspect -f '{{.ResolvConfPath}}' "$c")
  timeout 120 nsenter -t "$pid" -n -- unshare -m -- sh -c 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"' \
    sh "$resolv" "$venv/bin/python" "$repo/scripts/docker-test-client.py" "$@"
}
describe() { rn topic describe "$1" --output json; }
leader_of() { describe "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][0]["leader"])'; }
isr_size() { describe "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["partitions"][0]["isr"]))'; }
has_leader() { [[ $(leader_of "$1") =~ ^[0-9]+$ ]]; }
isr_full() { [[ $(isr_size "$1") == 3 ]]; }
broker_fenced() {
  rn cluster status --output json |
    python3 -c 'import json,sys; b={x["id"]:x for x in json.load(sys.stdin)["brokers"]}; sys.exit(0 if b['"$1"']["fenced"] else 1)'
}
broker_unfenced() {
  rn cluster status --output json |
    python3 -c 'import json,sys; b={x["id"]:x for x in json.load(sys.stdin)["brokers"]}; sys.exit(1 if b['"$1"']["fenced"] else 0)'
}
acks() { wc -l <"$1" 2>/dev/null || echo 0; }
acks_at_least() { (($(acks "$1") >= $2)); }
# The longest gap between consecutive acknowledgements in ACKED file $1 from time $2 on, and
# when it ended: how long the producer was stalled by a fault at $2.
ack_gap_since() {
  sort -n "$1" | awk -v t="$2" '$1 >= t - 0.5 { if (p != "" && $1 - p > g) { g = $1 - p; e = $1 } p = $1 }
    END { printf "%.2f s (it ended %.2f s after the fault was called for)", g, e - t }'
}
start_producer() { # TOPIC: runs the idempotent producer in the background, acks into $work/TOPIC.acked
  rm -f "$work/stop"
  : >"$work/$1.acked"
  "$venv/bin/python" "$repo/scripts/docker-test-client.py" run-producer "$host_kafka" "$1" "$work/$1.acked" "$work/stop" \
    >"$work/$1.producer" 2>&1 &
  producer_pid=$!
}
stop_producer() {
  touch "$work/stop"
  poll 90 "the producer to flush and exit" sh -c "! kill -0 $producer_pid"
  wait "$producer_pid" || die "the producer failed: $(cat "$work/$1.producer")"
  producer_pid=
  say "producer: $(tail -1 "$work/$1.producer")"
}

# ---- 1. binary and image ---------------------------------------------------------------------
step "1. release binary and image"
venv=$(scripts/python-env.sh) || die "scripts/python-env.sh failed"
"$venv/bin/python" -c 'import kafka' || die "kafka-python is not in the test venv $venv"
if [[ -n ${RUNNEL_BIN:-} ]]; then
  bin=$RUNNEL_BIN
else
  s=$(now)
  cargo build --release -p runnel --locked -q || die "cargo build --release failed"
  bin=${CARGO_TARGET_DIR:-$repo/target}/release/runnel
  say "cargo build --release: $(since "$s")s"
fi
s=$(now)
RUNNEL_BIN=$bin scripts/docker-image.sh "$image" | sed 's/^/    /'
say "image $image: $(($(docker image inspect -f '{{.Size}}' "$image") / 1024 / 1024)) MiB, built in $(since "$s")s"
for f in docker-compose.yml docker-compose.single.yml; do
  "${compose_cmd[@]}" -p "$project" -f "deploy/$f" config -q || die "deploy/$f does not validate"
done
say "compose files valid (${compose_cmd[*]} config)"

# ---- 2. up -----------------------------------------------------------------------------------
step "2. compose up: three nodes"
s=$(now)
compose up -d --no-build 2>&1 | sed 's/^/    /'
for n in 1 2 3; do poll 90 "node $n /readyz from the host" ready_from_host "$n"; done
say "all three /readyz answer 200 through the published ports: $(since "$s")s after up"
for n in 1 2 3; do poll 60 "Docker health of node $n" healthy "$n"; done
say "Docker HEALTHCHECK (runnel healthcheck) reports all three healthy: $(since "$s")s after up"
say "$("$bin" cluster status --bootstrap "127.0.0.1:$(gport 1)" | head -1) (via published gRPC port $(gport 1))"

# ---- 3. Kafka --------------------------------------------------------------------------------
step "3. Kafka clients: from the host (EXTERNAL) and from the cluster network (INTERNAL)"
s=$(now)
say "README snippet (bootstrap localhost:$(kport 1)): $(py snippet "localhost:$(kport 1)")  ($(since "$s")s)"
say "brokers as the host is told: $(py metadata "localhost:$(kport 2)")"
s=$(now)
n=$(py produce "localhost:$(kport 2)" host-kafka 1000)
m=$(py count "localhost:$(kport 3)" host-kafka 1000)
say "host: produced $n records through :$(kport 2), read $m back through :$(kport 3) ($(since "$s")s)"
if [[ $(id -u) == 0 ]]; then
  say "brokers as a container is told: $(py_in_net metadata runnel-2:29092)"
  s=$(now)
  n=$(py_in_net produce "$net_kafka" net-kafka 1000)
  m=$(py_in_net count "$net_kafka" net-kafka 1000)
  say "cluster network: produced $n records, read $m back ($(since "$s")s)"
else
  say "cluster network: skipped (needs root for nsenter)"
fi

# ---- 4. gRPC ---------------------------------------------------------------------------------
step "4. gRPC: runnel produce / consume in a client container on the cluster network"
s=$(now)
rn topic create grpc-records --partitions 3 --replication-factor 3 >/dev/null
poll 30 "a leader for grpc-records-0" has_leader grpc-records
seq 1 1000 | rn produce grpc-records 2>&1 | sed 's/^/    /'
m=$(rn consume grpc-records --from-beginning 2> >(sed 's/^/    /' >&2) | wc -l)
((m == 1000)) || die "gRPC: read $m of 1000 records"
say "gRPC: read $m records back ($(since "$s")s)"

# ---- 5. kill a leader ------------------------------------------------------------------------
step "5. docker kill of a partition leader under an idempotent acks=all producer"
rn topic create failover --partitions 1 --replication-factor 3 >/dev/null
poll 30 "a leader for failover-0" has_leader failover
poll 30 "failover-0's ISR to fill" isr_full failover
victim=$(leader_of failover)
start_producer failover
poll 60 "200 acknowledged records" acks_at_least "$work/failover.acked" 200
t_kill=$(now)
docker kill "$(cid "$victim")" >/dev/null
say "killed node $victim (leader of failover-0) after $(acks "$work/failover.acked") acks"
before=$(acks "$work/failover.acked")
poll 60 "200 more acknowledged records after the kill" acks_at_least "$work/failover.acked" $((before + 200))
say "FAILOVER: longest stall of the producer $(ack_gap_since "$work/failover.acked" "$t_kill"); new leader: node $(leader_of failover)"
state=$(docker inspect -f '{{.State.Status}}' "$(cid "$victim")")
[[ $state == running ]] || docker start "$(cid "$victim")" >/dev/null
say "node $victim is $state after the kill (docker kill is a manual stop: the restart policy leaves it down); docker start"
s=$(now)
poll 90 "node $victim /readyz after its restart" ready_from_host "$victim"
poll 60 "node $victim back in failover-0's ISR" isr_full failover
say "node $victim ready and back in the ISR $(since "$s")s after its start"
stop_producer failover
say "verify: $(py verify "$host_kafka" failover "$work/failover.acked")"

# ---- 6. network partition --------------------------------------------------------------------
step "6. docker network disconnect of a partition leader, then reconnect"
rn topic create isolated --partitions 1 --replication-factor 3 >/dev/null
poll 30 "a leader for isolated-0" has_leader isolated
poll 30 "isolated-0's ISR to fill" isr_full isolated
victim=$(leader_of isolated)
network=$(net)
start_producer isolated
poll 60 "200 acknowledged records" acks_at_least "$work/isolated.acked" 200
t_cut=$(now)
docker network disconnect "$network" "$(cid "$victim")"
say "disconnected node $victim (leader of isolated-0) after $(acks "$work/isolated.acked") acks"
poll 60 "node $victim fenced by the controller" broker_fenced "$victim"
say "node $victim fenced $(since "$t_cut")s after the cut"
before=$(acks "$work/isolated.acked")
poll 60 "200 more acknowledged records after the cut" acks_at_least "$work/isolated.acked" $((before + 200))
say "FAILOVER: longest stall of the producer $(ack_gap_since "$work/isolated.acked" "$t_cut"); new leader: node $(leader_of isolated)"
t_heal=$(now)
docker network connect --alias "runnel-$victim" "$network" "$(cid "$victim")"
poll 60 "node $victim unfenced after the reconnect" broker_unfenced "$victim"
poll 90 "node $victim back in isolated-0's ISR" isr_full isolated
poll 60 "node $victim healthy again" healthy "$victim"
poll 30 "node $victim's published HTTP port after the reconnect" ready_from_host "$victim"
say "REJOIN: node $victim unfenced, in the ISR and healthy $(since "$t_heal")s after the reconnect"
stop_producer isolated
say "verify: $(py verify "$host_kafka" isolated "$work/isolated.acked")"

# ---- 7. down and up --------------------------------------------------------------------------
step "7. compose down, then up: the named volumes keep every topic and record"
topics_before=$(rn topic list --output json | python3 -c 'import json,sys; print(" ".join(sorted(t["name"] for t in json.load(sys.stdin)["topics"])))')
s=$(now)
compose down -t 20 2>&1 | sed 's/^/    /'
compose up -d --no-build 2>&1 | sed 's/^/    /'
for n in 1 2 3; do poll 90 "node $n /readyz after up" ready_from_host "$n"; done
say "down + up + all ready: $(since "$s")s"
topics_after=$(rn topic list --output json | python3 -c 'import json,sys; print(" ".join(sorted(t["name"] for t in json.load(sys.stdin)["topics"])))')
[[ $topics_after == "$topics_before" ]] || die "topics before: $topics_before; after: $topics_after"
say "topics: $topics_after"
say "host-kafka: $(py count "$host_kafka" host-kafka 1000) records"
[[ $(id -u) == 0 ]] && say "net-kafka: $(py count "$host_kafka" net-kafka 1000) records"
m=$(rn consume grpc-records --from-beginning 2>/dev/null | wc -l)
((m == 1000)) || die "grpc-records: $m of 1000 after the restart"
say "grpc-records: $m records"
say "failover: $(py verify "$host_kafka" failover "$work/failover.acked")"
say "isolated: $(py verify "$host_kafka" isolated "$work/isolated.acked")"

# ---- 8. one node -----------------------------------------------------------------------------
step "8. docker-compose.single.yml: one node, the README snippet"
s=$(now)
compose down -v -t 20 >/dev/null 2>&1
single up -d --no-build 2>&1 | sed 's/^/    /'
poll 90 "the single node's /readyz" ready_from_host 1
say "README snippet (bootstrap localhost:$(kport 1)): $(py snippet "localhost:$(kport 1)")  ($(since "$s")s with down and up)"
single down -v -t 20 >/dev/null 2>&1
step "all steps passed"
