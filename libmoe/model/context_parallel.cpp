#include "model/context_parallel.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace moe::model {

std::array<PositionRange, 2> cp_chunks(int64_t L, int cp, int rank) {
  const int64_t c = (L + 2 * cp - 1) / (2 * cp);  // chunk length of the padded sequence
  auto chunk = [&](int64_t j) { return PositionRange{int32_t(std::min(j * c, L)), int32_t(std::min((j + 1) * c, L))}; };
  return {chunk(rank), chunk(2 * cp - 1 - rank)};
}

int64_t cp_local_rows(std::span<const int32_t> cu, int cp, int rank, int64_t* rows, int32_t* local_cu) {
  int64_t n = 0;
  if (local_cu) local_cu[0] = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    for (const PositionRange& r : cp_chunks(cu[s + 1] - cu[s], cp, rank))
      for (int32_t p = r.begin; p < r.end; ++p, ++n)
        if (rows) rows[n] = cu[s] + p;
    if (local_cu) local_cu[s + 1] = int32_t(n);
  }
  return n;
}

CpAttentionScratch carve_cp_attention_scratch(Arena& ws, int64_t T, int64_t Tw, int cp, int64_t ng, int64_t d,
                                              bool backward) {
  CpAttentionScratch s;
  const size_t whole = size_t(Tw * ng * d);
  s.k = ws.take<float>(whole), s.v = ws.take<float>(whole);
  if (backward) s.dk = ws.take<float>(whole), s.dv = ws.take<float>(whole);
  s.staging = ws.take<float>(whole);
  if (backward) s.pieces = ws.take<float>(size_t(cp * T * ng * d));
  s.order = ws.take<int64_t>(size_t(Tw));
  s.counts = ws.take<int64_t>(4 * size_t(cp));
  return s;
}

void cp_gather_rows(const Context& ctx, const Batch& b, const float* local, int64_t ng_d, const CpAttentionScratch& s,
                    float* whole) {
  dist::Communicator& g = ctx.groups->cp();
  const size_t cp = size_t(g.size());
  const int64_t T = b.size(), Tw = b.cp_cu_seqlens.back();
  // Rank q's rows arrive as the q-th block: counts and offsets of every rank's block.
  const auto block_counts = s.counts.subspan(0, cp), block_offsets = s.counts.subspan(cp, cp);
  const auto send_counts = s.counts.subspan(2 * cp, cp), send_offsets = s.counts.subspan(3 * cp, cp);
  int64_t at = 0;
  for (size_t q = 0; q < cp; ++q) {
    const int64_t n = cp_local_rows(b.cp_cu_seqlens, int(cp), int(q), s.order.data() + at, nullptr);
    MOE_ASSERT(q != size_t(g.rank()) || n == T, "CP rank {} holds {} rows of the micro-batch, the batch has {}", q, n,
               T);
    block_counts[q] = n * ng_d, block_offsets[q] = at * ng_d, at += n;
    send_counts[q] = T * ng_d, send_offsets[q] = 0;  // the same rows to every rank
  }
  MOE_ASSERT(at == Tw, "the CP ranks hold {} rows of a micro-batch of {}", at, Tw);
  g.all_to_all(local, send_counts, send_offsets, s.staging.data(), block_counts, block_offsets, dist::DataType::kF32);
  ops::scatter_rows(ctx.backend, s.staging.data(), ng_d, s.order, whole);
}

void cp_reduce_rows(const Context& ctx, const Batch& b, const float* whole, int64_t ng_d, const CpAttentionScratch& s,
                    float* local) {
  dist::Communicator& g = ctx.groups->cp();
  const size_t cp = size_t(g.size());
  const int64_t T = b.size();
  // Each rank's block of rows (the gather's) goes back to it; T rows come from every rank.
  const auto block_counts = s.counts.subspan(0, cp), block_offsets = s.counts.subspan(cp, cp);
  const auto recv_counts = s.counts.subspan(2 * cp, cp), recv_offsets = s.counts.subspan(3 * cp, cp);
  for (size_t q = 0; q < cp; ++q) recv_counts[q] = T * ng_d, recv_offsets[q] = int64_t(q) * T * ng_d;
  ops::gather_rows(ctx.backend, whole, ng_d, s.order, s.staging.data());
  g.all_to_all(s.staging.data(), block_counts, block_offsets, s.pieces.data(), recv_counts, recv_offsets,
               dist::DataType::kF32);
  // Summed in rank order, so every layout of the same CP size adds the same way.
  ops::copy(ctx.backend, local, s.pieces.data(), T * ng_d);
  for (size_t q = 1; q < cp; ++q) ops::add(ctx.backend, local, s.pieces.data() + int64_t(q) * T * ng_d, T * ng_d);
}

}  // namespace moe::model
