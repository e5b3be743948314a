#!/usr/bin/env bash
# herald-bench against a two-node Herald cluster on the services of
# scripts/services.sh (MongoDB-wire server, RocketMQ, Redis), all on this
# machine: senders on node 1, recipients on node 2 (`--url2`).
#
# Cases, each on two fresh nodes of a new cluster (release build):
#   find-max  CLIENTS clients, durable 1:1: the rate raised by STEP from
#             START_RATE every STEP_DURATION s until p99 > P99_MS, delivery
#             < 99.5 % or loss (the headline: the highest good rate)
#   rate      CLIENTS clients at RATE msg/s for DURATION s: what is
#             persisted per second, and the latency, at a rate it sustains
#   fanout    a group of FANOUT_MEMBERS members (half on each node),
#             FANOUT_RATE msg/s for FANOUT_DURATION s
#   idle      IDLE_CONNECTIONS idle subscribed connections to node 1: its
#             RSS per connection
# Every JSON line herald-bench prints goes, tagged with its case, to
# docs/bench/cluster-<timestamp>.jsonl; the summaries go to stderr.
#
#   scripts/bench-cluster.sh
#   CASES="rate" RATE=300 scripts/bench-cluster.sh
#   SKIP_BUILD=1 BIN_DIR=/some/release scripts/bench-cluster.sh   (binaries built already)
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-"find-max rate fanout idle"}
CLIENTS=${CLIENTS:-1000}
START_RATE=${START_RATE:-100}
STEP=${STEP:-1.25}
STEP_DURATION=${STEP_DURATION:-10}
P99_MS=${P99_MS:-50}
RATE=${RATE:-200}
DURATION=${DURATION:-30}
FANOUT_MEMBERS=${FANOUT_MEMBERS:-1000}
FANOUT_RATE=${FANOUT_RATE:-2}
FANOUT_DURATION=${FANOUT_DURATION:-30}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
PORT1=${PORT1:-18181}
PORT2=${PORT2:-18182}

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}   # herald and herald-bench
bash scripts/services.sh up >&2
eval "$(bash scripts/services.sh env)"
ulimit -n 65536 2>/dev/null || true
out="docs/bench/cluster-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

PIDS=()
# start_nodes: two nodes of a new cluster; sets PIDS.
start_nodes() {
    local cluster="bench$RANDOM$RANDOM" n port
    PIDS=()
    for n in 1 2; do
        port=$([ "$n" = 1 ] && echo "$PORT1" || echo "$PORT2")
        HERALD_CLUSTER_NAME=$cluster HERALD_NODE_ID=$n \
            HERALD_MONGODB_URI="${HERALD_MONGODB_URI%/*}/$cluster" \
            HERALD_SEND_RATE_PER_SEC=100000 HERALD_SEND_BURST=100000 \
            HERALD_MAX_CONNECTIONS_PER_USER=100000 HERALD_MAX_CONNECTIONS_PER_ADDRESS=0 HERALD_LOG=warn \
            HERALD_REGISTRATIONS_PER_HOUR=0 HERALD_LOGIN_MAX_FAILURES=0 \
            "$bin/herald" serve --listen "127.0.0.1:$port" --data-dir "$work/n$n" \
            2>"$work/node$n.log" &
        PIDS+=($!)
    done
    for port in "$PORT1" "$PORT2"; do
        for _ in $(seq 1 300); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port/readyz")" = 200 ] && break
            sleep 0.2
        done
    done
}

stop_nodes() {
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
}

# bench CASE ARGS...: one case on fresh nodes, its lines tagged into $out.
bench() {
    local case=$1
    shift
    echo "== $case" >&2
    start_nodes
    "$bin/herald-bench" --url "http://127.0.0.1:$PORT1" --server-pid "${PIDS[0]}" "$@" |
        python3 -c 'import json,sys
for l in sys.stdin:
    print(json.dumps({"case": sys.argv[1], "result": json.loads(l)}), flush=True)' "$case" >>"$out"
    stop_nodes
}

two=(--url2 "http://127.0.0.1:$PORT2")
for c in $CASES; do
    case $c in
    find-max) bench find-max "${two[@]}" find-max --clients "$CLIENTS" --start-rate "$START_RATE" \
        --step "$STEP" --step-duration "$STEP_DURATION" --p99-ms "$P99_MS" ;;
    rate) bench rate "${two[@]}" rate --clients "$CLIENTS" --rate "$RATE" --duration "$DURATION" ;;
    fanout) bench fanout "${two[@]}" fanout --members "$FANOUT_MEMBERS" --rate "$FANOUT_RATE" \
        --duration "$FANOUT_DURATION" ;;
    idle) bench idle idle --connections "$IDLE_CONNECTIONS" ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
    esac
done
echo "results: $out" >&2
