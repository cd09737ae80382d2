#!/usr/bin/env bash
# anybit CUDA against llama.cpp CUDA on the same GPU, same shapes, same random weights, in
# one session of the GPU machine (docs/PERFORMANCE.md). Two phases, so that each fits one
# device call (the machine keeps build outputs between back-to-back calls):
#
#   bench/cuda/vs-llamacpp.sh prepare LLAMA_SRC.tar.xz   # builds both, writes the GGUFs
#                                                         # (SKIP_1B=1 / SKIP_8B=1: one shape only)
#   bench/cuda/vs-llamacpp.sh run                         # the benchmarks, a table last
#   bench/cuda/vs-llamacpp.sh serve                       # serving: anybit serve, llama-server,
#                                                         # HF transformers (bench/serve/*.py)
#
# anybit is built in build-gpu (dependencies from .carry-gpu/usr or a .carry-gpu/pack/usr.tar.xz);
# llama.cpp (a source tarball, e.g. of commit c392e50 without .git) in .dev/llama.cpp with
# -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90. The random Llama-3-8B shape (vocab 8192)
# is written by `anybit convert --shape llama-8b --dtype f16` and quantized with
# llama-quantize; anybit runs the same shape from its own random generator (same seed,
# same distribution: the bytes differ only for QBITS, which has no GGUF equivalent).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/vs-llamacpp}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
C=$ROOT/.carry-gpu/usr
if [[ ! -d $C && -f $ROOT/.carry-gpu/pack/usr.tar.xz ]]; then tar -xJf "$ROOT/.carry-gpu/pack/usr.tar.xz" -C "$ROOT/.carry-gpu"; fi
export LD_LIBRARY_PATH=$C/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PKG_CONFIG_PATH=$C/lib/x86_64-linux-gnu/pkgconfig
# Everything lives under build-gpu, which the GPU machine keeps between back-to-back calls.
B=$ROOT/build-gpu
L=$B/llama.cpp
G=$B/gguf
mkdir -p "$B"

case "${1:-}" in
prepare)
  SRC=${2:?llama.cpp source tarball}
  t0=$(date +%s)
  [[ -d $L/ggml ]] || { mkdir -p "$L" && tar -xJf "$SRC" -C "$L"; }
  (cmake -S "$L" -B "$L/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
     -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON >"$OUT/llama-configure.log" 2>&1 &&
   cmake --build "$L/build" -j 12 --target llama-bench llama-quantize llama-server >"$OUT/llama-build.log" 2>&1
   echo "llama.cpp build rc=$? $(( $(date +%s) - t0 )) s" >"$OUT/llama-build.status") &
  lpid=$!
  source "$ROOT/scripts/gpu-shared.sh"
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$C" -DANYBIT_SHARED_DIR="$SHARED" >"$OUT/configure.log" 2>&1 &&
    cmake --build "$B" -j 6 --target ${ANYBIT_TARGETS:-anybit anybit_cuda_tests anybit_cuda_bench} >"$OUT/build.log" 2>&1
  echo "anybit build rc=$? $(( $(date +%s) - t0 )) s"
  mkdir -p "$G"
  [[ -s $G/8b-f16.gguf || ${SKIP_8B:-0} = 1 ]] || "$B/anybit" convert --shape llama-8b --dtype f16 -o "$G/8b-f16.gguf" >"$OUT/convert.log" 2>&1
  [[ -s $G/1b-f16.gguf || ${SKIP_1B:-0} = 1 ]] || "$B/anybit" convert --shape llama-1b --dtype f16 -o "$G/1b-f16.gguf" >>"$OUT/convert.log" 2>&1
  echo "GGUFs written $(( $(date +%s) - t0 )) s: $(ls -s "$G" | tr '\n' ' ')"
  if [[ ${RUN_TESTS:-0} = 1 ]]; then  # the GPU tests, while llama.cpp still builds
    "$B/anybit_cuda_tests" --gtest_brief=1 >"$OUT/cuda-tests.log" 2>&1
    echo "anybit_cuda_tests rc=$? $(( $(date +%s) - t0 )) s: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/cuda-tests.log" | tr '\n' ' ')"
  fi
  wait $lpid
  cat "$OUT/llama-build.status"
  Q=$L/build/bin/llama-quantize
  [[ ${SKIP_8B:-0} = 1 ]] || "$Q" "$G/8b-f16.gguf" "$G/8b-q4_k_m.gguf" Q4_K_M 16 >"$OUT/quantize.log" 2>&1
  [[ ${SKIP_1B:-0} = 1 ]] || "$Q" "$G/1b-f16.gguf" "$G/1b-q4_k_m.gguf" Q4_K_M 16 >>"$OUT/quantize.log" 2>&1
  echo "quantized $(( $(date +%s) - t0 )) s: $(ls -s "$G" | tr '\n' ' ')"
  ;;
