#include "model/train_model.h"

#include <cstring>

#include "core/error.h"
#include "model/rank_state.h"
#include "model/transformer.h"
#include "model/weight_map.h"

namespace moe::model {

TrainModel::TrainModel(ModelConfig config, const StateDict& params, TrainOptions options,
                       const std::shared_ptr<const dist::ProcessGroups>& groups)
    : cfg_(std::move(config)), opt_(std::move(options)) {
  validate_train_options(opt_, cfg_);
  // Training with the bias gives the model one (saved with it); a model that has one routes with
  // it whether or not this run updates it.
  if (opt_.moe.enable_expert_bias && cfg_.num_experts > 0) cfg_.moe_router_enable_expert_bias = true;
  check_state(cfg_, params, true);
  // This rank's slices, from ShardSpec (with one process, the whole tensors).
  // Under TP the vocabulary is padded as Megatron pads it (128 x TP rows), so that each rank's
  // embedding and head rows are those of its rank file.
  const int tp_rank = groups ? groups->tp().rank() : 0, ep_rank = groups ? groups->ep().rank() : 0;
  // The TP and EP slices under global layer names (a stage's view), then this stage's part.
  const ShardSpec spec =
      groups ? ShardSpec(cfg_, groups->layout().stage_view(), kMakeVocabSizeDivisibleBy) : single_process_spec(cfg_);
  const StateDict local = rank_state(spec, cfg_, params, tp_rank, 0, ep_rank);
  Context ctx = single_process_context(cfg_);
  if (groups) ctx.groups = groups, ctx.local = spec.local_shapes(tp_rank, 0, ep_rank);
  ctx.sequence_parallel = opt_.sequence_parallel;
  first_expert_ = ctx.local.expert_begin, local_experts_ = ctx.local.experts;
  const int pp = groups ? groups->layout().pp : 1, pp_rank = groups ? groups->pp().rank() : 0;
  // This rank's model chunks: its stage's layers, or with virtual stages chunks k = v x pp + rank.
  const int vpp = groups ? groups->layout().vpp : 1;
  std::vector<std::pair<int, int>> ranges;
  if (pp > 1) {
    const ShardSpec stages(cfg_, groups->layout(), kMakeVocabSizeDivisibleBy);
    for (int v = 0; v < vpp; ++v)
      ranges.push_back({stages.chunk_begin(v * pp + pp_rank), stages.chunk_begin(v * pp + pp_rank + 1)});
  } else {
    ranges.push_back({0, cfg_.num_layers});
  }
  layer_begin_ = ranges.front().first, layer_end_ = ranges.front().second;
  const bool first = pp_rank == 0, last = pp_rank == pp - 1;
  // The last stage's own copy of a tied embedding (Megatron's output_layer.weight under PP).
  const bool tied_copy = pp > 1 && last && !cfg_.untie_embeddings_and_output_weights;
  auto on_stage = [&](const std::string& name) {
    if (name == names::kEmbedding) return first;
    if (name == names::kFinalNorm || name == names::kOutput) return last;
    const int layer = names::layer_index(name);
    for (const auto& [b, e] : ranges)
      if (layer >= b && layer < e) return true;
    return layer < 0;
  };

  // What this rank trains, in flat order: the WeightMap's dense tensors, then its experts.
  struct Slot {
    std::string name;
    std::vector<int64_t> shape;
    bool buffer;
  };
  std::vector<Slot> slots;
  const WeightMap map = WeightMap::for_config(cfg_);
  for (const auto& rule : map.rules())
    if (rule.mcore.find(".mlp.experts.") == std::string::npos && on_stage(rule.mcore)) {
      const auto it = local.find(rule.mcore);  // this rank's slice (a buffer may be absent: zeros)
      slots.push_back({rule.mcore, it != local.end() ? it->second.shape() : rule.shape, rule.buffer});
    }
  if (tied_copy) slots.push_back({names::kOutput, local.at(names::kEmbedding).shape(), false});
  for (const Slot& sl : slots)
    if (!sl.buffer) dense_numel_ += size_t(shape_numel(sl.shape));
  for (const auto& [b, e] : ranges)
    for (int i = b; i < e; ++i)
      if (cfg_.is_moe_layer(i))
        for (int64_t e = 0; e < local_experts_; ++e)
          for (const std::string& n : {names::expert_fc1(int(e)), names::expert_fc2(int(e))}) {
            const std::string name = names::layer(i) + n;
            slots.push_back({name, local.at(name).shape(), false});
          }
  for (const Slot& sl : slots)
    if (!sl.buffer) numel_ += size_t(shape_numel(sl.shape));
  // One zeroed allocation each: what gradient bucketing and a distributed optimizer slice.
  param_flat_ = std::shared_ptr<float[]>(new float[numel_]());
  grad_flat_ = std::shared_ptr<float[]>(new float[numel_]());
  size_t at = 0;
  for (const Slot& sl : slots) {
    auto it = local.find(tied_copy && sl.name == names::kOutput ? std::string(names::kEmbedding) : sl.name);
    if (sl.buffer) {  // not trained by the optimizer; zeros when the checkpoint has none yet
      Tensor b(sl.shape, DType::F32);
      if (it != local.end()) {
        Tensor src = it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32);
        std::memcpy(b.raw(), src.raw(), b.nbytes());
      }
      buffers_.emplace(sl.name, std::move(b));
      continue;
    }
    // Always a copy: the optimizer updates these in place (inputs may be mapped files).
    Tensor p = Tensor::borrow(sl.shape, DType::F32, param_flat_.get() + at, param_flat_);
    Tensor src = it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32);
    std::memcpy(p.raw(), src.raw(), p.nbytes());
    params_.emplace(sl.name, p);
    grads_.emplace(sl.name, Tensor::borrow(sl.shape, DType::F32, grad_flat_.get() + at, grad_flat_));
    at += size_t(shape_numel(sl.shape));
  }
  StateDict with_buffers = params_;
  with_buffers.insert(buffers_.begin(), buffers_.end());
  ModelConfig no_buffers = cfg_;  // gradients exist for parameters only
  no_buffers.moe_router_enable_expert_bias = false;
  const int El = int(local_experts_);
  if (pp == 1) {
    auto& ch = *chunks_.emplace_back(std::make_unique<Chunk>());
    ch.begin = 0, ch.end = cfg_.num_layers;
    ch.grads = stage_weights(no_buffers, grads_, 0, cfg_.num_layers, El);
    ch.stage =
        std::make_unique<Stage>(ctx, cfg_, stage_weights(cfg_, with_buffers, 0, cfg_.num_layers, El), &ch.grads, opt_);
    return;
  }
  // Pipeline chunks: their layers, the embedding only on the model's first chunk, the final norm
  // and head on its last. The chunks share the context (one workspace arena, stack discipline).
  for (int v = 0; v < vpp; ++v) {
    const int b = ranges[size_t(v)].first, e = ranges[size_t(v)].second;  // (a lambda below reads them)
    const bool with_embedding = first && v == 0, with_head = last && v == vpp - 1;
    auto part = [&](const ModelConfig& c, const StateDict& s) {
      StageWeights w;
      for (int i = b; i < e; ++i) w.layers.push_back(layer_weights(c, s, i, El));
      if (with_embedding) w.embedding = s.at(names::kEmbedding);
      if (with_head) w.final_norm = s.at(names::kFinalNorm), w.output = s.at(names::kOutput);
      return w;
    };
    auto& ch = *chunks_.emplace_back(std::make_unique<Chunk>());
    ch.begin = b, ch.end = e;
    ch.grads = part(no_buffers, grads_);
    ch.stage = std::make_unique<Stage>(ctx, cfg_, part(cfg_, with_buffers), &ch.grads, opt_);
  }
}

