#!/usr/bin/env bash
# A/B timing of several s2lora builds in one call on the GPU machine: each round runs
# `s2lora bench attn --no-peers` of every build in turn (alternating, so a drift of the GPU's
# clock moves them alike), and every line goes to $OUT/ab.txt as it is printed, so a call
# that runs out of time still brings back what it measured.
# Usage: bash bench/ab.sh DIR... (each DIR holds bin/s2lora, e.g. .carry and .carry-b, made
#   by bench/build-carry.sh and bench/build-carry.sh --rev OTHER --out .carry-b; DIR@TILE runs
#   that build with `--tile TILE` besides: .carry .carry@fwd_overlap=1 compares two tiles of one
#   build, the whole argument naming its rows; TILE comes after S2_AB_ARGS, and of two --tile
#   arguments the last counts); environment:
#   S2_AB_ROUNDS   rounds (default 2)
#   S2_AB_SEQLENS  d=128 lengths of llama2-7b-32k (default 8192,16384)
#   S2_AB_D64      1 (default) also times llama2-7b-16k at d=64; 0 skips it
#   S2_AB_ARGS     more `bench attn` arguments for every run (e.g. "--tile bwd_stages=3")
#   S2_AB_TIMEOUT  seconds one run may take before it is killed and counted failed (default 180),
#                  so a build whose kernel hangs costs one run, not the whole call
#   S2_AB_LORA     1: time the LoRA linears instead (`s2lora bench lora`, each run with an empty
#                  cache directory, so cuBLAS's default algorithms: untuned), on
#   S2_AB_LORA_M, S2_AB_LORA_DIMS, S2_AB_LORA_RANKS (default 16384,65536 / 4096,8192 / 8,16)
# Prints the rows of every run, then a table: per build and case, the median of its rounds
# (LoRA: of the forward and forward+backward overheads over the frozen base, in percent, and
# of the f+b overhead in ms).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
[ $# -ge 1 ] || { echo "usage: bash bench/ab.sh DIR..." >&2; exit 2; }
OUTDIR=${OUT:-/tmp/s2lora-ab}
mkdir -p "$OUTDIR"
log="$OUTDIR/ab.txt"
: >"$log"
export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-/tmp/s2lora-cache}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
rounds=${S2_AB_ROUNDS:-2}
seqlens=${S2_AB_SEQLENS:-8192,16384}
read -r -a extra <<<"${S2_AB_ARGS:-}"
limit=${S2_AB_TIMEOUT:-180}
status=0
# The median of a space-separated list, for the tables' awk programs.
awk_med='
function med(s,   a, m, i, j, t) {
  m = split(s, a, " ")
  for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
'
for arg in "$@"; do
  [ -x "${arg%%@*}/bin/s2lora" ] || { echo "ab: ${arg%%@*}/bin/s2lora is missing" >&2; exit 2; }
done
# The build of an argument DIR[@TILE], and its --tile arguments (none without @).
build_of() { echo "${1%%@*}"; }
tile_args() { case "$1" in *@*) printf '%s\n' --tile "${1#*@}" ;; esac; }
if [ "${S2_AB_LORA:-0}" = 1 ]; then
  for ((r = 1; r <= rounds; r++)); do
    for arg in "$@"; do
      dir=$(build_of "$arg")
      echo "== round $r $arg" | tee -a "$log"
      cache=$(mktemp -d /tmp/s2lora-ab-lora.XXXXXX)
      # rows: M dim r base_fwd lora_fwd fwd_% base_fb lora_fb fb_%
      S2LORA_CACHE_DIR=$cache timeout "$limit" "$dir/bin/s2lora" bench lora \
        --M "${S2_AB_LORA_M:-16384,65536}" --dims "${S2_AB_LORA_DIMS:-4096,8192}" \
        --ranks "${S2_AB_LORA_RANKS:-8,16}" 2>&1 | grep --line-buffered -E '^ *[0-9]+ +[0-9]+ +[0-9]+ ' |
        sed -u "s|^ *|$arg lora |" | tee -a "$log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
      rm -rf "$cache"
    done
  done
  echo "== medians: build, M, dim, r, fwd %, f+b %, f+b ms over the base" | tee -a "$log"
  awk "$awk_med"'$2 == "lora" { k = $1 " " $3 " " $4 " " $5; f[k] = f[k] " " $8 + 0; b[k] = b[k] " " $11 + 0
                      d[k] = d[k] " " ($10 - $9); order[k] = ++n }
  END { for (k in order) printf "%s %.1f %.1f %.3f\n", k, med(f[k]), med(b[k]), med(d[k]) }' "$log" |
    sort -k2,2n -k3,3n -k4,4n -k1,1 | tee -a "$log"
  exit $status
fi
for ((r = 1; r <= rounds; r++)); do
  for arg in "$@"; do
    dir=$(build_of "$arg")
    mapfile -t tile < <(tile_args "$arg")
    echo "== round $r $arg" | tee -a "$log"
    timeout "$limit" "$dir/bin/s2lora" bench attn specs/llama2-7b-32k.yaml --seqlens "$seqlens" --no-peers \
      "${extra[@]}" "${tile[@]}" 2>&1 | grep --line-buffered -E '^s2lora' | sed -u "s|^|$arg |" |
      tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    if [ "${S2_AB_D64:-1}" = 1 ]; then
      timeout "$limit" "$dir/bin/s2lora" bench attn specs/llama2-7b-16k.yaml --set model.head_dim=64 --no-peers \
        "${extra[@]}" "${tile[@]}" 2>&1 | grep --line-buffered -E '^s2lora' | sed -u "s|^|$arg |" |
        tee -a "$log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
    fi
  done
done
echo "== medians (ms): build, N, d, fwd, fwd+bwd" | tee -a "$log"
# rows: DIR s2lora N G d H mode fwd_ms fwd_TFs fb_ms ...
# (a failed run's row has "-" for its times: counted as failed, never as 0 ms)
awk "$awk_med"'$2 ~ /^s2lora/ { k = $1 " " $3 " " $5; order[k] = ++n
                                if ($8 == "-" || $10 == "-") { bad[k]++; next }
                                f[k] = f[k] " " $8; b[k] = b[k] " " $10 }
END { for (k in order) if (f[k] == "") printf "%s failed failed\n", k
                       else printf "%s %s %s%s\n", k, med(f[k]), med(b[k]),
                                   bad[k] ? " (" bad[k] " failed runs)" : "" }' "$log" |
  sort -k2,2n -k3,3n -k1,1 | tee -a "$log"
exit $status
