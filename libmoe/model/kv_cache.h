// Key/value cache for incremental decoding: per layer, the rotated keys and the values of
// every position seen so far, [S, ng, d] in fp32. Grows by doubling.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace moe::model {

class KvCache {
 public:
  KvCache(int num_layers, int64_t ng, int64_t d) : k_(size_t(num_layers)), v_(size_t(num_layers)), row_(ng * d) {}
  int64_t length() const { return length_; }
  // Makes room for positions [0, n) in every layer.
  void reserve(int64_t n) {
    if (n <= capacity_) return;
    capacity_ = std::max(n, 2 * capacity_);
    for (auto* kv : {&k_, &v_})
      for (auto& layer : *kv) layer.resize(size_t(capacity_ * row_));
  }
  float* keys(int layer) { return k_[size_t(layer)].data(); }
  float* values(int layer) { return v_[size_t(layer)].data(); }
  void advance(int64_t n) { length_ += n; }
  void clear() { length_ = 0; }
  // Forgets positions >= n (e.g. to re-use a shared prompt prefix).
  void truncate(int64_t n) { length_ = std::min(length_, n); }

 private:
  std::vector<std::vector<float>> k_, v_;
  int64_t row_;
  int64_t length_ = 0, capacity_ = 0;
};

}  // namespace moe::model
