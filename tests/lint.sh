#!/usr/bin/env bash
# clang-tidy (.clang-tidy at the repository root) over every libmoe/, apps/ and tests/ C++ source
# in a build's compile_commands.json (CUDA sources are left out: clang-tidy cannot take nvcc's
# flags). Also the ctest `clang_tidy` (label lint): 6 to 15 minutes on 2 busy cores.
# Usage: tests/lint.sh [BUILD_DIR] [FILE_REGEX]   (default: build; every source of ours)
# The build must be configured with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON (the top CMakeLists sets it).
# Prints the findings and a count; exits 1 when there is any, 77 (ctest's skip) without clang-tidy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
REGEX=${2:-^$ROOT/(libmoe|apps|tests)/.*\.cpp$}
command -v run-clang-tidy >/dev/null && command -v clang-tidy >/dev/null || {
  echo "SKIP: run-clang-tidy not installed (apt-get install clang-tidy); clang-tidy not run"
  exit 77
}
[ -f "$BUILD/compile_commands.json" ] || { echo "$BUILD/compile_commands.json missing (configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)"; exit 2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# -Wno-unknown-warning-option: GCC-only flags in the compile commands (-Wno-restrict).
run-clang-tidy -p "$BUILD" -j "$(nproc)" -quiet -extra-arg=-Wno-unknown-warning-option "$REGEX" >"$log" 2>&1 || true
sed -i 's/\x1b\[[0-9;]*m//g' "$log"  # run-clang-tidy colours its output
findings=$(grep -E '^/.*: (warning|error): ' "$log" | sort -u | sed "s|^$ROOT/||" || true)  # none: grep fails
[ -z "$findings" ] || echo "$findings"
n=$(grep -c . <<<"$findings" || true)
echo "clang-tidy: $n finding(s) in $(grep -c '"file"' "$BUILD/compile_commands.json") translation units"
[ "$n" -eq 0 ]
