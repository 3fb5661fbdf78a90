#include "model/train_model.h"

#include <cstring>

#include "core/error.h"
#include "model/rank_state.h"
#include "model/transformer.h"
#include "model/weight_map.h"

namespace moe::model {

TrainModel::TrainModel(ModelConfig config, const StateDict& params, TrainOptions options)
    : cfg_(std::move(config)), opt_(std::move(options)) {
  validate_train_options(opt_, cfg_);
  // Training with the bias gives the model one (saved with it); a model that has one routes with
  // it whether or not this run updates it.
  if (opt_.moe.enable_expert_bias && cfg_.num_experts > 0) cfg_.moe_router_enable_expert_bias = true;
  check_state(cfg_, params, true);
  // This rank's slices, from ShardSpec (with one process, the whole tensors).
  const StateDict local = rank_state(single_process_spec(cfg_), cfg_, params, 0, 0, 0);
  const WeightMap map = WeightMap::for_config(cfg_);
  for (const auto& rule : map.rules())
    if (!rule.buffer) numel_ += size_t(shape_numel(rule.shape));
  // One zeroed allocation each: what gradient bucketing and a distributed optimizer slice.
  param_flat_ = std::shared_ptr<float[]>(new float[numel_]());
  grad_flat_ = std::shared_ptr<float[]>(new float[numel_]());
  size_t at = 0;
  for (const auto& rule : map.rules()) {
    auto it = local.find(rule.mcore);
    if (rule.buffer) {  // not trained by the optimizer; zeros when the checkpoint has none yet
      Tensor b(rule.shape, DType::F32);
      if (it != local.end()) {
        Tensor src = it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32);
        std::memcpy(b.raw(), src.raw(), b.nbytes());
      }
      buffers_.emplace(rule.mcore, std::move(b));
      continue;
    }
    // Always a copy: the optimizer updates these in place (inputs may be mapped files).
    Tensor p = Tensor::borrow(rule.shape, DType::F32, param_flat_.get() + at, param_flat_);
    Tensor src = it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32);
    std::memcpy(p.raw(), src.raw(), p.nbytes());
    params_.emplace(rule.mcore, p);
    grads_.emplace(rule.mcore, Tensor::borrow(rule.shape, DType::F32, grad_flat_.get() + at, grad_flat_));
    at += size_t(shape_numel(rule.shape));
  }
  StateDict with_buffers = params_;
  with_buffers.insert(buffers_.begin(), buffers_.end());
  ModelConfig no_buffers = cfg_;  // gradients exist for parameters only
  no_buffers.moe_router_enable_expert_bias = false;
  grad_views_ = stage_weights(no_buffers, grads_, 0, cfg_.num_layers);
  stage_ = std::make_unique<Stage>(single_process_context(cfg_), cfg_,
                                   stage_weights(cfg_, with_buffers, 0, cfg_.num_layers), &grad_views_, opt_);
}

void TrainModel::zero_grad() { std::memset(grad_flat_.get(), 0, numel_ * sizeof(float)); }

void TrainModel::update_expert_bias(const std::vector<int64_t>& tpe) {
  if (!opt_.moe.enable_expert_bias) return;
  const size_t E = size_t(cfg_.num_experts);
  for (int i = 0; i < cfg_.num_layers; ++i) {
    Tensor& b = stage_->weights().layers[size_t(i)].moe.expert_bias;
    if (cfg_.is_moe_layer(i) && b.defined() && b.numel() > 0)
      model::update_expert_bias(b.f32(), std::span(tpe).subspan(size_t(i) * E, E), opt_.moe.bias_update_rate);
  }
}

StepStats TrainModel::forward_backward(const MicroBatchView& mb, float loss_scale, float aux_scale) {
  const Batch b = batch(mb);
  StepStats st = stage_->forward_loss(b, acts_, true, loss_scale);
  stage_->backward(b, acts_, aux_scale);
  return st;
}

StepStats TrainModel::evaluate(const MicroBatchView& mb, float* logits_out) {
  return stage_->forward_loss(batch(mb), acts_, false, 0.0f, logits_out);
}

}  // namespace moe::model
