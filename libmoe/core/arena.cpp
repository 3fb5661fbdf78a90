#include "core/arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <new>
#include <utility>

#include "core/error.h"

namespace moe {

Arena::~Arena() { unmap(); }

Arena::Arena(Arena&& o) noexcept
    : device_(std::move(o.device_)),
      buf_(std::exchange(o.buf_, nullptr)),
      cap_(std::exchange(o.cap_, 0)),
      used_(std::exchange(o.used_, 0)),
      high_(std::exchange(o.high_, 0)),
      measuring_(o.measuring_) {}

Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    unmap();
    device_ = std::move(o.device_);
    buf_ = std::exchange(o.buf_, nullptr), cap_ = std::exchange(o.cap_, 0);
    used_ = std::exchange(o.used_, 0), high_ = std::exchange(o.high_, 0), measuring_ = o.measuring_;
  }
  return *this;
}

void Arena::unmap() {
  if (buf_ && device_) device_->release(buf_, cap_);
  else if (buf_) munmap(buf_, cap_);
  buf_ = nullptr, cap_ = 0;
}

Arena Arena::measuring() {
  Arena a;
  a.measuring_ = true;
  return a;
}

void Arena::reserve(size_t bytes) {
  if (measuring_ || bytes <= cap_) return;
  MOE_ASSERT(used_ == 0, "arena grown to {} bytes while {} bytes are carved", bytes, used_);
  unmap();  // the old block goes first: peak memory is the new size, not both
  if (device_) {
    buf_ = static_cast<std::byte*>(device_->allocate(bytes, "a workspace arena")), cap_ = bytes;
    return;
  }
  // Whole pages (page-aligned, so every carve is 64-byte aligned), zero-filled on first touch.
  const size_t page = size_t(sysconf(_SC_PAGESIZE)), n = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  buf_ = static_cast<std::byte*>(p), cap_ = n;
}

void* Arena::take_bytes(size_t bytes) {
  const size_t n = rounded(bytes), at = used_;
  if (!measuring_ && n > cap_ - used_)
    throw_internal(
        "workspace arena of {} bytes overflows: {} bytes carved, {} more asked (its size function and "
        "the code that carves it disagree)",
        cap_, used_, n);
  used_ += n;
  high_ = std::max(high_, used_);
  return measuring_ || n == 0 ? nullptr : buf_ + at;
}

void Arena::release(size_t mark) {
  MOE_ASSERT(mark <= used_, "arena released to {} bytes, above the {} carved", mark, used_);
  used_ = mark;
}

}  // namespace moe
