// Training data: dataset specs as swift takes them (local .jsonl/.json files, PATH#N sampling,
// the built-in self-cognition set, dummy#N random sequences), rows in swift's formats turned
// into token ids with labels by the chat template (sft: assistant turns only; pt: every
// token), truncated to max_length, split into train and validation sets.
#pragma once
#include <cstdint>
#include <memory>
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
  bool system_given = false;  // --system was passed (an empty one disables the default)
  std::string system;
  std::vector<std::string> model_name, model_author;  // self-cognition: [zh, en] or one for both
  int max_length = 2048;
  std::string truncation_strategy = "delete";  // delete | left | right
  uint64_t seed = 42;
  bool pretrain = false;   // pt: loss on every token
  int num_proc = 1;        // --dataset_num_proc: rows tokenised on this many threads (same result)
  bool streaming = false;  // --streaming: the training rows read lazily (SampleStream)
};

// --streaming: the --dataset rows read lazily, in their order (spec by spec, file order, no
// shuffle), each turned into a sample when the loader takes it; one pass, restart() begins the
// next. A .jsonl file is read line by line; a .json array, self-cognition and dummy#N are
// generated or parsed as their spec comes up. PATH#N takes the spec's first N rows (from its
// start again when it has fewer). Rows too long (--truncation_strategy delete) or with nothing to
// train on are skipped, as without streaming. The tokenizer and template must outlive it.
class SampleStream {
 public:
  // Checks every spec (exists, readable name) now; reads nothing yet.
  SampleStream(DatasetOptions o, const text::Tokenizer& tok, const text::ChatTemplate& tmpl);
  ~SampleStream();
  SampleStream(const SampleStream&) = delete;
  SampleStream& operator=(const SampleStream&) = delete;
  // The next trainable sample; false at the end of the last spec.
  bool next(Sample& s);
  void restart();                                   // back to the first row of the first spec
  int64_t rows_read() const { return rows_read_; }  // in this pass, skipped rows included

 private:
  struct Source;
  bool next_row(Sample& s);  // the next row of any spec, tokenised; false at the end
  DatasetOptions o_;
  const text::Tokenizer& tok_;
  const text::ChatTemplate& tmpl_;
  std::unique_ptr<Source> src_;
  size_t spec_ = 0;
  int64_t rows_read_ = 0;
};

struct Datasets {
  std::vector<Sample> train, val;
  // --streaming: the training samples come from here (train is empty).
  std::shared_ptr<SampleStream> stream;
  int64_t rows_read = 0;
  int64_t dropped_too_long = 0;  // --truncation_strategy delete
  int64_t dropped_no_loss = 0;   // nothing left to train on (no assistant reply, or all masked)
};

// One --dataset entry as swift's DatasetSyntax reads it: an existing path is taken whole;
// otherwise '#N' is split off the right. Aliases of the built-in sets are normalised
// ("swift/self-cognition" -> "self-cognition"). InputError for a '#' not followed by a positive count.
struct DatasetSpec {
  std::string name;  // a path, "self-cognition" or "dummy"
  int64_t n = -1;    // #N, -1 = every row once
};
DatasetSpec parse_dataset_spec(const std::string& spec);

// InputError naming the spec, file:line (file[i] in a .json array) and field for anything
// unreadable, a hub id (moectl reads local files), or nothing left to train on.
Datasets load_datasets(const DatasetOptions& o, const text::Tokenizer& tok, const text::ChatTemplate& tmpl);

// The built-in self-cognition rows (examples/self_cognition.jsonl, compiled in).
const std::string& self_cognition_jsonl();

}  // namespace moe::train
