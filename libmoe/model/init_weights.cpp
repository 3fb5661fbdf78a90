#include "model/init_weights.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
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
// Bytes this process can hold: physical memory, or less under an address-space limit (ulimit -v).
double usable_memory_bytes() {
  double bytes = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  struct rlimit r {};
  if (getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur != RLIM_INFINITY) bytes = std::min(bytes, double(r.rlim_cur));
  return bytes;
}
}  // namespace

void check_init_fits_in_memory(const ModelConfig& c, DType dtype) {
  // The whole state is held in `dtype`, plus one float32 tensor while it is filled.
  const double params = approx_num_parameters(c);
  const double have = usable_memory_bytes();
  double need = params * double(dtype_size(dtype));
  if (need <= have && dtype != DType::F32) {  // the names are only listed for a model that may fit
    double largest = 0;
    const WeightMap map = WeightMap::for_config(c);
    for (const auto& rule : map.rules()) {
      double n = 1;
      for (int64_t d : rule.shape) n *= double(d);
      largest = std::max(largest, n);
    }
    need += 4 * largest;
  }
  if (need > have)
    throw_input(
        "config (model_type '{}', num_hidden_layers {}, hidden_size {}, vocab_size {}): {:.3g} parameters "
        "need {:.1f} GiB to initialise in {}, more than the {:.1f} GiB of memory this process may use "
        "(choose smaller sizes)",
        c.model_type, c.num_layers, c.hidden_size, c.vocab_size, params, need / double(1 << 30),
        torch_dtype_name(dtype), have / double(1 << 30));
}

StateDict init_random_state(const ModelConfig& c, uint64_t seed, DType dtype, double std) {
  check_init_fits_in_memory(c, dtype);
  StateDict s;
  const double out_std = std / std::sqrt(2.0 * c.num_layers);
  const WeightMap map = WeightMap::for_config(c);
  for (const auto& rule : map.rules()) {
    Tensor t(rule.shape, DType::F32);
    float* p = t.f32();
    const std::string& n = rule.mcore;
    const bool norm =
        ends_with(n, "layernorm.weight") || ends_with(n, "layer_norm_weight") || ends_with(n, "final_layernorm.weight");
    if (norm) {
      std::fill(p, p + t.numel(), 1.0f);
    } else if (!ends_with(n, ".bias") && !rule.buffer) {  // biases and the expert bias start at zero
      // Each tensor gets its own stream, so adding a tensor does not change the others.
      Rng rng(seed ^ name_hash(n));
      const bool scaled = ends_with(n, "linear_proj.weight") || n.find("linear_fc2.weight") != std::string::npos;
      const double sd = scaled ? out_std : std;
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(rng.normal() * sd);
    }
    s[n] = dtype == DType::F32 || rule.buffer ? t : t.to(dtype);
  }
  return s;
}

}  // namespace moe::model
