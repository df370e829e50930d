#!/usr/bin/env bash
# Builds every suite with AddressSanitizer and UndefinedBehaviorSanitizer (build-san/,
# -DS2_SANITIZE=ON: -fsanitize=address,undefined -fno-sanitize-recover=all) and runs its ctest:
#   tests/sanitize.sh          the suites CI runs (below)
#   tests/sanitize.sh --all    every suite but gpu_check_builds (about 5 more minutes on 2 cores)
#
# Left out unless --all: test_build, test_tune and test_lora_plan, whose time is NVRTC building
# kernels (a library the sanitizers do not instrument, slowed further by ASan's allocator): 2.1,
# 4.3 and 0.7 minutes on 2 cores, against about one for all the other suites together; the host
# code they drive (plan, emit, cache, tuning db) is covered here by test_gen, test_jit, test_cli
# and test_tune_db. Always left out: gpu_check_builds, the GPU check's whole NVRTC build, which
# checks the kernels and nothing of the host code.
#
# Reports: an error or undefined behaviour aborts the test process (the suite fails). A leak is
# found only as a process exits, after Criterion has recorded its test as passed (and a leak in
# the runner would fail a suite whose tests all passed, or a command's exit code a test checks),
# so leaks change no exit code (LSAN_OPTIONS=exitcode=0): every ASan report goes to a file
# (log_path), and any file there fails the run and is printed.
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
# 0 when the report is only leaks whose allocation stacks lie wholly inside Criterion: its
# runner leaks a 48-byte record now and then, and no frame of this project's code is in those.
criterion_only() {
  awk '/ERROR: AddressSanitizer|runtime error/ { ours = 1 }
       /^(Direct|Indirect) leak/ { leak = 1; next }
       leak && /^ *#[0-9]+ / { if ($0 !~ /libcriterion\.so|asan_malloc_linux/) ours = 1; next }
       /^$/ { leak = 0 }
       END { exit ours }' "$1"
}

rc=0
ASAN_OPTIONS=detect_leaks=1:log_path=$PWD/$logs/asan LSAN_OPTIONS=exitcode=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build" -E "$exclude" --output-on-failure -j 2 || rc=$?
reports=0
for f in "$logs"/*; do
  [ -e "$f" ] || continue
  if criterion_only "$f"; then
    echo "tests/sanitize.sh: $f: a leak inside Criterion itself, not counted"
    continue
  fi
  echo "---- $f"
  cat "$f"
  reports=$((reports + 1))
done
if [ "$reports" -gt 0 ]; then
  echo "tests/sanitize.sh: $reports sanitizer report(s) above (also in $logs)" >&2
  rc=1
fi
exit "$rc"
