// Sampling defaults a model ships in generation_config.json (do_sample, temperature, top_k,
// top_p, repetition_penalty); flags given on the command line override them.
#pragma once
#include <string>

#include "infer/sampler.h"

namespace moe::infer {

// Greedy when the file is absent or do_sample is false. InputError for a malformed file.
SamplingParams load_sampling_defaults(const std::string& model_dir);

}  // namespace moe::infer
