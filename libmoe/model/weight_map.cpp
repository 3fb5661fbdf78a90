#include "model/weight_map.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "model/state_dict.h"

namespace moe::model {

namespace {

// HF spelling of the per-family MoE block.
struct HfMoeNames {
  std::string block, router;
  std::string expert_gate, expert_up, expert_down;  // with {e} substituted by the caller
};

HfMoeNames hf_moe_names(const std::string& model_type) {
  if (model_type == "mixtral") return {"block_sparse_moe.", "block_sparse_moe.gate.weight", "w1", "w3", "w2"};
  return {"mlp.", "mlp.gate.weight", "gate_proj", "up_proj", "down_proj"};
}

// One past the largest N in names holding `marker` + "N.", 0 when none does.
int64_t count_indexed(const std::vector<std::string>& names, const std::string& marker) {
  int64_t count = 0;
  for (const auto& n : names)
    for (size_t at = n.find(marker); at != std::string::npos; at = n.find(marker, at + 1)) {
      size_t i = at + marker.size(), end = i;
      while (end < n.size() && end - i < 9 && n[end] >= '0' && n[end] <= '9') ++end;
      if (end > i && end < n.size() && n[end] == '.')
        count = std::max(count, int64_t(std::stoll(n.substr(i, end - i))) + 1);
    }
  return count;
}

}  // namespace

HfCounts hf_counts(const std::vector<std::string>& names) {
  return {count_indexed(names, "model.layers."), count_indexed(names, ".experts.")};
}

WeightMap WeightMap::for_config(const ModelConfig& c) {
  WeightMap m(c);
  auto& R = m.rules_;
  const int64_t H = c.hidden_size, V = c.vocab_size, d = c.kv_channels;
  const int64_t nq = int64_t(c.num_attention_heads) * d, nkv = int64_t(c.num_query_groups) * d;
  auto copy = [&](std::string mc, Shape s, std::string hf) {
    R.push_back({std::move(mc), s, {std::move(hf)}, {s}, Fuse::kCopy});
  };
  auto gate_up = [&](std::string mc, int64_t F, std::string g, std::string u) {
    R.push_back({std::move(mc), {2 * F, H}, {std::move(g), std::move(u)}, {{F, H}, {F, H}}, Fuse::kGateUp});
  };

  copy(names::kEmbedding, {V, H}, "model.embed_tokens.weight");
  const HfMoeNames moe = hf_moe_names(c.model_type);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string L = names::layer(i), hl = "model.layers." + std::to_string(i) + ".";
    copy(L + names::kInputNorm, {H}, hl + "input_layernorm.weight");
    R.push_back({L + names::kQkv,
                 {c.qkv_rows(), H},
                 {hl + "self_attn.q_proj.weight", hl + "self_attn.k_proj.weight", hl + "self_attn.v_proj.weight"},
                 {{nq, H}, {nkv, H}, {nkv, H}},
                 Fuse::kQkv});
    if (c.add_qkv_bias)
      R.push_back({L + names::kQkvBias,
                   {c.qkv_rows()},
                   {hl + "self_attn.q_proj.bias", hl + "self_attn.k_proj.bias", hl + "self_attn.v_proj.bias"},
                   {{nq}, {nkv}, {nkv}},
                   Fuse::kQkv});
    if (c.qk_layernorm) {
      copy(L + names::kQNorm, {d}, hl + "self_attn.q_norm.weight");
      copy(L + names::kKNorm, {d}, hl + "self_attn.k_norm.weight");
    }
    copy(L + names::kProj, {H, nq}, hl + "self_attn.o_proj.weight");
    if (c.is_moe_layer(i)) {
      const std::string hb = hl + moe.block;
      copy(L + names::kPreMlpNorm, {H}, hl + "post_attention_layernorm.weight");
      copy(L + names::kRouter, {c.num_experts, H}, hl + moe.router);
      if (c.moe_router_enable_expert_bias)  // HF spelling as DeepSeek-V3's selection-only bias
        R.push_back({L + names::kExpertBias,
                     {c.num_experts},
                     {hb + "gate.e_score_correction_bias"},
                     {{c.num_experts}},
                     Fuse::kCopy,
                     true});
      const int64_t Fe = c.moe_ffn_hidden_size;
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string he = hb + "experts." + std::to_string(e) + ".";
        gate_up(L + names::expert_fc1(e), Fe, he + moe.expert_gate + ".weight", he + moe.expert_up + ".weight");
        copy(L + names::expert_fc2(e), {H, Fe}, he + moe.expert_down + ".weight");
      }
      if (c.moe_shared_expert_intermediate_size > 0) {
        const int64_t Fs = c.moe_shared_expert_intermediate_size;
        gate_up(L + names::kSharedFc1, Fs, hb + "shared_expert.gate_proj.weight", hb + "shared_expert.up_proj.weight");
        copy(L + names::kSharedFc2, {H, Fs}, hb + "shared_expert.down_proj.weight");
        if (c.moe_shared_expert_gate) copy(L + names::kSharedGate, {1, H}, hb + "shared_expert_gate.weight");
      }
    } else {
      const int64_t F = c.ffn_hidden_size;
      copy(L + names::kDenseNorm, {H}, hl + "post_attention_layernorm.weight");
      gate_up(L + names::kDenseFc1, F, hl + "mlp.gate_proj.weight", hl + "mlp.up_proj.weight");
      copy(L + names::kDenseFc2, {H, F}, hl + "mlp.down_proj.weight");
    }
  }
  copy(names::kFinalNorm, {H}, "model.norm.weight");
  if (c.untie_embeddings_and_output_weights) copy(names::kOutput, {V, H}, "lm_head.weight");
  return m;
}

