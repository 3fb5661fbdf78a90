#include "checkpoint/convert_precision.h"

#include <algorithm>
#include <cmath>

#include "model/transformer.h"

namespace moe::checkpoint {

PrecisionReport compare_models(const LoadedModel& a, const LoadedModel& b, const std::vector<int32_t>& ids,
                               const Backend& backend) {
  model::Transformer ta(a.config, a.state, backend), tb(b.config, b.state, backend);
  const int64_t V = a.config.vocab_size, T = int64_t(ids.size());
  std::vector<float> la(static_cast<size_t>(T * V)), lb(static_cast<size_t>(T * V));
  ta.forward(ids, la.data(), /*all_logits=*/true);
  tb.forward(ids, lb.data(), /*all_logits=*/true);
  PrecisionReport r;
  r.tokens = int(T);
  double num = 0, den = 0, sum = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    const double d = std::fabs(double(la[i]) - lb[i]);
    r.max_abs_diff = std::max(r.max_abs_diff, d);
    sum += d, num += d * d, den += double(la[i]) * la[i];
  }
  r.mean_abs_diff = sum / double(la.size());
  r.rel_l2 = std::sqrt(num / std::max(den, 1e-30));
  for (int64_t t = 0; t < T; ++t) {
    const float* pa = la.data() + t * V;
    const float* pb = lb.data() + t * V;
    r.argmax_mismatches += (std::max_element(pa, pa + V) - pa) != (std::max_element(pb, pb + V) - pb);
  }
  return r;
}

}  // namespace moe::checkpoint
