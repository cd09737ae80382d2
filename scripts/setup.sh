#!/usr/bin/env bash
# Installs anybit's build dependencies (Debian 12 packages) and builds it.
# Usage: scripts/setup.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PKGS="build-essential cmake ninja-build pkg-config nlohmann-json3-dev libcpp-httplib-dev libcli11-dev
      libpcre2-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev $(command -v node >/dev/null || echo nodejs) $(command -v npm >/dev/null || echo npm)"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
