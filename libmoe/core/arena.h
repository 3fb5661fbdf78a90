// A workspace arena (DESIGN.md section 3): one 64-byte-aligned allocation from which activations
// and temporaries are carved by bumping an offset and given back in stack order (mark/release).
// Its size is known before a step: a measuring arena runs the same carving without memory and
// reports the bytes, so the engine sizes its arenas, and the planner reads them, from the code
// that carves. Carving past the end is an internal error (a size function and the code
// disagree), never a silent allocation; steady-state steps allocate nothing. The memory is mapped
// straight from the kernel, not taken from the heap: one block this large would leave holes the
// heap cannot reuse (a freed checkpoint state too small to hold it, with the optimizer's state
// then placed above it).
#pragma once
#include <cstddef>
#include <exception>
#include <memory>
#include <span>
#include <type_traits>

#include "core/device_memory.h"

namespace moe {

class Arena {
 public:
  static constexpr size_t kAlign = 64;  // a cache line: every carve starts on one

  Arena() = default;
  // An arena in a backend's device memory (kernels/device.h): its carves are for ops only.
  explicit Arena(std::shared_ptr<const DeviceMemory> device) : device_(std::move(device)) {}
  ~Arena();
  Arena(Arena&& o) noexcept;
  Arena& operator=(Arena&& o) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  // No memory: carving returns null spans of the asked length and only counts bytes.
  static Arena measuring();

  // Capacity at least `bytes`. Reallocates only to grow, and only while nothing is carved.
  void reserve(size_t bytes);

  template <class T>
  std::span<T> take(size_t n) {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= kAlign);
    return {static_cast<T*>(take_bytes(n * sizeof(T))), n};
  }
  size_t mark() const { return used_; }
  void release(size_t mark);  // back to an earlier mark(): what was carved since is free
  void reset() { release(0); }

  size_t used() const { return used_; }
  size_t capacity() const { return cap_; }
  size_t high_water() const { return high_; }  // most bytes carved at once since creation
  bool is_measuring() const { return measuring_; }
  const DeviceMemory* device() const { return device_.get(); }  // null: host pages
  // What carving `bytes` adds to used().
  static constexpr size_t rounded(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

 private:
  void* take_bytes(size_t bytes);
  void unmap();
  std::shared_ptr<const DeviceMemory> device_;  // null: host pages
  std::byte* buf_ = nullptr;
  size_t cap_ = 0, used_ = 0, high_ = 0;
  bool measuring_ = false;
};

// Releases, on leaving its scope, everything carved from `a` during it.
class ArenaScope {
 public:
  explicit ArenaScope(Arena& a) : a_(a), mark_(a.mark()) {}
  // release() throws only when something inside the scope released the arena below its mark, a bug
  // a destructor cannot report by throwing: it terminates, with the check's message, as the escaping
  // exception would have.
  ~ArenaScope() {
    try {
      a_.release(mark_);
    } catch (...) {
      std::terminate();
    }
  }
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

 private:
  Arena& a_;
  size_t mark_;
};

}  // namespace moe
