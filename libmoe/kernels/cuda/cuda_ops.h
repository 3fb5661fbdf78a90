// The CUDA backend's runtime (device check, device buffers, synchronisation) and its row-wise
// forward ops and projections, each the twin of a CPU op in kernels/cpu and tested against the
// same double reference on random inputs (tests/ops). Pointers are device memory; the header
// hides every CUDA type so that callers compile without the toolkit. The other op families
// live beside it: elementwise.h, gather.h, softmax.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/device_memory.h"

namespace moe::kernels::cuda {

// A cudaStream_t kept opaque (Backend::stream); null is the legacy default stream. Every op
// queues its work on it and returns without waiting, unless it returns a value to the host.
using Stream = void*;

// True when a CUDA device can be used; otherwise `why` says why not (no driver, no device).
bool device_available(std::string* why);

// Makes `device` the calling thread's current device (cudaSetDevice).
void select_device(int device);
// The model's device memory on the current device, its copies ordered on `stream`.
std::shared_ptr<const DeviceMemory> device_memory(Stream stream);

// Device memory owned by this object. Out of memory is a one-line error naming `what`, the size
// asked and the memory the device has free.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes, const char* what = "a device buffer");
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  template <class T>
  T* as() {
    return static_cast<T*>(ptr_);
  }
  template <class T>
  const T* as() const {
    return static_cast<const T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// Device memory allocated and freed in stream order (cudaMallocAsync / cudaFreeAsync): the
// temporaries of ops queued on that stream, which live exactly as long as those ops need them.
// The device's pool keeps what is freed, so a loop's allocations after its first pass are reuses.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, Stream stream, const char* what = "an op's temporary");
  ~StreamBuffer();
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  Stream stream_;
};

// Twins of kernels::cpu::rmsnorm, swiglu and rope_apply (fp32, same layouts; rmsnorm may run
// in place).
void rmsnorm(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, float* out_TD,
             Stream stream = nullptr);
void swiglu(const float* gu_T2F, int64_t T, int64_t F, float* h_TF, Stream stream = nullptr);
void rope_apply(float* x_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                const float* sin_Pd2, Stream stream = nullptr);

// Twin of kernels::cpu::linear for f32 weights through cuBLAS (fp32 maths, no TF32):
// y_TN (+)= x_TD . W_NDᵀ (+ bias_N when not null).
void linear_f32(const float* x_TD, int64_t T, const float* W_ND, int64_t N, int64_t D, float* y_TN,
                const float* bias_N = nullptr, bool accumulate = false, Stream stream = nullptr);
// The backward of linear_f32 (the CPU's gemm_nn / gemm_tn): dx_TD (+)= dy_TN . W_ND and
// dW_ND += dy_TNᵀ . x_TD.
void linear_backward_input(const float* dy_TN, int64_t T, const float* W_ND, int64_t N, int64_t D, float* dx_TD,
                           bool accumulate, Stream stream = nullptr);
void linear_backward_weight(const float* dy_TN, const float* x_TD, int64_t T, int64_t N, int64_t D, float* dW_ND,
                            Stream stream = nullptr);
// db_N += sum_t dy_TN[t], each column summed in token order (as the CPU's loop of adds).
void bias_backward(const float* dy_TN, int64_t T, int64_t N, float* db_N, Stream stream = nullptr);

// Waits for the device and throws InternalError naming the failed call, if any.
void synchronize();
// Waits for one stream, likewise.
void synchronize(Stream stream);

}  // namespace moe::kernels::cuda
