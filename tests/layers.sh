#!/usr/bin/env bash
# tests/layers.sh — the layering of runtime/ (runtime/README.md) as a test: every #include "..."
# of a runtime/<layer>/ file must name a folder its runtime/<layer>/README.md lists on its
# "May include:" line, and gen/ includes only gen/. Prints each violation as FILE:LINE and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
check() { # folder, allowed folders (space separated)
  local dir=$1 allowed=" $2 " f line inc n folder
  for f in "$dir"/*.c "$dir"/*.h; do
    [ -e "$f" ] || continue
    n=0
    while IFS= read -r line; do
      n=$((n + 1))
      [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]+\"([^\"]+)\" ]] || continue
      inc=${BASH_REMATCH[1]}
      if [[ $inc == */* ]]; then folder=${inc%/*}; else folder=$dir; fi
      if [[ $allowed != *" $folder "* ]]; then
        echo "$f:$n: includes \"$inc\" ($folder); $dir may include only:$allowed" >&2
        bad=1
      fi
    done <"$f"
  done
}
check gen "gen"
layers=0
for readme in runtime/*/README.md; do
  dir=${readme%/README.md}
  allowed=$(sed -n 's/^May include: //p' "$readme" | tr -d ',')
  if [ -z "$allowed" ]; then echo "$readme: no \"May include:\" line" >&2; bad=1; continue; fi
  check "$dir" "$allowed"
  layers=$((layers + 1))
done
for f in runtime/*.c runtime/*.h; do
  [ -e "$f" ] && { echo "$f: runtime/ sources belong in a layer folder" >&2; bad=1; }
done
for d in runtime/*/; do
  [ -f "$d/README.md" ] || { echo "${d%/}: a layer folder without README.md" >&2; bad=1; }
done
[ $bad -eq 0 ] && echo "layers: $layers runtime layers and gen include only what they may"
exit $bad
