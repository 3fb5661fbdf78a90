#include "model/context.h"

#include "model/rank_state.h"

namespace moe::model {

LocalShapes local_shapes(const ModelConfig& c, const ShardSpec& spec, int tp, int pp, int ep) {
  const auto& p = spec.layout();
  LocalShapes s;
  s.heads = c.num_attention_heads / p.tp, s.query_groups = c.num_query_groups / p.tp;
  s.experts = c.num_experts / p.ep, s.expert_begin = int64_t(ep) * s.experts;
  const int64_t vocab = p.tp == 1 ? c.vocab_size : spec.padded_vocab();
  s.vocab_rows = vocab / p.tp, s.vocab_begin = int64_t(tp) * s.vocab_rows;
  s.layers = c.num_layers / p.pp, s.layer_begin = pp * s.layers;
  return s;
}

Context single_process_context(const ModelConfig& c) {
  const ShardSpec spec = single_process_spec(c);
  return {Backend{}, local_shapes(c, spec, 0, 0, 0),
          std::make_shared<const dist::ProcessGroups>(dist::ProcessGroups::local())};
}

}  // namespace moe::model
