// ShardSpec::merge (a template over how rank tensors are fetched); included by shard_spec.h.
#pragma once
#include <cstring>

#include "core/error.h"

namespace moe::model {

template <class Visit>
void ShardSpec::for_each_piece(const std::string& name, Visit&& visit) const {
  const Where w = where(name);
  const std::string local = local_name(name, w);
  const auto files = rank_files();
  for (int piece = 0; piece < split_ways(w); ++piece) {
    const RankFile* f = nullptr;  // the first rank file (in (pp, ep, tp) order) holding the piece
    for (const auto& r : files)
      if (holds(w, r.pp, r.ep) && piece_of(w, r.tp) == piece) {
        f = &r;
        break;
      }
    MOE_ASSERT(f, "no rank file holds piece {} of {}", piece, name);
    visit(f->tp, f->pp, f->ep, local);
  }
}

template <class Get>
Tensor ShardSpec::merge(const std::string& name, const Shape& shape, DType dtype, Get&& get) const {
  const Where w = where(name);
  const int tps = split_ways(w);
  const size_t es = dtype_size(dtype);
  const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
  Tensor out;
  int t = 0;
  for_each_piece(name, [&](int tp, int pp, int ep, const std::string& local) {
    Tensor part = get(tp, pp, ep, local);
    if (part.numel() * tps != shape_numel(shape))
      throw_input("rank (tp {}, pp {}, ep {}): tensor '{}' has shape {}, which is not 1/{} of {}", tp, pp, ep, local,
                  shape_str(part.shape()), tps, shape_str(shape));
    if (tps == 1 && part.dtype() == dtype) {  // the whole tensor as stored: no copy
      out = part.view(shape);
      return;
    }
    if (t == 0) out = Tensor(shape, dtype);
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
      case Split::kGatedRows: {  // piece t holds [gate_t; up_t]
        const int64_t F = rows / 2, f = F / tps;
        const size_t chunk = size_t(f * cols) * es;
        std::memcpy(dst + size_t(t * f * cols) * es, src, chunk);
        std::memcpy(dst + size_t((F + t * f) * cols) * es, src + chunk, chunk);
        break;
      }
    }
    ++t;
  });
  return out;
}

}  // namespace moe::model
