// Rotary position embedding tables: inverse frequencies as HF computes them for each
// rope_type (default, linear, llama3, yarn), and cos/sin tables grown on demand.
#pragma once
#include <memory>
#include <vector>

#include "core/device_memory.h"
#include "model/model_config.h"

namespace moe::model {

// inv_freq[i] for i < head_dim/2 (float32, as HF computes it), and the attention scaling
// that multiplies cos and sin (1 except for yarn).
std::vector<float> rope_inv_freq(const ModelConfig& c, float* attention_scaling);

class RopeTable {
 public:
  // `device` set: the tables the ops read live in that memory (a copy of the host's).
  explicit RopeTable(const ModelConfig& c, std::shared_ptr<const DeviceMemory> device = nullptr);
  // Makes positions [0, n) available.
  void reserve(int64_t n);
  const float* cos() const { return device_ ? cos_dev_.as<const float>() : cos_.data(); }
  const float* sin() const { return device_ ? sin_dev_.as<const float>() : sin_.data(); }

 private:
  std::vector<float> inv_freq_, cos_, sin_;
  std::shared_ptr<const DeviceMemory> device_;
  DeviceArray cos_dev_, sin_dev_;
  float scaling_ = 1.0f;
  int64_t n_ = 0;
};

}  // namespace moe::model
