#include "text/pre_tokenizer.h"

#include <algorithm>

#include "core/error.h"

namespace moe::text {

namespace {

// The regex ByteLevel splits with when use_regex is true (GPT-2's).
const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string escape_literal(const std::string& s) {
  std::string re;
  for (char c : s) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) re += '\\';
    re += c;
  }
  return re;
}

}  // namespace

bool PreTokenizer::parse(const nlohmann::json& p, const std::string& src) {
  if (p.is_null()) return false;
  const std::string t = p.is_object() ? p.value("type", "") : "";
  bool byte_level = false;
  if (t == "Sequence") {
    for (const auto& x : p.value("pretokenizers", nlohmann::json::array())) byte_level |= parse(x, src);
  } else if (t == "Split") {
    const nlohmann::json& pat = p.value("pattern", nlohmann::json());
    std::string re;
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
      re = pat["Regex"].get<std::string>();
    } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
      re = escape_literal(pat["String"].get<std::string>());
    } else {
      throw_input("{}: Split pre-tokenizer needs a Regex or String pattern", src);
    }
    const std::string behavior = p.value("behavior", "Isolated");
    Step st;
    if (behavior == "Removed") st.behavior = Behavior::kRemoved;
    else if (behavior == "Isolated") st.behavior = Behavior::kIsolated;
    else if (behavior == "MergedWithPrevious") st.behavior = Behavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext") st.behavior = Behavior::kMergedWithNext;
    else if (behavior == "Contiguous") st.behavior = Behavior::kContiguous;
    else
      throw_input(
          "{}: Split behavior '{}' is not supported (supported: Removed, Isolated, MergedWithPrevious, "
          "MergedWithNext, Contiguous)",
          src, behavior);
    st.invert = p.value("invert", false);
    st.re = std::make_unique<Regex>(re, src + ": Split pattern");
    steps_.push_back(std::move(st));
  } else if (t == "Digits") {
    // HF splits on char::is_numeric (any Unicode number): each alone, or runs of them.
    Step st;
    st.re = std::make_unique<Regex>(p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", src + ": Digits");
    steps_.push_back(std::move(st));
  } else if (t == "ByteLevel") {
    byte_level = true;
    if (p.value("add_prefix_space", false)) steps_.push_back(Step{});
    if (p.value("use_regex", true)) {
      Step st;
      st.re = std::make_unique<Regex>(kGpt2Regex, src + ": ByteLevel");
      steps_.push_back(std::move(st));
    }
  } else {
    throw_input("{}: pre_tokenizer '{}' is not supported (supported: Sequence, Split, Digits, ByteLevel)", src, t);
  }
  return byte_level;
}

std::vector<std::pair<size_t, size_t>> PreTokenizer::run(std::string& text) const {
  std::vector<std::pair<size_t, size_t>> pieces, next;
  if (!text.empty()) pieces.push_back({0, text.size()});
  for (const Step& st : steps_) {
    next.clear();
    for (auto [b, e] : pieces) {
      if (st.re) {
        split(st, text, b, e, next);
      } else if (text[b] != ' ') {  // ByteLevel add_prefix_space, per piece as HF does
        const std::string piece = " " + text.substr(b, e - b);
        next.push_back({text.size(), text.size() + piece.size()});
        text += piece;
      } else {
        next.push_back({b, e});
      }
    }
    pieces.swap(next);
  }
  return pieces;
}

void PreTokenizer::split(const Step& st, const std::string& text, size_t b, size_t e,
                         std::vector<std::pair<size_t, size_t>>& out) const {
  struct Span {
    size_t b, e;
    bool match;
  };
  std::vector<Span> spans;
  size_t pos = b;
  for (auto [mb, me] : st.re->find_all(std::string_view(text).substr(b, e - b))) {
    if (b + mb > pos) spans.push_back({pos, b + mb, false});
    spans.push_back({b + mb, b + me, true});
    pos = b + me;
  }
  if (pos < e) spans.push_back({pos, e, false});
  if (st.invert)
    for (auto& s : spans) s.match = !s.match;
  // The folds below follow HF's NormalizedString::split for each behavior.
  std::vector<std::pair<size_t, size_t>> res;
  bool prev_match = false;
  switch (st.behavior) {
    case Behavior::kRemoved:
      for (const auto& s : spans)
        if (!s.match) res.push_back({s.b, s.e});
      break;
    case Behavior::kIsolated:
      for (const auto& s : spans) res.push_back({s.b, s.e});
      break;
    case Behavior::kMergedWithPrevious:
      for (const auto& s : spans) {
        if (s.match && !prev_match && !res.empty()) res.back().second = s.e;
        else res.push_back({s.b, s.e});
        prev_match = s.match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !prev_match && !res.empty()) res.back().first = it->b;
        else res.push_back({it->b, it->e});
        prev_match = it->match;
      }
      std::reverse(res.begin(), res.end());
      break;
    case Behavior::kContiguous:
      for (const auto& s : spans) {
        if (s.match == prev_match && !res.empty()) res.back().second = s.e;
        else res.push_back({s.b, s.e});
        prev_match = s.match;
      }
      break;
  }
  for (const auto& r : res)
    if (r.second > r.first) out.push_back(r);
}

}  // namespace moe::text
