#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace moe {

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Tensor::Tensor(Shape shape, DType dtype) : shape_(std::move(shape)), dtype_(dtype) {
  for (int64_t d : shape_) MOE_ASSERT(d >= 0, "negative dimension in {}", shape_str(shape_));
  size_t bytes = nbytes();
  size_t alloc = (bytes + 63) / 64 * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  if (!p) throw_internal("out of memory allocating {} bytes for a tensor of shape {}", bytes, shape_str(shape_));
  std::memset(p, 0, alloc);
  storage_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  data_ = p;
}

Tensor Tensor::borrow(Shape shape, DType dtype, const void* data, std::shared_ptr<const void> keepalive) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.data_ = const_cast<void*>(data);
  t.storage_ = std::move(keepalive);
  return t;
}

Tensor Tensor::view(Shape shape) const {
  MOE_ASSERT(shape_numel(shape) == numel(), "view {} of tensor {}", shape_str(shape), shape_str(shape_));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  MOE_ASSERT(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "rows [{}, {}) of {}", begin, end,
             shape_str(shape_));
  Tensor t = *this;
  t.shape_[0] = end - begin;
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  Tensor out(shape_, dtype);
  if (dtype == dtype_) {
    std::memcpy(out.raw(), data_, nbytes());
  } else if (dtype_ == DType::F32) {
    convert_from_f32(static_cast<const float*>(data_), out.raw(), dtype, size_t(numel()));
  } else if (dtype == DType::F32) {
    convert_to_f32(data_, dtype_, out.data<float>(), size_t(numel()));
  } else {
    Tensor tmp = to(DType::F32);
    return tmp.to(dtype);
  }
  return out;
}

void Tensor::check_dtype(DType want) const {
  MOE_ASSERT(dtype_ == want, "tensor is {} but {} was expected", dtype_name(dtype_), dtype_name(want));
}

}  // namespace moe
