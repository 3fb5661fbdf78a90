// HF config.json ingestion: one ingester per model_type turns a Hugging Face config (plus
// generation_config.json when present) into a validated ModelConfig. The only place that
// knows HF config field names and each family's defaults.
#pragma once
#include <string>
#include <vector>

#include "model/model_config.h"

namespace moe::model {

// `path` is a model directory or a config.json file. InputError naming config.json, the field
// and what was expected for anything missing, mistyped, inconsistent or unsupported.
ModelConfig load_hf_config(const std::string& path);

// The model_type values moectl understands.
const std::vector<std::string>& supported_model_types();

}  // namespace moe::model
