#include "kernels/device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>

#include "core/error.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace moe {

namespace {

// Blocks carved in whole pages from one reserved range that is PROT_NONE outside an access: a
// stray host read of a device buffer is a SIGSEGV at the line that made it, and an op can check
// that a pointer it was handed is device memory. Freed blocks give their pages back but not
// their addresses (a test's lifetime of allocations fits the range many times).
class CheckedHostMemory final : public DeviceMemory {
 public:
  static constexpr size_t kRange = size_t(64) << 30;  // address space only (MAP_NORESERVE)

  CheckedHostMemory() {
    void* p = mmap(nullptr, kRange, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<std::byte*>(p);
  }
  ~CheckedHostMemory() override { munmap(base_, kRange); }
  CheckedHostMemory(const CheckedHostMemory&) = delete;
  CheckedHostMemory& operator=(const CheckedHostMemory&) = delete;

  void* allocate(size_t bytes, const char* /*what*/) const override {
    const std::lock_guard lock(mu_);
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), n = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    if (n > kRange - top_) throw std::bad_alloc();
    std::byte* p = base_ + top_;
    top_ += n;
    if (depth_ > 0) protect(p, n, PROT_READ | PROT_WRITE);
    return p;
  }
  void release(void* p, size_t bytes) const override {
    const std::lock_guard lock(mu_);
    MOE_ASSERT(holds(p), "checked host memory: release of a block it does not hold");
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), n = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    madvise(p, n, MADV_DONTNEED);
  }
  void to_device(void* dst, const void* src, size_t bytes) const override { copy(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) const override { copy(dst, src, bytes); }
  void on_device(void* dst, const void* src, size_t bytes) const override { copy(dst, src, bytes); }

  void open() const {
    const std::lock_guard lock(mu_);
    if (depth_++ == 0) protect(base_, top_, PROT_READ | PROT_WRITE);
  }
  void close() const {
    const std::lock_guard lock(mu_);
    if (--depth_ == 0) protect(base_, top_, PROT_NONE);
  }
  bool holds(const void* p) const {
    const auto* b = static_cast<const std::byte*>(p);
    return b >= base_ && b < base_ + kRange;
  }

 private:
  static void protect(void* p, size_t n, int prot) {
    if (n && mprotect(p, n, prot) != 0)
      throw_internal("checked host memory: mprotect failed: {}", std::strerror(errno));
  }
  void copy(void* dst, const void* src, size_t bytes) const {
    open();
    std::memmove(dst, src, bytes);
    close();
  }
  std::byte* base_ = nullptr;
  mutable std::mutex mu_;
  mutable size_t top_ = 0;
  mutable int depth_ = 0;
};

}  // namespace

Backend cpu_backend() { return Backend{}; }

Backend checked_host_backend() {
  Backend b;
  b.kind = Backend::Kind::kCheckedHost;
  b.memory = std::make_shared<CheckedHostMemory>();
  return b;
}

Backend cuda_backend(int device) {
#ifdef MOE_HAVE_CUDA
  std::string why;
  if (!kernels::cuda::device_available(&why)) throw_input("--device cuda: {}; use --device cpu", why);
  kernels::cuda::select_device(device);
  Backend b;
  b.kind = Backend::Kind::kCuda, b.device = device;
  b.memory = kernels::cuda::device_memory(b.stream);
  return b;
#else
  (void)device;
  throw_input("--device cuda: this moectl was built without CUDA (configure with MOE_CUDA=ON); use --device cpu");
#endif
}

Backend backend_for_device(const std::string& device) {
  if (device == "cpu") return cpu_backend();
  if (device == "cuda") return cuda_backend(0);
  if (device.rfind("cuda:", 0) == 0) {
    const std::string n = device.substr(5);
    if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos)
      throw_input("--device {}: expected cuda:N with N a device number", device);
    return cuda_backend(std::stoi(n));
  }
  if (device == "auto") {
#ifdef MOE_HAVE_CUDA
    if (kernels::cuda::device_available(nullptr)) return cuda_backend(0);
#endif
    return cpu_backend();
  }
  throw_input("--device {}: expected auto, cpu, cuda or cuda:N", device);
}

std::string backend_name(const Backend& b) {
  switch (b.kind) {
    case Backend::Kind::kCuda: return "cuda:" + std::to_string(b.device);
    case Backend::Kind::kCheckedHost: return "checked-host";
    default: return "cpu";
  }
}

DeviceAccess::DeviceAccess(const Backend& b) {
  if (b.kind != Backend::Kind::kCheckedHost) return;
  checked_ = b.memory.get();
  static_cast<const CheckedHostMemory*>(checked_)->open();
}

void DeviceAccess::check_one(const void* p, const char* op) const {
  if (checked_ && p && !static_cast<const CheckedHostMemory*>(checked_)->holds(p))
    throw_internal("op {} on the checked host backend was handed host memory", op);
}

DeviceAccess::~DeviceAccess() {
  if (!checked_) return;
  // close() throws only when mprotect fails, which a destructor cannot report by throwing.
  try {
    static_cast<const CheckedHostMemory*>(checked_)->close();
  } catch (...) {
    std::terminate();
  }
}

}  // namespace moe
