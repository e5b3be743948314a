#!/usr/bin/env bash
# Soak test (issue 21 item 6; not in CI): an hour of mixed load on the
# release binary, started by scripts/soak.py on the embedded default with its
# own temp data directory and port. Prints a line per minute (RSS, open fds,
# CPU, load, send-to-push latency) and a final summary to paste into
# docs/BENCHMARKS.md; exits 1 if RSS or open fds keep growing after the
# warm-up (the rule is growth_verdict() in scripts/soak.py; check it with
# `python3 scripts/soak.py --self-test`), if the server dies or panics.
#
#   cargo build --release && scripts/soak.sh
#   DURATION=240 WARMUP=60 HERALD_BIN=target/debug/herald scripts/soak.sh
#
# Environment:
#   DURATION    seconds of load (default 3600)
#   WARMUP      seconds of load not judged for growth (default 600)
#   HERALD_BIN  the server (default ${CARGO_TARGET_DIR:-target}/release/herald)
#   SOAK_SAVE=1 write the per-minute samples to docs/bench/soak-<UTC time>.jsonl
#               (default: soak.jsonl in the run's temp directory)
#   SOAK_JSONL  or write them to this file
#   SOAK_KEEP=1 keep the server's data directory (default: removed at the end)
#   SOAK_SERVER_ENV  extra server settings, e.g. "HERALD_DURABILITY=normal"
# Options after the script's name go to soak.py (rates, sizes: see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${HERALD_BIN:-${CARGO_TARGET_DIR:-target}/release/herald}"
if [[ ! -x $BIN ]]; then
  echo "soak: no server binary at $BIN (cargo build --release, or set HERALD_BIN)" >&2
  exit 2
fi
args=(--bin "$BIN" --duration "${DURATION:-3600}" --warmup "${WARMUP:-600}")
if [[ ${SOAK_SAVE:-0} == 1 ]]; then
  args+=(--jsonl "docs/bench/soak-$(date -u +%Y%m%dT%H%M%SZ).jsonl")
fi
exec python3 scripts/soak.py "${args[@]}" "$@"
