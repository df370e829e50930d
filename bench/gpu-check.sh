#!/usr/bin/env bash
# The GPU check, in one call on the GPU machine:
#   1. versions and the card;
#   2. a cold and a warm NVRTC build of the default spec (llama2-7b-32k), timed;
#   3. every S²-Attn kernel against the CPU reference (tests/gpu_check.c), fresh random inputs,
#      poisoned outputs, all shift modes, short last group, varlen, GQA, d in {64, 96, 128, 256};
#   4. `s2lora attn --backward` against LongLoRA's S²-Attn written in PyTorch (bench/peers/).
# The binaries are built on a machine with the build dependencies (the GPU machine has no
# libyaml, jansson, nettle or Criterion) and passed in through S2_BIN (default build/).
# Logs go to $OUT when it is set. Prints a short table last; exit status 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${S2_BIN:-build}
OUTDIR=${OUT:-/tmp/s2lora-gpu-check}
mkdir -p "$OUTDIR"
export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-/tmp/s2lora-cache}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
rm -rf "$S2LORA_CACHE_DIR"
status=0

echo "== card"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$BIN/s2lora" version
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"

echo "== build llama2-7b-32k for this device (cold, then warm)"
for run in cold warm; do
  t0=$(date +%s%N)
  "$BIN/s2lora" build specs/llama2-7b-32k.yaml --arch sm_90a >"$OUTDIR/build-$run.txt" 2>&1 || status=1
  t1=$(date +%s%N)
  echo "$run build: $(( (t1 - t0) / 1000000 )) ms wall (process start to exit)"
done
cat "$OUTDIR/build-cold.txt"

echo "== kernels vs CPU reference"
"$BIN/s2lora_gpu_check" "$@" 2>&1 | tee "$OUTDIR/gpu_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== s2lora attn vs LongLoRA in PyTorch"
python3 bench/peers/attn_compare.py "$BIN/s2lora" /tmp/s2lora-peer-specs /tmp/s2lora-peer-work \
  2>&1 | tee "$OUTDIR/peer_compare.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== summary"
grep -E 'PASS|FAIL|ERROR' "$OUTDIR/gpu_check.txt" | awk '{print $NF}' | sort | uniq -c
tail -n 1 "$OUTDIR/gpu_check.txt"
grep -E 'PASS|FAIL' "$OUTDIR/peer_compare.txt" | awk '{printf "peer %-16s %s\n", $1, $NF}'
echo "gpu-check status: $status"
exit $status
