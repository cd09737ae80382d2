#!/usr/bin/env bash
# CPU throughput of anybit next to llama.cpp in one run, on the 1B Llama shape of
# ../shared/PEERS.md (hidden 2048, 16 layers, 32/8 heads, FFN 8192, vocab 8192).
#
#   bench/cpu-vs-llamacpp.sh [ANYBIT_BIN] [LLAMACPP_BUILD]
#
# llama.cpp runs the random weights that `anybit convert --shape llama-1b` writes as F16,
# and llama-quantize's Q4_0 / Q2_K of them. anybit runs the same shape: bf16 random weights
# and random any-bit models at 4 and 2 bits (group 128): kernel speed does not depend on the
# values. Pairs alternate (anybit, then its peer) for ROUNDS rounds; each line is the median
# of REPS repetitions as printed by the tool itself.
# Environment: THREADS (2), REPS (5), ROUNDS (2), PAIRS ("bf16:F16 4:Q4_0 2:Q2_K"), WORK (/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
ANYBIT=$(realpath "${1:-build/anybit}")
LLAMA=${2:-/tmp/llama.cpp/build}
THREADS=${THREADS:-2}
REPS=${REPS:-5}
ROUNDS=${ROUNDS:-2}
PAIRS=${PAIRS:-"bf16:F16 4:Q4_0 2:Q2_K"}
WORK=${WORK:-/tmp}
F16="$WORK/llama-1b-f16.gguf"

[ -s "$F16" ] || "$ANYBIT" convert --shape llama-1b --dtype f16 -o "$F16"
echo "# $(date -u +%FT%TZ) $(uname -n), $(lscpu | sed -n 's/^Model name: *//p'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for pair in $PAIRS; do
    IFS=: read -r ours theirs <<<"$pair"
    if [ "$ours" = bf16 ]; then
      args=(--dtype bf16)
    else
      args=(--bits "$ours" --group 128)
    fi
    echo "## round $round: anybit ${args[*]}"
    "$ANYBIT" bench --shape llama-1b "${args[@]}" -t "$THREADS" -p 64 -n 32 -r "$REPS" --device cpu 2>&1 |
      grep -v '^\[' || true
    gguf="$WORK/llama-1b-$theirs.gguf"
    [ "$theirs" = F16 ] && gguf=$F16
    [ -s "$gguf" ] || "$LLAMA/bin/llama-quantize" "$F16" "$gguf" "$theirs" >/dev/null 2>&1
    echo "## round $round: llama.cpp $theirs"
    "$LLAMA/bin/llama-bench" -m "$gguf" -p 64 -n 32 -t "$THREADS" -r "$REPS" 2>/dev/null | grep -E '^\|'
  done
done
