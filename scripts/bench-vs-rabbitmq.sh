#!/usr/bin/env bash
# Herald against RabbitMQ Web-STOMP, side by side on this machine, with
# herald-bench (src/bin/herald-bench) and, for the fixed-rate case, also an
# independent stomp.js generator (bench/stompjs), and the relay
# (`herald-bench relay`, a STOMP broker that stores and checks nothing: the
# most any server can reach on this machine with the generator beside it).
# One server at a time, alternating Herald / RabbitMQ / relay for ROUNDS
# rounds; every JSON line the generators print is kept (annotated with
# round, server and case) in docs/bench/results-<timestamp>.jsonl, then
# scripts/bench_report.py writes docs/BENCHMARKS.md and
# docs/bench/latency-vs-rate.svg from that file.
#
# Cases, per round and server, in this order:
#   fixed     CLIENTS clients, durable 1:1 chat at a fixed FIXED_RATE msg/s
#             (the p99 comparison)
#   stompjs   the same fixed-rate run (CLIENTS, FIXED_RATE, FIXED_DURATION)
#             driven by bench/stompjs/stompjs-bench.mjs, an independent
#             generator on stomp.js (Node >= 20; `npm ci` there when needed)
#   find-max  the same, the rate raised by STEP from START_RATE every
#             STEP_DURATION s until p99 > P99_MS, delivery < 99.5% of
#             offered, or loss, then REFINE steps bisecting the gap between
#             the last good and the failed rate (the headline: the highest
#             good rate)
#   fanout    a group of FANOUT_MEMBERS online members, FANOUT_RATE msg/s
#             for FANOUT_DURATION s (30: with 10 s, 100 messages, the p99 was
#             the slowest one or two messages and swung 66-153 ms by round)
#             (RabbitMQ: a durable topic subscription per member)
#   sync      SYNC_MESSAGES offline messages pulled over REST (Herald only)
#   idle      IDLE_CONNECTIONS idle subscribed connections: server RSS per
#             connection (RabbitMQ: RSS of its beam.smp)
# The relay runs only fixed and find-max (it has no REST and stores
# nothing, so stompjs, fanout, sync and idle would tell nothing of a server).
#
# One server at a time, and every case starts clean. Herald: each round
# gets a fresh temporary data directory where the users are registered once
# (not measured); every case then runs on a fresh Herald process started on
# a copy of that directory, stopped with SIGTERM afterwards, so Herald is
# not running while RabbitMQ is measured. RabbitMQ (a system service) keeps
# running, idle while Herald is measured: each of its cases gets a fresh
# vhost, deleted at the end of its turn. The relay: every case on a fresh
# `herald-bench relay --listen 127.0.0.1:RELAY_PORT --answer-sends` process
# (driven with the same STOMP frames as RabbitMQ), killed afterwards. Before
# every case the script waits (up to QUIET_TIMEOUT s) until the whole
# machine is under QUIET_PCT % CPU, and records what it measured
# (cpu_busy_before_pct).
#
# Knobs (environment): see the "Knobs" block below. Examples:
#   scripts/bench-vs-rabbitmq.sh                         # the full run
#   ROUNDS=1 CLIENTS=50 IDLE_CONNECTIONS=200 FANOUT_MEMBERS=20 \
#     SYNC_MESSAGES=300 STEP_DURATION=2 MAX_STEPS=2 FIXED_DURATION=2 \
#     scripts/bench-vs-rabbitmq.sh                       # a quick check
#   BEFORE=docs/bench/results-OLD.jsonl scripts/bench-vs-rabbitmq.sh
#
# Needs: bash, cargo, curl, python3, node (>= 20) and npm for the stompjs
# case; RabbitMQ from the Debian package `rabbitmq-server` (installed with
# apt-get if missing); root (or sudo) to install, configure and, when
# needed, restart RabbitMQ.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

KNOB_NAMES=(ROUNDS SERVERS SCENARIOS CLIENTS START_RATE STEP STEP_DURATION P99_MS MAX_STEPS REFINE
    FIXED_RATE FIXED_DURATION FANOUT_MEMBERS FANOUT_RATE FANOUT_DURATION SYNC_MESSAGES
    IDLE_CONNECTIONS IDLE_CONNS_PER_USER IDLE_SETTLE GEN_THREADS HERALD_PORT RELAY_PORT RABBIT_URL
    RABBIT_VHOST RABBITMQ_RESTART QUIET_PCT QUIET_TIMEOUT SKIP_BUILD BEFORE)
# The knobs the caller set, for the record of the exact command.
INVOCATION=""
for knob in "${KNOB_NAMES[@]}"; do
    if [[ -n ${!knob+x} ]]; then
        INVOCATION+="$knob=$(printf '%q' "${!knob}") "
    fi
