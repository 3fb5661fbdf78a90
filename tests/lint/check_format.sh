#!/usr/bin/env bash
# The tracked C++/CUDA sources match .clang-format. Names every file that drifts (fix with
# `clang-format -i FILE`) and exits 1; skips (exit 0, with a message) without clang-format.
# Usage: check_format.sh [SOURCE_DIR]
set -euo pipefail
cd "${1:-$(dirname "$0")/../..}"
CF=${CLANG_FORMAT:-clang-format}
if ! command -v "$CF" >/dev/null 2>&1; then
  echo "SKIP: $CF not installed (apt-get install clang-format); formatting not checked"
  exit 0
fi
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "SKIP: not a git checkout; formatting not checked"
  exit 0
fi
mapfile -t files < <(git ls-files -- 'libmoe/*.h' 'libmoe/*.cpp' 'libmoe/*.cu' 'libmoe/*.cuh' \
  'apps/*.h' 'apps/*.cpp' 'tests/*.h' 'tests/*.cpp' 'tests/*.cu' 'tests/*.cuh')
drift=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue  # deleted in the work tree
  "$CF" --dry-run --Werror "$f" >/dev/null 2>&1 || drift+=("$f")
done
if [ ${#drift[@]} -gt 0 ]; then
  printf 'not clang-formatted: %s\n' "${drift[@]}"
  echo "${#drift[@]} of ${#files[@]} files drift from .clang-format ($("$CF" --version | head -1)); run: clang-format -i FILE"
  exit 1
fi
echo "clang-format: all ${#files[@]} files clean ($("$CF" --version | head -1))"
