// Tokenizer: a Hugging Face tokenizer.json (model BPE, byte-level form as in Qwen2/Qwen3 and
// Llama-3) with its normalizer, pre-tokenizer regexes, added/special tokens and decoder, plus
// the special-token settings of tokenizer_config.json. Unsupported components are rejected by
// name when loading, never ignored. StreamDecoder turns ids into text for streaming.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::text {

class Tokenizer {
 public:
  // Loads tokenizer.json (+ tokenizer_config.json) from a model directory. InputError naming
  // the file and the component for anything unsupported or malformed.
  static std::unique_ptr<Tokenizer> load(const std::string& model_dir);
  virtual ~Tokenizer() = default;

  // Added/special tokens in `text` are matched as tokens (as HF does). With add_special_tokens,
  // the bos token is prepended when tokenizer_config.json says add_bos_token. InputError if
  // `text` is not valid UTF-8.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const = 0;
  // Invalid UTF-8 byte sequences become U+FFFD, as HF's decode does.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const = 0;
  virtual std::string token_bytes(int32_t id) const = 0;       // the raw bytes a token stands for
  virtual std::string token_text(int32_t id) const = 0;        // its vocab string (e.g. "Ġhello")
  virtual int32_t token_id(std::string_view token) const = 0;  // -1 if absent
  virtual int32_t vocab_size() const = 0;                      // max id + 1
  virtual bool is_special(int32_t id) const = 0;
  int32_t bos_id() const { return bos_; }
  int32_t eos_id() const { return eos_; }
  int32_t pad_id() const { return pad_; }

 protected:
  int32_t bos_ = -1, eos_ = -1, pad_ = -1;
  bool add_bos_ = false;
};

// Streams decoded text: push() returns the text that became complete (never half a UTF-8
// character); flush() returns what is left (invalid bytes as U+FFFD).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special_tokens = true)
      : tok_(tok), skip_special_(skip_special_tokens) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

// Replaces invalid UTF-8 in `bytes` with U+FFFD; if `complete_prefix` is given, a trailing
// incomplete (but so far valid) sequence is left out and its length stored there.
std::string sanitize_utf8(std::string_view bytes, size_t* incomplete_tail = nullptr);
// Returns `text` if it is valid UTF-8; otherwise InputError naming the byte offset.
std::string require_utf8(std::string_view text);

}  // namespace moe::text
