#!/usr/bin/env bash
# Builds, on a machine with the build dependencies, what bench/gpu-check.sh runs on the GPU
# machine (which has no libyaml, jansson, nettle or Criterion): the release binaries into
# .carry/bin and the test build with the broken candidate tile into .carry/bin-broken, both
# from the committed HEAD (an export, so uncommitted edits never reach a recorded run).
# .carry/ is git-ignored; name it in the device tool's carry list. Prints the commit and writes
# it to .carry/COMMIT.
#   --rev REV  build that commit (a branch, a tag, a hash) instead of HEAD
#   --out DIR  write into DIR (a folder of this checkout, e.g. .carry-b) instead of .carry: two
#              builds carried side by side are what bench/ab.sh compares in one call
set -euo pipefail
cd "$(dirname "$0")/.."
rev=HEAD out=.carry
while [ $# -gt 0 ]; do
  case "$1" in
  --rev) rev=${2:?--rev needs a commit}; shift 2 ;;
  --out) out=${2:?--out needs a folder}; shift 2 ;;
  *) echo "usage: bench/build-carry.sh [--rev REV] [--out DIR]" >&2; exit 2 ;;
  esac
done
commit=$(git rev-parse --short --verify "$rev^{commit}") ||
  { echo "build-carry: --rev $rev: not a commit of this repository" >&2; exit 2; }
src=$(mktemp -d /tmp/s2lora-carry.XXXXXX)
git archive "$commit" | tar -x -C "$src"
cmake -S "$src" -B "$src/build" -DS2_BUILD_TESTS=OFF >/dev/null
cmake --build "$src/build" -j "$(nproc)" >/dev/null
cmake -S "$src" -B "$src/build-broken" -DS2_BUILD_TESTS=OFF -DS2_TEST_BROKEN_TILE=ON >/dev/null
cmake --build "$src/build-broken" -j "$(nproc)" --target s2lora >/dev/null
mkdir -p "$out/bin" "$out/bin-broken"
cp "$src/build/s2lora" "$src/build/s2lora_gpu_check" "$src/build/s2lora_model_check" \
  "$src/build/s2lora_api_check" "$out/bin/"
# The shared library (its real file, under the name ctypes opens), for the Python package
# (gpu-check.sh's torch section).
cp -L "$src/build/libs2lora.so" "$out/bin/libs2lora.so"
cp "$src/build-broken/s2lora" "$out/bin-broken/"
rm -rf "$src"
# The commit the binaries were built from, for the scripts that report it (gpu-check.sh,
# multi-gpu.sh, paper-claim.sh): a copy of the tree on the GPU machine may carry a stale .git.
echo "$commit" >"$out/COMMIT"
echo "$commit"
