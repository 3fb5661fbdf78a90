// A conversation with a model: renders the history through the chat template, generates the
// assistant's reply (streaming text through a callback that never sees half a UTF-8
// character) and keeps the history for the next turn. Used by `moectl infer`.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "infer/generator.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moe::infer {

class ChatSession {
 public:
  // `system` overrides the template's default system prompt when non-empty.
  ChatSession(model::Transformer& model, const text::Tokenizer& tok, const text::ChatTemplate& tmpl,
              std::string system);

  // Generates a reply to `messages` (the whole conversation, ending with a user turn).
  GenerationResult complete(const std::vector<text::Message>& messages, GenerationConfig cfg,
                            const std::function<void(const std::string&)>& on_text, std::string* reply);
  // Replies to several conversations together (generate_batch): replies[i] is rows[i]'s text, or
  // (*errors)[i] says why that row could not be answered.
  std::vector<GenerationResult> complete_batch(const std::vector<std::vector<text::Message>>& rows,
                                               GenerationConfig cfg, std::vector<std::string>* replies,
                                               std::vector<std::string>* errors);
  // Adds a user turn, answers it and appends both turns to the history. A RequestError (the
  // line is not UTF-8, the conversation no longer fits the context) leaves the history unchanged.
  GenerationResult turn(const std::string& user, const GenerationConfig& cfg,
                        const std::function<void(const std::string&)>& on_text, std::string* reply);
  void clear() { history_.clear(); }
  // The user and assistant turns so far (no system prompt).
  const std::vector<text::Message>& history() const { return history_; }
  // Ids that end a reply: the template's stop tokens, the tokenizer's eos and the model's eos ids.
  const std::vector<int32_t>& stop_ids() const { return stop_ids_; }

 private:
  // The template's rendering of `messages` (with the session's system prompt when they have
  // none), ready for the reply.
  std::vector<int32_t> prompt_ids(const std::vector<text::Message>& messages) const;
  // The text of generated ids, special tokens skipped.
  std::string text_of(const std::vector<int32_t>& ids) const;

  model::Transformer& model_;
  Generator gen_;
  const text::Tokenizer& tok_;
  const text::ChatTemplate& tmpl_;
  std::string system_;
  std::vector<text::Message> history_;
  std::vector<int32_t> stop_ids_;
};

}  // namespace moe::infer
