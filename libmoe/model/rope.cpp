#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace moe::model {

std::vector<float> rope_inv_freq(const ModelConfig& c, float* attention_scaling) {
  const int64_t dim = c.kv_channels, half = dim / 2;
  const double base = c.rotary_base;
  const RopeScaling& r = c.rope_scaling;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = float(1.0 / std::pow(base, double(2 * i) / double(dim)));
  *attention_scaling = 1.0f;
  if (r.type == "linear") {
    for (auto& f : inv) f = float(f / r.factor);
  } else if (r.type == "llama3") {
    const double old_ctx = double(r.original_max_position_embeddings);
    const double low_wavelen = old_ctx / r.low_freq_factor, high_wavelen = old_ctx / r.high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = float(f / r.factor);
      } else if (wavelen >= high_wavelen) {  // medium frequencies: blend
        const double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = float((1 - smooth) * f / r.factor + smooth * f);
      }
    }
  } else if (r.type == "yarn") {
    const double factor = r.factor;
    const double orig =
        double(r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : c.max_position_embeddings);
    auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    double att = r.attention_factor;
    if (att <= 0) {
      att = (r.mscale > 0 && r.mscale_all_dim > 0) ? get_mscale(factor, r.mscale) / get_mscale(factor, r.mscale_all_dim)
                                                   : get_mscale(factor, 1.0);
    }
    *attention_scaling = float(att);
    auto correction_dim = [&](double rot) {
      return double(dim) * std::log(orig / (rot * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
    if (r.truncate) low = std::floor(low), high = std::ceil(high);
    low = std::max(low, 0.0), high = std::min(high, double(dim - 1));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const float pos_freq = float(std::pow(base, double(2 * i) / double(dim)));
      const float extrapolation = 1.0f / pos_freq, interpolation = float(1.0 / (factor * pos_freq));
      const float ramp = std::clamp(float((double(i) - low) / (high - low)), 0.0f, 1.0f);
      const float extra_factor = 1.0f - ramp;
      inv[size_t(i)] = interpolation * (1 - extra_factor) + extrapolation * extra_factor;
    }
  }
  return inv;
}

RopeTable::RopeTable(const ModelConfig& c, std::shared_ptr<const DeviceMemory> device) : device_(std::move(device)) {
  inv_freq_ = rope_inv_freq(c, &scaling_);
}

void RopeTable::reserve(int64_t n) {
  if (n <= n_) return;
  n = std::max(n, 2 * n_);
  const size_t half = inv_freq_.size();
  cos_.resize(size_t(n) * half), sin_.resize(size_t(n) * half);
  for (int64_t p = n_; p < n; ++p)
    for (size_t i = 0; i < half; ++i) {
      // HF multiplies position and inv_freq in float32, then takes cos/sin.
      const float angle = float(p) * inv_freq_[i];
      cos_[size_t(p) * half + i] = std::cos(angle) * scaling_;
      sin_[size_t(p) * half + i] = std::sin(angle) * scaling_;
    }
  n_ = n;
  if (device_) {  // the whole table again: growth doubles, so its copies cost as much as the last one
    const size_t bytes = cos_.size() * sizeof(float);
    cos_dev_ = DeviceArray(device_, bytes, "the rotary cos table");
    sin_dev_ = DeviceArray(device_, bytes, "the rotary sin table");
    device_->to_device(cos_dev_.get(), cos_.data(), bytes);
    device_->to_device(sin_dev_.get(), sin_.data(), bytes);
  }
}

}  // namespace moe::model
