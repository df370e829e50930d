#!/usr/bin/env bash
# Installs what s2lora builds with (Debian/Ubuntu packages; the CUDA Toolkit is expected under
# /usr/local/cuda), configures and builds into build/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

pkgs=(cmake gcc make pkg-config python3 libyaml-dev libjansson-dev nettle-dev libcriterion-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
