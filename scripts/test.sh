#!/usr/bin/env bash
# The project's test command: Rust unit and integration tests (they start
# the real `herald` binary), then stomp.js driving a real server, then a
# short run of the stomp.js load generator (bench/stompjs).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

echo "== cargo test"
cargo test --locked --all-targets

echo "== stomp.js against a real server"
(cd tests/js && npm ci --silent --no-audit --no-fund)
HERALD_BIN="$target/debug/herald" node --test tests/js/

echo "== stomp.js load generator (bench/stompjs) smoke test"
(cd bench/stompjs && npm ci --silent --no-audit --no-fund)
HERALD_BIN="$target/debug/herald" node --test bench/stompjs/
