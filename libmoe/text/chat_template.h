// Chat templates: a registry of named templates that render a conversation to token ids with
// a loss mask marking exactly the assistant replies and their end-of-turn token (what sft
// trains on), and name the ids that end a reply. Selected by model_type, overridable by name.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace moe::text {

struct Message {
  std::string role;  // system | user | assistant
  std::string content;
};

struct RenderedChat {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // 1 on assistant reply tokens and their end-of-turn token
};

class ChatTemplate {
 public:
  virtual ~ChatTemplate() = default;
  virtual std::string name() const = 0;
  // With add_generation_prompt the result ends with the assistant header, ready to generate.
  virtual RenderedChat render(const std::vector<Message>& msgs, const Tokenizer& tok,
                              bool add_generation_prompt) const = 0;
  virtual std::vector<int32_t> stop_ids(const Tokenizer& tok) const = 0;
  virtual std::string default_system() const = 0;  // "" if none
};

// InputError listing the known names for an unknown one.
std::unique_ptr<ChatTemplate> make_template(const std::string& name);
// The same template with its default system prompt replaced by `system` (swift's --system); ""
// renders conversations without a system message with no system block at all.
std::unique_ptr<ChatTemplate> make_template(const std::string& name, const std::string& system);
const std::vector<std::string>& template_names();
// The template a model_type was trained with: qwen3/qwen3_moe -> qwen3, qwen2/qwen2_moe -> qwen,
// mixtral/mistral -> mistral, llama -> llama3 when `tok` has Llama-3's header tokens (or is not
// given), else llama (Llama-2); anything else -> raw.
std::string default_template_for(const std::string& model_type, const Tokenizer* tok = nullptr);

}  // namespace moe::text
