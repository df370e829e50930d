#!/usr/bin/env bash
# tests/install.sh [BUILD_DIR] — the installed library as a user meets it (a ctest):
#   1. builds what is installed (s2lora, libs2lora.so) in BUILD_DIR (default: a fresh build in
#      a temporary directory) and installs it into a temporary prefix;
#   2. checks the installed tree: bin/s2lora, lib/libs2lora.so -> .so.0 -> .so.VERSION with
#      SONAME libs2lora.so.0, include/s2lora.h, the pkg-config file, the CMake package, the
#      specs; and that the library exports s2lora_* functions only;
#   3. compiles tests/api_example.c against the installed tree twice, with
#      `pkg-config --cflags --libs s2lora` and with a CMake project using find_package(s2lora),
#      and runs both without a device (-1) on the installed tiny-byte-512 spec: each prints the
#      spec's values and builds its kernels (into the kernel cache, $S2LORA_CACHE_DIR: the
#      ctest sets one inside the build directory).
# Prints one line per check; exits 1 on the first failure.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/s2lora-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
build=${1:-$tmp/build}
fail() { echo "install: FAIL: $*" >&2; exit 1; }
ok() { echo "install: ok: $*"; }

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DS2_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" -j 2 --target s2lora s2lora_shared >"$tmp/build.log" 2>&1 ||
  { tail -20 "$tmp/build.log"; fail "building s2lora and s2lora_shared in $build"; }
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "cmake --install $build --prefix $prefix"; }
ok "installed into $prefix"

version=$(sed -n 's/^#define S2LORA_VERSION "\(.*\)"$/\1/p' "$src/runtime/api/s2lora.h")
[ -n "$version" ] || fail "no S2LORA_VERSION in runtime/api/s2lora.h"
for f in bin/s2lora lib/libs2lora.so "lib/libs2lora.so.${version%%.*}" "lib/libs2lora.so.$version" \
         include/s2lora.h lib/pkgconfig/s2lora.pc lib/cmake/s2lora/s2loraConfig.cmake \
         lib/cmake/s2lora/s2loraConfigVersion.cmake share/s2lora/specs/tiny-byte-512.yaml \
         share/s2lora/specs/llama2-7b-32k.yaml; do
  [ -e "$prefix/$f" ] || fail "$f is not installed"
done
[ -L "$prefix/lib/libs2lora.so" ] || fail "lib/libs2lora.so is not a link to the versioned file"
soname=$(readelf -d "$prefix/lib/libs2lora.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libs2lora.so.${version%%.*}" ] ||
  fail "SONAME '$soname'; expected libs2lora.so.${version%%.*}"
ok "installed files, libs2lora.so.$version with SONAME $soname"
"$prefix/bin/s2lora" version >"$tmp/version.txt" 2>&1 ||
  { cat "$tmp/version.txt"; fail "the installed bin/s2lora does not run"; }
ok "bin/s2lora runs: $(head -n 1 "$tmp/version.txt")"

# Exported: the public functions, every one the header declares, and nothing else.
nm -D --defined-only "$prefix/lib/libs2lora.so" | awk '{print $3}' | sort >"$tmp/exported"
others=$(grep -v '^s2lora_' "$tmp/exported" || true)
[ -z "$others" ] ||
  fail "libs2lora.so exports symbols outside s2lora_*: $(echo $others | head -c 300)"
grep -oE '\bs2lora_[a-z0-9_]+\(' "$prefix/include/s2lora.h" | tr -d '(' | sort -u >"$tmp/declared"
missing=$(comm -23 "$tmp/declared" "$tmp/exported")
[ -z "$missing" ] || fail "declared in s2lora.h but not exported: $missing"
ok "$(wc -l <"$tmp/exported") symbols exported, all s2lora_*, every declared function among them"

spec=$prefix/share/s2lora/specs/tiny-byte-512.yaml
check_run() { # name, binary
  local out
  out=$(LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$2" -1 "$spec" 2>&1) ||
    { echo "$out"; fail "$1: api_example -1 $spec exited $?"; }
  echo "$out" | sed "s/^/  $1: /"
  echo "$out" | grep -q "^libs2lora $version, device ''" || fail "$1: no version line"
  echo "$out" | grep -qE '^spec tiny-byte-512: context [0-9]+, G [0-9]+, S [0-9]+ ' ||
    fail "$1: no spec line"
  echo "$out" | grep -qE '^build: [0-9]+ units compiled, [0-9]+ from the cache$' ||
    fail "$1: no build line"
  ok "$1: the example ran without a device"
}

# With pkg-config, the installed .pc and nothing of the source tree.
cc=${CC:-cc}
flags=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs s2lora) ||
  fail "pkg-config --cflags --libs s2lora"
pcv=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion s2lora)
[ "$pcv" = "$version" ] || fail "pkg-config --modversion s2lora = $pcv; expected $version"
cp "$src/tests/api_example.c" "$tmp/api_example.c"
# shellcheck disable=SC2086 # flags are words
"$cc" -std=c11 -Wall -Wextra -Werror -o "$tmp/example-pc" "$tmp/api_example.c" $flags -lm ||
  fail "compiling api_example.c with: $flags"
ok "compiled with pkg-config: $flags"
check_run pkg-config "$tmp/example-pc"

# With CMake's find_package and the imported target.
mkdir -p "$tmp/proj"
cp "$tmp/api_example.c" "$tmp/proj/"
cat >"$tmp/proj/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.22)
project(s2lora_user LANGUAGES C)
find_package(s2lora $version REQUIRED)
add_executable(api_example api_example.c)
target_link_libraries(api_example PRIVATE s2lora::s2lora m)
EOF
cmake -S "$tmp/proj" -B "$tmp/proj/build" -DCMAKE_PREFIX_PATH="$prefix" >"$tmp/proj.log" 2>&1 &&
  cmake --build "$tmp/proj/build" >>"$tmp/proj.log" 2>&1 ||
  { cat "$tmp/proj.log"; fail "a CMake project with find_package(s2lora)"; }
ok "compiled with find_package(s2lora $version) and s2lora::s2lora"
check_run find_package "$tmp/proj/build/api_example"
echo "install: all checks passed"
