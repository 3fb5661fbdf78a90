// Training data: dataset specs as swift takes them (local .jsonl/.json files, PATH#N sampling,
// the built-in self-cognition set, dummy#N random sequences), rows in swift's formats turned
// into token ids with labels by the chat template (sft: assistant turns only; pt: every
// token), truncated to max_length, split into train and validation sets.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moe::train {

// One training sequence: labels[t] is the token to predict after tokens[t], or -100.
struct Sample {
  std::vector<int32_t> tokens;
  std::vector<int32_t> labels;
};

struct DatasetOptions {
  std::vector<std::string> specs;      // --dataset
  std::vector<std::string> val_specs;  // --val_dataset
  double split_dataset_ratio = 0.0;
  bool system_given = false;           // --system was passed (an empty one disables the default)
  std::string system;
  std::vector<std::string> model_name, model_author;  // self-cognition: [zh, en] or one for both
  int max_length = 2048;
  std::string truncation_strategy = "delete";  // delete | left | right
  uint64_t seed = 42;
  bool pretrain = false;  // pt: loss on every token
};

struct Datasets {
  std::vector<Sample> train, val;
  int64_t rows_read = 0, dropped_too_long = 0;
};

// InputError naming the spec, file:line or field for anything unreadable.
Datasets load_datasets(const DatasetOptions& o, const text::Tokenizer& tok, const text::ChatTemplate& tmpl);

// The built-in self-cognition rows (examples/self_cognition.jsonl, compiled in).
const std::string& self_cognition_jsonl();

}  // namespace moe::train
