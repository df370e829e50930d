#!/usr/bin/env bash
# Runs the libFuzzer targets of tests/fuzz: tests/fuzz/run.sh SECONDS [TARGET...]
#
# Configures and builds build-fuzz/ (clang, -DS2_FUZZ=ON) as needed, then runs each target
# (default: all) for SECONDS, as many at once as there are cores (S2_FUZZ_JOBS to change),
# each on a scratch copy of its corpus (tests/fuzz/corpus/TARGET; the spec target also gets
# specs/*.yaml and tests/specs_bad/*.yaml), so the repository's corpus is never changed.
# Prints one line per target: runs, coverage, result. Exits 1 if any target found something
# (a crash, a sanitizer report, a broken property, a timeout over 10 s or over 2 GB of memory);
# its input and log are then kept in the scratch directory the line names.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
  echo "usage: tests/fuzz/run.sh SECONDS [TARGET...]  (targets: ${all[*]})" >&2
  exit 2
}
all=(spec st hf data tune_db jit_entry)
[ $# -ge 1 ] && [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] || usage
secs=$1
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || usage
done

build=build-fuzz
if [ ! -f "$build/CMakeCache.txt" ]; then
  cc=${CC_FUZZ:-$(command -v clang || command -v clang-14 || true)}
  [ -n "$cc" ] || { echo "tests/fuzz/run.sh: clang not found (setup.sh installs it)" >&2; exit 1; }
  CC=$cc cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DS2_FUZZ=ON \
    -DS2_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target fuzz >/dev/null

scratch=$(mktemp -d "${TMPDIR:-/tmp}/s2fuzz-run.XXXXXX")
# The readers' files go to memory when it can: every input writes a few.
tmp=$scratch
[ -d /dev/shm ] && [ -w /dev/shm ] && tmp=$(mktemp -d /dev/shm/s2fuzz-tmp.XXXXXX)
# The readers' files in memory go whatever way this script ends (an error, a signal).
trap '[ "$tmp" = "$scratch" ] || rm -rf "$tmp"' EXIT

run_one() {
  local t=$1 dir=$scratch/$1
  mkdir -p "$dir/corpus" "$dir/artifacts" "$dir/tmp"
  cp tests/fuzz/corpus/"$t"/* "$dir/corpus/"
  if [ "$t" = spec ]; then
    for f in specs/*.yaml tests/specs_bad/*.yaml; do
      cp "$f" "$dir/corpus/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
  fi
  local rc=0
  TMPDIR=$tmp/$t.tmp ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    bash -c 'mkdir -p "$TMPDIR" && exec "$@"' _ "$build/tests/fuzz/fuzz_$t" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log" 2>&1 || rc=$?
  echo "$rc" >"$dir/rc"
}

jobs=${S2_FUZZ_JOBS:-$(nproc)}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=0
for t in "${targets[@]}"; do
  dir=$scratch/$t
  rc=1 # a job that died before writing its exit code failed
  [ -f "$dir/rc" ] && rc=$(cat "$dir/rc")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" 2>/dev/null | tail -1 || true)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$dir/log" 2>/dev/null | tail -1 || true)
  corp=$(grep -Eo 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$dir/log" 2>/dev/null | tail -1 || true)
  art=$(ls "$dir/artifacts" 2>/dev/null | head -1)
  if [ "$rc" = 0 ] && [ -z "$art" ]; then
    result=ok
  else
    failed=1
    what=$(grep -Eo 'fuzz finding: .*|SUMMARY: .*|fuzz harness: .*' "$dir/log" 2>/dev/null |
      head -1 || true)
    result="FOUND (exit $rc): ${what:-see the log}; input $dir/artifacts/${art:-?}, log $dir/log"
  fi
  printf '%-10s %ss  runs %-9s %-22s %-14s %s\n' "$t" "$secs" "${runs:-?}" "${cov:-cov: ?}" \
    "${corp:-}" "$result"
done
if [ "$failed" = 0 ]; then
  rm -rf "$scratch"
  exit 0
fi
echo "tests/fuzz/run.sh: findings; inputs and logs are kept in $scratch" >&2
exit 1
