// Key/value cache for incremental decoding: per layer, the rotated keys and the values of
// every position seen so far, [S, ng, d] in fp32. Grows by doubling. The generator owns one and
// hands it to the model through the model::KvStore interface it implements. On a backend whose
// memory is not the host's (a GPU) it lives in that memory.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/device_memory.h"
#include "model/kv_store.h"
#include "model/model_config.h"

namespace moe::infer {

class KvCache final : public model::KvStore {
 public:
  KvCache(int num_layers, int64_t ng, int64_t d, std::shared_ptr<const DeviceMemory> device = nullptr)
      : k_(size_t(num_layers)), v_(size_t(num_layers)), row_(ng * d), device_(std::move(device)) {
    if (device_) k_dev_.resize(size_t(num_layers)), v_dev_.resize(size_t(num_layers));
  }
  // Sized for `c`: every layer, its query groups and head dim.
  explicit KvCache(const model::ModelConfig& c, std::shared_ptr<const DeviceMemory> device = nullptr)
      : KvCache(c.num_layers, c.num_query_groups, c.kv_channels, std::move(device)) {}
  int64_t length() const override { return length_; }
  // Makes room for positions [0, n) in every layer.
  void reserve(int64_t n) override {
    if (n <= capacity_) return;
    capacity_ = std::max(n, 2 * capacity_);
    if (!device_) {
      for (auto* kv : {&k_, &v_})
        for (auto& layer : *kv) layer.resize(size_t(capacity_ * row_));
      return;
    }
    const size_t bytes = size_t(capacity_ * row_) * sizeof(float), held = size_t(length_ * row_) * sizeof(float);
    for (auto* kv : {&k_dev_, &v_dev_})
      for (DeviceArray& layer : *kv) {
        DeviceArray grown(device_, bytes, "the KV cache");
        if (held) device_->on_device(grown.get(), layer.get(), held);
        layer = std::move(grown);
      }
  }
  float* keys(int layer) override { return device_ ? k_dev_[size_t(layer)].as<float>() : k_[size_t(layer)].data(); }
  float* values(int layer) override { return device_ ? v_dev_[size_t(layer)].as<float>() : v_[size_t(layer)].data(); }
  void advance(int64_t n) override { length_ += n; }
  void clear() { length_ = 0; }
  // Forgets positions >= n (e.g. to re-use a shared prompt prefix).
  void truncate(int64_t n) { length_ = std::min(length_, n); }

 private:
  std::vector<std::vector<float>> k_, v_;
  std::vector<DeviceArray> k_dev_, v_dev_;
  int64_t row_;
  std::shared_ptr<const DeviceMemory> device_;
  int64_t length_ = 0, capacity_ = 0;
};

}  // namespace moe::infer