StepStats TrainModel::global_stats(StepStats st, int chunk) const {
  const Chunk& ch = *chunks_.at(size_t(chunk));
  if (ch.begin == 0 && ch.end == cfg_.num_layers) return st;
  const size_t E = size_t(std::max(cfg_.num_experts, 0));
  std::vector<int64_t> all(size_t(cfg_.num_layers) * E, 0);
  std::copy(st.tokens_per_expert.begin(), st.tokens_per_expert.end(), all.begin() + std::ptrdiff_t(ch.begin * E));
  st.tokens_per_expert = std::move(all);
  return st;
}

StageActs& TrainModel::slot_acts(int slot, int chunk) {
  auto& slots = chunks_.at(size_t(chunk))->slots;
  while (slots.size() <= size_t(slot)) slots.push_back(std::make_unique<StageActs>());
  return *slots[size_t(slot)];
}

StepStats TrainModel::forward_stage(const MicroBatchView& mb, int slot, bool keep, float loss_scale, const float* input,
                                    int chunk) {
  return global_stats(chunks_.at(size_t(chunk))
                          ->stage->forward_loss(batch(mb), slot_acts(slot, chunk), keep, loss_scale, nullptr, input),
                      chunk);
}

void TrainModel::backward_stage(const MicroBatchView& mb, int slot, float aux_scale, const float* grad_output,
                                float* grad_input, int chunk) {
  run_backward(chunk, batch(mb), slot_acts(slot, chunk), aux_scale, grad_output, grad_input);
}

