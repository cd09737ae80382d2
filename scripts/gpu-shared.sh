# Sourced by the GPU-machine scripts (scripts/gpu-check, bench/cuda/vs-llamacpp.sh): the
# tests read tiny-llama and data/val.txt from a shared folder, which that machine lacks;
# build one from the repo and the carried data, and set SHARED to it. Needs ROOT.
SHARED=${ANYBIT_SHARED:-/tmp/anybit-shared}
mkdir -p "$SHARED/models"
[[ -d $SHARED/models/tiny-llama ]] || ln -sfn "$ROOT/models/tiny-llama" "$SHARED/models/tiny-llama"
# Relinked every time: a warm machine keeps /tmp, but the carried data comes with each call.
[[ -d $ROOT/.carry-gpu/shared/data ]] && ln -sfn "$ROOT/.carry-gpu/shared/data" "$SHARED/data"
