#!/usr/bin/env bash
# clang-tidy (.clang-tidy at the repository root) over every libmoe/, apps/ and tests/ source in
# a build's compile_commands.json. Not part of ctest: on 2 cores it takes several minutes.
# Usage: tests/lint.sh [BUILD_DIR] [FILE_REGEX]   (default: build; every source of ours)
# The build must be configured with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON (the top CMakeLists sets it).
# Prints the findings and a count; exits 1 when there is any.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
REGEX=${2:-^$ROOT/(libmoe|apps|tests)/}
command -v run-clang-tidy >/dev/null || { echo "run-clang-tidy not installed (apt-get install clang-tidy)"; exit 2; }
[ -f "$BUILD/compile_commands.json" ] || { echo "$BUILD/compile_commands.json missing (configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)"; exit 2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# -Wno-unknown-warning-option: GCC-only flags in the compile commands (-Wno-restrict).
run-clang-tidy -p "$BUILD" -j "$(nproc)" -quiet -extra-arg=-Wno-unknown-warning-option "$REGEX" >"$log" 2>&1 || true
sed -i 's/\x1b\[[0-9;]*m//g' "$log"  # run-clang-tidy colours its output
grep -E '^/.*: (warning|error): ' "$log" | sort -u | sed "s|^$ROOT/||" || true
n=$(grep -E '^/.*: (warning|error): ' "$log" | sort -u | wc -l)
echo "clang-tidy: $n finding(s) in $(grep -c '"file"' "$BUILD/compile_commands.json") translation units"
[ "$n" -eq 0 ]
