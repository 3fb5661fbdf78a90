#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_internal("CUDA {} failed: {}", what, cudaGetErrorString(e));
}

cublasHandle_t cublas() {
  static cublasHandle_t h = [] {
    cublasHandle_t handle;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw_internal("cublasCreate failed");
    return handle;
  }();
  return h;
}

// One block per row; fp32 sum of squares reduced in shared memory.
__global__ void rmsnorm_kernel(const float* x, int64_t D, const float* w, float eps, float* out) {
  extern __shared__ float partial[];
  const float* xr = x + blockIdx.x * D;
  float s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += xr[i] * xr[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];
    __syncthreads();
  }
  const float r = rsqrtf(partial[0] / float(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[blockIdx.x * D + i] = xr[i] * r * w[i];
}

__global__ void swiglu_kernel(const float* gu, int64_t T, int64_t F, float* h) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * F) return;
  int64_t t = i / F, f = i % F;
  float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
  h[i] = g / (1.0f + expf(-g)) * u;
}

__global__ void rope_kernel(float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* c,
                            const float* s) {
  const int64_t half = d / 2;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H * half) return;
  int64_t j = i % half, th = i / half, t = th / H;
  float* v = x + th * d;
  float cj = c[int64_t(pos[t]) * half + j], sj = s[int64_t(pos[t]) * half + j];
  float a = v[j], b = v[j + half];
  v[j] = a * cj - b * sj;
  v[j + half] = b * cj + a * sj;
}

}  // namespace

bool device_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("no usable CUDA driver/device: ") + cudaGetErrorString(e);
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  return true;
}

DeviceBuffer::DeviceBuffer(size_t bytes) { check(cudaMalloc(&ptr_, bytes ? bytes : 1), "cudaMalloc"); }
DeviceBuffer::~DeviceBuffer() { cudaFree(ptr_); }
void DeviceBuffer::upload(const void* host, size_t bytes) {
  check(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void DeviceBuffer::download(void* host, size_t bytes) const {
  check(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* out) {
  if (T == 0) return;
  const int threads = 256;
  rmsnorm_kernel<<<unsigned(T), threads, threads * sizeof(float)>>>(x, D, w, eps, out);
  check(cudaGetLastError(), "rmsnorm launch");
}

void swiglu(const float* gu, int64_t T, int64_t F, float* h) {
  const int64_t n = T * F;
  if (n == 0) return;
  swiglu_kernel<<<unsigned((n + 255) / 256), 256>>>(gu, T, F, h);
  check(cudaGetLastError(), "swiglu launch");
}

void rope_apply(float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* c, const float* s) {
  const int64_t n = T * H * (d / 2);
  if (n == 0) return;
  rope_kernel<<<unsigned((n + 255) / 256), 256>>>(x, T, H, d, pos, c, s);
  check(cudaGetLastError(), "rope launch");
}

void linear_f32(const float* x, int64_t T, const float* W, int64_t N, int64_t D, float* y) {
  // Row-major y[T,N] = x[T,D] . W[N,D]^T  <=>  column-major y^T[N,T] = W^T... : C = op(A) op(B)
  // with A = W (col-major [D,N], transposed -> [N,D]) and B = x (col-major [D,T]).
  const float one = 1.0f, zero = 0.0f;
  if (cublasSgemm(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(D), &one, W, int(D), x, int(D), &zero, y,
                  int(N)) != CUBLAS_STATUS_SUCCESS)
    throw_internal("cublasSgemm failed for y[{}, {}] = x[{}, {}] W^T", T, N, T, D);
}

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace moe::kernels::cuda
