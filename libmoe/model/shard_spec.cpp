#include "model/shard_spec.h"

#include <cstdio>
#include <numeric>
#include <set>
#include <tuple>

#include "core/error.h"
#include "model/state_dict.h"

namespace moe::model {

ShardSpec::ShardSpec(const ModelConfig& c, const dist::ParallelLayout& p, int divisible_by) : c_(c), p_(p) {
  if (p.tp < 1 || p.pp < 1 || p.ep < 1 || p.etp < 1)
    throw_input(
        "--tensor_model_parallel_size, --pipeline_model_parallel_size, --expert_model_parallel_size and "
        "--expert_tensor_parallel_size must be >= 1");
  if (p.tp % p.etp)
    throw_input(
        "--expert_tensor_parallel_size {} must divide --tensor_model_parallel_size {}: the legacy torch "
        "checkpoint names files by TP and EP rank only, so more expert tensor-parallel ranks than TP ranks "
        "would write the same file (use a smaller ETP)",
        p.etp, p.tp);
  if (c.num_attention_heads % p.tp)
    throw_input("--tensor_model_parallel_size {} must divide num_attention_heads {} (each rank holds whole heads)",
                p.tp, c.num_attention_heads);
  if (c.num_query_groups % p.tp)
    throw_input(
        "--tensor_model_parallel_size {} must divide num_key_value_heads {} (each rank holds whole query groups)", p.tp,
        c.num_query_groups);
  chunk_begin_ = pipeline_chunk_begins(c.num_layers, p);
  if (p.ep > 1 && (c.num_experts == 0 || c.num_experts % p.ep))
    throw_input("--expert_model_parallel_size {} must divide the number of experts {}", p.ep, c.num_experts);
  auto check_ffn = [&](int64_t f, const char* what) {
    if (f % p.tp) throw_input("--tensor_model_parallel_size {} must divide {} {}", p.tp, what, f);
  };
  if (c.ffn_hidden_size) check_ffn(c.ffn_hidden_size, "intermediate_size");
  if (c.num_experts && c.moe_ffn_hidden_size % p.etp)
    throw_input("--expert_tensor_parallel_size {} must divide moe_intermediate_size {}", p.etp, c.moe_ffn_hidden_size);
  if (c.moe_shared_expert_intermediate_size)
    check_ffn(c.moe_shared_expert_intermediate_size, "shared_expert_intermediate_size");
  const int64_t m = int64_t(divisible_by) * p.tp;  // Megatron pads to a multiple of divisible_by x TP
  padded_vocab_ = (c.vocab_size + m - 1) / m * m;
}

std::vector<int> pipeline_chunk_begins(int L, const dist::ParallelLayout& p) {
  if (p.vpp > 1) {
    if (p.first_stage_layers > 0 || p.last_stage_layers > 0)
      throw_input(
          "--decoder_first_pipeline_num_layers / --decoder_last_pipeline_num_layers with "
          "--virtual_pipeline_model_parallel_size {}: uneven virtual pipeline stages are not supported yet",
          p.vpp);
    const int chunks = p.pp * p.vpp;
    if (L % chunks)
      throw_input(
          "--pipeline_model_parallel_size {} x --virtual_pipeline_model_parallel_size {} = {} model chunks must divide "
          "num_hidden_layers {}",
          p.pp, p.vpp, chunks, L);
    std::vector<int> begin(size_t(chunks) + 1);
    for (int k = 0; k <= chunks; ++k) begin[size_t(k)] = k * (L / chunks);
    return begin;
  }
  const int F = p.first_stage_layers, Z = p.last_stage_layers;
  if (F < 0 || Z < 0)
    throw_input("--decoder_first_pipeline_num_layers {} / --decoder_last_pipeline_num_layers {}: must be >= 0", F, Z);
  if ((F > 0 || Z > 0) && p.pp == 1)
    throw_input(
        "--decoder_first_pipeline_num_layers {} / --decoder_last_pipeline_num_layers {} need "
        "--pipeline_model_parallel_size > 1",
        F, Z);
  std::vector<int> begin(size_t(p.pp) + 1, 0);
  if (F == 0 && Z == 0) {
    if (L % p.pp)
      throw_input("--pipeline_model_parallel_size {} must divide num_hidden_layers {} ({} layers per stage)", p.pp, L,
                  double(L) / p.pp);
    for (int s = 0; s <= p.pp; ++s) begin[size_t(s)] = s * (L / p.pp);
    return begin;
  }
  const int middle = p.pp - (F > 0 ? 1 : 0) - (Z > 0 ? 1 : 0), rest = L - F - Z;
  if (rest < 0 || (middle == 0 && rest != 0) || (middle > 0 && (rest % middle != 0 || rest / middle < 1)))
    throw_input(
        "--decoder_first_pipeline_num_layers {} and --decoder_last_pipeline_num_layers {} leave {} of "
        "num_hidden_layers {} for the {} other stage(s) of --pipeline_model_parallel_size {}: they must split "
        "evenly, at least one layer each",
        F, Z, rest, L, middle, p.pp);
  const int each = middle > 0 ? rest / middle : 0;
  for (int s = 0; s < p.pp; ++s) {
    const int n = s == 0 && F > 0 ? F : s == p.pp - 1 && Z > 0 ? Z : each;
    begin[size_t(s) + 1] = begin[size_t(s)] + n;
  }
  return begin;
}

int ShardSpec::chunk_of_layer(int layer) const {
  int k = 0;
  while (k + 2 < int(chunk_begin_.size()) && layer >= chunk_begin_[size_t(k) + 1]) ++k;
  return k;
}

int ShardSpec::stage_of_layer(int layer) const { return chunk_of_layer(layer) % p_.pp; }

std::string ShardSpec::rank_dir(int tp, int pp, int ep) const {
  char buf[64];
  int n = std::snprintf(buf, sizeof buf, "mp_rank_%02d", tp);
  if (p_.pp > 1) n += std::snprintf(buf + n, sizeof buf - size_t(n), "_%03d", pp);
  if (p_.ep > 1) std::snprintf(buf + n, sizeof buf - size_t(n), "_%03d", ep);
  return buf;
}

std::vector<ShardSpec::RankFile> ShardSpec::rank_files() const {
  // Process i of a stage: TP rank i % TP, EP rank (i / ETP) % EP; the pattern repeats every
  // lcm(TP, ETP x EP) processes, whatever the data-parallel size.
  const int period = std::lcm(p_.tp, p_.etp * p_.ep);
  std::set<std::tuple<int, int, int>> seen;  // (pp, ep, tp): the order files are written in
  for (int pp = 0; pp < p_.pp; ++pp)
    for (int i = 0; i < period; ++i) seen.insert({pp, (i / p_.etp) % p_.ep, i % p_.tp});
  std::vector<RankFile> out;
  out.reserve(seen.size());
  for (const auto& [pp, ep, tp] : seen) out.push_back({tp, pp, ep});
  return out;
}

ShardSpec::Where ShardSpec::where(const std::string& name) const {
  Where w;
  if (name == names::kEmbedding) {
    w.first_stage = true, w.split = Split::kRows;
    return w;
  }
  if (name == names::kOutput) {
    w.last_stage = true, w.split = Split::kRows;
    return w;
  }
  if (name == names::kFinalNorm) {
    w.last_stage = true;
    return w;
  }
  MOE_ASSERT(name.rfind("decoder.layers.", 0) == 0, "unknown canonical tensor {}", name);
  w.layer = std::stoi(name.substr(15));
  const std::string rest = name.substr(name.find('.', 15) + 1);
  for (const char* fc : {"mlp.experts.linear_fc1.weight", "mlp.experts.linear_fc2.weight"})
    if (rest.rfind(fc, 0) == 0) w.expert = std::stoi(rest.substr(std::string(fc).size()));
  if (rest == names::kQkv || rest == names::kQkvBias) w.split = Split::kRows;  // whole query groups
  // fc2 / fc1 of the dense MLP, the shared experts and each expert (".weight{e}" included).
  else if (rest == names::kProj || rest.find("linear_fc2.weight") != std::string::npos) w.split = Split::kCols;
  else if (rest.find("linear_fc1.weight") != std::string::npos) w.split = Split::kGatedRows;
  return w;  // norms, router, shared-expert gate: replicated
}

bool ShardSpec::holds(const Where& w, int pp, int ep) const {
  if (w.first_stage && pp != 0) return false;
  if (w.last_stage && pp != p_.pp - 1) return false;
  if (w.layer >= 0 && stage_of_layer(w.layer) != pp) return false;
  if (w.expert >= 0 && w.expert / (c_.num_experts / p_.ep) != ep) return false;
  return true;
}

std::string ShardSpec::local_name(const std::string& name, const Where& w) const {
  if (w.layer < 0) return name;
  std::string rest = name.substr(name.find('.', 15) + 1);
  if (w.expert >= 0) {
    const int nle = c_.num_experts / p_.ep;
    rest = rest.substr(0, rest.size() - std::to_string(w.expert).size()) + std::to_string(w.expert % nle);
  }
  return names::layer(w.layer - chunk_begin_[size_t(chunk_of_layer(w.layer))]) + rest;
}

bool ShardSpec::local_part(const std::string& name, const Shape& full, int /*tp*/, int pp, int ep, std::string* local,
                           Shape* shape) const {
  const Where w = where(name);
  if (!holds(w, pp, ep)) return false;
  *local = local_name(name, w);
  *shape = full;
  const int n = split_ways(w);
  if (w.split == Split::kRows || w.split == Split::kGatedRows) (*shape)[0] /= n;
  if (w.split == Split::kCols) (*shape)[1] /= n;
  return true;
}

std::vector<ShardSpec::Piece> ShardSpec::shard(const std::string& name, const Tensor& full, int tp, int pp,
                                               int ep) const {
  const Where w = where(name);
  if (!holds(w, pp, ep)) return {};
  const std::string local = local_name(name, w);
  const size_t es = dtype_size(full.dtype());
  const int64_t rows = full.dim(0), cols = full.ndim() > 1 ? full.dim(1) : 1;
  const char* src = static_cast<const char*>(full.raw());
  const int n = split_ways(w);
  if (n == 1) return {{local, full}};  // no copy needed
  tp = piece_of(w, tp);
  switch (w.split) {
    case Split::kReplicated: return {{local, full}};
    case Split::kRows: {
      Shape s = full.shape();
      s[0] = rows / n;
      Tensor t(s, full.dtype());
      std::memcpy(t.raw(), src + size_t(tp * s[0] * cols) * es, t.nbytes());
      return {{local, t}};
    }
    case Split::kCols: {
      const int64_t cc = cols / n;
      Tensor t({rows, cc}, full.dtype());
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<char*>(t.raw()) + size_t(r * cc) * es, src + size_t(r * cols + tp * cc) * es,
                    size_t(cc) * es);
      return {{local, t}};
    }
    case Split::kGatedRows: {
      const int64_t F = rows / 2, f = F / n;
      Tensor t({2 * f, cols}, full.dtype());
      const size_t chunk = size_t(f * cols) * es;
      std::memcpy(t.raw(), src + size_t(tp * f * cols) * es, chunk);
      std::memcpy(static_cast<char*>(t.raw()) + chunk, src + size_t((F + tp * f) * cols) * es, chunk);
      return {{local, t}};
    }
  }
  return {};
}

LocalShapes ShardSpec::local_shapes(int tp, int pp, int ep) const {
  LocalShapes s;
  s.heads = c_.num_attention_heads / p_.tp, s.query_groups = c_.num_query_groups / p_.tp;
  s.experts = c_.num_experts / p_.ep, s.expert_begin = int64_t(ep) * s.experts;
  const int64_t vocab = p_.tp == 1 ? c_.vocab_size : padded_vocab_;
  s.vocab_rows = vocab / p_.tp, s.vocab_begin = int64_t(tp) * s.vocab_rows;
  s.layer_begin = chunk_begin_[size_t(pp)], s.layers = chunk_begin_[size_t(pp) + 1] - s.layer_begin;  // chunk 0's
  s.ffn = c_.ffn_hidden_size / p_.tp, s.shared_ffn = c_.moe_shared_expert_intermediate_size / p_.tp;
  s.moe_ffn = c_.num_experts > 0 ? c_.moe_ffn_hidden_size / p_.etp : 0;
  return s;
}

}  // namespace moe::model
