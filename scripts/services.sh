#!/usr/bin/env bash
# Herald cluster mode's real backing servers, loopback only, on non-default ports:
#   Redis (presence), SecantusDB (MongoDB wire protocol; store), RocketMQ name server + broker (topic).
#
#   scripts/services.sh up|down|status|env|pids
#   scripts/services.sh restart redis|mongodb|namesrv|broker|rocketmq
#   eval "$(scripts/services.sh env)"
#
# Crash tests: kill -9 "$(cat "$DIR/run/broker.pid")" (pid files: $DIR/run/<name>.pid, listed by
# `pids`), then `up` or `restart broker` brings it back on the same data.
#
# State (data, logs, pid files, generated configs) lives in $HERALD_SERVICES_DIR (default
# /tmp/herald-services): `down` + `up` keeps the data; `rm -rf` it for a clean slate.
# Installs are cached in $HERALD_SERVICES_CACHE (default /var/cache/herald-services), never in the repo.
# Ports can be overridden with HERALD_SERVICES_{REDIS,MONGODB,NAMESRV,BROKER}_PORT. All defaults are
# below the kernel's ephemeral range (32768+) and clear of the stock 6379/27017/9876/10909-10912.
set -euo pipefail

CACHE=${HERALD_SERVICES_CACHE:-/var/cache/herald-services}
DIR=${HERALD_SERVICES_DIR:-/tmp/herald-services}
REDIS_PORT=${HERALD_SERVICES_REDIS_PORT:-16379}
MONGODB_PORT=${HERALD_SERVICES_MONGODB_PORT:-27018}
MONGODB_DB=${HERALD_SERVICES_MONGODB_DB:-herald}   # database name in HERALD_MONGODB_URI
NAMESRV_PORT=${HERALD_SERVICES_NAMESRV_PORT:-19876}
# The broker listens on BROKER_PORT, BROKER_PORT-2 (the "fast" remoting port) and the HA port
# BROKER_PORT+1 (Java derives it this way; the Rust broker defaults it to a fixed 10912, so we set it).
BROKER_PORT=${HERALD_SERVICES_BROKER_PORT:-20911}
SECANTUS_VERSION=0.7.0b3
ROCKETMQ_VERSION=1.0.0
PY=$CACHE/secantus/bin/python   # the SecantusDB venv; pymongo comes with it, used by the probes
RMQ_BIN=$CACHE/rocketmq/bin
SERVICES=(redis mongodb namesrv broker)   # start order; stopped in reverse

log() { echo "services: $*" >&2; }
die() { log "$*"; exit 1; }
pidfile() { echo "$DIR/run/$1.pid"; }
pid_of() { cat "$(pidfile "$1")" 2>/dev/null; }
declare -A EXE=([redis]=redis-server [mongodb]=secantusd-py [namesrv]=rocketmq-namesrv-rust
  [broker]=rocketmq-broker-rust)
declare -A PORTS=([redis]=$REDIS_PORT [mongodb]=$MONGODB_PORT [namesrv]=$NAMESRV_PORT
  [broker]="$BROKER_PORT $((BROKER_PORT - 2)) $((BROKER_PORT + 1))")
# Running = the pid file's process exists and is still our program (guards against pid reuse).
alive() { local p; p=$(pid_of "$1") && grep -qa -- "${EXE[$1]}" "/proc/$p/cmdline" 2>/dev/null; }

# ---------------------------------------------------------------- installs (idempotent)
install_redis() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
  # The Debian package may also start the distribution's own instance (6379, /var/lib/redis).
  # It cannot interfere with ours (other port, dir and config) and may belong to someone else,
  # so we leave it alone.
  log "installing redis-server with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

install_secantus() {
  compgen -G "$CACHE/secantus/lib/python3*/site-packages/[Ss]ecantus[Dd][Bb]-$SECANTUS_VERSION.dist-info" >/dev/null && return
  log "installing SecantusDB $SECANTUS_VERSION into $CACHE/secantus"
  mkdir -p "$CACHE"
  if ! python3 -m venv "$CACHE/secantus"; then   # Debian splits venv/ensurepip out of python3
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$CACHE/secantus"
  fi
  "$CACHE/secantus/bin/pip" install -q "SecantusDB==$SECANTUS_VERSION" pymongo
}

