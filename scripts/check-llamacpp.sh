#!/usr/bin/env bash
# Checks that a GGUF written by anybit runs in llama.cpp and generates, greedily,
# exactly the tokens Hugging Face transformers generated for tiny-llama.
#
#   scripts/check-llamacpp.sh ANYBIT_BINARY LLAMACPP_BUILD_DIR
#
# e.g. scripts/check-llamacpp.sh build/anybit /tmp/llama.cpp/build
# (build llama.cpp with scripts/fetch-llamacpp.sh first).
#
# Environment:
#   MODEL   HF model folder with reference.json (default: <repo>/models/tiny-llama)
#   DTYPE   f32 | f16 | bf16 (default f16): the type of the weight matrices in the GGUF
#           (keep also works but stores tiny-llama's norms as bf16, which llama.cpp's CPU
#           backend aborts on: GGML_ASSERT "only f32 src1 supported")
#   WORK    scratch folder (default: a fresh mktemp -d, removed at exit)
#   ANYBIT_TESTS  anybit_tests binary, used to write the GGUF when the CLI has no
#           `convert` yet (default: next to ANYBIT_BINARY)
#
# For each reference prompt it runs
#   1. a 40-line greedy driver compiled here against libllama (argmax of the logits,
#      48 tokens, no stop on EOS) and compares prompt and generated token ids;
#   2. llama-simple -m FILE -n 48 PROMPT (greedy sampler) and compares its text.
# Exit status 0 only when every prompt matches token for token.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
ANYBIT=$(realpath "$1")
LLAMA_BUILD=$(realpath "$2")
LLAMA_SRC=$(realpath "$LLAMA_BUILD/..")
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$(realpath "${MODEL:-$REPO_ROOT/models/tiny-llama}")
DTYPE=${DTYPE:-f16}
ANYBIT_TESTS=${ANYBIT_TESTS:-$(dirname "$ANYBIT")/anybit_tests}
if [[ -z "${WORK:-}" ]]; then
  WORK=$(mktemp -d /tmp/anybit-llamacpp.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
GGUF="$WORK/$(basename "$MODEL")-$DTYPE.gguf"

for f in "$LLAMA_BUILD/bin/llama-simple" "$LLAMA_BUILD/bin/libllama.so" "$LLAMA_SRC/include/llama.h" \
         "$MODEL/reference.json"; do
  [[ -e "$f" ]] || { echo "check-llamacpp: missing $f" >&2; exit 2; }
done

# --- 1. convert -------------------------------------------------------------------
echo "== converting $MODEL to $GGUF ($DTYPE)"
if "$ANYBIT" convert --help >/dev/null 2>&1; then
  echo "+ $ANYBIT convert -m $MODEL --to gguf -o $GGUF --dtype $DTYPE"
  "$ANYBIT" convert -m "$MODEL" --to gguf -o "$GGUF" --dtype "$DTYPE"
else
  # Until the CLI has `convert`: the export test calls write_gguf_model directly
  # (it always converts models/tiny-llama of the repo).
  echo "+ ANYBIT_GGUF_EXPORT=$GGUF ANYBIT_GGUF_DTYPE=$DTYPE $ANYBIT_TESTS --gtest_filter=GgufExport.*"
  ANYBIT_GGUF_EXPORT="$GGUF" ANYBIT_GGUF_DTYPE="$DTYPE" "$ANYBIT_TESTS" --gtest_filter='GgufExport.*' >"$WORK/export.log" 2>&1 \
    || { cat "$WORK/export.log"; exit 1; }
fi
ls -l "$GGUF"

# --- 2. greedy driver against libllama -------------------------------------------
cat >"$WORK/greedy_ids.cpp" <<'EOF'
// Prints "prompt: ids" and "generated: ids" for N greedy (argmax) steps.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include "llama.h"

int main(int argc, char** argv) {
  if (argc != 4) { std::fprintf(stderr, "usage: greedy_ids MODEL N PROMPT\n"); return 2; }
  const int n_gen = std::atoi(argv[2]);
  const std::string prompt = argv[3];
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  llama_backend_init();
  llama_model* model = llama_model_load_from_file(argv[1], llama_model_default_params());
  if (!model) { std::fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), int(prompt.size()), nullptr, 0, true, true);
  std::vector<llama_token> toks(n_prompt);
  llama_tokenize(vocab, prompt.c_str(), int(prompt.size()), toks.data(), n_prompt, true, true);
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n_prompt + n_gen + 8;
  cp.n_batch = n_prompt;
  cp.n_threads = cp.n_threads_batch = 2;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) { std::fprintf(stderr, "cannot create context\n"); return 1; }
  std::printf("prompt:");
  for (llama_token t : toks) std::printf(" %d", t);
  std::printf("\ngenerated:");
  const int n_vocab = llama_vocab_n_tokens(vocab);
  llama_batch batch = llama_batch_get_one(toks.data(), n_prompt);
  llama_token next = 0;
  for (int i = 0; i < n_gen; ++i) {
    if (llama_decode(ctx, batch)) { std::fprintf(stderr, "decode failed\n"); return 1; }
    const float* logits = llama_get_logits_ith(ctx, -1);
    next = 0;
    for (int v = 1; v < n_vocab; ++v) if (logits[v] > logits[next]) next = v;
    std::printf(" %d", next);
    batch = llama_batch_get_one(&next, 1);
  }
  std::printf("\n");
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
EOF
echo "== compiling the greedy driver against $LLAMA_BUILD/bin/libllama.so"
c++ -O1 -std=c++17 -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" "$WORK/greedy_ids.cpp" \
  -L"$LLAMA_BUILD/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$LLAMA_BUILD/bin" -o "$WORK/greedy_ids"

