#!/usr/bin/env bash
# A/B of a kernel change on the GPU machine: the working tree ("new") against a base revision
# ("old") that differs only in a few files, both built in one device call, then benchmarks
# interleaved new/old in rounds, so that both sides see the same machine (H100s of this
# workplace differ by up to ~8% from one another; PERFORMANCE.md).
#
#   bench/cuda/ab.sh prepare REV FILE...    # here: FILE as of REV into .carry-gpu/ab-old/
#   bench/cuda/ab.sh build                  # GPU machine: old, then new (one build dir)
#   bench/cuda/ab.sh single                 # GPU machine: the working tree only, as both sides
#                                           # (an A/B by AB_ENV_NEW / AB_ENV_OLD alone)
#   bench/cuda/ab.sh tg "ARGS;ARGS" [ROUNDS]   # anybit bench --device cuda -p 0 -n 128 -r 3 ARGS
#   bench/cuda/ab.sh kernels SECTION        # anybit_cuda_bench SECTION (e.g. gemv, qgemv)
#
# Run the device steps with carry [".carry-gpu"] (scripts/gpu-carry.sh packs the build
# dependencies there). `build` leaves the binaries in /tmp/ab (old and new) and build-gpu at
# "new", with anybit_cuda_tests built; the machine keeps them between back-to-back calls only.
# Environment per side: AB_ENV_NEW / AB_ENV_OLD (e.g. AB_ENV_NEW="ANYBIT_QBITS_GEMV_TC=1").
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/ab-out}
BIN=/tmp/ab
OLD=$ROOT/.carry-gpu/ab-old
C=$ROOT/.carry-gpu/usr  # the build dependencies (scripts/gpu-carry.sh)
# Each call carries .carry-gpu afresh, without the unpacked libraries: unpack them for tg/kernels too.
if [[ ${1:-} != prepare && ! -d $C/lib && -f $ROOT/.carry-gpu/pack/usr.tar.xz ]]; then
  tar -xJf "$ROOT/.carry-gpu/pack/usr.tar.xz" -C "$ROOT/.carry-gpu"
fi
export LD_LIBRARY_PATH=$C/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
# The environment of one side's runs: AB_ENV_NEW or AB_ENV_OLD.
side_env() { if [[ $1 == old ]]; then echo "${AB_ENV_OLD:-}"; else echo "${AB_ENV_NEW:-}"; fi; }

case "${1:-}" in
prepare)
  rev=${2:?revision}
  shift 2
  rm -rf "$OLD"
  for f in "$@"; do
    mkdir -p "$OLD/$(dirname "$f")"
    git show "$rev:$f" >"$OLD/$f" || exit 1
  done
  echo "$rev" >"$OLD/.rev"
  echo "old = $rev with $(cd "$OLD" && find . -type f ! -name .rev | wc -l) file(s) swapped back: $*"
  ;;
build | single)
  # single: one build where the two sides differ only by environment switches (e.g. AB_ENV_OLD=
  # "ANYBIT_QBITS_GEMV_TC=0"): half the build time, and the same binary on both sides.
  mode=$1
  [[ $mode == single || -f $OLD/.rev ]] || { echo "run 'bench/cuda/ab.sh prepare REV FILE...' first" >&2; exit 2; }
  export PATH=/usr/local/cuda/bin:$PATH
  # The carried pack replaces .carry-gpu each call: unpack it again.
  if [[ -f $ROOT/.carry-gpu/pack/usr.tar.xz ]]; then rm -rf "$C" && tar -xJf "$ROOT/.carry-gpu/pack/usr.tar.xz" -C "$ROOT/.carry-gpu"; fi
  export PKG_CONFIG_PATH=$C/lib/x86_64-linux-gnu/pkgconfig
  source "$ROOT/scripts/gpu-shared.sh"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  files=""
  [[ $mode == build ]] && files=$(cd "$OLD" && find . -type f ! -name .rev)
  keep=$(mktemp -d)
  for f in $files; do mkdir -p "$keep/$(dirname "$f")" && cp "$f" "$keep/$f" && cp "$OLD/$f" "$f"; done
  restore() { for f in $files; do cp "$keep/$f" "$f" && touch "$f"; done; }
  t0=$(date +%s)
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$C" -DANYBIT_SHARED_DIR="$SHARED" \
    >"$OUT/configure.log" 2>&1 || { restore; tail -30 "$OUT/configure.log"; exit 1; }
  mkdir -p "$BIN"
  if [[ $mode == build ]]; then
    if ! cmake --build build-gpu -j "$(nproc)" --target anybit anybit_cuda_bench >"$OUT/build-old.log" 2>&1; then
      restore
      grep -B5 -A10 error "$OUT/build-old.log" | head -60
      exit 1
    fi
    cp build-gpu/anybit "$BIN/anybit-old" && cp build-gpu/anybit_cuda_bench "$BIN/bench-old"
    echo "old ($(cat "$OLD/.rev")) built: $(( $(date +%s) - t0 )) s"
    restore
  fi
  cmake --build build-gpu -j "$(nproc)" --target anybit anybit_cuda_bench anybit_cuda_tests >"$OUT/build-new.log" 2>&1 ||
    { grep -B5 -A10 error "$OUT/build-new.log" | head -60; exit 1; }
  sides=new
  [[ $mode == single ]] && sides="old new"
  for side in $sides; do cp build-gpu/anybit "$BIN/anybit-$side" && cp build-gpu/anybit_cuda_bench "$BIN/bench-$side"; done
  echo "new built: $(( $(date +%s) - t0 )) s"
  ;;
tg)
  IFS=';' read -ra cfgs <<<"${2:?ARGS;ARGS}"
  for round in $(seq 1 "${3:-2}"); do
    for cfg in "${cfgs[@]}"; do
      for side in new old; do
        # shellcheck disable=SC2046
        line=$(env $(side_env $side) timeout 180 "$BIN/anybit-$side" bench --device cuda -p 0 -n 128 -r 3 $cfg 2>&1 |
          grep -E "^\| .*tg128" | tail -1 | sed 's/| llama-[^|]* (random)[^|]*|.*kv [a-z0-9]*) / | /')
        echo "r$round | $side | $cfg | ${line:-(no result)}" | tee -a "$OUT/tg.txt"
      done
    done
  done
  ;;
kernels)
  for side in new old; do
    echo "## $side: anybit_cuda_bench ${2:-}"
    # shellcheck disable=SC2046,SC2086
    env $(side_env $side) "$BIN/bench-$side" ${2:-} 2>&1
  done | tee -a "$OUT/kernels.txt"
  ;;
*)
  echo "usage: $0 prepare REV FILE... | build | single | tg \"ARGS;ARGS\" [ROUNDS] | kernels SECTION" >&2
  exit 2
  ;;
esac
