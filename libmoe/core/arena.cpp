#include "core/arena.h"

#include <algorithm>
#include <cstdlib>
#include <new>

#include "core/error.h"

namespace moe {

void Arena::Free::operator()(std::byte* p) const { std::free(p); }

Arena Arena::measuring() {
  Arena a;
  a.measuring_ = true;
  return a;
}

void Arena::reserve(size_t bytes) {
  if (measuring_ || bytes <= cap_) return;
  MOE_ASSERT(used_ == 0, "arena grown to {} bytes while {} bytes are carved", bytes, used_);
  const size_t n = rounded(bytes);
  buf_.reset();  // the old block goes first: peak memory is the new size, not both
  buf_.reset(static_cast<std::byte*>(std::aligned_alloc(kAlign, n)));
  if (!buf_) {
    cap_ = 0;
    throw std::bad_alloc();
  }
  cap_ = n;
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
  return measuring_ || n == 0 ? nullptr : buf_.get() + at;
}

void Arena::release(size_t mark) {
  MOE_ASSERT(mark <= used_, "arena released to {} bytes, above the {} carved", mark, used_);
  used_ = mark;
}

}  // namespace moe
