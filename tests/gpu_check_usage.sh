#!/usr/bin/env bash
# s2lora_gpu_check's arguments, with no GPU: every usage error exits 2 with a message naming
# what is valid, and --build-only builds what --tile, --family and --only pick, no more; and
# bench/gpu-check.sh's own settings checks.
#   tests/gpu_check_usage.sh PATH/TO/s2lora_gpu_check
set -uo pipefail
gc=${1:?usage: tests/gpu_check_usage.sh S2LORA_GPU_CHECK}
export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-$(mktemp -d)}
fail=0
usage() { # expected message, then the arguments
  local want=$1 out rc
  shift
  out=$("$gc" "$@" 2>&1)
  rc=$?
  if [ $rc != 2 ] || ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: s2lora_gpu_check $*: exit $rc, wanted 2 and '$want'; said: $out"
    fail=1
  fi
}
usage "--tile 13: valid 0 to 12" --tile 13
usage "--tile x: valid 0 to 12" --tile x
usage "usage: s2lora_gpu_check" --family mlp
usage "usage: s2lora_gpu_check" --seed
usage "--build-only sm_99: valid sm_80" --build-only sm_99
usage "valid --family attn or train" --build-only sm_90a --family lora
usage "--tile 3 with --family train: a tile is an attention tile" --build-only sm_90a \
  --family train --tile 3
usage "--tile 0 with --family lora: a tile is an attention tile" --family lora --tile 0
# one case of one tile: one build, named in the summary
out=$("$gc" --build-only sm_90a --tile 12 --only "split GQA 8/2" 2>&1)
if [ $? != 0 ] || ! grep -qF "built 1 cases x tile 12 for sm_90a" <<<"$out"; then
  echo "FAIL: --build-only sm_90a --tile 12 --only 'split GQA 8/2': $out"
  fail=1
fi
# the script that drives it on a GPU machine refuses a bad setting before anything runs or is
# removed (it clears its kernel cache, here this test's, when it starts)
mkdir -p "$S2LORA_CACHE_DIR"
refused() { # VAR=VALUE, then the expected message
  local out
  out=$(env "$1" bash "$(dirname "$0")/../bench/gpu-check.sh" 2>&1)
  if [ $? != 2 ] || ! grep -qF -- "$2" <<<"$out"; then
    echo "FAIL: $1 bench/gpu-check.sh: $out"
    fail=1
  fi
}
refused S2_NCU_SEQLEN=16k "S2_NCU_SEQLEN=16k: the ncu section's sequence length"
[ -d "$S2LORA_CACHE_DIR" ] || { echo "FAIL: S2_NCU_SEQLEN=16k: the cache was removed"; fail=1; }
refused S2_LONG_SEQLEN=100k "S2_LONG_SEQLEN=100k: the long section's sequence length"
[ -d "$S2LORA_CACHE_DIR" ] || { echo "FAIL: S2_LONG_SEQLEN=100k: the cache was removed"; fail=1; }
refused 'S2_NCU_SOURCE=dkdv;ls' "S2_NCU_SOURCE=dkdv;ls: a kernel name or regex"
[ $fail = 0 ] && echo "gpu_check usage: PASS"
exit $fail
