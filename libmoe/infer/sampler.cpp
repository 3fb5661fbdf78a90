#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace moe::infer {

std::string sampling_value_problem(std::string_view name, double value) {
  // Checked as the float the sampler will hold, so 1e39 is refused as the inf it becomes.
  const double v = name == "top_k" ? value : double(float(value));
  if (name == "temperature") return std::isfinite(v) && v >= 0 ? "" : "must be a finite number >= 0 (0 = greedy)";
  if (name == "top_p") return std::isfinite(v) && v > 0 && v <= 1 ? "" : "must be > 0 and <= 1 (1 = off)";
  if (name == "repetition_penalty") return std::isfinite(v) && v > 0 ? "" : "must be a finite number > 0 (1 = off)";
  if (name == "top_k")
    return v >= 0 && v <= 2147483647.0 && v == std::floor(v) ? "" : "must be a whole number >= 0 (0 = off)";
  return "is not a sampling parameter";
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> history) {
  const int64_t V = int64_t(logits.size());
  if (p_.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[size_t(id)];
      l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.temperature <= 0.0f || p_.top_k == 1)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());

  cand_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[size_t(i)] / p_.temperature, int32_t(i)};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    n = size_t(p_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the survivors, then keep the smallest prefix whose mass reaches top_p.
  const float m = cand_[0].first;
  double total = 0;
  std::vector<double> prob(n);
  for (size_t i = 0; i < n; ++i) total += (prob[i] = std::exp(double(cand_[i].first - m)));
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < n) {
      cum += prob[keep] / total;
      ++keep;
      if (cum >= p_.top_p) break;
    }
    n = keep;
    total = 0;
    for (size_t i = 0; i < n; ++i) total += prob[i];
  }
  double u = rng_.uniform() * total;
  for (size_t i = 0; i < n; ++i) {
    u -= prob[i];
    if (u < 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

float token_logprob(std::span<const float> logits, int32_t id, int k, std::vector<std::pair<int32_t, float>>* top) {
  const float m = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float l : logits) s += std::exp(double(l - m));
  const float lse = m + float(std::log(s));
  if (top) {
    top->clear();
    std::vector<int32_t> idx(logits.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t(i);
    k = std::min<int>(k, int(idx.size()));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    for (int i = 0; i < k; ++i) top->push_back({idx[size_t(i)], logits[size_t(idx[size_t(i)])] - lse});
  }
  return logits[size_t(id)] - lse;
}

}  // namespace moe::infer
