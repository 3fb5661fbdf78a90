// A sentencepiece `tokenizer.model` (Llama-2/Mistral style) behind the Tokenizer interface,
// through libsentencepiece. Used when a model directory has no tokenizer.json.
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

namespace moe::text {

// InputError naming `path` if it is not a valid sentencepiece model, or if moectl was built
// without libsentencepiece. `config` is tokenizer_config.json (may be empty).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const nlohmann::json& config);

}  // namespace moe::text
