#!/usr/bin/env bash
# Installs what s2lora builds with (Debian/Ubuntu packages; the CUDA Toolkit is expected under
# /usr/local/cuda), configures and builds into build/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# clang: the fuzz targets (tests/fuzz) are libFuzzer's, which gcc does not have.
pkgs=(cmake gcc make pkg-config python3 libyaml-dev libjansson-dev nettle-dev libcriterion-dev
      clang)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# matplotlib: bench/plot.py's charts and their test (tests/test_plot.sh); installed without its
# recommended packages (GUI toolkits, extra fonts), which the PNG backend does not use.
plot_missing=()
dpkg -s python3-matplotlib >/dev/null 2>&1 || plot_missing=(python3-matplotlib)
# libFuzzer's runtime (libclang_rt.fuzzer) is a package of its own on Debian 12 and newer Ubuntus
# (libclang-rt-dev), part of the libclang-common-N-dev that clang brings on older ones.
fuzzer_links() {
  printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' |
    clang -fsanitize=fuzzer -x c - -o /dev/null >/dev/null 2>&1
}
need_rt=0
command -v clang >/dev/null 2>&1 && fuzzer_links || need_rt=1
if [ ${#missing[@]} -gt 0 ] || [ ${#plot_missing[@]} -gt 0 ] || [ $need_rt = 1 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  if [ $need_rt = 1 ] && apt-cache show libclang-rt-dev >/dev/null 2>&1; then
    missing+=(libclang-rt-dev)
  fi
  [ ${#missing[@]} -eq 0 ] ||
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  [ ${#plot_missing[@]} -eq 0 ] ||
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${plot_missing[@]}"
fi

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
