#!/usr/bin/env bash
# The project's test command:
# 1. Rust unit and integration tests (they start the real `herald` binary)
#    on the embedded backends, the fuzz targets for a minute each
#    (tests/fuzz_*.rs), then Schemathesis on the served OpenAPI spec
#    (`scripts/schemathesis.sh`, a pinned version installed once);
# 2. the cluster backends against real servers (`scripts/services.sh up`:
#    Redis, a MongoDB-wire server and RocketMQ; the first run on a machine
#    installs them, the RocketMQ build takes ~15 min): the adapters' own
#    tests, the core behaviour tests again on two cluster nodes, and
#    several nodes with kills and restarts;
# 3. stomp.js driving a real server, and a short run of the stomp.js load
#    generator (bench/stompjs).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

echo "== cargo test (embedded)"
cargo test --locked --all-targets

# The fuzz targets ran for a couple of seconds above; here for their CI
# budget (HERALD_FUZZ_SECS per target, shared by its properties), one test
# at a time so each gets the machine. A failure prints the minimal input
# and where it was written, to copy into tests/fuzz/corpus/.
echo "== fuzz targets (60 s each)"
HERALD_FUZZ_SECS=60 cargo test --locked --test fuzz_stomp --test fuzz_json -- \
  --test-threads=1 --nocapture

echo "== schemathesis: the OpenAPI spec against the server it describes"
bash scripts/schemathesis.sh

echo "== cluster services"
bash scripts/services.sh up
(
  eval "$(bash scripts/services.sh env)"
  echo "== cluster adapters against the real services"
  cargo test --locked --test redis_backend --test mongo_store -- --ignored
  echo "== core behaviour tests on a two-node cluster"
  HERALD_TEST_BACKEND=cluster cargo test --locked --no-fail-fast \
    --test rest_api --test stomp_protocol --test delivery
  echo "== several nodes: crossing, kills and restarts"
  cargo test --locked --test cluster -- --ignored --test-threads=1
)

echo "== stomp.js against a real server"
(cd tests/js && npm ci --silent --no-audit --no-fund)
HERALD_BIN="$target/debug/herald" node --test tests/js/

echo "== stomp.js load generator (bench/stompjs) smoke test"
(cd bench/stompjs && npm ci --silent --no-audit --no-fund)
HERALD_BIN="$target/debug/herald" node --test bench/stompjs/
