#!/usr/bin/env bash
# Builds every suite with AddressSanitizer and UndefinedBehaviorSanitizer (build-san/,
# -DS2_SANITIZE=ON: -fsanitize=address,undefined -fno-sanitize-recover=all) and runs its ctest:
#   tests/sanitize.sh          the suites CI runs (below)
#   tests/sanitize.sh --all    every suite but gpu_check_builds (about 6 more minutes on 2 cores)
#
# Left out unless --all: test_build, test_tune and test_lora_plan, whose time is NVRTC building
# kernels (a library the sanitizers do not instrument, slowed further by ASan's allocator): 2.2,
# 5.5 and 0.7 minutes on 2 cores, against 30 seconds for all the other suites together; the host
# code they drive (plan, emit, cache, tuning db) is covered here by test_gen, test_jit, test_cli
# and test_tune_db. Always left out: gpu_check_builds, the GPU check's whole NVRTC build, which
# checks the kernels and nothing of the host code.
#
# Reports: an error or undefined behaviour aborts the test process (the suite fails). A leak is
# found only as a test's process exits, after Criterion has recorded the test as passed, so every
# ASan report goes to a file (log_path) and any file there fails the run; they are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

all=0
case "${1:-}" in
  --all) all=1 ;;
  "") ;;
  *) echo "usage: tests/sanitize.sh [--all]" >&2; exit 2 ;;
esac

build=build-san
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DS2_SANITIZE=ON >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null

exclude='^gpu_check_builds$'
[ "$all" = 1 ] || exclude='^(gpu_check_builds|test_build|test_tune|test_lora_plan)$'
logs=$build/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"
rc=0
ASAN_OPTIONS=detect_leaks=1:log_path=$PWD/$logs/asan \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build" -E "$exclude" --output-on-failure -j 2 || rc=$?
if [ -n "$(ls -A "$logs")" ]; then
  for f in "$logs"/*; do
    echo "---- $f"
    cat "$f"
  done
  echo "tests/sanitize.sh: sanitizer reports above (also in $logs)" >&2
  rc=1
fi
exit "$rc"
