// Token embedding as ops: the forward gathers table rows (any stored dtype, widened to f32)
// and the backward scatter-adds output gradients into the table's gradient. Used by the
// model's embedding stage; the vocabulary-parallel form will shift ids by its row offset.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace moe::kernels::cpu {

// out_TD[t] = table_VD[ids_T[t]] as f32. Every id must lie in [0, V) (checked: InternalError
// otherwise, since callers validate user token ids before the model runs).
void embedding_gather(const void* table_VD, DType dtype, int64_t V, int64_t D, const int32_t* ids_T, int64_t T,
                      float* out_TD);

// dtable_VD[ids_T[t]] += dout_TD[t] for t = 0 .. T-1 in that order, so repeated ids sum in
// token order and the result is bitwise the same for any thread count. Ids as above (unchecked).
void embedding_scatter_add(const float* dout_TD, const int32_t* ids_T, int64_t T, int64_t D, float* dtable_VD);

}  // namespace moe::kernels::cpu
