// Random initialisation of a canonical state from a ModelConfig, as Megatron initialises a
// model for pre-training from scratch: normal(0, std) weights, output projections scaled by
// 1/sqrt(2 * num_layers), norms at 1, biases at 0. Deterministic for a seed.
#pragma once
#include <cstdint>

#include "model/model_config.h"
#include "model/state_dict.h"

namespace moe::model {

// InputError, before anything is allocated, when the state in `dtype` does not fit in this
// machine's physical memory (or the process's address-space limit).
StateDict init_random_state(const ModelConfig& c, uint64_t seed, DType dtype, double std = 0.02);

// The check init_random_state starts with.
void check_init_fits_in_memory(const ModelConfig& c, DType dtype);

}  // namespace moe::model
