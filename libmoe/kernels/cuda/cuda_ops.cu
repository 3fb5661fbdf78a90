#include <cstdint>
#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

using detail::as_stream;
using detail::check;
using detail::check_blas;
using detail::check_launch;
using detail::kThreads;

namespace detail {

cublasHandle_t cublas(cudaStream_t stream) {
  static cublasHandle_t h = [] {
    cublasHandle_t handle;
    check_blas(cublasCreate(&handle), "cublasCreate");
    // Pointer mode host (the default) and no TF32: fp32 GEMMs stay fp32, as on the CPU.
    check_blas(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    return handle;
  }();
  check_blas(cublasSetStream(h, stream), "cublasSetStream");
  return h;
}

}  // namespace detail

namespace {

// One block per row: the sum of squares in double (as the CPU), then the scale in float. Each
// element is read and written by the same thread after the reduction, so out may alias x.
__global__ void rmsnorm_kernel(const float* x, int64_t D, const float* w, float eps, float* out) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += double(xr[i]) * xr[i];
  s = detail::block_sum(s);
  const float r = 1.0f / sqrtf(float(s / double(D)) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[row * D + i] = xr[i] * r * w[i];
}

__global__ void swiglu_kernel(const float* gu, int64_t T, int64_t F, float* h) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < T * F; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / F, f = i % F;
    const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
    h[i] = g / (1.0f + expf(-g)) * u;
  }
}

__global__ void rope_kernel(float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* c,
                            const float* s) {
  const int64_t half = d / 2;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < T * H * half;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % half, th = i / half, t = th / H;
    float* v = x + th * d;
    const float cj = c[int64_t(pos[t]) * half + j], sj = s[int64_t(pos[t]) * half + j];
    const float a = v[j], b = v[j + half];
    v[j] = a * cj - b * sj;
    v[j + half] = b * cj + a * sj;
  }
}

// y_TN[t] += bias_N, one thread per element.
__global__ void add_bias_kernel(float* y, const float* bias, int64_t T, int64_t N) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < T * N; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % N];
}

// One thread per column, walking the tokens in order: the same float additions as the CPU.
__global__ void bias_backward_kernel(const float* dy, int64_t T, int64_t N, float* db) {
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x) {
    float acc = db[n];
    for (int64_t t = 0; t < T; ++t) acc += dy[t * N + n];
    db[n] = acc;
  }
}

using detail::blas_dim;
using detail::blas_ld;

// cudaMalloc's and cudaMallocAsync's failures: out of memory names the size, what it was for and
// what the device has free (a one-line error the user can act on: a smaller model or batch,
// another device); anything else is internal.
void check_alloc(cudaError_t e, size_t bytes, const char* what, const char* call) {
  if (e == cudaSuccess) return;
  if (e != cudaErrorMemoryAllocation) check(e, call);
  cudaGetLastError();
  size_t free_b = 0, total_b = 0;
  int dev = 0;
  cudaGetDevice(&dev);
  cudaMemGetInfo(&free_b, &total_b);
  throw_input("CUDA out of memory on device {} allocating {}: {:.1f} MiB asked, {:.1f} MiB free of {:.1f} MiB", dev,
              what, double(bytes) / (1 << 20), double(free_b) / (1 << 20), double(total_b) / (1 << 20));
}

// Stream-ordered allocations come from the device's default pool; keeping what is freed there
// (no release threshold) makes every allocation after the first steps a reuse, with no
// cudaMalloc/cudaFree in a decode loop.
void keep_pool_memory() {
  static std::once_flag once;
  std::call_once(once, [] {
    int dev = 0;
    cudaMemPool_t pool;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetDefaultMemPool(&pool, dev), "cudaDeviceGetDefaultMemPool");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  });
}

}  // namespace

void detail::add_bias(float* y, const float* bias, int64_t T, int64_t N, cudaStream_t stream) {
  if (T * N == 0) return;
  add_bias_kernel<<<detail::blocks_for(T * N), kThreads, 0, stream>>>(y, bias, T, N);
  check_launch("linear bias");
}

bool device_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a failed probe
    if (why) *why = std::string("no usable CUDA driver/device: ") + cudaGetErrorString(e);
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  return true;
}

