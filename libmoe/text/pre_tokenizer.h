// Pre-tokenizers of a tokenizer.json (Sequence of Split / Digits / ByteLevel): cut normalized
// text into the pieces that BPE merges within. Each step applies to every piece the previous
// step made, as in Hugging Face tokenizers. Used by the BPE tokenizer.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/regex.h"

namespace moe::text {

class PreTokenizer {
 public:
  // Adds the steps of one tokenizer.json "pre_tokenizer" object (null: none). InputError naming
  // `src` and the type for anything unsupported. Returns true if it holds a ByteLevel step.
  bool parse(const nlohmann::json& p, const std::string& src);
  // Pieces of `text` as [begin, end) byte ranges into `text`, which may grow: a piece that gets
  // a prefix space (ByteLevel add_prefix_space) is copied to its end with the space.
  std::vector<std::pair<size_t, size_t>> run(std::string& text) const;

 private:
  // How a Split step treats the regex matches (HF's SplitDelimiterBehavior).
  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
  struct Step {
    std::unique_ptr<Regex> re;  // null: a ByteLevel prefix-space step
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
  };
  void split(const Step& st, const std::string& text, size_t b, size_t e,
             std::vector<std::pair<size_t, size_t>>& out) const;
  std::vector<Step> steps_;
};

}  // namespace moe::text
