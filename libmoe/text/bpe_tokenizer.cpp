// BPE from tokenizer.json: byte-level (Qwen2/Qwen3, Llama-3, GPT-2) and SentencePiece-style
// (Llama-2, Mistral: "▁" for spaces, <0xNN> byte fallback).
#include <utf8proc.h>

#include <array>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/mapped_file.h"
#include "text/added_tokens.h"
#include "text/pre_tokenizer.h"
#include "text/spm_tokenizer.h"
#include "text/tokenizer.h"

namespace moe::text {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xc0 | (cp >> 6)), s += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    s += char(0xe0 | (cp >> 12)), s += char(0x80 | ((cp >> 6) & 0x3f)), s += char(0x80 | (cp & 0x3f));
  } else {
    s += char(0xf0 | (cp >> 18)), s += char(0x80 | ((cp >> 12) & 0x3f)), s += char(0x80 | ((cp >> 6) & 0x3f)),
        s += char(0x80 | (cp & 0x3f));
  }
}

std::string nfc(std::string_view s) {
  utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(std::string(s).c_str()));
  if (!out) return std::string(s);
  std::string r(reinterpret_cast<char*>(out));
  std::free(out);
  return r;
}

// One normalizer step, applied in order to each text segment between added tokens.
struct NormStep {
  enum Kind { kNfc, kNfkc, kPrepend, kReplace } kind;
  std::string a, b;  // Prepend: a = prefix; Replace: a -> b (literal)
};

std::string nfkc(std::string_view s) {
  utf8proc_uint8_t* out = utf8proc_NFKC(reinterpret_cast<const utf8proc_uint8_t*>(std::string(s).c_str()));
  if (!out) return std::string(s);
  std::string r(reinterpret_cast<char*>(out));
  std::free(out);
  return r;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size())
    out.append(s, pos, hit - pos) += to;
  return out.append(s, pos, std::string::npos);
}

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(const json& j, const json& cfg, const std::string& src, const std::string& cfg_src);
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string token_bytes(int32_t id) const override;
  std::string token_text(int32_t id) const override {
    return id >= 0 && id < int32_t(id_to_token_.size()) ? id_to_token_[size_t(id)] : "";
  }
  int32_t token_id(std::string_view t) const override {
    auto it = vocab_.find(std::string(t));
    return it == vocab_.end() ? -1 : it->second;
  }
  int32_t vocab_size() const override { return int32_t(id_to_token_.size()); }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < int32_t(special_.size()) && special_[size_t(id)];
  }

 private:
  void parse_normalizer(const json& n, const std::string& src);
  void parse_decoder(const json& d, const std::string& src);
  std::string normalize(std::string_view text) const;
  std::vector<int32_t> initial_symbols(std::string_view piece) const;
  void merge(std::vector<int32_t>& syms) const;
  void encode_normalized(std::string norm, std::vector<int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  int32_t special_id(const json& cfg, const char* key) const;

  std::unordered_map<std::string, int32_t> vocab_;  // vocab and added tokens
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> special_, added_;
  std::vector<AddedToken> added_tokens_;
  AddedTokenMatcher raw_matcher_, norm_matcher_;                      // normalized=false / normalized=true tokens
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a, b) -> (rank, merged id)
  std::array<int32_t, 256> byte_token_{};
  std::array<std::string, 256> byte_char_;           // byte -> its GPT-2 unicode stand-in (UTF-8)
  std::unordered_map<uint32_t, uint8_t> char_byte_;  // and back
  std::vector<NormStep> norm_;
  // Byte-level (GPT-2 byte map, Qwen/Llama-3) or SentencePiece-style (characters, "▁" for
  // spaces, unknown characters as <0xNN> byte tokens).
  bool byte_level_ = false, byte_fallback_ = false, fuse_unk_ = false;
  int32_t unk_ = -1;
  std::array<int32_t, 256> fallback_token_{};                        // <0xNN> ids (SentencePiece-style)
  std::vector<std::pair<std::string, std::string>> decode_replace_;  // decoder Replace steps
  int strip_start_ = 0;                                              // decoder Strip: leading spaces removed
  bool ignore_merges_ = false;
  PreTokenizer pre_;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

