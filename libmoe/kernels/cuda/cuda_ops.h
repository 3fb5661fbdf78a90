// The CUDA backend's ops, each the twin of a CPU op in kernels/cpu and tested against it on
// random inputs (tests/kernels/cuda_ops_test.cpp). Pointers are device memory; the header
// hides every CUDA type so that callers compile without the toolkit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace moe::kernels::cuda {

// True when a CUDA device can be used; otherwise `why` says why not (no driver, no device).
bool device_available(std::string* why);

// Device memory owned by this object.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes);
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

// Twins of kernels::cpu::rmsnorm, swiglu and rope_apply (fp32, same layouts).
void rmsnorm(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, float* out_TD);
void swiglu(const float* gu_T2F, int64_t T, int64_t F, float* h_TF);
void rope_apply(float* x_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                const float* sin_Pd2);
// Twin of kernels::cpu::linear for f32 weights: y_TN = x_TD . W_NDᵀ through cuBLAS.
void linear_f32(const float* x_TD, int64_t T, const float* W_ND, int64_t N, int64_t D, float* y_TN);
// Waits for the device and throws InternalError naming the failed call, if any.
void synchronize();

}  // namespace moe::kernels::cuda