run)
  LB=$L/build/bin/llama-bench
  REPS=${REPS:-3}
  {
    echo "# $(date -u +%F) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
    echo "## llama.cpp (llama-bench -ngl 99 -p 512 -n 128 -r $REPS)"
    for m in ${MODELS:-8b-q4_k_m 8b-f16 1b-q4_k_m 1b-f16}; do
      for fa in ${FA:-0 1}; do "$LB" -m "$G/$m.gguf" -ngl 99 -p 512 -n 128 -r "$REPS" -fa $fa 2>/dev/null | grep -E "^\| .*(pp|tg)"; done
    done
    echo "## anybit (anybit bench --device cuda -p 512 -n 128 -r $REPS)"
    SHAPES=${SHAPES:-"llama-8b --bits 4;llama-8b --bits 8;llama-8b --dtype f16;llama-8b --dtype bf16;llama-1b --bits 4;llama-1b --dtype bf16"}
    IFS=';' read -ra shapes <<<"$SHAPES"
    for s in "${shapes[@]}"; do
      echo "### --shape $s"
      # shellcheck disable=SC2086
      "$B/anybit" bench --shape $s --device cuda -p 512 -n 128 -r "$REPS" 2>&1 | grep -E "^\||bits|kernel" | head -8
    done
  } | tee "$OUT/vs-llamacpp.md"
  ;;
serve)
  # The 8B shape at 4 bits: anybit W4 g128 (random) against llama-server Q4_K_M (with flash
  # attention, its faster setting), and HF transformers bf16 static batches of the same sizes.
  # Each server is started once and takes every client count RUNS times, after a warm-up.
  LS=$L/build/bin/llama-server
  CLIENTS=${CLIENTS:-"1 16 64"}
  RUNS=${RUNS:-3}
  REQS=${REQS:-4}
  CTX=${CTX:-512}
  MAXC=$(tr ' ' '\n' <<<"$CLIENTS" | sort -n | tail -1)
  J=$OUT/serve.jsonl
  : >"$J"
  loads() {  # url label
    python3 bench/serve/load.py --url "$1" --clients 1 --requests 1 --max-tokens 8 >/dev/null || return 1
    for c in $CLIENTS; do
      for _ in $(seq "$RUNS"); do
        python3 bench/serve/load.py --url "$1" --label "$2" --clients "$c" --requests "$REQS" \
          --prompt-tokens 128 --max-tokens 128 | tee -a "$J"
      done
    done
  }
  ready() {  # url pid
    for _ in $(seq 1800); do
      curl -sf "$1/health" >/dev/null 2>&1 && return 0
      kill -0 "$2" 2>/dev/null || return 1
      sleep 0.1
    done
    return 1
  }
  t0=$(date +%s)
  "$B/anybit" serve --shape llama-8b --bits 4 --device cuda -c "$CTX" --max-batch "$MAXC" --max-queue 1024 \
    --step-tokens "${STEP_TOKENS:-2048}" --kv-memory $((MAXC * CTX / 4))M --port 18480 >"$OUT/anybit-serve.log" 2>&1 &
  pid=$!
  if ready http://127.0.0.1:18480 $pid; then
    echo "anybit serve ready after $(( $(date +%s) - t0 )) s"
    loads http://127.0.0.1:18480 anybit
  else echo "anybit serve did not start: $(tail -3 "$OUT/anybit-serve.log")"; fi
  kill -TERM $pid; wait $pid
  echo "anybit serve exit $? after $(( $(date +%s) - t0 )) s"
  "$LS" -m "$G/8b-q4_k_m.gguf" -ngl 99 -fa -c $((MAXC * CTX)) -np "$MAXC" -cb --port 18481 >"$OUT/llama-server.log" 2>&1 &
  pid=$!
  if ready http://127.0.0.1:18481 $pid; then loads http://127.0.0.1:18481 llama-server
  else echo "llama-server did not start: $(tail -3 "$OUT/llama-server.log")"; fi
  kill -TERM $pid; wait $pid
  echo "llama-server done after $(( $(date +%s) - t0 )) s"
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 python3 bench/serve/hf_batch.py --shape llama-8b --batches $CLIENTS --runs "${HF_RUNS:-2}" \
    2>"$OUT/hf.log" | tee -a "$J"
  echo "all done after $(( $(date +%s) - t0 )) s"
  ;;
*)
  echo "usage: $0 prepare LLAMA_SRC.tar.xz | run | serve" >&2
  exit 2
  ;;
esac