DeviceBuffer::DeviceBuffer(size_t bytes, const char* what) {
  check_alloc(cudaMalloc(&ptr_, bytes ? bytes : 1), bytes, what, "cudaMalloc");
}
DeviceBuffer::~DeviceBuffer() { cudaFree(ptr_); }
void DeviceBuffer::upload(const void* host, size_t bytes) {
  check(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void DeviceBuffer::download(void* host, size_t bytes) const {
  check(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

namespace {

// The model's device memory (weights, arenas, KV caches): cudaMalloc'd blocks that live as long
// as what owns them, and copies ordered on the backend's stream.
class CudaMemory final : public DeviceMemory {
 public:
  explicit CudaMemory(Stream stream) : stream_(as_stream(stream)) {}
  void* allocate(size_t bytes, const char* what) const override {
    void* p = nullptr;
    check_alloc(cudaMalloc(&p, bytes ? bytes : 1), bytes, what, "cudaMalloc");
    return p;
  }
  void release(void* p, size_t /*bytes*/) const override { cudaFree(p); }
  // The host side may be pageable memory that its owner frees on return: copied before return.
  void to_device(void* dst, const void* src, size_t bytes) const override {
    if (bytes == 0) return;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync H2D");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (H2D)");
  }
  void to_host(void* dst, const void* src, size_t bytes) const override {
    if (bytes == 0) return;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync D2H");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (D2H)");
  }
  void on_device(void* dst, const void* src, size_t bytes) const override {
    if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync D2D");
  }

 private:
  cudaStream_t stream_;
};

}  // namespace

std::shared_ptr<const DeviceMemory> device_memory(Stream stream) { return std::make_shared<CudaMemory>(stream); }

void select_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

StreamBuffer::StreamBuffer(size_t bytes, Stream stream, const char* what) : stream_(stream) {
  keep_pool_memory();
  check_alloc(cudaMallocAsync(&ptr_, bytes ? bytes : 1, as_stream(stream)), bytes, what, "cudaMallocAsync");
}
StreamBuffer::~StreamBuffer() { cudaFreeAsync(ptr_, as_stream(stream_)); }

void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* out, Stream stream) {
  if (T == 0 || D == 0) return;
  rmsnorm_kernel<<<detail::rows_grid(T), kThreads, 0, as_stream(stream)>>>(x, D, w, eps, out);
  check_launch("rmsnorm");
}

void swiglu(const float* gu, int64_t T, int64_t F, float* h, Stream stream) {
  if (T * F == 0) return;
  swiglu_kernel<<<detail::blocks_for(T * F), kThreads, 0, as_stream(stream)>>>(gu, T, F, h);
  check_launch("swiglu");
}

void rope_apply(float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* c, const float* s,
                Stream stream) {
  const int64_t n = T * H * (d / 2);
  if (n == 0) return;
  rope_kernel<<<detail::blocks_for(n), kThreads, 0, as_stream(stream)>>>(x, T, H, d, pos, c, s);
  check_launch("rope_apply");
}

// Row-major matrices are column-major transposes, so each row-major product below is written
// as the column-major product of the transposes: C_rm = A B  <=>  Cᵀ = Bᵀ Aᵀ.
void linear_f32(const float* x, int64_t T, const float* W, int64_t N, int64_t D, float* y, const float* bias,
                bool accumulate, Stream stream) {
  if (T == 0 || N == 0) return;
  const cudaStream_t s = as_stream(stream);
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // yᵀ[N,T] = (W as col-major [D,N])ᵀ . (x as col-major [D,T]).
  check_blas(cublasSgemm(detail::cublas(s), CUBLAS_OP_T, CUBLAS_OP_N, blas_dim(N, "N"), blas_dim(T, "T"),
                         blas_dim(D, "D"), &one, W, blas_ld(D, "D"), x, blas_ld(D, "D"), &beta, y, blas_ld(N, "N")),
             "Sgemm (linear)");
  if (bias) detail::add_bias(y, bias, T, N, s);
}

void linear_backward_input(const float* dy, int64_t T, const float* W, int64_t N, int64_t D, float* dx, bool accumulate,
                           Stream stream) {
  if (T == 0 || D == 0) return;
  const cudaStream_t s = as_stream(stream);
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // dxᵀ[D,T] = (W as col-major [D,N]) . (dy as col-major [N,T]).
  check_blas(cublasSgemm(detail::cublas(s), CUBLAS_OP_N, CUBLAS_OP_N, blas_dim(D, "D"), blas_dim(T, "T"),
                         blas_dim(N, "N"), &one, W, blas_ld(D, "D"), dy, blas_ld(N, "N"), &beta, dx, blas_ld(D, "D")),
             "Sgemm (linear_backward_input)");
}

void linear_backward_weight(const float* dy, const float* x, int64_t T, int64_t N, int64_t D, float* dW,
                            Stream stream) {
  if (N == 0 || D == 0 || T == 0) return;  // T == 0 adds nothing
  const cudaStream_t s = as_stream(stream);
  const float one = 1.0f;
  // dWᵀ[D,N] += (x as col-major [D,T]) . (dy as col-major [N,T])ᵀ.
  check_blas(cublasSgemm(detail::cublas(s), CUBLAS_OP_N, CUBLAS_OP_T, blas_dim(D, "D"), blas_dim(N, "N"),
                         blas_dim(T, "T"), &one, x, blas_ld(D, "D"), dy, blas_ld(N, "N"), &one, dW, blas_ld(D, "D")),
             "Sgemm (linear_backward_weight)");
}

void bias_backward(const float* dy, int64_t T, int64_t N, float* db, Stream stream) {
  if (N == 0 || T == 0) return;
  bias_backward_kernel<<<detail::blocks_for(N), kThreads, 0, as_stream(stream)>>>(dy, T, N, db);
  check_launch("bias_backward");
}

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
void synchronize(Stream stream) { check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize"); }

}  // namespace moe::kernels::cuda
