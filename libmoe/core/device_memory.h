// Memory a backend's ops read and write when it is not plain host memory (DESIGN.md section 3):
// a CUDA device's, or, in tests, host pages that model code may not touch (the checked host
// backend, kernels/device.h). Model code owns such memory through DeviceArray and moves bytes
// across only through to_device / to_host, so the same code serves every backend.
#pragma once
#include <cstddef>
#include <memory>

namespace moe {

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  // `bytes` of device memory (64-byte aligned); out of memory is a one-line InputError naming
  // `what`, the size asked and the memory free.
  virtual void* allocate(size_t bytes, const char* what) const = 0;
  virtual void release(void* p, size_t bytes) const = 0;
  // Copies; each returns once `src` may be reused and `dst` holds the bytes (work queued on the
  // backend's stream before a copy to the host is finished first).
  virtual void to_device(void* dst, const void* src, size_t bytes) const = 0;
  virtual void to_host(void* dst, const void* src, size_t bytes) const = 0;
  virtual void on_device(void* dst, const void* src, size_t bytes) const = 0;
};

// An owned block of device memory (empty when bytes == 0).
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(std::shared_ptr<const DeviceMemory> mem, size_t bytes, const char* what)
      : mem_(std::move(mem)), bytes_(bytes), ptr_(bytes ? mem_->allocate(bytes, what) : nullptr) {}
  ~DeviceArray() { reset(); }
  DeviceArray(DeviceArray&& o) noexcept { *this = std::move(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      mem_ = std::move(o.mem_), bytes_ = o.bytes_, ptr_ = o.ptr_;
      o.bytes_ = 0, o.ptr_ = nullptr;
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void reset() {
    if (ptr_) mem_->release(ptr_, bytes_);
    ptr_ = nullptr, bytes_ = 0;
  }

 private:
  std::shared_ptr<const DeviceMemory> mem_;
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

}  // namespace moe
