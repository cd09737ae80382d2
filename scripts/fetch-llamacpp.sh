#!/usr/bin/env bash
# Fetches and builds llama.cpp, the peer anybit is compared with, OUTSIDE this repo.
# Nothing of llama.cpp is committed or copied into anybit.
#
#   scripts/fetch-llamacpp.sh [DEST]            (default DEST: /tmp/llama.cpp)
#
# Environment:
#   LLAMACPP_SOURCE  git URL or local mirror to clone (default: the GitHub repo; on the
#                    build machines the mirror /work/.mirror/ggerganov+llama.cpp/repo)
#   LLAMACPP_COMMIT  commit to build (default c392e50, the one PEERS.md figures use)
#   JOBS             parallel build jobs (default 2: the dev machine has 2 cores)
#   CMAKE_EXTRA      extra cmake flags, e.g. "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
#   TARGETS          build targets (default: llama-bench llama-cli llama-perplexity
#                    llama-quantize llama-simple)
#
# The mirror lacks the large models/*.gguf blobs, so a plain checkout fails; a sparse
# checkout that leaves them (and media/) out works.
set -euo pipefail

DEST=${1:-/tmp/llama.cpp}
COMMIT=${LLAMACPP_COMMIT:-c392e5094deaf2d1a7c18683214f007fad3fe42b}
JOBS=${JOBS:-2}
TARGETS=${TARGETS:-"llama-bench llama-cli llama-perplexity llama-quantize llama-simple"}
if [[ -z "${LLAMACPP_SOURCE:-}" ]]; then
  if [[ -d /work/.mirror/ggerganov+llama.cpp/repo ]]; then
    LLAMACPP_SOURCE=/work/.mirror/ggerganov+llama.cpp/repo
  else
    LLAMACPP_SOURCE=https://github.com/ggerganov/llama.cpp
  fi
fi

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST_ABS=$(realpath -m "$DEST")
if [[ "$DEST_ABS" == "$REPO_ROOT" || "$DEST_ABS" == "$REPO_ROOT"/* ]]; then
  echo "fetch-llamacpp: refusing to put llama.cpp inside the anybit repo ($DEST_ABS)" >&2
  exit 1
fi

if [[ ! -d "$DEST_ABS/.git" ]]; then
  echo "== cloning $LLAMACPP_SOURCE into $DEST_ABS"
  git clone -q --no-checkout "$LLAMACPP_SOURCE" "$DEST_ABS"
fi
cd "$DEST_ABS"
git sparse-checkout init --no-cone
printf '/*\n!/models/*.gguf\n!/media/*\n' > .git/info/sparse-checkout
# -f: a half-finished earlier checkout must not block this one. Git may print
# "invalid object" for the excluded blobs; the checkout still completes.
git checkout -q -f "$COMMIT" 2>/dev/null || git checkout -f "$COMMIT"
echo "== llama.cpp at $(git rev-parse --short HEAD)"

echo "== configuring (Release, GGML_NATIVE=ON, LLAMA_CURL=OFF ${CMAKE_EXTRA:-})"
# shellcheck disable=SC2086
nice cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF ${CMAKE_EXTRA:-} >/dev/null
echo "== building $TARGETS with -j$JOBS (about 15 minutes on 2 cores)"
# shellcheck disable=SC2086
nice cmake --build build -j"$JOBS" --target $TARGETS >/dev/null
echo "== done: binaries in $DEST_ABS/build/bin"
ls "$DEST_ABS/build/bin"
