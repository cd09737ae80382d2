#!/usr/bin/env bash
# Packs what the GPU machine lacks for a build (it has CUDA, cmake and ninja, but none of the
# Debian -dev packages of scripts/setup.sh and no internet): the installed files of those
# packages on this machine, as .carry-gpu/pack/usr.tar.xz (~2 MB). The .pc files are made
# relocatable (prefix=${pcfiledir}/../../..), so the folder works wherever it is unpacked.
# scripts/gpu-check and bench/cuda/vs-llamacpp.sh unpack it when .carry-gpu/usr is missing.
# Usage: bash scripts/setup.sh (once, installs the packages) && bash scripts/gpu-carry.sh,
# then run on the device with carry [".carry-gpu"] (.carry-gpu is in .gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="libcpp-httplib-dev libcpp-httplib0.11 libfmt-dev libfmt9 libspdlog-dev libspdlog1.10 nlohmann-json3-dev
      libcli11-dev libpcre2-dev libpcre2-8-0 libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian
      libssl-dev zlib1g-dev libbrotli-dev libbrotli1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in $PKGS; do dpkg -L "$p"; done | grep -v "/share/doc\|/share/man\|/share/lintian" | sort -u |
  while read -r f; do [[ -f $f || -L $f ]] && echo "${f#/}"; done >"$tmp/files"
tar -C / -cf - -T "$tmp/files" | tar -C "$tmp" -xf -
lib=$tmp/usr/lib/x86_64-linux-gnu
# Static archives nobody links (the tests link gtest/gmock/benchmark statically: keep those).
rm -f "$lib"/libcrypto.a "$lib"/libssl.a "$lib"/libbrotli*.a
sed -i 's|^prefix=/usr$|prefix=${pcfiledir}/../../..|' "$lib"/pkgconfig/*.pc
mkdir -p .carry-gpu/pack
tar -cJf .carry-gpu/pack/usr.tar.xz -C "$tmp" usr
echo "wrote .carry-gpu/pack/usr.tar.xz ($(du -h .carry-gpu/pack/usr.tar.xz | cut -f1))"
