#include "infer/chat_session.h"

#include <algorithm>

namespace moe::infer {

ChatSession::ChatSession(model::Transformer& model, const text::Tokenizer& tok, const text::ChatTemplate& tmpl,
                         std::string system)
    : gen_(model), tok_(tok), tmpl_(tmpl), system_(std::move(system)) {
  auto add = [&](int32_t id) {
    if (id >= 0 && std::find(stop_ids_.begin(), stop_ids_.end(), id) == stop_ids_.end()) stop_ids_.push_back(id);
  };
  for (int32_t id : tmpl_.stop_ids(tok_)) add(id);
  add(tok_.eos_id());
  for (int id : model.config().eos_token_ids) add(id);
  if (system_.empty()) system_ = tmpl_.default_system();
}

GenerationResult ChatSession::complete(const std::vector<text::Message>& messages, GenerationConfig cfg,
                                       const std::function<void(const std::string&)>& on_text, std::string* reply) {
  std::vector<text::Message> msgs;
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !system_.empty()) msgs.push_back({"system", system_});
  msgs.insert(msgs.end(), messages.begin(), messages.end());
  text::RenderedChat prompt = tmpl_.render(msgs, tok_, /*add_generation_prompt=*/true);
  cfg.stop_ids.insert(cfg.stop_ids.end(), stop_ids_.begin(), stop_ids_.end());

  text::StreamDecoder decoder(tok_, /*skip_special_tokens=*/true);
  std::string text;
  auto res = gen_.generate(prompt.ids, cfg, [&](int32_t id) {
    std::string piece = decoder.push(id);
    text += piece;
    if (on_text && !piece.empty()) on_text(piece);
    return true;
  });
  std::string rest = decoder.flush();
  text += rest;
  if (on_text && !rest.empty()) on_text(rest);
  if (reply) *reply = std::move(text);
  return res;
}

GenerationResult ChatSession::turn(const std::string& user, const GenerationConfig& cfg,
                                   const std::function<void(const std::string&)>& on_text, std::string* reply) {
  // Checked here, on the line itself, so the offset is into the line and a bad line never
  // enters the history (where it would fail every later turn).
  try {
    text::require_utf8(user);
  } catch (const InputError& e) {
    throw RequestError(e.what());
  }
  history_.push_back({"user", user});
  std::string answer;
  GenerationResult res;
  try {
    res = complete(history_, cfg, on_text, &answer);
  } catch (...) {
    history_.pop_back();  // a refused turn leaves the conversation as it was
    throw;
  }
  history_.push_back({"assistant", answer});
  if (reply) *reply = std::move(answer);
  return res;
}

}  // namespace moe::infer
