// SafetensorsFile: one mapped, validated file; tensors borrow the mapping.
#include <cstring>

#include "core/error.h"
#include "io/safetensors.h"

namespace moe::io {

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->file_ = MappedFile::open(path);
  f->header_ = parse_safetensors_header(f->file_->data(), f->file_->size(), path);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_[f->header_.tensors[i].name] = i;
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(header_.tensors.size());
  for (const auto& t : header_.tensors) out.push_back(t.name);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_input("{}: no tensor named '{}' in this file", path(), name);
  return header_.tensors[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  DType dt;
  if (!parse_dtype(t.dtype, &dt))
    throw_input(
        "{}: dtype {} not supported for tensor '{}' (moectl computes in F32, BF16 or F16; convert the checkpoint)",
        path(), t.dtype, name);
  const Shape shape(t.shape.begin(), t.shape.end());
  const unsigned char* p = file_->data() + t.begin;
  if (t.begin % dtype_size(dt) != 0) {
    // The mapping is page aligned, so this is a file whose writer did not keep tensors
    // aligned to their element size: copy rather than hand out a misaligned pointer.
    Tensor owned(shape, dt);
    if (t.end > t.begin) std::memcpy(owned.raw(), p, t.end - t.begin);
    return owned;
  }
  // An aliasing shared_ptr: owns the mapping, points at the tensor's bytes.
  std::shared_ptr<const void> keep(file_, p);
  return Tensor::borrow(shape, dt, p, std::move(keep));
}

}  // namespace moe::io
