// `--test_convert_precision`: runs two loadings of the same model (e.g. the HF original and the
// Megatron export) on the same tokens, on the CPU or a GPU (`--device`), and reports how far their
// logits are.
#pragma once
#include <cstdint>
#include <vector>

#include "checkpoint/load_hf.h"
#include "kernels/backend.h"

namespace moe::checkpoint {

struct PrecisionReport {
  double max_abs_diff = 0, mean_abs_diff = 0, rel_l2 = 0;
  int tokens = 0, argmax_mismatches = 0;
};

// Both models must share one ModelConfig shape. `ids` are the tokens run through both.
PrecisionReport compare_models(const LoadedModel& a, const LoadedModel& b, const std::vector<int32_t>& ids,
                               const Backend& backend = {});

}  // namespace moe::checkpoint
