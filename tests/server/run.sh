#!/usr/bin/env bash
# Runs the server end-to-end tests: tests/server/run.sh ANYBIT_BINARY MODEL_DIR [test files...]
# Installs the pinned npm dependencies (package-lock.json) on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
model="$(realpath "$2")"
shift 2
cd "$here"
if [ ! -f node_modules/openai/package.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(api.test.mjs concurrency.test.mjs faults.test.mjs)
# One file at a time: each starts its own server and the machine may have 2 cores.
ANYBIT_BIN="$bin" ANYBIT_MODEL="$model" exec node --test --test-concurrency=1 "${files[@]}"
