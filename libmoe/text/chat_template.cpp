#include "text/chat_template.h"

#include <fmt/format.h>

#include "core/error.h"

namespace moe::text {

namespace {

// Accumulates segments: text is encoded (added tokens inside it are matched), masked or not.
class Builder {
 public:
  explicit Builder(const Tokenizer& tok) : tok_(tok) {}
  void text(const std::string& s, bool loss) {
    for (int32_t id : tok_.encode(s)) push(id, loss);
  }
  void id(int32_t id, bool loss) {
    if (id >= 0) push(id, loss);
  }
  RenderedChat done() { return std::move(r_); }

 private:
  void push(int32_t id, bool loss) {
    r_.ids.push_back(id);
    r_.loss_mask.push_back(loss ? 1 : 0);
  }
  const Tokenizer& tok_;
  RenderedChat r_;
};

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

void check_roles(const std::vector<Message>& msgs) {
  for (size_t i = 0; i < msgs.size(); ++i) {
    const auto& r = msgs[i].role;
    if (r != "system" && r != "user" && r != "assistant")
      throw_input("message {}: role '{}' is not one of system, user, assistant", i, r);
    if (r == "system" && i != 0) throw_input("message {}: a system message may only come first", i);
  }
}

// ChatML (Qwen2, Qwen2-MoE; "qwen3" adds Qwen3's empty think block, thinking off).
class ChatMl : public ChatTemplate {
 public:
  ChatMl(std::string name, std::string system, bool think)
      : name_(std::move(name)), system_(std::move(system)), think_(think) {}
  std::string name() const override { return name_; }
  std::string default_system() const override { return system_; }
  std::vector<int32_t> stop_ids(const Tokenizer& tok) const override {
    std::vector<int32_t> ids;
    for (const char* t : {"<|im_end|>", "<|endoftext|>"})
      if (tok.token_id(t) >= 0) ids.push_back(tok.token_id(t));
    return ids;
  }
  RenderedChat render(const std::vector<Message>& msgs, const Tokenizer& tok, bool gen) const override {
    check_roles(msgs);
    Builder b(tok);
    const bool has_system = !msgs.empty() && msgs[0].role == "system";
    if (!has_system && !system_.empty()) b.text("<|im_start|>system\n" + system_ + "<|im_end|>\n", false);
    for (size_t i = 0; i < msgs.size(); ++i) {
      const Message& m = msgs[i];
      if (m.role != "assistant") {
        b.text("<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n", false);
        continue;
      }
      b.text("<|im_start|>assistant\n", false);
      // Qwen3's template shows the (empty) think block on the final assistant turn only.
      if (think_ && i + 1 == msgs.size()) b.text("<think>\n\n</think>\n\n", false);
      b.text(m.content, true);
      b.text("<|im_end|>", true);
      b.text("\n", false);
    }
    if (gen) b.text(think_ ? "<|im_start|>assistant\n<think>\n\n</think>\n\n" : "<|im_start|>assistant\n", false);
    return b.done();
  }

