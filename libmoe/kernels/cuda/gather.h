// CUDA twins of the ops that move rows (kernels/cpu/embedding.h, qkv.h, permute.h and the
// facade's gather_rows / scatter_rows): embedding gather and its scatter-add, the fused QKV
// split and merge, and the MoE token permutation. Same layouts and semantics as the CPU ops;
// every pointer is device memory. Each scatter-add gives an element to one thread, which adds
// its sources in the CPU's order: deterministic, bitwise the same from run to run, no atomics.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

// out_TD[t] = table_VD[ids_T[t]] widened to f32. An id outside [0, V) (which callers rule out)
// gives a row of NaN instead of the CPU's exception: a kernel cannot throw, and a NaN row cannot
// pass unnoticed.
void embedding_gather(const void* table_VD, DType dtype, int64_t V, int64_t D, const int32_t* ids_T, int64_t T,
                      float* out_TD, Stream stream = nullptr);
// dtable_VD[ids_T[t]] += dout_TD[t], repeated ids summed in token order.
void embedding_scatter_add(const float* dout_TD, const int32_t* ids_T, int64_t T, int64_t D, float* dtable_VD,
                           Stream stream = nullptr);

// y_RD[i] = x_TD[rows_R[i]] and its inverse y_TD[rows_R[i]] = x_RD[i] (rows distinct).
void gather_rows(const float* x_TD, int64_t D, const int64_t* rows_R, int64_t R, float* y_RD, Stream stream = nullptr);
void scatter_rows(const float* x_RD, int64_t D, const int64_t* rows_R, int64_t R, float* y_TD, Stream stream = nullptr);

// The Megatron QKV layout (kernels/cpu/qkv.h): split a [T, ng (nh/ng + 2) d] projection, and merge.
void qkv_split(const float* qkv_TR, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q_THd, float* k_TGd,
               float* v_TGd, Stream stream = nullptr);
void qkv_merge(const float* q_THd, const float* k_TGd, const float* v_TGd, int64_t T, int64_t nh, int64_t ng, int64_t d,
               float* qkv_TR, Stream stream = nullptr);

// kernels/cpu/permute.h's row map, computed on the device. Returns R to the host, so it waits
// for the stream; throws InternalError on an expert id outside [-1, E) or a count over pad_to.
int64_t permute_plan(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t pad_to, int64_t* counts_E,
                     int64_t* offsets_E, int64_t* row_slot_R, Stream stream = nullptr);
void permute(const float* x_TD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K, float* x_perm_RD,
             Stream stream = nullptr);
void permute_backward_add(const float* dx_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                          float* dx_TD, Stream stream = nullptr);
void unpermute_add(const float* y_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                   const float* weight_TK, float* out_TD, Stream stream = nullptr);
void unpermute_add_backward(const float* dout_TD, const float* y_perm_RD, int64_t D, const int64_t* row_slot_R,
                            int64_t R, int64_t T, int64_t K, const float* weight_TK, float* dy_perm_RD,
                            float* dweight_TK, Stream stream = nullptr);

}  // namespace moe::kernels::cuda