std::function<void(int)> TrainModel::globalised(const std::function<void(int)>& to, int begin) const {
  return [&to, begin](int part) { to(part == Stage::kHead || part == Stage::kEmbedding ? part : begin + part); };
}

void TrainModel::on_final_grads(std::function<void(int)> done, int backwards) {
  final_grads_ = std::move(done);
  for (auto& ch : chunks_) {
    ch->backwards_left = final_grads_ ? backwards : 0;
    ch->grads_done = globalised(final_grads_, ch->begin);
  }
}

void TrainModel::on_params_needed(std::function<void(int)> needed) {
  params_needed_ = std::move(needed);
  for (auto& ch : chunks_) {
    ch->params_needed = globalised(params_needed_, ch->begin);
    ch->stage->set_params_needed(params_needed_ ? &ch->params_needed : nullptr);
  }
}

void TrainModel::run_backward(int chunk, const Batch& b, StageActs& acts, float aux_scale, const float* grad_output,
                              float* grad_input) {
  Chunk& ch = *chunks_.at(size_t(chunk));
  const bool last = final_grads_ && ch.backwards_left > 0 && --ch.backwards_left == 0;
  ch.stage->set_grads_done(last ? &ch.grads_done : nullptr);
  ch.stage->backward(b, acts, aux_scale, grad_output, grad_input);
  ch.stage->set_grads_done(nullptr);
}

void TrainModel::zero_grad() { std::memset(grad_flat_.get(), 0, numel_ * sizeof(float)); }

void TrainModel::update_expert_bias(const std::vector<int64_t>& tpe) {
  if (!opt_.moe.enable_expert_bias) return;
  const size_t E = size_t(cfg_.num_experts);
  for (const auto& ch : chunks_)
    for (int i = ch->begin; i < ch->end; ++i) {
      Tensor& b = ch->stage->weights().layers[size_t(i - ch->begin)].moe.expert_bias;
      if (cfg_.is_moe_layer(i) && b.defined() && b.numel() > 0)
        model::update_expert_bias(b.f32(), std::span(tpe).subspan(size_t(i) * E, E), opt_.moe.bias_update_rate);
    }
}

StepStats TrainModel::forward_backward(const MicroBatchView& mb, float loss_scale, float aux_scale) {
  const Batch b = batch(mb);
  Stage& s = stage();
  MOE_ASSERT(s.first() && s.last(), "forward_backward on one pipeline stage of several");
  StepStats st = s.forward_loss(b, acts_, true, loss_scale);
  run_backward(0, b, acts_, aux_scale, nullptr, nullptr);
  return st;
}

StepStats TrainModel::evaluate(const MicroBatchView& mb, float* logits_out) {
  Stage& s = stage();
  MOE_ASSERT(s.first() && s.last(), "evaluate on one pipeline stage of several");
  return s.forward_loss(batch(mb), acts_, false, 0.0f, logits_out);
}

}  // namespace moe::model
