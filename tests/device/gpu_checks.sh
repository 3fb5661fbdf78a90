#!/usr/bin/env bash
# The GPU machine's checks in one call, from the repository root (the device tool runs commands
# there, with .kit carried):
#   run: tests/device/gpu_checks.sh   carry: [".kit"]   (after tests/device/make_kit.sh here)
# 1. the bundle on a machine with none of the build's packages: ldd, --version, a CPU infer;
# 2. the op harness's CUDA rows and the CUDA kernel tests, each op against its CPU twin;
# 3. the model's forward on the GPU against the CPU (moe_test_infer's CudaForward: four families,
#    fp32 and bf16) and `moectl infer --device cuda` against `--device cpu` on the tiny model;
#    compute-sanitizer memcheck over the CUDA rows;
# 4. the CUDA kernel benchmark (decode GEMV and attention against the copy bandwidth, prefill
#    projection against cuBLAS's GEMM) and the model's (bench_gpu_infer: decode of a
#    Qwen3-30B-A3B-shaped model against the copy bandwidth, prefill TFLOP/s);
# 5. torch_dist against PyTorch 2's torch.distributed.checkpoint (dcp_interop.py), both ways; the
#    PyTorch-written checkpoints land in $OUT/fixtures.
# Every step runs and prints under its own heading; the exit status is 1 if any failed. Steps that
# need what a machine lacks (a GPU, compute-sanitizer, PyTorch 2) say so and count as skipped.
set -uo pipefail
KIT_TAR=$(realpath "${1:-.kit/kit.tar.xz}")
OUT=$(realpath "${OUT:-$(mktemp -d)}")
cd "$(dirname "$0")/../.." || exit 2
PYTHON=${PYTHON:-python3}  # the one with PyTorch 2 (the GPU machine's plain python3)
work=$(mktemp -d)
tar -C "$work" -xJf "$KIT_TAR" || exit 2
K=$work/kit
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  if [ -e "$d/libcublas.so.13" ]; then cuda_lib=$d; break; fi
done
if [ -z "$cuda_lib" ]; then  # CUDA from pip's nvidia-* wheels (PyTorch's own)
  cuda_lib=$(python3 -c 'import os, nvidia.cublas as c, nvidia.cuda_runtime as r
print(":".join(os.path.join(list(m.__path__)[0], "lib") for m in (c, r)))' 2>/dev/null)
fi
export LD_LIBRARY_PATH=$K/lib${cuda_lib:+:$cuda_lib}
export PATH=$PATH:/usr/local/cuda/bin  # compute-sanitizer
failed=()
section() { printf '\n== %s\n' "$*"; }
check() {  # check NAME CMD...: runs CMD, records NAME when it fails (77 = skipped)
  local name=$1
  shift
  "$@"
  local rc=$?
  if [ $rc -eq 77 ]; then echo "-- $name: skipped"; elif [ $rc -ne 0 ]; then
    echo "-- $name: FAILED (exit $rc)"
    failed+=("$name")
  else echo "-- $name: ok"; fi
}

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
echo "CUDA libraries from: ${cuda_lib:-nowhere}"

section "bundle"
bundle() {
  if ldd "$K/bin/moectl" | grep "not found"; then return 1; fi
  "$K/bin/moectl" --version || return 1
  "$K/bin/moectl" init --config configs/tiny-moe --output_dir "$work/tiny" >/dev/null || return 1
  echo '{"messages": [{"role": "user", "content": "Who are you?"}]}' >"$work/q.jsonl"
  "$K/bin/moectl" infer --model "$work/tiny" --val_dataset "$work/q.jsonl" --max_new_tokens 8 --temperature 0 \
    --result_path "$work/a.jsonl" && head -c 300 "$work/a.jsonl" && echo
}
check bundle bundle

section "CUDA op harness and kernels (each CUDA op against its CPU twin)"
has_gpu() { nvidia-smi -L >/dev/null 2>&1; }
gtest() {  # a GoogleTest binary: its totals and failures; skipped (77) when it ran without a GPU
  "$@" 2>&1 | grep -E "^\[==========\] [0-9]+ tests|^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test|^\[  FAILED  \] [A-Za-z]|Failure|rror" | head -60
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ] && ! has_gpu; then return 77; fi
  return "$rc"
}
check op_harness gtest "$K/tests/moe_test_ops" --gtest_filter='*Cuda*'
check cuda_kernels gtest "$K/tests/moe_test_kernels" --gtest_filter='*Cuda*'

section "the model on the GPU (moectl infer --device cuda against --device cpu)"
check cuda_forward gtest "$K/tests/moe_test_infer" --gtest_filter='CudaForward.*'
infer_on_gpu() {  # the tiny model is bf16: the first token's top-5 logprobs within 2e-2 (issue 17)
  has_gpu || { echo "no GPU"; return 77; }
  local d
  for d in cpu cuda; do
    "$K/bin/moectl" infer --model "$work/tiny" --val_dataset "$work/q.jsonl" --max_new_tokens 32 --temperature 0 \
      --logprobs true --top_logprobs 5 --device $d --verbose true --result_path "$work/$d.jsonl" |
      grep -F '[prefill' || return 1
  done
  "$PYTHON" - "$work/cpu.jsonl" "$work/cuda.jsonl" <<'PY'
import json, sys
cpu, gpu = (json.loads(open(p).readline()) for p in sys.argv[1:3])
print("cpu: ", repr(cpu["response"][:120]))
print("cuda:", repr(gpu["response"][:120]), "(same text)" if cpu["response"] == gpu["response"] else "(differs)")
a, b = (r["logprobs"]["content"][0]["top_logprobs"] for r in (cpu, gpu))
pa, pb = ({x["id"]: x["logprob"] for x in t} for t in (a, b))
worst = max(abs(pa[i] - pb[i]) for i in pa if i in pb)
print("first token: top-5 ids", "the same" if list(pa) == list(pb) else "differ",
      "| largest logprob difference %.2e" % worst)
sys.exit(0 if worst <= 2e-2 and a[0]["id"] == b[0]["id"] else 1)
PY
}
check infer_on_gpu infer_on_gpu

section "compute-sanitizer memcheck"
memcheck() {
  command -v compute-sanitizer >/dev/null || { echo "no compute-sanitizer"; return 77; }
  has_gpu || { echo "no GPU"; return 77; }
  compute-sanitizer --tool memcheck --error-exitcode 9 "$K/tests/moe_test_ops" --gtest_filter='*Cuda*' 2>&1 | tail -6
  local rc=${PIPESTATUS[0]}
  compute-sanitizer --tool memcheck --error-exitcode 9 "$K/tests/moe_test_infer" --gtest_filter='CudaForward.*' 2>&1 |
    tail -6
  [ "$rc" -eq 0 ] && return "${PIPESTATUS[0]}"
  return "$rc"
}
check memcheck memcheck

section "GPU speed (bench_cuda_ops: against the copy bandwidth and cuBLAS's GEMM, same run)"
check bench_cuda_ops "$K/tests/moe_bench_cuda_ops"
section "GPU model speed (bench_gpu_infer: Qwen3-30B-A3B shape, 12 layers, bf16; decode against the copy)"
check bench_gpu_infer "$K/tests/moe_bench_gpu_infer" --layers "${GPU_BENCH_LAYERS:-12}"

section "torch_dist with PyTorch's torch.distributed.checkpoint"
check dcp_interop "$PYTHON" tests/device/dcp_interop.py "$K/bin/moectl" . "$work/dcp" "$OUT"

section "summary"
rm -rf "$work"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all checks passed or skipped"
