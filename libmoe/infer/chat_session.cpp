#include "infer/chat_session.h"

#include <algorithm>

namespace moe::infer {

ChatSession::ChatSession(model::Transformer& model, const text::Tokenizer& tok, const text::ChatTemplate& tmpl,
                         std::string system)
    : model_(model), gen_(model), tok_(tok), tmpl_(tmpl), system_(std::move(system)) {
  auto add = [&](int32_t id) {
    if (id >= 0 && std::find(stop_ids_.begin(), stop_ids_.end(), id) == stop_ids_.end()) stop_ids_.push_back(id);
  };
  for (int32_t id : tmpl_.stop_ids(tok_)) add(id);
  add(tok_.eos_id());
  for (int id : model.config().eos_token_ids) add(id);
  if (system_.empty()) system_ = tmpl_.default_system();
}

std::vector<int32_t> ChatSession::prompt_ids(const std::vector<text::Message>& messages) const {
  std::vector<text::Message> msgs;
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !system_.empty()) msgs.push_back({"system", system_});
  msgs.insert(msgs.end(), messages.begin(), messages.end());
  return tmpl_.render(msgs, tok_, /*add_generation_prompt=*/true).ids;
}

std::string ChatSession::text_of(const std::vector<int32_t>& ids) const {
  text::StreamDecoder decoder(tok_, /*skip_special_tokens=*/true);
  std::string text;
  for (int32_t id : ids) text += decoder.push(id);
  return text + decoder.flush();
}

GenerationResult ChatSession::complete(const std::vector<text::Message>& messages, GenerationConfig cfg,
                                       const std::function<void(const std::string&)>& on_text, std::string* reply) {
  const std::vector<int32_t> prompt = prompt_ids(messages);
  cfg.stop_ids.insert(cfg.stop_ids.end(), stop_ids_.begin(), stop_ids_.end());

  text::StreamDecoder decoder(tok_, /*skip_special_tokens=*/true);
  std::string text;
  auto res = gen_.generate(prompt, cfg, [&](int32_t id) {
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

std::vector<GenerationResult> ChatSession::complete_batch(const std::vector<std::vector<text::Message>>& rows,
                                                          GenerationConfig cfg, std::vector<std::string>* replies,
                                                          std::vector<std::string>* errors) {
  std::vector<std::vector<int32_t>> prompts(rows.size());
  std::vector<std::string> render_errors(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    try {
      prompts[i] = prompt_ids(rows[i]);
    } catch (const RequestError& e) {  // this row only (it goes as an empty prompt)
      render_errors[i] = e.what();
    }
  }
  cfg.stop_ids.insert(cfg.stop_ids.end(), stop_ids_.begin(), stop_ids_.end());
  auto res = generate_batch(model_, prompts, cfg, errors);
  for (size_t i = 0; i < rows.size(); ++i)
    if (!render_errors[i].empty()) (*errors)[i] = render_errors[i];
  replies->clear();
  for (const auto& r : res) replies->push_back(text_of(r.ids));
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