install_rocketmq() {
  [[ -x $RMQ_BIN/rocketmq-namesrv-rust && -x $RMQ_BIN/rocketmq-broker-rust ]] && return
  export PATH=$PATH:$HOME/.cargo/bin
  if ! command -v cargo >/dev/null; then
    log "installing a Rust toolchain with rustup (needed to build RocketMQ)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  fi
  # A concurrent install into the same root just waits on cargo's lock, it does not build twice.
  log "building RocketMQ $ROCKETMQ_VERSION (Rust) into $CACHE/rocketmq: ~15 minutes on 2 cores"
  cargo install --locked --debug --root "$CACHE/rocketmq" \
    "rocketmq-namesrv@$ROCKETMQ_VERSION" "rocketmq-broker@$ROCKETMQ_VERSION"
}

# ---------------------------------------------------------------- probes: does it answer?
# Bounded: a wedged server must not hold the caller past start()'s deadline.
ready_redis() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

ready_mongodb() {
  "$PY" - "$MONGODB_PORT" 2>/dev/null <<'EOF'
import sys, pymongo
c = pymongo.MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True, serverSelectionTimeoutMS=1500)
c.admin.command("ping")
EOF
}

# RocketMQ remoting: [len][hdrlen][JSON header][body]. Name server: GET_BROKER_CLUSTER_INFO (106).
# Broker: a TCP connect proves nothing, so it counts as ready when (1) the name server lists its
# address, (2) it answers GET_BROKER_RUNTIME_INFO (28) itself and (3) the name server has the
# route of TBW102, the template topic that auto-creation of Herald's topics relies on.
ready_rocketmq() {
  "$PY" - "$@" 2>/dev/null <<'EOF'
import json, socket, struct, sys
def rpc(addr, code, ext=None):
    hdr = {"code": code, "flag": 0, "language": "JAVA", "opaque": 1, "version": 317,
           "serializeTypeCurrentRPC": "JSON"}
    if ext: hdr["extFields"] = ext
    h = json.dumps(hdr).encode()
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(struct.pack(">ii", 4 + len(h), len(h)) + h)
        f = s.makefile("rb")
        d = f.read(struct.unpack(">i", f.read(4))[0])
    n = struct.unpack(">i", d[:4])[0] & 0xFFFFFF
    return json.loads(d[4:4 + n])["code"], d[4 + n:]
ns, broker = sys.argv[1], sys.argv[2:]
code, body = rpc(ns, 106)
ok = code == 0
if ok and broker:
    ok = (broker[0].encode() in body and rpc(broker[0], 28)[0] == 0
          and rpc(ns, 105, {"topic": "TBW102"})[0] == 0)
sys.exit(0 if ok else 1)
EOF
}
ready_namesrv() { ready_rocketmq "127.0.0.1:$NAMESRV_PORT"; }
ready_broker() { ready_rocketmq "127.0.0.1:$NAMESRV_PORT" "127.0.0.1:$BROKER_PORT"; }

