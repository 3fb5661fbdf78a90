#include "model/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/parallel.h"

namespace moe::model {

namespace {

// Each token's row in this rank's table, or -1 when another rank holds it.
void local_ids(const Context& ctx, int64_t rows, std::span<const int32_t> tokens, std::span<int32_t> ids) {
  const int64_t begin = ctx.local.vocab_begin;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int64_t id = int64_t(tokens[t]) - begin;
    ids[t] = id >= 0 && id < rows ? int32_t(id) : -1;
  }
}

}  // namespace

void vocab_parallel_embedding(const Context& ctx, const Tensor& table, std::span<const int32_t> tokens, float* x,
                              bool reduce) {
  const Backend& be = ctx.backend;
  const int64_t T = int64_t(tokens.size()), D = table.dim(1);
  ArenaScope scope(*ctx.workspace);
  const std::span<int32_t> ids = ctx.workspace->take<int32_t>(size_t(T));
  local_ids(ctx, table.dim(0), tokens, ids);
  for (auto& id : ids) id = std::max(id, 0);  // looked up, then zeroed below
  ops::embedding_gather(be, table, ids, x);
  for (int64_t t = 0; t < T; ++t)
    if (int64_t(tokens[size_t(t)]) - ctx.local.vocab_begin != ids[size_t(t)]) ops::fill(be, x + t * D, 0.0f, D);
  if (reduce) tp_all_reduce(ctx, x, T * D);
}

void vocab_parallel_embedding_backward(const Context& ctx, float* dx, std::span<const int32_t> tokens, int64_t D,
                                       float* dtable) {
  const Backend& be = ctx.backend;
  const int64_t T = int64_t(tokens.size());
  ArenaScope scope(*ctx.workspace);
  const std::span<int32_t> ids = ctx.workspace->take<int32_t>(size_t(T));
  local_ids(ctx, ctx.local.vocab_rows, tokens, ids);
  for (int64_t t = 0; t < T; ++t)
    if (ids[size_t(t)] < 0) ids[size_t(t)] = 0, ops::fill(be, dx + t * D, 0.0f, D);  // adds zeros to row 0
  ops::embedding_scatter_add(be, dx, ids, D, dtable);
}

VocabParallelScratch carve_vocab_parallel_scratch(Arena& ws, int64_t n) {
  VocabParallelScratch s;
  s.max_n = ws.take<float>(size_t(n));
  s.local_max_n = ws.take<float>(size_t(n));
  s.sums_2n = ws.take<double>(size_t(2 * n));
  s.arg_n = ws.take<int64_t>(size_t(n));
  return s;
}

ops::CrossEntropySums vocab_parallel_cross_entropy(const Context& ctx, float* logits, int64_t n, int64_t v,
                                                   const int32_t* labels, float grad_scale) {
  dist::Communicator& tp = ctx.groups->tp();
  const int64_t begin = ctx.local.vocab_begin;
  ArenaScope scope(*ctx.workspace);
  const VocabParallelScratch s = carve_vocab_parallel_scratch(*ctx.workspace, n);
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  // 1. The row maximum over every rank's columns, and the first column holding it.
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* x = logits + r * v;
      s.max_n[size_t(r)] = s.local_max_n[size_t(r)] = v > 0 ? *std::max_element(x, x + v) : kNone;
    }
  });
  tp.all_reduce(s.max_n.data(), n, dist::DataType::kF32, dist::ReduceOp::kMax);
  // 2. exp(x - max) in place, summed; the target logit where this rank holds it.
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* x = logits + r * v;
      const float m = s.max_n[size_t(r)];
      const int64_t label = labels[r] - begin;
      double sum = 0, target = 0;
      int64_t arg = std::numeric_limits<int64_t>::min();
      if (labels[r] >= 0) {
        if (label >= 0 && label < v) target = double(x[label]);
        if (s.local_max_n[size_t(r)] == m) arg = -(begin + (std::find(x, x + v, m) - x));
        for (int64_t i = 0; i < v; ++i) {
          x[i] = std::exp(x[i] - m);
          sum += double(x[i]);
        }
      }
      s.sums_2n[size_t(2 * r)] = sum, s.sums_2n[size_t(2 * r + 1)] = target, s.arg_n[size_t(r)] = arg;
    }
  });
  tp.all_reduce(s.sums_2n.data(), 2 * n, dist::DataType::kF64, dist::ReduceOp::kSum);
  tp.all_reduce(s.arg_n.data(), n, dist::DataType::kI64, dist::ReduceOp::kMax);
  // 3. The loss of each row and its gradient on this rank's columns.
  ops::CrossEntropySums out;
  for (int64_t r = 0; r < n; ++r) {
    float* x = logits + r * v;
    if (labels[r] < 0) {
      std::fill(x, x + v, 0.0f);
      continue;
    }
    const double sum = s.sums_2n[size_t(2 * r)];
    out.loss += double(s.max_n[size_t(r)]) + std::log(sum) - s.sums_2n[size_t(2 * r + 1)];
    out.count += 1;
    out.correct += -s.arg_n[size_t(r)] == labels[r];
    const float k = float(double(grad_scale) / sum);
    for (int64_t i = 0; i < v; ++i) x[i] *= k;
    if (const int64_t label = labels[r] - begin; label >= 0 && label < v) x[label] -= grad_scale;
  }
  return out;
}

}  // namespace moe::model