Tensor WeightMap::to_mcore(const WeightRule& r, const std::vector<Tensor>& hf) const {
  MOE_ASSERT(hf.size() == r.hf.size(), "rule {} takes {} tensors, got {}", r.mcore, r.hf.size(), hf.size());
  if (r.fuse == Fuse::kCopy) return hf[0];
  const DType dt = hf[0].dtype();
  for (const auto& t : hf) MOE_ASSERT(t.dtype() == dt, "mixed dtypes fusing {}", r.mcore);
  Tensor out(r.shape, dt);
  char* dst = static_cast<char*>(out.raw());
  for (const auto& run : mcore_runs(r, dtype_size(dt))) {
    std::memcpy(dst, static_cast<const char*>(hf[run.part].raw()) + run.offset, run.size);
    dst += run.size;
  }
  return out;
}

std::vector<WeightMap::ByteRun> WeightMap::mcore_runs(const WeightRule& r, size_t es) const {
  auto bytes = [&](const Shape& s) { return size_t(shape_numel(s)) * es; };
  if (r.fuse == Fuse::kCopy) return {{0, 0, bytes(r.hf_shapes[0])}};
  if (r.fuse == Fuse::kGateUp) return {{0, 0, bytes(r.hf_shapes[0])}, {1, 0, bytes(r.hf_shapes[1])}};
  // QKV: for each query group g: r*d rows of q, d rows of k, d rows of v.
  const size_t row = size_t(r.shape.size() == 2 ? r.shape[1] : 1) * es;  // bytes per output row
  const size_t d = size_t(cfg_.kv_channels), ratio = size_t(cfg_.query_groups_ratio());
  std::vector<ByteRun> runs;
  for (size_t g = 0; g < size_t(cfg_.num_query_groups); ++g) {
    runs.push_back({0, g * ratio * d * row, ratio * d * row});
    runs.push_back({1, g * d * row, d * row});
    runs.push_back({2, g * d * row, d * row});
  }
  return runs;
}

std::vector<Tensor> WeightMap::to_hf(const WeightRule& r, const Tensor& m) const {
  if (r.fuse == Fuse::kCopy) return {m};
  if (r.fuse == Fuse::kGateUp) {  // [gate; up]: two row ranges, returned as views (no copy)
    const int64_t F = r.hf_shapes[0][0];
    return {m.slice_rows(0, F), m.slice_rows(F, m.dim(0))};
  }
  std::vector<Tensor> out;
  for (const auto& s : r.hf_shapes) out.emplace_back(s, m.dtype());
  const size_t es = dtype_size(m.dtype());
  const size_t row = size_t(r.shape.size() == 2 ? r.shape[1] : 1) * es;
  const char* src = static_cast<const char*>(m.raw());
  const int64_t d = cfg_.kv_channels, ratio = cfg_.query_groups_ratio();
  char* q = static_cast<char*>(out[0].raw());
  char* k = static_cast<char*>(out[1].raw());
  char* v = static_cast<char*>(out[2].raw());
  for (int64_t g = 0; g < cfg_.num_query_groups; ++g) {
    std::memcpy(q + g * ratio * d * row, src, ratio * d * row), src += ratio * d * row;
    std::memcpy(k + g * d * row, src, d * row), src += d * row;
    std::memcpy(v + g * d * row, src, d * row), src += d * row;
  }
  return out;
}

}  // namespace moe::model
