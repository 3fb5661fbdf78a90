// The fused QKV projection's layout as ops: Megatron stores each query group's rows as
// [q (nh/ng heads); k; v], so attention splits a [T, ng (nh/ng + 2) d] projection into
// q [T, nh, d], k and v [T, ng, d], and its backward merges the three gradients back.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// Rows per token of the fused projection: ng * (nh / ng + 2) * d. nh must be a multiple of ng.
constexpr int64_t qkv_rows(int64_t nh, int64_t ng, int64_t d) { return ng * (nh / ng + 2) * d; }

// qkv_TR [T, qkv_rows] -> q_THd, k_TGd, v_TGd (overwritten; none may alias qkv_TR).
void qkv_split(const float* qkv_TR, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q_THd, float* k_TGd,
               float* v_TGd);

// The inverse (and the backward of qkv_split): dq, dk, dv -> dqkv_TR (overwritten).
void qkv_merge(const float* q_THd, const float* k_TGd, const float* v_TGd, int64_t T, int64_t nh, int64_t ng, int64_t d,
               float* qkv_TR);

}  // namespace moe::kernels::cpu