BpeTokenizer::BpeTokenizer(const json& j, const json& cfg, const std::string& src, const std::string& cfg_src) {
  // GPT-2's reversible byte -> printable character map.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
    append_utf8(byte_char_[size_t(b)], cp);
    char_byte_[cp] = uint8_t(b);
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) throw_input("{}: missing 'model' object", src);
  const json& m = j["model"];
  const std::string type = m.value("type", "");
  if (type != "BPE") throw_input("{}: model type '{}' is not supported (expected BPE)", src, type);
  byte_fallback_ = m.value("byte_fallback", false);
  fuse_unk_ = m.value("fuse_unk", false);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && m[k].is_string() && !m[k].get<std::string>().empty())
      throw_input("{}: model.{} is not supported", src, k);
  ignore_merges_ = m.value("ignore_merges", false);
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw_input("{}: model.vocab must be an object", src);
  int32_t max_id = -1;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > (1 << 24))
      throw_input("{}: model.vocab['{}'] must be a small non-negative integer id", src, it.key());
    vocab_[it.key()] = it.value().get<int32_t>();
    max_id = std::max(max_id, it.value().get<int32_t>());
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["content"].is_string())
        throw_input("{}: each added_tokens entry needs 'id' and 'content'", src);
      if (!a["id"].is_number_integer() || a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() > (1 << 24))
        throw_input("{}: added token '{}' needs a small non-negative integer id", src, a["content"].get<std::string>());
      AddedToken t;
      t.content = a["content"].get<std::string>();
      t.id = a["id"].get<int32_t>();
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false), t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      t.normalized = a.value("normalized", !t.special);  // HF's default
      if (t.content.empty()) throw_input("{}: added token {} has empty content", src, t.id);
      vocab_[t.content] = t.id;
      max_id = std::max(max_id, t.id);
      added_tokens_.push_back(t);
    }
  }
  id_to_token_.resize(size_t(max_id) + 1);
  special_.assign(size_t(max_id) + 1, 0);
  added_.assign(size_t(max_id) + 1, 0);
  for (const auto& [tok, id] : vocab_) id_to_token_[size_t(id)] = tok;
  for (const auto& t : added_tokens_) special_[size_t(t.id)] = t.special, added_[size_t(t.id)] = 1;
  if (m.contains("unk_token") && m["unk_token"].is_string()) unk_ = token_id(m["unk_token"].get<std::string>());
  if (!m.contains("merges") || !m["merges"].is_array()) throw_input("{}: model.merges must be a list", src);
  int32_t rank = 0;
  for (const auto& mg : m["merges"]) {
    std::string a, b;
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) throw_input("{}: merge '{}' is not 'a b'", src, s);
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
      a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
    } else {
      throw_input("{}: merge #{} must be \"a b\" or [a, b]", src, rank);
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end())
      throw_input("{}: merge #{} ('{}' '{}') uses tokens missing from the vocab", src, rank, a, b);
    const uint64_t key = uint64_t(uint32_t(ia->second)) << 32 | uint32_t(ib->second);
    merges_.emplace(key, std::make_pair(rank, im->second));  // the first (lowest-rank) merge wins
    ++rank;
  }
  parse_normalizer(j.value("normalizer", json()), src);
  byte_level_ = pre_.parse(j.value("pre_tokenizer", json()), src);
  parse_decoder(j.value("decoder", json()), src);
  // As HF: tokens with normalized=false are cut from the raw text, the others from the
  // normalized text, matching their normalized content.
  for (const AddedToken& t : added_tokens_) {
    if (t.normalized) norm_matcher_.add(&t, normalize(t.content));
    else raw_matcher_.add(&t, t.content);
  }
  if (byte_level_) {
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(byte_char_[size_t(b)]);
      if (it == vocab_.end()) throw_input("{}: byte-level vocab lacks the token for byte 0x{:02x}", src, b);
      byte_token_[size_t(b)] = it->second;
    }
  } else if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
      if (it == vocab_.end()) throw_input("{}: byte_fallback is on but the vocab lacks <0x{:02X}>", src, b);
      fallback_token_[size_t(b)] = it->second;
    }
  }
  bos_ = special_id(cfg, "bos_token");
  eos_ = special_id(cfg, "eos_token");
  pad_ = special_id(cfg, "pad_token");
  add_bos_ = cfg.is_object() && cfg.value("add_bos_token", false) && bos_ >= 0;
  (void)cfg_src;
}

int32_t BpeTokenizer::special_id(const json& cfg, const char* key) const {
  if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return -1;
  const json& v = cfg[key];
  std::string s = v.is_string() ? v.get<std::string>() : (v.is_object() ? v.value("content", "") : "");
  return token_id(s);
}

void BpeTokenizer::parse_normalizer(const json& n, const std::string& src) {
  if (n.is_null()) return;
  const std::string t = n.value("type", "");
  if (t == "NFC") {
    norm_.push_back({NormStep::kNfc, "", ""});
  } else if (t == "NFKC") {
    norm_.push_back({NormStep::kNfkc, "", ""});
  } else if (t == "Prepend") {
    norm_.push_back({NormStep::kPrepend, n.value("prepend", ""), ""});
  } else if (t == "Replace") {
    const json& pat = n.value("pattern", json());
    if (!pat.contains("String")) throw_input("{}: Replace normalizer with a Regex pattern is not supported", src);
    norm_.push_back({NormStep::kReplace, pat["String"].get<std::string>(), n.value("content", "")});
  } else if (t == "Sequence") {
    for (const auto& x : n.value("normalizers", json::array())) parse_normalizer(x, src);
  } else {
    throw_input("{}: normalizer '{}' is not supported (supported: NFC, NFKC, Prepend, Replace, Sequence)", src, t);
  }
}

