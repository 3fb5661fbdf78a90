#!/usr/bin/env bash
# Packs what the GPU machine (the device tool's H100/H200) needs to run gpu_checks.sh with none of
# the build's Debian packages: the relocatable bundle (`cmake --install`) without the CUDA
# libraries, which that machine's CUDA 13 provides, the test binaries that hold CUDA rows (the ops,
# the kernels, the model's forward) and the CUDA kernel benchmark.
# Writes OUT/kit.tar.xz, small enough for the device tool's 64 MiB carry.
# Usage: tests/device/make_kit.sh [BUILD_DIR=build] [OUT_DIR=.kit]
set -euo pipefail
BUILD=$(realpath "${1:-build}")
OUT=${2:-.kit}
# grep reads all of ldd's output: with pipefail, -q's early exit could fail the pipeline on SIGPIPE.
if ! ldd "$BUILD/apps/moectl/moectl" | grep libcudart >/dev/null; then
  echo "make_kit: $BUILD/apps/moectl/moectl is not a CUDA build (configure with -DMOE_CUDA=ON)" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$BUILD" --prefix "$tmp/kit" >/dev/null
rm -f "$tmp"/kit/lib/libcudart.so* "$tmp"/kit/lib/libcublas*.so* "$tmp"/kit/lib/libnccl.so*
mkdir "$tmp/kit/tests"
cp "$BUILD/tests/moe_test_ops" "$BUILD/tests/moe_test_kernels" "$BUILD/tests/moe_test_infer" \
  "$BUILD/tests/bench/moe_bench_cuda_ops" "$BUILD/tests/bench/moe_bench_gpu_infer" "$tmp/kit/tests/"
mkdir -p "$OUT"
tar -C "$tmp" -cf - kit | xz -T0 -6 >"$OUT/kit.tar.xz.tmp"
mv "$OUT/kit.tar.xz.tmp" "$OUT/kit.tar.xz"
echo "make_kit: $OUT/kit.tar.xz, $(du -h "$OUT/kit.tar.xz" | cut -f1)"
