// The CUDA kernels inference leans on, against ceilings measured in the same run on the same GPU
// (issue 17's targets; run by tests/device/gpu_checks.sh):
//  - decode's weight stream: the bf16 GEMV (linear_half, 1 token) over a Qwen3-30B-A3B-sized LM
//    head, weight bytes/s against the device-to-device copy (bytes read + written per second);
//  - decode attention over a 4096-key cache (32 heads, 4 KV groups of 128): K/V bytes/s, same
//    ceiling;
//  - prefill projections: linear_half at 4096 tokens, TFLOP/s against cuBLAS's bf16 GEMM at
//    8192^3.
// Each timing is the median of 20 runs after 3 warm-ups, with CUDA events. Exits 77 without a GPU.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/linear.h"

using namespace moe;
namespace gpu = moe::kernels::cuda;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Median seconds of fn over 20 runs after 3 warm-ups.
double time_it(const std::function<void()>& fn) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < 20; ++i) {
    check(cudaEventRecord(a), "cudaEventRecord");
    fn();
    check(cudaEventRecord(b), "cudaEventRecord");
    check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    t.push_back(ms / 1e3);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Random-ish bf16 values in [-0.5, 0.5) (the GEMMs' speed does not depend on them, but zeros
// can take faster paths).
void fill_bf16(gpu::DeviceBuffer& buf, size_t n) {
  std::vector<uint16_t> h(n);
  uint32_t s = 12345;
  for (auto& v : h) {
    s = s * 1664525u + 1013904223u;
    const float f = float(s >> 8) / float(1 << 24) - 0.5f;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    v = uint16_t(bits >> 16);
  }
  buf.upload(h.data(), n * 2);
}

}  // namespace

int main() {
  std::string why;
  if (!gpu::device_available(&why)) {
    std::printf("SKIP: %s\n", why.c_str());
    return 77;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  // Ceiling 1: device-to-device copy of 2 GiB, bytes read + written per second.
  const size_t copy_bytes = size_t(2) << 30;
  gpu::DeviceBuffer src(copy_bytes, "copy source"), dst(copy_bytes, "copy destination");
  check(cudaMemset(src.as<char>(), 1, copy_bytes), "cudaMemset");
  const double copy_s =
      time_it([&] { check(cudaMemcpy(dst.as<char>(), src.as<char>(), copy_bytes, cudaMemcpyDeviceToDevice), "D2D"); });
  const double copy_bw = 2.0 * double(copy_bytes) / copy_s;
  std::printf("device-to-device copy: %.0f GB/s (read + written)\n", copy_bw / 1e9);

  // Decode's weight stream: one token through a [151936, 2048] bf16 LM head.
  const int64_t V = 151936, H = 2048;
  gpu::DeviceBuffer head(size_t(V * H) * 2, "LM head"), x(size_t(4096 * 6144) * 4, "activations"),
      y(size_t(4096) * V * 4 / 16, "outputs");
  fill_bf16(head, size_t(V * H));
  check(cudaMemset(x.as<char>(), 0x3c, size_t(4096 * 6144) * 4), "cudaMemset");  // 0.0115 each, not zeros
  const double gemv_s =
      time_it([&] { gpu::linear_half(x.as<float>(), 1, head.as<void>(), DType::BF16, V, H, y.as<float>()); });
  const double gemv_bw = double(V * H) * 2 / gemv_s;
  std::printf("decode GEMV (bf16 [%lld, %lld], 1 token): %.0f GB/s = %.1f%% of the copy (target >= 70%%)\n",
              (long long)V, (long long)H, gemv_bw / 1e9, 100 * gemv_bw / copy_bw);

  // Decode attention over a 4096-key cache.
  const int64_t S = 4096, nh = 32, ng = 4, d = 128;
  gpu::DeviceBuffer q(size_t(nh * d) * 4, "q"), kc(size_t(S * ng * d) * 4, "k cache"),
      vc(size_t(S * ng * d) * 4, "v cache"), o(size_t(nh * d) * 4, "attention out");
  check(cudaMemset(q.as<char>(), 0, size_t(nh * d) * 4), "cudaMemset");
  check(cudaMemset(kc.as<char>(), 0, size_t(S * ng * d) * 4), "cudaMemset");
  check(cudaMemset(vc.as<char>(), 0, size_t(S * ng * d) * 4), "cudaMemset");
  const kernels::cpu::AttentionShape shape{1, S - 1, nh, ng, d, 0.088f};
  const double att_s =
      time_it([&] { gpu::causal_attention(shape, q.as<float>(), kc.as<float>(), vc.as<float>(), o.as<float>()); });
  const double att_bw = 2.0 * double(S * ng * d) * 4 / att_s;
  std::printf(
      "decode attention (%lld keys, %lld heads / %lld groups of %lld): %.1f us, %.0f GB/s = %.1f%% of the copy\n",
      (long long)S, (long long)nh, (long long)ng, (long long)d, att_s * 1e6, att_bw / 1e9, 100 * att_bw / copy_bw);

  // Ceiling 2: cuBLAS bf16 GEMM at 8192^3 (f32 accumulation and output).
  const int n = 8192;
  gpu::DeviceBuffer A(size_t(n) * n * 2, "GEMM A"), B(size_t(n) * n * 2, "GEMM B"), C(size_t(n) * n * 4, "GEMM C");
  fill_bf16(A, size_t(n) * n);
  fill_bf16(B, size_t(n) * n);
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
  const float one = 1, zero = 0;
  const double gemm_s = time_it([&] {
    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, A.as<void>(), CUDA_R_16BF, n, B.as<void>(), CUDA_R_16BF, n,
                 &zero, C.as<void>(), CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  });
  const double gemm_rate = 2.0 * n * double(n) * n / gemm_s;
  std::printf("cuBLAS bf16 GEMM %d^3: %.0f TFLOP/s\n", n, gemm_rate / 1e12);

  // Prefill projection: 4096 tokens through a [6144, 2048] bf16 weight (a fused QKV's size).
  const int64_t T = 4096, N = 6144;
  gpu::DeviceBuffer w(size_t(N * H) * 2, "projection"), out(size_t(T * N) * 4, "projection out");
  fill_bf16(w, size_t(N * H));
  const double lin_s =
      time_it([&] { gpu::linear_half(x.as<float>(), T, w.as<void>(), DType::BF16, N, H, out.as<float>()); });
  const double lin_rate = 2.0 * T * double(N) * H / lin_s;
  std::printf(
      "prefill projection (%lld tokens, bf16 [%lld, %lld]): %.0f TFLOP/s = %.1f%% of the GEMM (target >= 50%%)\n",
      (long long)T, (long long)N, (long long)H, lin_rate / 1e12, 100 * lin_rate / gemm_rate);
  cublasDestroy(h);
  gpu::synchronize();
  return 0;
}