void BpeTokenizer::parse_decoder(const json& d, const std::string& src) {
  if (d.is_null()) return;
  const std::string t = d.value("type", "");
  if (t == "ByteLevel") {
    byte_level_ = true;
  } else if (t == "Sequence") {
    for (const auto& x : d.value("decoders", json::array())) parse_decoder(x, src);
  } else if (t == "Replace") {
    const json& pat = d.value("pattern", json());
    if (!pat.contains("String")) throw_input("{}: Replace decoder with a Regex pattern is not supported", src);
    decode_replace_.push_back({pat["String"].get<std::string>(), d.value("content", "")});
  } else if (t == "ByteFallback" || t == "Fuse") {
    // token_bytes() maps <0xNN> to its byte and decode() joins everything.
  } else if (t == "Strip") {
    if (d.value("content", " ") != " " || d.value("stop", 0) != 0)
      throw_input("{}: Strip decoder other than leading spaces is not supported", src);
    strip_start_ = d.value("start", 0);
  } else {
    throw_input(
        "{}: decoder '{}' is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, "
        "Sequence)",
        src, t);
  }
}

void BpeTokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  // Long pieces are rare and would only crowd the cache out.
  const bool cacheable = piece.size() <= 256;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> syms;
  if (ignore_merges_) {  // a piece that is itself a token is kept whole
    std::string mapped;
    if (byte_level_) {
      for (unsigned char c : piece) mapped += byte_char_[c];
    } else {
      mapped = piece;
    }
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) syms.push_back(it->second);
  }
  if (syms.empty()) {
    syms = initial_symbols(piece);
    merge(syms);
  }
  out.insert(out.end(), syms.begin(), syms.end());
  if (!cacheable) return;
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() > 200000) cache_.clear();
  cache_.emplace(std::string(piece), std::move(syms));
}

// Applies merges lowest rank first (leftmost among equals) until none applies, in
// O(n log n): a heap of candidate pairs over a linked list of symbols, as HF's word.rs does.
// Rescanning all pairs after each merge would be quadratic, minutes for a 100 KB word.
void BpeTokenizer::merge(std::vector<int32_t>& syms) const {
  if (syms.size() < 2) return;
  const int n = int(syms.size());
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) prev[size_t(i)] = i - 1, next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  struct Cand {
    int32_t rank, pos, id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto lookup = [&](int i) -> const std::pair<int32_t, int32_t>* {
    const int j = next[size_t(i)];
    if (j < 0) return nullptr;
    auto it = merges_.find(uint64_t(uint32_t(syms[size_t(i)])) << 32 | uint32_t(syms[size_t(j)]));
    return it == merges_.end() ? nullptr : &it->second;
  };
  auto push = [&](int i) {
    if (const auto* m = lookup(i)) heap.push({m->first, i, m->second});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<uint8_t> dead(size_t(n), 0);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (dead[size_t(c.pos)]) continue;
    const auto* m = lookup(c.pos);
    if (!m || m->first != c.rank) continue;  // stale: a neighbour changed since it was queued
    const int j = next[size_t(c.pos)];
    syms[size_t(c.pos)] = c.id;
    dead[size_t(j)] = 1;
    next[size_t(c.pos)] = next[size_t(j)];
    if (next[size_t(j)] >= 0) prev[size_t(next[size_t(j)])] = c.pos;
    if (prev[size_t(c.pos)] >= 0) push(prev[size_t(c.pos)]);
    push(c.pos);
  }
  size_t w = 0;
  for (int i = 0; i >= 0; i = next[size_t(i)]) syms[w++] = syms[size_t(i)];
  syms.resize(w);
}

std::vector<int32_t> BpeTokenizer::initial_symbols(std::string_view piece) const {
  std::vector<int32_t> syms;
  if (byte_level_) {
    for (unsigned char c : piece) syms.push_back(byte_token_[c]);
    return syms;
  }
  // SentencePiece-style: one symbol per character; characters outside the vocab become their
  // UTF-8 bytes as <0xNN> tokens (byte_fallback) or <unk> (consecutive ones fused if fuse_unk).
  for (size_t i = 0; i < piece.size();) {
    int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(piece.data() + i),
                                          utf8proc_ssize_t(piece.size() - i), &cp);
    if (n <= 0) n = 1;
    const std::string ch(piece.substr(i, size_t(n)));
    auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      syms.push_back(it->second);
    } else if (byte_fallback_) {
      for (unsigned char b : ch) syms.push_back(fallback_token_[b]);
    } else if (unk_ >= 0 && !(fuse_unk_ && !syms.empty() && syms.back() == unk_)) {
      syms.push_back(unk_);
    }
    i += size_t(n);
  }
  return syms;
}

