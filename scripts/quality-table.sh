#!/usr/bin/env bash
# Quantization quality of anybit next to llama.cpp's formats, measured in one run.
#
#   scripts/quality-table.sh [ANYBIT_BIN] [LLAMACPP_BUILD] [WORKDIR]
#
# anybit: perplexity of tiny-llama on val.txt (the reference protocol, ctx 512) at bf16 and
# at W8..W2, group 128 and 64, without calibration (rtn-clip) and with calibration on
# calib.txt (the default calibrated quantizer), plus mixed precision at 4.5 and 3.5 bits per
# weight. llama.cpp: its own F16 and quantized files of the same weights (`anybit convert`
# then `llama-quantize`), scored by `llama-perplexity -c 512`. Each engine's degradation is
# relative to its own 16-bit run: the two protocols differ (llama.cpp scores the second half
# of each window), so absolute values are not comparable, degradations are.
# Results are cached in WORKDIR (delete a row's files to redo it); the table goes to stdout.
# Environment: THREADS (2), CONFIGS (override the anybit list: "bits:group:calib ..." with
# calib 0/1, or "mix:4.5"), LLAMA_TYPES ("Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 Q3_K_M Q2_K"),
# QUANT_ARGS (extra `anybit quantize` arguments for every anybit row, e.g. "--refine 0
# --reference-target 0" for the fourth session's calibrated quantizer; the calibrated rows
# use the defaults otherwise: GPTQ toward the reference outputs with 3 refinement rounds and,
# since the sixth session, 4 rounds of coordinate descent on the codes; "--cd-passes 0" gives
# the fifth session's quantizer, "--calib-tokens 1000000" all of calib.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ANYBIT=$(realpath "${1:-build/anybit}")
LLAMA=${2:-/tmp/llama.cpp/build}
WORK=${3:-/tmp/anybit-quality}
THREADS=${THREADS:-2}
VAL=../shared/data/val.txt
CALIB=../shared/data/calib.txt
MODEL=models/tiny-llama
mkdir -p "$WORK"

CONFIGS=${CONFIGS:-"8:128:0 6:128:0 5:128:0 4:128:0 3:128:0 2:128:0 4:128:1 3:128:1 2:128:1 mix:4.5 mix:3.5
8:64:0 6:64:0 5:64:0 4:64:0 3:64:0 2:64:0 4:64:1 3:64:1 2:64:1 8:128:1 6:128:1 5:128:1 8:64:1 6:64:1 5:64:1"}
LLAMA_TYPES=${LLAMA_TYPES:-"Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 Q3_K_M Q2_K"}

anybit_ppl() {  # model-path cache-file
  [ -s "$2" ] || "$ANYBIT" perplexity -m "$1" -f "$VAL" --ctx 512 -t "$THREADS" --device cpu 2>"$2.log" |
    tail -1 | sed -n 's/^ppl = //p' >"$2"
  cat "$2"
}
llama_ppl() {  # gguf cache-file
  [ -s "$2" ] || "$LLAMA/bin/llama-perplexity" -m "$1" -f "$VAL" -c 512 -t "$THREADS" >"$2.log" 2>&1 &&
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$2.log" >"$2"
  cat "$2"
}
size_mib() { du -sb "$1" | awk '{printf "%.1f", $1 / 1048576}'; }
rel() { awk -v q="$1" -v b="$2" 'BEGIN { printf "%+.2f%%", (q / b - 1) * 100 }'; }

base=$(anybit_ppl "$MODEL" "$WORK/bf16.ppl")
echo "| engine | format | quantizer | bpw (linear layers) | size MiB | ppl | vs own 16-bit |"
echo "|---|---|---|---|---|---|---|"
echo "| anybit | bf16 | - | 16 | $(size_mib "$MODEL/model.safetensors") | $base | - |"
f16="$WORK/tiny-f16.gguf"
[ -s "$f16" ] || "$ANYBIT" convert -m "$MODEL" --dtype f16 -o "$f16" 2>/dev/null
lbase=$(llama_ppl "$f16" "$WORK/llama-F16.ppl")
echo "| llama.cpp | F16 | - | 16 | $(size_mib "$f16") | $lbase | - |"
for t in $LLAMA_TYPES; do
  q="$WORK/tiny-$t.gguf"
  [ -s "$q" ] || "$LLAMA/bin/llama-quantize" "$f16" "$q" "$t" >"$WORK/llama-$t.quantize.log" 2>&1
  ppl=$(llama_ppl "$q" "$WORK/llama-$t.ppl")
  echo "| llama.cpp | $t | llama-quantize | - | $(size_mib "$q") | $ppl | $(rel "$ppl" "$lbase") |"
done
for c in $CONFIGS; do
  IFS=: read -r a b calib <<<"$c"
  if [ "$a" = mix ]; then
    name="mix${b}"; args=(--target-bpw "$b" --calib "$CALIB"); label="mixed $b bpw g128"
  else
    name="w${a}g${b}c${calib}"; args=(--bits "$a" --group "$b" --sym); label="W$a g$b"
    [ "$calib" = 1 ] && args+=(--calib "$CALIB")
  fi
  out="$WORK/$name"
  if [ ! -s "$out/quantize.log" ] || ! grep -q "bits per weight" "$out/quantize.log"; then
    rm -rf "$out"
    # shellcheck disable=SC2086 # QUANT_ARGS is a list of words
    "$ANYBIT" quantize -m "$MODEL" -o "$out" "${args[@]}" ${QUANT_ARGS:-} 2>"$WORK/$name.quantize.log" >/dev/null ||
      { echo "| anybit | $label | FAILED: $(tail -1 "$WORK/$name.quantize.log") |"; continue; }
    cp "$WORK/$name.quantize.log" "$out/quantize.log"
  fi
  bpw=$(sed -n 's/.*, \([0-9.]*\) bits per weight.*/\1/p' "$out/quantize.log" | tail -1)
  quantizer=$(sed -n 's/.*"quantizer": *"\([a-z-]*\)".*/\1/p' "$out/quantization_config.json" 2>/dev/null | head -1)
  [ -n "$quantizer" ] || quantizer=$([ "${calib:-1}" = 1 ] && echo calibrated || echo rtn-clip)
  ppl=$(anybit_ppl "$out" "$WORK/$name.ppl")
  echo "| anybit | $label | $quantizer | $bpw | $(size_mib "$out") | $ppl | $(rel "$ppl" "$base") |"
done

