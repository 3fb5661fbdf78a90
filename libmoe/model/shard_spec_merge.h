// ShardSpec::merge (a template over how rank tensors are fetched); included by shard_spec.h.
#pragma once
#include <cstring>

#include "core/error.h"

namespace moe::model {

template <class Get>
Tensor ShardSpec::merge(const std::string& name, const Shape& shape, DType dtype, Get&& get) const {
  const Where w = where(name);
  Tensor out(shape, dtype);
  const size_t es = dtype_size(dtype);
  // The first pipeline stage / expert rank that holds it; TP pieces are gathered over tp.
  int pp = -1, ep = -1;
  for (int a = 0; a < p_.pp && pp < 0; ++a)
    for (int b = 0; b < p_.ep && pp < 0; ++b)
      if (holds(w, a, b)) pp = a, ep = b;
  MOE_ASSERT(pp >= 0, "no rank holds {}", name);
  const std::string local = local_name(name, w);
  const int tps = w.split == Split::kReplicated ? 1 : p_.tp;
  const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
  for (int t = 0; t < tps; ++t) {
    Tensor part = get(t, pp, ep, local);
    if (part.numel() * tps != out.numel())
      throw_input("rank (tp {}, pp {}, ep {}): tensor '{}' has shape {}, which is not 1/{} of {}", t, pp, ep, local,
                  shape_str(part.shape()), tps, shape_str(shape));
    if (part.dtype() != dtype) part = part.to(dtype);
    const char* src = static_cast<const char*>(part.raw());
    char* dst = static_cast<char*>(out.raw());
    switch (w.split) {
      case Split::kReplicated:
        MOE_ASSERT(part.nbytes() == out.nbytes(), "replicated {} has {} bytes", name, part.nbytes());
        std::memcpy(dst, src, out.nbytes());
        break;
      case Split::kRows: {
        const size_t chunk = size_t(rows / tps * cols) * es;
        std::memcpy(dst + t * chunk, src, chunk);
        break;
      }
      case Split::kCols: {
        const int64_t cc = cols / tps;
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(dst + size_t(r * cols + t * cc) * es, src + size_t(r * cc) * es, size_t(cc) * es);
        break;
      }
      case Split::kGatedRows: {  // rank t holds [gate_t; up_t]
        const int64_t F = rows / 2, f = F / tps;
        const size_t chunk = size_t(f * cols) * es;
        std::memcpy(dst + size_t(t * f * cols) * es, src, chunk);
        std::memcpy(dst + size_t((F + t * f) * cols) * es, src + chunk, chunk);
        break;
      }
    }
  }
  return out;
}

}  // namespace moe::model
