#include "text/spm_tokenizer.h"

#include "core/error.h"

#ifdef MOE_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>

#include <algorithm>
#endif

namespace moe::text {

#ifdef MOE_HAVE_SENTENCEPIECE
namespace {

class SpmTokenizer : public Tokenizer {
 public:
  SpmTokenizer(const std::string& path, const nlohmann::json& cfg) {
    const auto status = sp_.Load(path);
    if (!status.ok()) throw_input("{}: not a valid sentencepiece model: {}", path, status.ToString());
    bos_ = sp_.bos_id(), eos_ = sp_.eos_id(), pad_ = sp_.pad_id();
    auto from_cfg = [&](const char* key, int32_t* id) {
      if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return;
      const auto& v = cfg[key];
      const std::string s = v.is_string() ? v.get<std::string>() : (v.is_object() ? v.value("content", "") : "");
      if (token_id(s) >= 0) *id = token_id(s);
    };
    from_cfg("bos_token", &bos_), from_cfg("eos_token", &eos_), from_cfg("pad_token", &pad_);
    add_bos_ = bos_ >= 0 && (!cfg.is_object() || cfg.value("add_bos_token", true));
    // Control pieces written in text (e.g. "</s>") are matched as tokens, as HF's LlamaTokenizer does.
    for (int i = 0; i < sp_.GetPieceSize(); ++i)
      if (sp_.IsControl(i)) specials_.push_back({sp_.IdToPiece(i), i});
    std::sort(specials_.begin(), specials_.end(),
              [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  std::vector<int32_t> encode(std::string_view raw, bool add_special_tokens) const override {
    const std::string text = require_utf8(raw);
    std::vector<int32_t> out;
    if (add_special_tokens && add_bos_) out.push_back(bos_);
    size_t start = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      for (const auto& [piece, id] : specials_) {
        if (text.compare(i, piece.size(), piece) != 0) continue;
        encode_plain(std::string_view(text).substr(start, i - start), out);
        out.push_back(id);
        start = i + piece.size();
        i = start - 1;
        break;
      }
    }
    encode_plain(std::string_view(text).substr(start), out);
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::vector<int> keep;
    for (int32_t id : ids)
      if (id >= 0 && id < vocab_size() && !(skip_special_tokens && is_special(id))) keep.push_back(id);
    std::string out;
    sp_.Decode(keep, &out);
    return sanitize_utf8(out);
  }

  std::string token_bytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size() || sp_.IsControl(id)) return "";
    const std::string p = sp_.IdToPiece(id);
    if (sp_.IsByte(id)) return std::string(1, char(std::stoi(p.substr(3, 2), nullptr, 16)));
    std::string out;
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, 3, "\xe2\x96\x81") == 0) out += ' ', i += 3;  // "▁" stands for a space
      else out += p[i++];
    }
    return out;
  }
  std::string token_text(int32_t id) const override { return id >= 0 && id < vocab_size() ? sp_.IdToPiece(id) : ""; }
  int32_t token_id(std::string_view t) const override {
    const int id = sp_.PieceToId(std::string(t));
    return id >= 0 && sp_.IdToPiece(id) == t ? id : -1;  // PieceToId answers unk for unknown pieces
  }
  int32_t vocab_size() const override { return sp_.GetPieceSize(); }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < vocab_size() && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }

 private:
  void encode_plain(std::string_view s, std::vector<int32_t>& out) const {
    if (s.empty()) return;
    std::vector<int> ids;
    sp_.Encode(std::string(s), &ids);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::pair<std::string, int32_t>> specials_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const nlohmann::json& config) {
  return std::make_unique<SpmTokenizer>(path, config);
}
#else
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const nlohmann::json&) {
  throw_input("{}: moectl was built without libsentencepiece (apt install libsentencepiece-dev and rebuild)", path);
}
#endif

}  // namespace moe::text
