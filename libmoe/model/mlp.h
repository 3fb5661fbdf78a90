// SwiGLU MLP: fc1 = [gate; up] (Megatron layout), h = silu(gate) * up, fc2. Used for dense
// layers, for each expert, and for shared experts.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace moe::model {

// y_TD (=|+=) fc2(swiglu(fc1(x_TD))). `scratch` is reused between calls.
void swiglu_mlp(const float* x_TD, int64_t T, const Tensor& fc1_2FD, const Tensor& fc2_DF, float* y_TD,
                bool accumulate, std::vector<float>& scratch);

}  // namespace moe::model
