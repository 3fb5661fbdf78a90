#include "kernels/cpu/qkv.h"

#include <cstring>
#include <type_traits>

#include "core/parallel.h"

namespace moe::kernels::cpu {

namespace {

template <bool kSplit>
void qkv_copy(std::conditional_t<kSplit, const float*, float*> qkv, int64_t T, int64_t nh, int64_t ng, int64_t d,
              std::conditional_t<kSplit, float*, const float*> q, std::conditional_t<kSplit, float*, const float*> k,
              std::conditional_t<kSplit, float*, const float*> v) {
  const int64_t r = nh / ng, rows = qkv_rows(nh, ng, d);
  const size_t qn = size_t(r * d) * sizeof(float), kn = size_t(d) * sizeof(float);
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t g = 0; g < ng; ++g) {
        auto grp = qkv + t * rows + g * (r + 2) * d;
        auto qd = q + (t * nh + g * r) * d;
        auto kd = k + (t * ng + g) * d;
        auto vd = v + (t * ng + g) * d;
        if constexpr (kSplit) {
          std::memcpy(qd, grp, qn), std::memcpy(kd, grp + r * d, kn), std::memcpy(vd, grp + (r + 1) * d, kn);
        } else {
          std::memcpy(grp, qd, qn), std::memcpy(grp + r * d, kd, kn), std::memcpy(grp + (r + 1) * d, vd, kn);
        }
      }
  };
  // A copy is bound by memory traffic; a second thread only pays off for prefill-sized inputs.
  if (T * rows < (int64_t(1) << 17)) body(0, T);
  else parallel_for(T, body);
}

}  // namespace

void qkv_split(const float* qkv_TR, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q_THd, float* k_TGd,
               float* v_TGd) {
  qkv_copy<true>(qkv_TR, T, nh, ng, d, q_THd, k_TGd, v_TGd);
}

void qkv_merge(const float* q_THd, const float* k_TGd, const float* v_TGd, int64_t T, int64_t nh, int64_t ng, int64_t d,
               float* qkv_TR) {
  qkv_copy<false>(qkv_TR, T, nh, ng, d, q_THd, k_TGd, v_TGd);
}

}  // namespace moe::kernels::cpu
