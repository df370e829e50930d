#!/usr/bin/env bash
# Everything CI checks, after ./setup.sh has built build/ (README's second command):
#   1. the test suites (ctest in build/)
#   2. the same suites built with ASan and UBSan (tests/sanitize.sh, build-san/)
#   3. a short run of every fuzz target (tests/fuzz/run.sh, build-fuzz/), S2_FUZZ_SECONDS each
#      (default 20)
#   4. the Python package's tests (python/tests, stdlib unittest, no torch or GPU): against
#      build/libs2lora.so when it is built, else only the tests that need no library
# Runs every step, prints each one's time, and exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "==== $name: $*"
  "$@" || rc=$?
  local result=passed
  [ $rc = 0 ] || result="FAILED (exit $rc)"
  echo "==== $name: $result in $((SECONDS - t0)) s"
  [ $rc = 0 ] || failed+=("$name")
}

step tests ctest --test-dir build --output-on-failure -j 2
step sanitizers tests/sanitize.sh
step fuzz tests/fuzz/run.sh "${S2_FUZZ_SECONDS:-20}"
if [ -f build/libs2lora.so ]; then
  step python env S2LORA_LIBRARY="$PWD/build/libs2lora.so" python3 -m unittest discover -s python/tests
else
  step python env -u S2LORA_LIBRARY python3 -m unittest discover -s python/tests
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "tests/check.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "tests/check.sh: all passed"
