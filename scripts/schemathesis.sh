#!/usr/bin/env bash
# Schemathesis against a real server: the OpenAPI spec must tell the truth.
#
# Starts the debug binary (it builds nothing: `cargo test` has built it) on
# the embedded default with a temporary data directory and a free port,
# creates users, a group and messages so that real ids exist, and runs a
# pinned Schemathesis on `/openapi.yaml` with every check, a valid token
# and those ids. Any failure fails the script.
#
#   HERALD_SCHEMATHESIS_EXAMPLES  test cases per operation and phase (default 50)
#   HERALD_SCHEMATHESIS_SEED      the generation seed (default fixed, so CI is repeatable)
#   HERALD_SCHEMATHESIS_VENV      where Schemathesis is installed (cached between runs)
#   HERALD_BIN                    the server binary (default the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

# Pinned: a newer Schemathesis may add checks, which is a change to review.
ST_VERSION=4.32.5
venv="${HERALD_SCHEMATHESIS_VENV:-/var/cache/herald-ci/venv-schemathesis}"
bin="${HERALD_BIN:-${CARGO_TARGET_DIR:-target}/debug/herald}"
examples="${HERALD_SCHEMATHESIS_EXAMPLES:-50}"
seed="${HERALD_SCHEMATHESIS_SEED:-20240101}"
python="$(command -v python3.11 || command -v python3)"

[ -x "$bin" ] || { echo "no server binary at $bin (run cargo test or cargo build first)" >&2; exit 1; }

installed() {
  "$venv/bin/st" --version 2>/dev/null | grep -qx "st, version $ST_VERSION"
}

install_schemathesis() {
  installed && return
  mkdir -p "$(dirname "$venv")"
  # One installer at a time: CI runs may share the cache.
  exec 9>"$venv.lock"
  flock 9
  if ! installed; then
    echo "== installing schemathesis $ST_VERSION into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
  fi
  flock -u 9
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

install_schemathesis

port="$(free_port)"
base="http://127.0.0.1:$port"
# Generous limits: Schemathesis sends thousands of requests, registrations
# and failed logins from one address (0 = no limit).
HERALD_LISTEN="127.0.0.1:$port" \
HERALD_DATA_DIR="$work/data" \
HERALD_HTTP_RATE_PER_SEC=0 \
HERALD_SEND_RATE_PER_SEC=100000 \
HERALD_SEND_BURST=100000 \
HERALD_REGISTRATIONS_PER_HOUR=0 \
HERALD_LOGIN_MAX_FAILURES=0 \
  "$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 300); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "$base/readyz" >/dev/null || { echo "the server did not start:" >&2; tail -50 "$work/server.log" >&2; exit 1; }

# Real data, and the Schemathesis configuration that hands its ids out.
"$python" - "$base" "$work/schemathesis.toml" "$work/ids.json" <<'EOF'
import json, sys, urllib.request, uuid

base, config_path, ids_path = sys.argv[1], sys.argv[2], sys.argv[3]
api = base + "/api/v1"

def call(method, path, body=None, token=None):
    req = urllib.request.Request(api + path, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(req, data) as resp:
        text = resp.read()
        return json.loads(text) if text else None

suffix = uuid.uuid4().hex[:8]
password = "schemathesis-pw"
users = {}
for name in ("alice", "bob", "carol"):
    username = f"st_{name}_{suffix}"
    users[name] = call("POST", "/auth/register",
                       {"username": username, "password": password, "nickname": name.title()})
    users[name]["username"] = username
token = {n: call("POST", "/auth/login", {"username": u["username"], "password": password})["token"]
         for n, u in users.items()}
alice, bob, carol = (users[n]["userId"] for n in ("alice", "bob", "carol"))
group = call("POST", "/groups", {"name": "schemathesis", "memberIds": [bob, carol]}, token["alice"])
sent = [
    call("POST", "/messages", {"toUserId": bob, "messageType": 1, "content": "hello bob",
                               "clientMessageId": f"st-{suffix}-1"}, token["alice"]),
    call("POST", "/messages", {"groupId": group["groupId"], "messageType": 1, "content": "hello group",
                               "clientMessageId": f"st-{suffix}-2"}, token["alice"]),
    call("POST", "/messages", {"toUserId": alice, "messageType": 1, "content": "hello alice",
                               "clientMessageId": f"st-{suffix}-3"}, token["bob"]),
]

def toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"

dictionaries = {
    "user_ids": [alice, bob, carol],
    "user_id_lists": [f"{alice},{bob}", carol, f"{alice}, {bob}, {carol}"],
    "group_ids": [group["groupId"]],
    "session_ids": sorted({m["sessionId"] for m in sent}),
    "message_ids": [m["messageId"] for m in sent],
}
# A send's `toUserId` and `groupId` get real ids from the hooks.
with open(ids_path, "w") as f:
    json.dump({"toUserId": [bob, carol], "groupId": [group["groupId"]]}, f)
# Where each dictionary's ids go: often, not always (random ids are tried too).
bindings = {
    "path.userId": "user_ids",
    "query.userIds": "user_id_lists",
    "body.memberIds[*]": "user_ids",
    "body.userIds[*]": "user_ids",
    "path.groupId": "group_ids",
    "path.sessionId": "session_ids",
    "query.sessionId": "session_ids",
    "body.sessionId": "session_ids",
    "path.messageId": "message_ids",
    "query.lastMessageId": "message_ids",
    "body.messageIds[*]": "message_ids",
}

with open(config_path, "w") as f:
    f.write(f"""
[generation]
database = "none"

[checks.negative_data_rejection]
# Schemathesis's default list, and 413: the contract's answer to content
# over `maxContentBytes` (the schema's `maxLength` of `content`).
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# A fresh token whenever one stops working: the run calls `logout` and
# `logout-all`, which revoke the token they are sent with.
[auth.dynamic.openapi.BearerAuth]
path = "/auth/login"
payload = {{ username = "{users['alice']['username']}", password = "{password}" }}
extract_selector = "/token"
retry_on = [401]
""")
    for name, values in dictionaries.items():
        f.write(f"\n[dictionaries.{name}]\nvalues = {toml_list(values)}\n")
    f.write("\n[parameters]\n")
    for key, name in bindings.items():
        f.write(f'"{key}" = {{ dictionary = "{name}", probability = 0.6 }}\n')
EOF

echo "== schemathesis $ST_VERSION on $base/openapi.yaml ($examples examples per operation, seed $seed)"
# One worker: with several threads, CPython 3.11.7's `ast.parse` (Hypothesis
# uses it to describe filters) fails at random with "SystemError: AST
# constructor recursion depth mismatch" (a CPython bug fixed in later 3.11s).
status=0
(
  cd "$work"
  HERALD_SCHEMATHESIS_IDS="$work/ids.json" SCHEMATHESIS_HOOKS="$repo/scripts/schemathesis_hooks.py" \
  "$venv/bin/st" --config-file "$work/schemathesis.toml" run "$base/openapi.yaml" \
    --checks all \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --no-color
) || status=$?
if [ "$status" -ne 0 ]; then
  echo "== schemathesis failed; the server's log ends with:" >&2
  tail -30 "$work/server.log" >&2
fi
exit "$status"
