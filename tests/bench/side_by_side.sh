#!/usr/bin/env bash
# The engine benchmarks of two builds side by side on this machine, alternating so that drift
# in the machine's speed hits both alike: decode (f32, bf16) as % of read bandwidth and prefill
# as % of sgemm (bench_infer), training as % of sgemm (bench_train), each ratio against ceilings
# measured in the same run. Used to show that a change to the engine costs no speed.
# Usage: side_by_side.sh BASE_BUILD_DIR NEW_BUILD_DIR [ROUNDS]   (build dirs with tests/bench built)
set -euo pipefail
base=$1 new=$2 rounds=${3:-2}
for r in $(seq 1 "$rounds"); do
  for side in base new; do
    dir=$([ "$side" = base ] && echo "$base" || echo "$new")
    echo "### round $r: $side ($dir)"
    "$dir/tests/bench/moe_bench_infer" | grep -E "^==|prefill|decode|ceilings"
    "$dir/tests/bench/moe_bench_train" --steps 3 | grep -E "moectl:|peak RSS|page faults"
  done
done
