// Tensor: a shape, a dtype and a pointer into storage that it shares (an owned buffer or a
// mapped file kept alive by the tensor). Contiguous row-major; views share the storage.
// Only CPU memory for now; device tensors live in the CUDA backend.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace moe {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-initialised, 64-byte aligned memory.
  Tensor(Shape shape, DType dtype);
  // Wraps memory owned by `keepalive` (e.g. a mapped file); `data` must stay valid while it lives.
  static Tensor borrow(Shape shape, DType dtype, const void* data, std::shared_ptr<const void> keepalive);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return int(shape_.size()); }
  DType dtype() const { return dtype_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <class T>
  T* data() {
    return static_cast<T*>(data_);
  }
  template <class T>
  const T* data() const {
    return static_cast<const T*>(data_);
  }
  float* f32() {
    check_dtype(DType::F32);
    return data<float>();
  }
  const float* f32() const {
    check_dtype(DType::F32);
    return data<float>();
  }

  // Same storage, new shape with the same number of elements.
  Tensor view(Shape shape) const;
  // Rows [begin, end) along dim 0, sharing storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // A new tensor holding a copy converted to `dtype`.
  Tensor to(DType dtype) const;

 private:
  void check_dtype(DType want) const;
  Shape shape_;
  DType dtype_ = DType::F32;
  void* data_ = nullptr;
  std::shared_ptr<const void> storage_;
};

}  // namespace moe