 private:
  std::string name_, system_;
  bool think_;
};

// Llama-3 instruct headers.
class Llama3 : public ChatTemplate {
 public:
  std::string name() const override { return "llama3"; }
  std::string default_system() const override { return ""; }
  std::vector<int32_t> stop_ids(const Tokenizer& tok) const override {
    std::vector<int32_t> ids;
    for (const char* t : {"<|eot_id|>", "<|end_of_text|>"})
      if (tok.token_id(t) >= 0) ids.push_back(tok.token_id(t));
    return ids;
  }
  RenderedChat render(const std::vector<Message>& msgs, const Tokenizer& tok, bool gen) const override {
    check_roles(msgs);
    Builder b(tok);
    b.id(tok.bos_id(), false);
    for (const auto& m : msgs) {
      const bool a = m.role == "assistant";
      b.text("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n", false);
      b.text(trim(m.content), a);  // the official template trims each message
      b.text("<|eot_id|>", a);
    }
    if (gen) b.text("<|start_header_id|>assistant<|end_header_id|>\n\n", false);
    return b.done();
  }
};

// Llama-2 ("llama", with <<SYS>>) and Mistral/Mixtral ("mistral", system folded into the
// first user turn) [INST] formats.
class Inst : public ChatTemplate {
 public:
  explicit Inst(bool llama2) : llama2_(llama2) {}
  std::string name() const override { return llama2_ ? "llama" : "mistral"; }
  std::string default_system() const override { return ""; }
  std::vector<int32_t> stop_ids(const Tokenizer& tok) const override {
    return tok.eos_id() >= 0 ? std::vector<int32_t>{tok.eos_id()} : std::vector<int32_t>{};
  }
  RenderedChat render(const std::vector<Message>& msgs, const Tokenizer& tok, bool gen) const override {
    check_roles(msgs);
    Builder b(tok);
    std::string system;
    size_t i = 0;
    if (!msgs.empty() && msgs[0].role == "system") system = msgs[0].content, i = 1;
    bool first = true;
    for (; i < msgs.size(); ++i) {
      const Message& m = msgs[i];
      if (m.role == "user") {
        std::string u = m.content;
        if (first && !system.empty())
          u = llama2_ ? fmt::format("<<SYS>>\n{}\n<</SYS>>\n\n{}", system, u) : fmt::format("{}\n\n{}", system, u);
        // Llama-2 opens every exchange with bos; Mistral only the conversation.
        if (llama2_ || first) b.id(tok.bos_id(), false);
        b.text("[INST] " + u + " [/INST]", false);
        first = false;
      } else {
        b.text(llama2_ ? " " + m.content + " " : m.content, true);
        b.id(tok.eos_id(), true);
      }
    }
    (void)gen;  // the [/INST] already prompts the answer
    return b.done();
  }

 private:
  bool llama2_;
};

// Plain text, no chat formatting: completion of the concatenated contents.
class Raw : public ChatTemplate {
 public:
  std::string name() const override { return "raw"; }
  std::string default_system() const override { return ""; }
  std::vector<int32_t> stop_ids(const Tokenizer& tok) const override {
    return tok.eos_id() >= 0 ? std::vector<int32_t>{tok.eos_id()} : std::vector<int32_t>{};
  }
  RenderedChat render(const std::vector<Message>& msgs, const Tokenizer& tok, bool) const override {
    Builder b(tok);
    for (const auto& m : msgs) b.text(m.content, m.role == "assistant");
    return b.done();
  }
};

}  // namespace

const std::vector<std::string>& template_names() {
  static const std::vector<std::string> names = {"qwen",  "chatml",  "qwen3",   "llama3",
                                                 "llama", "mistral", "mixtral", "raw"};
  return names;
}

std::unique_ptr<ChatTemplate> make_template(const std::string& name) {
  if (name == "qwen") return std::make_unique<ChatMl>("qwen", "You are a helpful assistant.", false);
  if (name == "chatml") return std::make_unique<ChatMl>("chatml", "", false);
  if (name == "qwen3") return std::make_unique<ChatMl>("qwen3", "", true);
  if (name == "llama3") return std::make_unique<Llama3>();
  if (name == "llama") return std::make_unique<Inst>(true);
  if (name == "mistral" || name == "mixtral") return std::make_unique<Inst>(false);
  if (name == "raw") return std::make_unique<Raw>();
  std::string list;
  for (const auto& n : template_names()) list += (list.empty() ? "" : ", ") + n;
  throw_input("--template '{}' is not known (known: {})", name, list);
}

std::unique_ptr<ChatTemplate> make_template(const std::string& name, const std::string& system) {
  if (name == "qwen" || name == "chatml" || name == "qwen3")
    return std::make_unique<ChatMl>(name, system, name == "qwen3");
  return make_template(name);  // no default system: the caller's system message is rendered as given
}

std::string default_template_for(const std::string& model_type, const Tokenizer* tok) {
  if (model_type == "qwen3" || model_type == "qwen3_moe") return "qwen3";
  if (model_type == "qwen2" || model_type == "qwen2_moe") return "qwen";
  if (model_type == "mixtral" || model_type == "mistral") return "mistral";
  if (model_type == "llama") {
    const bool llama3 = !tok || (tok->token_id("<|start_header_id|>") >= 0 && tok->token_id("<|eot_id|>") >= 0);
    return llama3 ? "llama3" : "llama";
  }
  return "raw";
}

}  // namespace moe::text