std::string BpeTokenizer::normalize(std::string_view text) const {
  std::string norm(text);
  for (const auto& st : norm_) {
    switch (st.kind) {
      case NormStep::kNfc: norm = nfc(norm); break;
      case NormStep::kNfkc: norm = nfkc(norm); break;
      case NormStep::kPrepend:
        if (!norm.empty()) norm.insert(0, st.a);
        break;  // HF prepends to non-empty text only
      case NormStep::kReplace: norm = replace_all(std::move(norm), st.a, st.b); break;
    }
  }
  return norm;
}

void BpeTokenizer::encode_normalized(std::string norm, std::vector<int32_t>& out) const {
  for (auto [b, e] : pre_.run(norm)) bpe(std::string_view(norm).substr(b, e - b), out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view raw, bool add_special_tokens) const {
  const std::string text = require_utf8(raw);
  std::vector<int32_t> out;
  if (add_special_tokens && add_bos_) out.push_back(bos_);
  std::vector<TextSegment> segs, sub;
  raw_matcher_.split(text, segs);
  for (const TextSegment& s : segs) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    std::string norm = normalize(std::string_view(text).substr(s.begin, s.end - s.begin));
    if (norm_matcher_.empty()) {
      encode_normalized(std::move(norm), out);
      continue;
    }
    sub.clear();
    norm_matcher_.split(norm, sub);
    for (const TextSegment& t : sub) {
      if (t.id >= 0) out.push_back(t.id);
      else encode_normalized(norm.substr(t.begin, t.end - t.begin), out);
    }
  }
  return out;
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= int32_t(id_to_token_.size())) return "";
  const std::string& t = id_to_token_[size_t(id)];
  if (added_[size_t(id)]) return t;
  if (!byte_level_) {
    if (byte_fallback_ && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>')
      return std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
    std::string r = t;
    for (const auto& [from, to] : decode_replace_) r = replace_all(std::move(r), from, to);
    return r;
  }
  std::string out;
  for (size_t i = 0; i < t.size();) {
    int32_t cp = 0;
    utf8proc_ssize_t n =
        utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(t.data() + i), utf8proc_ssize_t(t.size() - i), &cp);
    if (n <= 0) break;
    auto it = char_byte_.find(uint32_t(cp));
    if (it != char_byte_.end()) out += char(it->second);
    else out.append(t, i, size_t(n));
    i += size_t(n);
  }
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids)
    if (!(skip_special_tokens && is_special(id))) bytes += token_bytes(id);
  std::string text = sanitize_utf8(bytes);
  for (int i = 0; i < strip_start_ && !text.empty() && text[0] == ' '; ++i) text.erase(0, 1);
  return text;
}

json read_json(const fs::path& p) {
  auto j = json::parse(read_text_file(p.string()), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_input("{}: not a valid JSON object", p.string());
  return j;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& model_dir) {
  const fs::path dir(model_dir);
  const fs::path tj = dir / "tokenizer.json", tc = dir / "tokenizer_config.json";
  json cfg = fs::exists(tc) ? read_json(tc) : json::object();
  std::unique_ptr<Tokenizer> tok;
  if (fs::exists(tj)) {
    tok = std::make_unique<BpeTokenizer>(read_json(tj), cfg, tj.string(), tc.string());
  } else if (fs::exists(dir / "tokenizer.model")) {
    tok = load_sentencepiece((dir / "tokenizer.model").string(), cfg);
  } else {
    throw_input("{}: no tokenizer.json or tokenizer.model in the model directory", model_dir);
  }
  // Special ids the tokenizer files leave open come from generation_config.json, then config.json.
  for (const char* f : {"generation_config.json", "config.json"}) {
    if (!fs::exists(dir / f)) continue;
    const json j = read_json(dir / f);
    auto first_id = [&](const char* key) -> int32_t {
      if (!j.contains(key)) return -1;
      const json& v = j[key].is_array() && !j[key].empty() ? j[key][0] : j[key];
      return v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < tok->vocab_size() ? v.get<int32_t>()
                                                                                                    : -1;
    };
    if (tok->bos_ < 0) tok->bos_ = first_id("bos_token_id");
    if (tok->eos_ < 0) tok->eos_ = first_id("eos_token_id");
    if (tok->pad_ < 0) tok->pad_ = first_id("pad_token_id");
  }
  return tok;
}

}  // namespace moe::text
