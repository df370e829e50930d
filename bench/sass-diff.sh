#!/usr/bin/env bash
# Whether two s2lora builds generate the same machine code, with no GPU: each build runs
# `s2lora build SPEC --arch ARCH [--tile TILE]` for every case into a kernel cache of its own,
# and the SASS of each unit's cubin (cuobjdump -sass; instruction addresses and blank lines
# dropped) is compared, unit by unit. A change meant to leave the kernels as they were (a
# template refactor, a renamed helper) shows here as "same" on every line, so the GPU checks
# and timings of the old build still stand for the new one.
#
#   bench/sass-diff.sh OLD_S2LORA NEW_S2LORA [CASE ...]
#
# A CASE is SPEC[@ARCH][%TILE] (default arch sm_90a); without cases, the default spec's kernels
# with the sm_90a default and five other forward and backward tiles, 16k (the dQ kernel's
# backward), d = 64, GQA, and sm_80.
# Needs cuobjdump and nvdisasm on PATH (the CUDA toolkit's bin/, or PyPI's nvidia-cuda-cuobjdump
# and nvidia-cuda-nvdisasm). Prints one line a unit (same / DIFFERS, with the SASS line counts),
# and under a unit that differs one line a kernel with its SASS instructions in OLD and NEW (a
# static count: what a change saves or costs before any GPU runs it); exit status 0 when every
# unit is the same, 1 when one differs, 2 on a usage or build error.
# S2_KEEP_SASS=1 keeps the work folder (each case's SASS, OLD and NEW, named on stderr) for a
# diff by hand.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
usage="usage: bench/sass-diff.sh OLD_S2LORA NEW_S2LORA [SPEC[@ARCH][%TILE] ...]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
old=$1 new=$2
shift 2
for b in "$old" "$new"; do
  [ -x "$b" ] || { echo "sass-diff: $b is not an executable s2lora" >&2; exit 2; }
done
for tool in cuobjdump nvdisasm; do
  command -v "$tool" >/dev/null || { echo "sass-diff: $tool is not on PATH" >&2; exit 2; }
done
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  s=specs/llama2-7b-32k.yaml
  # (its default backward is the ordered dQ's TMA kernel; the cp.async kernels and the TMA
  # kernel beside the dQ kernel are named with bwd_tma and bwd_atomic_dq; llama2-7b-16k's
  # default backward is the dQ kernel's form)
  cases=("$s" "$s%fwd_overlap=0,fwd_stages=2" "$s%fwd_tma=0,fwd_overlap=0"
    "$s%fwd_tma=0,fwd_overlap=0,fwd_mbar=0,bwd_mbar=0,bwd_tma=0,bwd_atomic_dq=0"
    "$s%bwd_tma=1,bwd_atomic_dq=1,bwd_stages=2" "$s%bwd_tma=1,bwd_stages=3,bwd_atomic_dq=0"
    specs/llama2-7b-16k.yaml specs/llama2-70b-32k.yaml specs/tiny-byte-512.yaml "$s@sm_80")
fi
work=$(mktemp -d /tmp/s2lora-sass.XXXXXX)
if [ -n "${S2_KEEP_SASS:-}" ]; then
  echo "sass-diff: kept in $work" >&2
else
  trap 'rm -rf "$work"' EXIT
fi

# The SASS of cache entry $1 (the cubin after the entry's header, whose length is the u32 at
# byte 12: runtime/core/jit.c) into $2.
sass_of() {
  local hlen
  hlen=$(od -An -tu4 -j12 -N4 "$1" | tr -d ' ')
  tail -c +$((hlen + 1)) "$1" >"$work/x.cubin"
  cuobjdump -sass "$work/x.cubin" | sed -e 's|/\*[0-9a-f]\{4,\}\*/||g' -e 's/[[:space:]]*$//' |
    grep -v '^$' >"$2"
}

# Instructions a kernel in SASS file $1 (the trailing NOPs included): "KERNEL COUNT" lines,
# sorted by kernel.
kernel_counts() {
  awk '/Function :/ { f = $3 } /;/ && !/^[[:space:]]*\/\*/ && f != "" { n[f]++ }
       END { for (k in n) print k, n[k] }' "$1" | sort
}

status=0
i=0
for c in "${cases[@]}"; do
  i=$((i + 1))
  spec=${c%%[@%]*} arch=sm_90a tile=
  case "$c" in *@*) arch=${c#*@}; arch=${arch%%%*} ;; esac
  case "$c" in *%*) tile=${c#*%} ;; esac
  args=(--arch "$arch")
  [ -n "$tile" ] && args+=(--tile "$tile")
  for side in old new; do
    bin=$old
    [ $side = new ] && bin=$new
    mkdir -p "$work/$side$i"
    if ! S2LORA_CACHE_DIR=$work/$side$i "$bin" build "$spec" "${args[@]}" \
      >"$work/$side$i.log" 2>&1; then
      echo "sass-diff: $side build of $c failed:" >&2
      tail -3 "$work/$side$i.log" >&2
      exit 2
    fi
    for cu in "$work/$side$i"/*.cu; do
      unit=$(sed -n '2s|^// unit \([a-z_]*\).*|\1|p' "$cu")
      sass_of "${cu%.cu}.cubin" "$work/$side$i.$unit.sass"
    done
  done
  for f in "$work/old$i".*.sass; do
    unit=${f#"$work/old$i."}
    unit=${unit%.sass}
    g=$work/new$i.$unit.sass
    name="${spec##*/}${tile:+ $tile}"
    if [ -f "$g" ] && cmp -s "$f" "$g"; then
      printf '%-8s %-52s %-10s same (%d lines)\n' "$arch" "$name" "$unit" "$(wc -l <"$f")"
    else
      printf '%-8s %-52s %-10s DIFFERS (%d against %d lines)\n' "$arch" "$name" "$unit" \
        "$(wc -l <"$f")" "$([ -f "$g" ] && wc -l <"$g" || echo 0)"
      [ -f "$g" ] || : >"$g"
      join -a1 -a2 -e 0 -o 0,1.2,2.2 <(kernel_counts "$f") <(kernel_counts "$g") |
        while read -r kernel a b; do
          printf '           %-50s %6d -> %6d instructions (%+d)\n' "$kernel" "$a" "$b" \
            $((b - a))
        done
      status=1
    fi
  done
done
exit $status