done
INVOCATION+="scripts/bench-vs-rabbitmq.sh"

# ---------------------------------------------------------------- Knobs
ROUNDS=${ROUNDS:-3}
SERVERS=${SERVERS:-"herald rabbitmq relay"}
SCENARIOS=${SCENARIOS:-"fixed stompjs find-max fanout sync idle"}
CLIENTS=${CLIENTS:-1000}
START_RATE=${START_RATE:-1000}
STEP=${STEP:-1.25}
STEP_DURATION=${STEP_DURATION:-10}
P99_MS=${P99_MS:-50}
MAX_STEPS=${MAX_STEPS:-40}
REFINE=${REFINE:-2}
FIXED_RATE=${FIXED_RATE:-2500}
FIXED_DURATION=${FIXED_DURATION:-20}
FANOUT_MEMBERS=${FANOUT_MEMBERS:-1000}
FANOUT_RATE=${FANOUT_RATE:-10}
FANOUT_DURATION=${FANOUT_DURATION:-30}
SYNC_MESSAGES=${SYNC_MESSAGES:-10000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
# Default: the idle connections spread over the CLIENTS users registered for
# the round (10 per user for 10000 connections and 1000 clients).
IDLE_CONNS_PER_USER=${IDLE_CONNS_PER_USER:-$(((IDLE_CONNECTIONS + CLIENTS - 1) / CLIENTS))}
IDLE_SETTLE=${IDLE_SETTLE:-5}
GEN_THREADS=${GEN_THREADS:-1}
HERALD_PORT=${HERALD_PORT:-18980}
RELAY_PORT=${RELAY_PORT:-18990}
RABBIT_URL=${RABBIT_URL:-ws://127.0.0.1:15674/ws}
RABBIT_VHOST=${RABBIT_VHOST:-herald-bench}
RABBIT_LOGIN=${RABBIT_LOGIN:-guest}
RABBIT_PASSCODE=${RABBIT_PASSCODE:-guest}
# auto: restart RabbitMQ only when needed (not running, listeners not yet on
# loopback, or its open-files limit below what the run needs: CLIENTS or
# FANOUT_MEMBERS + 1024, IDLE_CONNECTIONS + 2048 with idle);
# always; never (then a too-low limit makes connections fail).
RABBITMQ_RESTART=${RABBITMQ_RESTART:-auto}
QUIET_PCT=${QUIET_PCT:-15}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-30}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
# The commit the binaries were built from, when it is not this checkout's
# HEAD (SKIP_BUILD=1 with CARGO_TARGET_DIR holding an older build).
HERALD_GIT=${HERALD_GIT:-}
BEFORE=${BEFORE:-}
OUT_DIR=${OUT_DIR:-docs/bench}
REPORT=${REPORT:-docs/BENCHMARKS.md}
CHART=${CHART:-$OUT_DIR/latency-vs-rate.svg}

NODE=${NODE:-node}
STOMPJS_DIR=bench/stompjs
STOMPJS=$STOMPJS_DIR/stompjs-bench.mjs

TARGET_DIR=${CARGO_TARGET_DIR:-target}
HERALD_BIN=$TARGET_DIR/release/herald
BENCH=$TARGET_DIR/release/herald-bench
RABBIT_WS_PORT=${RABBIT_URL#ws://*:}
RABBIT_WS_PORT=${RABBIT_WS_PORT%%/*}
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
RABBIT_PIDFILE=/var/lib/rabbitmq/mnesia/rabbit@localhost.pid
CONF_MARK="# herald scripts/bench-vs-rabbitmq.sh: STOMP and Web-STOMP on loopback"
# Herald's settings for every run (on top of its defaults: durability full).
HERALD_BENCH_ENV=(
    HERALD_SEND_RATE_PER_SEC=100000
    HERALD_SEND_BURST=100000
    HERALD_MAX_CONNECTIONS_PER_USER=100000
    HERALD_MAX_CONNECTIONS_PER_ADDRESS=0
    # Every bench user registers and logs in from 127.0.0.1.
    HERALD_REGISTRATIONS_PER_HOUR=0
    HERALD_LOGIN_MAX_FAILURES=0
    HERALD_LOG=warn
)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
has() { [[ " $1 " == *" $2 "* ]]; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# JSON string literal of $1.
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    s=${s//$'\r'/\\r}
    printf '"%s"' "$s"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Machine-wide CPU busy percent over one second (all cores: 100 = all busy).
cpu_busy_pct() {
    local a b ta ia tb ib
    read -ra a </proc/stat
    sleep 1
    read -ra b </proc/stat
    ta=$((a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7] + a[8]))
    ia=$((a[4] + a[5]))
    tb=$((b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7] + b[8]))
    ib=$((b[4] + b[5]))
    if ((tb > ta)); then
        echo $((100 * ((tb - ta) - (ib - ia)) / (tb - ta)))
    else
        echo 0
    fi
}

# Waits until the machine is quiet; sets BUSY_PCT to the last measurement.
BUSY_PCT=0
wait_quiet() {
    local deadline=$((SECONDS + QUIET_TIMEOUT))
    while :; do
        BUSY_PCT=$(cpu_busy_pct)
        if ((BUSY_PCT <= QUIET_PCT)); then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log "warning: the machine is still ${BUSY_PCT}% busy (> ${QUIET_PCT}%) after ${QUIET_TIMEOUT} s; measuring anyway (recorded)"
            return 0
        fi
        sleep 1
    done
}

# Raises this shell's open-files limit (inherited by Herald, herald-bench
# and a RabbitMQ started from here) to at least $1 if possible.
raise_nofile() {
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < want)); then
        ulimit -Hn "$want" 2>/dev/null || want=$hard
    fi
    if [[ $(ulimit -Sn) != unlimited ]] && (($(ulimit -Sn) < want)); then
        ulimit -Sn "$want"
    fi
}

# ---------------------------------------------------------------- RabbitMQ
rabbit_pid() {
    local pid=""
    if [[ -r $RABBIT_PIDFILE ]]; then
        pid=$(tr -dc '0-9' <"$RABBIT_PIDFILE")
    fi
    if [[ -z $pid || ! -d /proc/$pid ]]; then
        pid=$(pgrep -o -u rabbitmq -x beam.smp || true)
    fi
    [[ -n $pid && -d /proc/$pid ]] && echo "$pid"
}

rabbit_running() { as_root rabbitmqctl -q status >/dev/null 2>&1; }

rabbit_nofile() {
    local pid=$1
    awk '/^Max open files/ {print $4}' "/proc/$pid/limits"
}

# Whether Web-STOMP listens on loopback only (unknown without `ss`: yes).
rabbit_webstomp_on_loopback() {
    command -v ss >/dev/null || return 0
    local addrs
    addrs=$(ss -ltnH "sport = :$RABBIT_WS_PORT" | awk '{print $4}')
    [[ -n $addrs ]] || return 1
    ! grep -qvE '^(127\.0\.0\.1|\[::1\]):' <<<"$addrs"
}

rabbit_start() {
    local nofile=$1
    if [[ -d /run/systemd/system ]] && systemctl cat rabbitmq-server >/dev/null 2>&1; then
        log "starting RabbitMQ with systemctl (its unit sets the open-files limit)"
        as_root systemctl restart rabbitmq-server
    else
        log "starting RabbitMQ: rabbitmq-server -detached with ulimit -n $nofile"
        as_root su rabbitmq -s /bin/sh -c "ulimit -n $nofile && /usr/sbin/rabbitmq-server -detached"
    fi
    local deadline=$((SECONDS + 120))
    until rabbit_running; do
        ((SECONDS < deadline)) || die "RabbitMQ did not start within 120 s (see /var/log/rabbitmq)"
        sleep 1
    done
    as_root rabbitmqctl -q await_startup >/dev/null
}

rabbit_stop() {
    log "stopping RabbitMQ"
    if [[ -d /run/systemd/system ]] && systemctl is-active -q rabbitmq-server 2>/dev/null; then
        as_root systemctl stop rabbitmq-server
    elif [[ -r $RABBIT_PIDFILE ]]; then
        as_root rabbitmqctl -q stop "$RABBIT_PIDFILE" >/dev/null
    else
        as_root rabbitmqctl -q stop >/dev/null
    fi
}

rabbit_setup() {
    if ! command -v rabbitmqctl >/dev/null; then
        log "installing RabbitMQ (Debian package rabbitmq-server)"
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
    fi
    # A descriptor per connection (CLIENTS for fixed, stompjs and find-max,
    # FANOUT_MEMBERS for fanout, IDLE_CONNECTIONS for idle) plus its own.
    local need=1024 restart=0 pid
    if has "$SCENARIOS" fixed || has "$SCENARIOS" stompjs || has "$SCENARIOS" find-max; then
        need=$((CLIENTS + 1024 > need ? CLIENTS + 1024 : need))
    fi
    if has "$SCENARIOS" fanout; then
        need=$((FANOUT_MEMBERS + 1024 > need ? FANOUT_MEMBERS + 1024 : need))
    fi
    if has "$SCENARIOS" idle && ((IDLE_CONNECTIONS + 2048 > need)); then
        need=$((IDLE_CONNECTIONS + 2048))
    fi
    # Listeners on loopback only (applied at the next start).
    if ! as_root grep -qF "$CONF_MARK" "$RABBIT_CONF" 2>/dev/null; then
        log "adding loopback STOMP / Web-STOMP listeners to $RABBIT_CONF"
        printf '%s\nstomp.listeners.tcp.1 = 127.0.0.1:61613\nweb_stomp.tcp.ip = 127.0.0.1\nweb_stomp.tcp.port = %s\n' \
            "$CONF_MARK" "$RABBIT_WS_PORT" | as_root tee -a "$RABBIT_CONF" >/dev/null
    fi
    log "enabling rabbitmq_stomp and rabbitmq_web_stomp"
    if ! rabbit_running; then
        as_root rabbitmq-plugins --offline enable rabbitmq_stomp rabbitmq_web_stomp >/dev/null
        raise_nofile "$need"
        rabbit_start "$(ulimit -Sn)"
    else
        as_root rabbitmq-plugins enable rabbitmq_stomp rabbitmq_web_stomp >/dev/null
    fi
    pid=$(rabbit_pid) || die "cannot find RabbitMQ's beam.smp process"
    if [[ $RABBITMQ_RESTART == always ]]; then
        restart=1
    elif [[ $RABBITMQ_RESTART == auto ]]; then
        if [[ $(rabbit_nofile "$pid") != unlimited ]] && (($(rabbit_nofile "$pid") < need)); then
            log "RabbitMQ's open-files limit is $(rabbit_nofile "$pid"), the run needs $need: restarting it"
            restart=1
        fi
        local deadline=$((SECONDS + 30))
        until port_open "$RABBIT_WS_PORT" || ((SECONDS >= deadline)); do sleep 1; done
        if ! rabbit_webstomp_on_loopback; then
            log "Web-STOMP does not listen on loopback only yet: restarting RabbitMQ"
            restart=1
        fi
    fi
    if ((restart)); then
        rabbit_stop
        raise_nofile "$need"
        rabbit_start "$(ulimit -Sn)"
        pid=$(rabbit_pid) || die "cannot find RabbitMQ's beam.smp process"
    fi
    local deadline=$((SECONDS + 60))
    until port_open "$RABBIT_WS_PORT"; do
        ((SECONDS < deadline)) || die "RabbitMQ Web-STOMP does not listen on port $RABBIT_WS_PORT"
        sleep 1
    done
    log "RabbitMQ $(as_root rabbitmqctl -q version) pid $pid, open files $(rabbit_nofile "$pid"), Web-STOMP at $RABBIT_URL"
}

# A fresh vhost for the benchmark's queues (deleting it drops them all).
rabbit_reset_vhost() {
    as_root rabbitmqctl -q delete_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true
    if [[ ${1:-} != delete ]]; then
        as_root rabbitmqctl -q add_vhost "$RABBIT_VHOST" >/dev/null
        as_root rabbitmqctl -q set_permissions -p "$RABBIT_VHOST" "$RABBIT_LOGIN" '.*' '.*' '.*' >/dev/null
    fi
}

# ---------------------------------------------------------------- Herald
HERALD_PID=""

herald_start() {
    local dir=$1
    port_open "$HERALD_PORT" && die "port $HERALD_PORT is in use (set HERALD_PORT)"
    mkdir -p "$dir/data"
    # Started from its own directory so that no ./herald.toml is picked up.
    pushd "$dir" >/dev/null
    env "${HERALD_BENCH_ENV[@]}" "$HERALD_BIN_ABS" serve \
        --listen "127.0.0.1:$HERALD_PORT" --data-dir "$dir/data" >>"$dir/herald.log" 2>&1 &
    HERALD_PID=$!
    popd >/dev/null
    local deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$HERALD_PORT/healthz" 2>/dev/null; do
        if ! kill -0 "$HERALD_PID" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 30 "$dir/herald.log" >&2 || true
            die "herald did not become healthy"
        fi
        sleep 0.2
    done
    log "herald pid $HERALD_PID on 127.0.0.1:$HERALD_PORT (data $dir/data)"
}

# stop_process PID NAME SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop_process() {
    local pid=$1 name=$2 grace=$3
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "warning: $name ignored SIGTERM for $grace s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || true
}

herald_stop() {
    [[ -n $HERALD_PID ]] || return 0
    stop_process "$HERALD_PID" herald 30
    HERALD_PID=""
}

# ---------------------------------------------------------------- Relay
RELAY_PID=""

# relay_start CASE: a fresh relay, its output in $WORK/round<N>-relay-CASE.log.
relay_start() {
    local log=$WORK/round$ROUND-relay-$1.log
    port_open "$RELAY_PORT" && die "port $RELAY_PORT is in use (set RELAY_PORT)"
    "$BENCH" relay --listen "127.0.0.1:$RELAY_PORT" --answer-sends >>"$log" 2>&1 &
    RELAY_PID=$!
    local deadline=$((SECONDS + 30))
    until grep -q '^relay listening on ' "$log" || port_open "$RELAY_PORT"; do
        if ! kill -0 "$RELAY_PID" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 30 "$log" >&2 || true
            die "the relay did not start listening on 127.0.0.1:$RELAY_PORT"
        fi
        sleep 0.2
    done
    log "relay pid $RELAY_PID on ws://127.0.0.1:$RELAY_PORT/ws (log $log)"
}

# The relay keeps nothing to flush: SIGTERM ends it at once.
relay_stop() {
    [[ -n $RELAY_PID ]] || return 0
    stop_process "$RELAY_PID" "the relay" 10
    RELAY_PID=""
}

# ---------------------------------------------------------------- stomp.js
# Node and the generator's dependencies (npm ci when node_modules is
# missing or older than the lock file).
stompjs_setup() {
    command -v "$NODE" >/dev/null || die "the stompjs case needs node (>= 20; or leave stompjs out of SCENARIOS)"
    local major
    major=$("$NODE" -p 'process.versions.node.split(".")[0]')
    ((major >= 20)) || die "the stompjs case needs node >= 20, found $("$NODE" --version)"
    if [[ ! -f $STOMPJS_DIR/node_modules/.package-lock.json ||
        $STOMPJS_DIR/package-lock.json -nt $STOMPJS_DIR/node_modules/.package-lock.json ]]; then
        command -v npm >/dev/null || die "the stompjs case needs npm to install its dependencies"
        log "installing the stomp.js generator's dependencies (npm ci in $STOMPJS_DIR)"
        (cd "$STOMPJS_DIR" && npm ci --silent --no-audit --no-fund) || die "npm ci in $STOMPJS_DIR failed"
    fi
}

# ---------------------------------------------------------------- Runs
ROUND=0

# run_case SERVER CASE ARGS...: runs herald-bench ARGS (see run_cmd).
run_case() {
    local server=$1 case=$2
    shift 2
    run_cmd "$server" "$case" "$BENCH" --threads "$GEN_THREADS" "$@"
}

# run_stompjs SERVER ARGS...: the stomp.js generator at the fixed rate (case
# stompjs; see run_cmd).
run_stompjs() {
    local server=$1
    shift
    run_cmd "$server" stompjs "$NODE" "$STOMPJS" --clients "$CLIENTS" --rate "$FIXED_RATE" \
        --duration "$FIXED_DURATION" "$@"
}

# run_cmd SERVER CASE COMMAND...: runs a generator, appends its JSON lines
# to the results with round, server, case, exit status, the machine's CPU
# before the run and the exact command.
run_cmd() {
    local server=$1 case=$2
    shift 2
    local cmd=("$@")
    wait_quiet
    log "round $ROUND $server $case: ${cmd[*]}"
    local out="$WORK/out.jsonl" err="$WORK/err.log" rc=0
    # stdout (the JSON lines) to a file; stderr shown and kept.
    { "${cmd[@]}" 2>&1 >&3 | tee "$err" >&2; } 3>"$out" || rc=$?
    local prefix n=0 line
    prefix="{\"round\":$ROUND,\"server\":\"$server\",\"case\":\"$case\",\"exit\":$rc,\"cpu_busy_before_pct\":$BUSY_PCT,\"cmd\":$(json_str "${cmd[*]}")"
    if ((rc != 0)); then
        prefix+=",\"stderr_tail\":$(json_str "$(grep -v '^[[:space:]]*$' "$err" | tail -n 1)")"
    fi
    while IFS= read -r line; do
        [[ $line == "{"*"}" ]] || continue
        n=$((n + 1))
        if [[ $line == "{}" ]]; then
            printf '%s}\n' "$prefix" >>"$RESULTS"
        else
            printf '%s,%s\n' "$prefix" "${line#\{}" >>"$RESULTS"
        fi
    done <"$out"
    if ((n == 0)); then
        printf '%s,"error":"no output"}\n' "$prefix" >>"$RESULTS"
    fi
    if ((rc != 0)); then
        log "warning: round $ROUND $server $case exited with $rc (recorded)"
    fi
}

# Users the Herald cases need (find-max/fixed clients, fanout members, idle).
herald_users_needed() {
    local n=2
    if has "$SCENARIOS" find-max || has "$SCENARIOS" fixed || has "$SCENARIOS" stompjs; then
        n=$((CLIENTS > n ? CLIENTS : n))
    fi
    if has "$SCENARIOS" fanout; then
        n=$((FANOUT_MEMBERS > n ? FANOUT_MEMBERS : n))
    fi
    if has "$SCENARIOS" idle; then
        local idle_users=$(((IDLE_CONNECTIONS + IDLE_CONNS_PER_USER - 1) / IDLE_CONNS_PER_USER))
        n=$((idle_users > n ? idle_users : n))
    fi
    echo "$n"
}

# One case on a fresh Herald process whose data directory is a copy of the
# round's snapshot (registered users only): no backlog, garbage or password
# hashing of an earlier case is left to disturb it.
herald_case() {
    local dir=$1 case=$2
    shift 2
    rm -rf "$dir/data"
    cp -a "$dir/snapshot" "$dir/data"
    herald_start "$dir"
    run_case herald "$case" --target herald --url "http://127.0.0.1:$HERALD_PORT" \
        --server-pid "$HERALD_PID" --users-file "$dir/users.json" "$@"
    herald_stop
}

# The stompjs case, likewise on a fresh Herald (the users file is
# herald-bench's: its cached tokens spare the password hashing).
herald_stompjs_case() {
    local dir=$1
    rm -rf "$dir/data"
    cp -a "$dir/snapshot" "$dir/data"
    herald_start "$dir"
    run_stompjs herald --target herald --url "http://127.0.0.1:$HERALD_PORT" \
        --server-pid "$HERALD_PID" --users-file "$dir/users.json"
    herald_stop
}

herald_turn() {
    local dir="$WORK/round$ROUND-herald" n_users
    n_users=$(herald_users_needed)
    rm -rf "$dir"
    mkdir -p "$dir"
    # A fresh data directory for the round: register the users once (not
    # measured), then keep a snapshot of it for every case.
    herald_start "$dir"
    log "registering $n_users users (not measured; log: $dir/setup.log)"
    "$BENCH" --target herald --url "http://127.0.0.1:$HERALD_PORT" --users-file "$dir/users.json" \
        idle --connections "$n_users" --conns-per-user 1 --settle 0 >/dev/null 2>"$dir/setup.log" ||
        die "registering the users failed (see $dir/setup.log)"
    herald_stop
    cp -a "$dir/data" "$dir/snapshot"
    if has "$SCENARIOS" fixed; then
        herald_case "$dir" fixed rate --clients "$CLIENTS" --rate "$FIXED_RATE" \
            --duration "$FIXED_DURATION"
    fi
    if has "$SCENARIOS" stompjs; then
        herald_stompjs_case "$dir"
    fi
    if has "$SCENARIOS" find-max; then
        herald_case "$dir" find-max find-max --clients "$CLIENTS" --start-rate "$START_RATE" \
            --step "$STEP" --step-duration "$STEP_DURATION" --p99-ms "$P99_MS" \
            --max-steps "$MAX_STEPS" --refine "$REFINE"
    fi
    if has "$SCENARIOS" fanout; then
        herald_case "$dir" fanout fanout --members "$FANOUT_MEMBERS" --rate "$FANOUT_RATE" \
            --duration "$FANOUT_DURATION"
    fi
    if has "$SCENARIOS" sync; then
        herald_case "$dir" sync sync --messages "$SYNC_MESSAGES"
    fi
    if has "$SCENARIOS" idle; then
        herald_case "$dir" idle idle --connections "$IDLE_CONNECTIONS" \
            --conns-per-user "$IDLE_CONNS_PER_USER" --settle "$IDLE_SETTLE"
    fi
    rm -rf "$dir/data" "$dir/snapshot"
}

# One case on a fresh, empty vhost (no queue or backlog of an earlier case).
rabbit_case() {
    local case=$1 pid
    shift
    pid=$(rabbit_pid) || die "RabbitMQ is not running"
    rabbit_reset_vhost
    run_case rabbitmq "$case" --target stomp --url "$RABBIT_URL" --login "$RABBIT_LOGIN" \
        --passcode "$RABBIT_PASSCODE" --vhost "$RABBIT_VHOST" --durable --server-pid "$pid" "$@"
}

# The stompjs case on a fresh, empty vhost.
rabbit_stompjs_case() {
    local pid
    pid=$(rabbit_pid) || die "RabbitMQ is not running"
    rabbit_reset_vhost
    run_stompjs rabbitmq --target stomp --url "$RABBIT_URL" --login "$RABBIT_LOGIN" \
        --passcode "$RABBIT_PASSCODE" --vhost "$RABBIT_VHOST" --durable --queue-prefix sj- \
        --server-pid "$pid"
}

rabbit_turn() {
    if has "$SCENARIOS" fixed; then
        rabbit_case fixed --queue-prefix fx- rate --clients "$CLIENTS" --rate "$FIXED_RATE" \
            --duration "$FIXED_DURATION"
    fi
    if has "$SCENARIOS" stompjs; then
        rabbit_stompjs_case
    fi
    if has "$SCENARIOS" find-max; then
        rabbit_case find-max --queue-prefix fm- find-max --clients "$CLIENTS" \
            --start-rate "$START_RATE" --step "$STEP" --step-duration "$STEP_DURATION" \
            --p99-ms "$P99_MS" --max-steps "$MAX_STEPS" --refine "$REFINE"
    fi
    if has "$SCENARIOS" fanout; then
        rabbit_case fanout --queue-prefix fo- fanout --members "$FANOUT_MEMBERS" \
            --rate "$FANOUT_RATE" --duration "$FANOUT_DURATION"
    fi
    if has "$SCENARIOS" idle; then
        rabbit_case idle --queue-prefix id- idle --connections "$IDLE_CONNECTIONS" \
            --settle "$IDLE_SETTLE"
    fi
    # Leave RabbitMQ idle and without the benchmark's queues.
    rabbit_reset_vhost delete
}

# One case on a fresh relay process. --durable: the same frames as
# RabbitMQ's (the relay ignores the headers).
relay_case() {
    local case=$1
    shift
    relay_start "$case"
    run_case relay "$case" --target stomp --url "ws://127.0.0.1:$RELAY_PORT/ws" --durable \
        --server-pid "$RELAY_PID" "$@"
    relay_stop
}

relay_turn() {
    local case skipped=()
    for case in $SCENARIOS; do
        [[ $case == fixed || $case == find-max ]] || skipped+=("$case")
    done
    if ((${#skipped[@]})); then
        log "round $ROUND relay: skipping ${skipped[*]} (the relay runs only fixed and find-max: no REST, no sync, stores nothing)"
    fi
    if has "$SCENARIOS" fixed; then
        relay_case fixed rate --clients "$CLIENTS" --rate "$FIXED_RATE" --duration "$FIXED_DURATION"
    fi
    if has "$SCENARIOS" find-max; then
        relay_case find-max find-max --clients "$CLIENTS" --start-rate "$START_RATE" \
            --step "$STEP" --step-duration "$STEP_DURATION" --p99-ms "$P99_MS" \
            --max-steps "$MAX_STEPS" --refine "$REFINE"
    fi
}

meta_record() {
    local rabbit_version="" erlang_version="" rabbit_nofile_limit="" pid git_rev
    if has "$SERVERS" rabbitmq; then
        rabbit_version=$(as_root rabbitmqctl -q version 2>/dev/null || true)
        erlang_version=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || true)
        if pid=$(rabbit_pid); then
            rabbit_nofile_limit=$(rabbit_nofile "$pid")
        fi
    fi
    local relay_cmd=""
    if has "$SERVERS" relay; then
        relay_cmd="$BENCH relay --listen 127.0.0.1:$RELAY_PORT --answer-sends  # a fresh process per case"
    fi
    local node_version="" stompjs_version=""
    if has "$SCENARIOS" stompjs; then
        node_version=$("$NODE" --version 2>/dev/null || true)
        stompjs_version=$(cd "$STOMPJS_DIR" && "$NODE" -p \
            "require('./node_modules/@stomp/stompjs/package.json').version" 2>/dev/null || true)
    fi
    if [[ -n $HERALD_GIT ]]; then
        git_rev=$HERALD_GIT
    else
        git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
        if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
            git_rev="$git_rev (with uncommitted changes)"
        fi
    fi
    python3 -c 'import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2]))))' \
        case meta \
        started_utc "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        invocation "$INVOCATION" \
        hostname "$(hostname)" \
        kernel "$(uname -srm)" \
        nproc "$(nproc)" \
        cpu_model "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
        mem_total_kib "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)" \
        loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)" \
        os "$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)" \
        herald_version "$("$HERALD_BIN" --version 2>/dev/null || true)" \
        herald_git "$git_rev" \
        rustc "$(rustc --version 2>/dev/null || true)" \
        node_version "$node_version" \
        stompjs_version "$stompjs_version" \
        rabbitmq_version "$rabbit_version" \
        erlang_version "$erlang_version" \
        rabbitmq_nofile "$rabbit_nofile_limit" \
        rabbitmq_url "$RABBIT_URL" \
        rabbitmq_vhost "$RABBIT_VHOST" \
        herald_cmd "env ${HERALD_BENCH_ENV[*]} $HERALD_BIN serve --listen 127.0.0.1:$HERALD_PORT --data-dir \$WORK/round<N>-herald/data  # a copy of the round's snapshot, per case" \
        relay_cmd "$relay_cmd" \
        herald_env_inherited "$(env | grep '^HERALD_' | sort | tr '\n' ' ' || true)" \
        nofile "$(ulimit -n)" \
        work_dir "$WORK" \
        herald_data_fs "$HERALD_FS" \
        rabbitmq_data_fs "$RABBIT_FS" \
        ROUNDS "$ROUNDS" SERVERS "$SERVERS" SCENARIOS "$SCENARIOS" CLIENTS "$CLIENTS" \
        START_RATE "$START_RATE" STEP "$STEP" STEP_DURATION "$STEP_DURATION" \
        P99_MS "$P99_MS" MAX_STEPS "$MAX_STEPS" REFINE "$REFINE" FIXED_RATE "$FIXED_RATE" \
        FIXED_DURATION "$FIXED_DURATION" FANOUT_MEMBERS "$FANOUT_MEMBERS" \
        FANOUT_RATE "$FANOUT_RATE" FANOUT_DURATION "$FANOUT_DURATION" \
        SYNC_MESSAGES "$SYNC_MESSAGES" IDLE_CONNECTIONS "$IDLE_CONNECTIONS" \
        IDLE_CONNS_PER_USER "$IDLE_CONNS_PER_USER" IDLE_SETTLE "$IDLE_SETTLE" \
        GEN_THREADS "$GEN_THREADS" QUIET_PCT "$QUIET_PCT" QUIET_TIMEOUT "$QUIET_TIMEOUT"
}

cleanup() {
    local rc=$?
    herald_stop
    relay_stop
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if ((KEEP_WORK)) || ((rc != 0)); then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
}

# ---------------------------------------------------------------- Main
main() {
    if (($# > 0)); then
        die "no arguments: every knob is an environment variable (see the top of $0)"
    fi
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
    command -v python3 >/dev/null || die "python3 is needed for the report"
    command -v curl >/dev/null || die "curl is needed"

    if ((SKIP_BUILD)); then
        log "SKIP_BUILD=1: using the existing $HERALD_BIN and $BENCH"
    else
        log "cargo build --release --bins"
        cargo build --release --bins
    fi
    [[ -x $HERALD_BIN && -x $BENCH ]] || die "missing $HERALD_BIN or $BENCH"
    HERALD_BIN_ABS=$HERALD_BIN
    [[ $HERALD_BIN_ABS == /* ]] || HERALD_BIN_ABS=$ROOT/$HERALD_BIN

    if has "$SCENARIOS" stompjs; then
        stompjs_setup
    fi
    if has "$SERVERS" rabbitmq; then
        rabbit_setup
    fi
    # Herald, herald-bench (and a RabbitMQ started above) need a descriptor
    # per connection.
    raise_nofile $((IDLE_CONNECTIONS * 2 + 4096))

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-vs-rabbitmq.XXXXXX")
    trap cleanup EXIT
    mkdir -p "$OUT_DIR"
    local stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    RESULTS="$OUT_DIR/results-$stamp.jsonl"
    HERALD_FS=$(stat -f -c %T "$WORK")
    RABBIT_FS=$(stat -f -c %T /var/lib/rabbitmq 2>/dev/null || echo unknown)
    if has "$SERVERS" rabbitmq && [[ $HERALD_FS != "$RABBIT_FS" ]]; then
        log "warning: Herald's data ($WORK: $HERALD_FS) and RabbitMQ's (/var/lib/rabbitmq: $RABBIT_FS) are on different file system types; fsync costs differ (set TMPDIR)"
    fi
    meta_record >"$RESULTS"
    log "results: $RESULTS"

    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        log "===== round $ROUND of $ROUNDS"
        if has "$SERVERS" herald; then
            herald_turn
        fi
        if has "$SERVERS" rabbitmq; then
            rabbit_turn
        fi
        if has "$SERVERS" relay; then
            relay_turn
        fi
    done
    printf '{"case":"end","finished_utc":"%s"}\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$RESULTS"

    local report_args=("$RESULTS" --out "$REPORT" --svg "$CHART")
    if [[ -n $BEFORE ]]; then
        report_args+=(--before "$BEFORE")
    fi
    python3 scripts/bench_report.py "${report_args[@]}"
    log "done: $RESULTS, $REPORT, $CHART"
}

main "$@"