# --- 3. compare -------------------------------------------------------------------
echo "== running the reference prompts"
python3 - "$MODEL/reference.json" "$GGUF" "$WORK/greedy_ids" "$LLAMA_BUILD/bin/llama-simple" <<'EOF'
import json, shlex, subprocess, sys

ref_path, gguf, driver, simple = sys.argv[1:]
refs = json.load(open(ref_path))["references"]
n_match = 0
for r in refs:
    n = len(r["greedy_ids"])
    cmd = [driver, gguf, str(n), r["prompt"]]
    run = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if run.returncode != 0:
        why = [l for l in run.stderr.splitlines() if "GGML_ASSERT" in l or "error" in l.lower()] or run.stderr.splitlines()[-1:]
        print(f"[FAIL] {r['prompt']!r}: llama.cpp exited with {run.returncode}: {why[0] if why else ''}")
        continue
    out = run.stdout.splitlines()
    prompt_ids = [int(x) for x in out[0].split()[1:]]
    gen_ids = [int(x) for x in out[1].split()[1:]]
    same_prompt = prompt_ids == r["prompt_ids"]
    first_diff = next((i for i, (a, b) in enumerate(zip(gen_ids, r["greedy_ids"])) if a != b), None)
    same_ids = gen_ids == r["greedy_ids"]

    scmd = [simple, "-m", gguf, "-n", str(n), r["prompt"]]
    text = subprocess.run(scmd, capture_output=True, text=True, errors="replace").stdout
    # llama-simple echoes the prompt tokens (with "<|begin_of_text|>") before the generation.
    idx = text.find(r["prompt"])
    gen_text = text[idx + len(r["prompt"]):] if idx >= 0 else text
    gen_text = gen_text[:-1] if gen_text.endswith("\n") else gen_text
    same_text = gen_text == r["greedy_text"]

    n_match += same_prompt and same_ids
    status = "MATCH" if (same_prompt and same_ids) else "DIFF"
    prompt_note = "equal" if same_prompt else f"{prompt_ids} != {r['prompt_ids']}"
    ids_note = "equal" if same_ids else f"differ from position {first_diff}"
    text_note = "equal" if same_text else "differs"
    print(f"[{status}] {r['prompt']!r}: prompt ids {prompt_note}, {n} generated ids {ids_note}, "
          f"llama-simple text {text_note}")
    if not same_ids:
        print(f"    llama.cpp: {gen_ids}\n    reference: {r['greedy_ids']}")
    if not same_text:
        print(f"    llama-simple: {gen_text!r}\n    reference:    {r['greedy_text']!r}")
    print("    $ " + " ".join(shlex.quote(c) for c in scmd))
print(f"== {n_match}/{len(refs)} prompts match token for token")
sys.exit(0 if n_match == len(refs) else 1)
EOF
