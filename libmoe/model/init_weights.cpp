#include "model/init_weights.h"

#include <cmath>

#include "core/rng.h"
#include "model/weight_map.h"

namespace moe::model {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
// FNV-1a: a stable per-name seed (std::hash is not specified across libraries).
uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}
}  // namespace

StateDict init_random_state(const ModelConfig& c, uint64_t seed, DType dtype, double std) {
  StateDict s;
  const double out_std = std / std::sqrt(2.0 * c.num_layers);
  const WeightMap map = WeightMap::for_config(c);
  for (const auto& rule : map.rules()) {
    Tensor t(rule.shape, DType::F32);
    float* p = t.f32();
    const std::string& n = rule.mcore;
    const bool norm = ends_with(n, "layernorm.weight") || ends_with(n, "layer_norm_weight") ||
                      ends_with(n, "final_layernorm.weight");
    if (norm) {
      std::fill(p, p + t.numel(), 1.0f);
    } else if (!ends_with(n, ".bias")) {
      // Each tensor gets its own stream, so adding a tensor does not change the others.
      Rng rng(seed ^ name_hash(n));
      const bool scaled = ends_with(n, "linear_proj.weight") || n.find("linear_fc2.weight") != std::string::npos;
      const double sd = scaled ? out_std : std;
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(rng.normal() * sd);
    }
    s[n] = dtype == DType::F32 ? t : t.to(dtype);
  }
  return s;
}

}  // namespace moe::model
