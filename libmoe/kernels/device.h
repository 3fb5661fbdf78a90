// Making a Backend (kernels/backend.h) from the user's --device, and the checked host backend the
// tests run device code paths on.
#pragma once
#include <string>

#include "kernels/backend.h"

namespace moe {

// The host: CPU kernels over host memory.
Backend cpu_backend();
// CUDA device `device` (its default stream) with its device memory; InputError when moectl was
// built without CUDA or no device is usable, saying why.
Backend cuda_backend(int device = 0);
// `--device`: "cpu", "cuda", "cuda:N", or "auto" (CUDA device 0 when one is usable, else the
// CPU). InputError naming the flag for anything else.
Backend backend_for_device(const std::string& device);
// What `b` is, for a speed line: "cpu", "cuda:0".
std::string backend_name(const Backend& b);

// The CPU kernels over memory that is mapped inaccessible except while an op runs (or a copy
// through DeviceMemory): model code that reads or writes a device buffer itself faults here.
Backend checked_host_backend();

// Held by an op while its CPU kernel runs: on the checked host backend the device memory is
// accessible for that long (nested holds nest); on the others it does nothing.
class DeviceAccess {
 public:
  explicit DeviceAccess(const Backend& b);
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
  // On the checked host backend: InternalError naming the op unless every pointer (null aside)
  // is its device memory, the check that an op was not handed host memory a GPU could not read.
  template <class... P>
  void expect_device(const char* op, const P*... ps) const {
    (check_one(static_cast<const void*>(ps), op), ...);
  }

 private:
  void check_one(const void* p, const char* op) const;
  const DeviceMemory* checked_ = nullptr;
};

}  // namespace moe
