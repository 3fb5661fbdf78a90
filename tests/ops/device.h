// Test data on the device for the CUDA rows: inputs uploaded as they are, outputs uploaded with
// their guard values, so that the harness's checks (guards intact, no NaN, error) run on what
// the device wrote. Compiled only into CUDA builds.
#pragma once
#ifdef MOE_HAVE_CUDA
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_ops.h"
#include "ops/harness.h"

namespace moe::ops_test {

// The Backend the CUDA rows hand to the ops: device 0, the default stream.
inline moe::Backend gpu() {
  moe::Backend b;
  b.kind = moe::Backend::Kind::kCuda;
  return b;
}

// A device copy of host values (an input, or an output checked without guards).
template <class T>
class DeviceIn {
 public:
  explicit DeviceIn(const std::vector<T>& v) : n_(v.size()), buf_(v.size() * sizeof(T)) {
    if (n_) buf_.upload(v.data(), n_ * sizeof(T));
  }
  T* get() { return buf_.template as<T>(); }
  std::vector<T> download() {
    kernels::cuda::synchronize();
    std::vector<T> v(n_);
    if (n_) buf_.download(v.data(), n_ * sizeof(T));
    return v;
  }

 private:
  size_t n_;
  kernels::cuda::DeviceBuffer buf_;
};

// The device twin of a guarded output: get() is its first element; fetch() waits for the device
// and copies everything back, guards included, into the host buffer it mirrors.
template <class T>
class DeviceOut {
 public:
  explicit DeviceOut(Guarded<T>& host) : host_(host), buf_(host.size_with_guards() * sizeof(T)) {
    buf_.upload(host.with_guards(), host.size_with_guards() * sizeof(T));
  }
  T* get() { return buf_.template as<T>() + Guarded<T>::kGuard; }
  Guarded<T>& fetch() {
    kernels::cuda::synchronize();
    buf_.download(host_.with_guards(), host_.size_with_guards() * sizeof(T));
    return host_;
  }

 private:
  Guarded<T>& host_;
  kernels::cuda::DeviceBuffer buf_;
};

}  // namespace moe::ops_test
#endif