# ---------------------------------------------------------------- start / stop
spawn() { # name command...: detached (own session, so a Ctrl-C in the caller's terminal spares it)
  local name=$1; shift
  nohup setsid "$@" >>"$DIR/log/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

start_redis() {
  # appendonly + appendfsync everysec: every write is in the AOF (the OS page cache) before
  # Redis replies, so a Redis crash, kill -9 or restart during traffic loses nothing; only a
  # machine crash could lose the last second. RDB snapshots (forks) are off: the AOF suffices.
  mkdir -p "$DIR/redis"
  spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR/redis" \
    --save "" --appendonly yes --appendfsync everysec --daemonize no --logfile ""
}

start_mongodb() {
  # No --sync-on-commit: WiredTiger writes its log at each commit, so acknowledged writes survive
  # kill -9 of the server (verified); fsync per commit only adds power-loss safety and costs
  # ~5x per single-document write here. Set HERALD_SERVICES_MONGODB_SYNC=1 to enable it anyway.
  local sync=()
  [[ ${HERALD_SERVICES_MONGODB_SYNC:-0} == 1 ]] && sync=(--sync-on-commit)
  mkdir -p "$DIR/mongodb"
  spawn mongodb "$CACHE/secantus/bin/secantusd-py" --host 127.0.0.1 --port "$MONGODB_PORT" \
    --storage-path "$DIR/mongodb" "${sync[@]}"
}

start_namesrv() {
  mkdir -p "$DIR/rocketmq/home" "$DIR/rocketmq/namesrv"
  # TOML (the `config` crate keys on the extension); without a home and the two paths it
  # writes into ~/rocketmq-namesrv. ROCKETMQ_HOME must be set or it exits 70.
  cat >"$DIR/rocketmq/namesrv.toml" <<EOF
rocketmqHome = "$DIR/rocketmq/home"
listenPort = $NAMESRV_PORT
bindAddress = "127.0.0.1"
kvConfigPath = "$DIR/rocketmq/namesrv/kvConfig.json"
configStorePath = "$DIR/rocketmq/namesrv/namesrv.properties"
EOF
  ROCKETMQ_HOME=$DIR/rocketmq/home spawn namesrv "$RMQ_BIN/rocketmq-namesrv-rust" \
    -c "$DIR/rocketmq/namesrv.toml"
}

start_broker() {
  mkdir -p "$DIR/rocketmq/store"
  # TOML rather than Java properties: only the TOML form can set the listener's bindAddress.
  # SYNC_FLUSH: a send is acked only after the commit log is fsynced (group commit), so acked
  #   messages survive a broker kill -9 and even a machine crash. (ASYNC_FLUSH also survived
  #   kill -9 in our tests, since the mmapped commit log stays in the page cache, and is ~1.5x
  #   faster per sequential send; HERALD_SERVICES_BROKER_FLUSH=ASYNC_FLUSH selects it.)
  # registerNameServerPeriod: re-registration period (default 30 s), i.e. how long a restarted
  #   name server lacks the broker's routes.
  # waitTimeMillsInSendQueue: sends queued longer than this get SYSTEM_BUSY; the default 200 ms
  #   trips on this 2-core machine (debug build) with only 8 concurrent senders.
  # File sizes: the defaults preallocate 1 GiB of commit log plus a 400 MiB index file.
  cat >"$DIR/rocketmq/broker.toml" <<EOF
[broker]
namesrvAddr = "127.0.0.1:$NAMESRV_PORT"
brokerIp1 = "127.0.0.1"
listenPort = $BROKER_PORT
storePathRootDir = "$DIR/rocketmq/store"
autoCreateTopicEnable = true
waitTimeMillsInSendQueue = 1000
registerNameServerPeriod = 10000

[broker.brokerServerConfig]
bindAddress = "127.0.0.1"

[broker.brokerIdentity]
brokerName = "herald-broker"
brokerClusterName = "HeraldCluster"
brokerId = 0

[store]
storePathRootDir = "$DIR/rocketmq/store"
flushDiskType = "${HERALD_SERVICES_BROKER_FLUSH:-SYNC_FLUSH}"
mappedFileSizeCommitLog = 134217728
maxHashSlotNum = 500000
maxIndexNum = 2000000
haListenAddress = "127.0.0.1"
haListenPort = $((BROKER_PORT + 1))
EOF
  ROCKETMQ_HOME=$DIR/rocketmq/home spawn broker "$RMQ_BIN/rocketmq-broker-rust" \
    -c "$DIR/rocketmq/broker.toml"
}

start() { # name [timeout]: start unless it already answers, then wait (bounded) until it does
  local name=$1 timeout=${2:-60} attempt
  mkdir -p "$DIR/run" "$DIR/log"
  if alive "$name" && "ready_$name"; then log "$name already running (pid $(pid_of "$name"))"; return; fi
  # A process that is ours but does not answer (seen once in CI: alive, silent, its log empty)
  # is killed and started again rather than waited on for the whole timeout.
  for attempt in 1 2 3; do
    if start_once "$name" $((timeout / 3)); then return; fi
    if ! alive "$name"; then break; fi
    log "$name (pid $(pid_of "$name")) does not answer: $(ps -o stat=,etime=,args= -p "$(pid_of "$name")" 2>/dev/null); killing it (attempt $attempt)"
    kill -KILL "$(pid_of "$name")" 2>/dev/null || true
    sleep 0.5
  done
  if alive "$name"; then log "$name did not answer within ${timeout}s"; else log "$name exited"; fi
  log "tail of $DIR/log/$name.log:"
  tail -n 30 "$DIR/log/$name.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
  exit 1
}

start_once() { # name timeout: spawn unless alive; wait until it answers; fails if it does not
  local name=$1 port t0=${EPOCHREALTIME//[.,]/} deadline=$((SECONDS + $2))
  if ! alive "$name"; then
    # Someone else on our port would answer our probes while our server dies on bind().
    for port in ${PORTS[$name]}; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "$name: port $port is already in use by another process (see HERALD_SERVICES_*_PORT)"
      fi
    done
    "start_$name"
  fi
  while ((SECONDS < deadline)); do
    alive "$name" || return 1   # it exited: no point waiting
    if "ready_$name"; then
      log "$name up (pid $(pid_of "$name"), $(((${EPOCHREALTIME//[.,]/} - t0) / 1000)) ms)"; return 0
    fi
    sleep 0.25
  done
  return 1
}

stop() { # name: SIGTERM, wait up to 30 s, then SIGKILL
  local name=$1 p i
  p=$(pid_of "$name") || return 0
  if alive "$name"; then
    kill -TERM "$p"
    for ((i = 0; i < 120; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$p" 2>/dev/null; then
      log "$name (pid $p) ignored SIGTERM for 30 s; SIGKILL"
      kill -KILL "$p"
      while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
    fi
    log "$name stopped"
  fi
  rm -f "$(pidfile "$name")"
}

# ---------------------------------------------------------------- commands
cmd=${1:-}
case $cmd in
  up)
    install_redis; install_secantus; install_rocketmq
    for s in "${SERVICES[@]}"; do start "$s" 120; done ;;
  down)
    for ((k = ${#SERVICES[@]} - 1; k >= 0; k--)); do stop "${SERVICES[k]}"; done ;;
  restart)
    case ${2:-} in
      redis | mongodb | broker) stop "$2"; start "$2" 120 ;;
      # The broker re-registers every registerNameServerPeriod: wait for that too.
      namesrv) stop namesrv; start namesrv 120; if alive broker; then start broker 120; fi ;;
      rocketmq) stop broker; stop namesrv; start namesrv 120; start broker 120 ;;
      *) die "usage: $0 restart redis|mongodb|namesrv|broker|rocketmq" ;;
    esac ;;
  status)
    rc=0
    for s in "${SERVICES[@]}"; do
      if alive "$s" && "ready_$s"; then echo "$s: up (pid $(pid_of "$s"))"; else echo "$s: DOWN"; rc=1; fi
    done
    exit "$rc" ;;
  env)
    cat <<EOF
export HERALD_STORE=mongodb
export HERALD_MONGODB_URI=mongodb://127.0.0.1:$MONGODB_PORT/$MONGODB_DB
export HERALD_TOPIC=rocketmq
export HERALD_ROCKETMQ_NAMESRV=127.0.0.1:$NAMESRV_PORT
export HERALD_ROCKETMQ_BROKER_CLUSTER=HeraldCluster
export HERALD_PRESENCE=redis
export HERALD_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
EOF
    ;;
  pids)
    for s in "${SERVICES[@]}"; do echo "$s $(pidfile "$s") $(pid_of "$s" || echo -)"; done ;;
  *) die "usage: $0 up|down|status|env|pids|restart <redis|mongodb|namesrv|broker|rocketmq>" ;;
esac
