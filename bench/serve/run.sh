#!/usr/bin/env bash
# Serving benchmark: anybit serve vs llama.cpp's llama-server on the same model
# (tiny-llama; the GGUF is made by `anybit convert`), N concurrent streaming
# clients, several runs alternating the two servers. Prints JSON lines and a
# table of medians (bench/serve/summarize.mjs).
#
#   bench/serve/run.sh [ANYBIT_BIN] [LLAMA_SERVER_BIN]
# Environment: CLIENTS="1 4 16" RUNS=5 REQS=4 PROMPT=128 GEN=128 THREADS=2 CTX=512 OUT=results.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
ANYBIT=$(realpath "${1:-build/anybit}")
LLAMA=${2:-/tmp/llama.cpp/build/bin/llama-server}
GGUF=${GGUF:-/tmp/tiny.gguf}
CLIENTS=${CLIENTS:-"1 4 16"}
RUNS=${RUNS:-5}
REQS=${REQS:-4}
PROMPT=${PROMPT:-128}
GEN=${GEN:-128}
THREADS=${THREADS:-2}
CTX=${CTX:-512}
OUT=${OUT:-/tmp/anybit-serve-bench.jsonl}
PORT_A=${PORT_A:-18480}
PORT_L=${PORT_L:-18481}

[ -f "$GGUF" ] || "$ANYBIT" convert -m models/tiny-llama -o "$GGUF"
[ -x "$LLAMA" ] || { echo "llama-server not found at $LLAMA" >&2; exit 1; }
: > "$OUT"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() {  # url
  for _ in $(seq 600); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server at $1 did not become ready" >&2
  return 1
}

load() {  # url label clients
  node bench/serve/load.mjs --url "$1" --clients 1 --requests 1 --prompt-tokens "$PROMPT" --max-tokens 8 >/dev/null
  # A failed run (e.g. a server crash) is reported and left out of the medians.
  node bench/serve/load.mjs --url "$1" --label "$2" --clients "$3" --requests "$REQS" \
    --prompt-tokens "$PROMPT" --max-tokens "$GEN" 2>/tmp/anybit-serve-bench-load.err | tee -a "$OUT" ||
    echo "{\"failed\": \"$2\", \"clients\": $3, \"error\": $(tail -c 300 /tmp/anybit-serve-bench-load.err | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.stringify(s)))')}" | tee -a "$OUT"
}

for c in $CLIENTS; do
  for run in $(seq "$RUNS"); do
    "$ANYBIT" serve -m models/tiny-llama -t "$THREADS" -c "$CTX" --max-batch "$c" --port "$PORT_A" \
      >/dev/null 2>/tmp/anybit-serve-bench.log &
    pid=$!
    wait_ready "http://127.0.0.1:$PORT_A"
    load "http://127.0.0.1:$PORT_A" anybit "$c"
    kill -TERM "$pid"; wait "$pid" || true; pid=""

    "$LLAMA" -m "$GGUF" -t "$THREADS" -c $((c * CTX)) -np "$c" -cb --port "$PORT_L" \
      >/dev/null 2>/tmp/llama-server-bench.log &
    pid=$!
    wait_ready "http://127.0.0.1:$PORT_L"
    load "http://127.0.0.1:$PORT_L" llama-server "$c"
    kill -TERM "$pid"; wait "$pid" || true; pid=""
  done
done
node bench/serve/summarize.mjs "$OUT"
