#include "text/chat_rows.h"

#include <algorithm>

#include "core/error.h"

namespace moe::text {

namespace {

using nlohmann::json;

// A string field, "" when absent or null. `name` is how errors spell it (e.g. messages[2].content).
std::string str_at(const json& j, const char* k, const std::string& where, const std::string& name) {
  if (!j.contains(k) || j[k].is_null()) return "";
  if (!j[k].is_string()) throw_input("{}: field '{}' must be a string", where, name);
  return j[k].get<std::string>();
}
std::string str_field(const json& j, const char* k, const std::string& where) { return str_at(j, k, where, k); }

// The first of `keys` the row has (swift's column aliases), or nullptr.
const char* first_key(const json& row, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (row.contains(k) && !row[k].is_null()) return k;
  return nullptr;
}

// swift's ShareGPT role names mapped onto ours.
std::string normalise_role(const std::string& r) {
  if (r == "human") return "user";
  if (r == "gpt" || r == "bot" || r == "model") return "assistant";
  return r;
}

void push(Conversation& c, std::string role, std::string content, int8_t loss = -1) {
  c.messages.push_back({std::move(role), std::move(content)});
  c.loss.push_back(loss);
}

// {"messages"|"conversations": [{"role"|"from": r, "content"|"value": s, "loss"?: bool}, ...]}
void parse_messages(const json& row, const char* key, Conversation& c, const std::string& where) {
  const auto& m = row[key];
  if (!m.is_array() || m.empty()) throw_input("{}: '{}' must be a non-empty list", where, key);
  for (size_t i = 0; i < m.size(); ++i) {
    const auto& msg = m[i];
    const std::string at = std::string(key) + "[" + std::to_string(i) + "]";
    if (!msg.is_object()) throw_input("{}: {} must be an object with 'role' and 'content'", where, at);
    const char* rk = msg.contains("role") ? "role" : "from";
    const char* ck = msg.contains("content") ? "content" : "value";
    const std::string role = normalise_role(str_at(msg, rk, where, at + "." + rk));
    if (role != "system" && role != "user" && role != "assistant")
      throw_input("{}: {}.{} is '{}', not one of system, user, assistant", where, at, rk, role);
    int8_t loss = -1;
    if (msg.contains("loss") && !msg["loss"].is_null()) {
      if (!msg["loss"].is_boolean()) throw_input("{}: {}.loss must be true or false", where, at);
      // Only assistant replies carry loss; swift ignores the flag elsewhere.
      if (role == "assistant") loss = msg["loss"].get<bool>() ? 1 : 0;
    }
    push(c, role, str_at(msg, ck, where, at + "." + ck), loss);
  }
}

// swift's own ShareGPT flavour: {"conversation": [{"human": q, "assistant": r}, ...]}.
void parse_pairs(const json& row, Conversation& c, const std::string& where) {
  const auto& m = row["conversation"];
  if (!m.is_array() || m.empty()) throw_input("{}: 'conversation' must be a non-empty list", where);
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string at = "conversation[" + std::to_string(i) + "]";
    if (!m[i].is_object()) throw_input("{}: {} must be an object with 'human' and 'assistant'", where, at);
    push(c, "user", str_at(m[i], "human", where, at + ".human"));
    if (m[i].contains("assistant") && !m[i]["assistant"].is_null())
      push(c, "assistant", str_at(m[i], "assistant", where, at + ".assistant"));
  }
}

void check_order(const Conversation& c, const std::string& where) {
  const auto& m = c.messages;
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i].role == "system" && i > 0)
      throw_input("{}: message {} is a system message; only the first message may be one", where, i + 1);
    if (i > 0 && m[i].role != "system" && m[i].role == m[i - 1].role)
      throw_input("{}: message {} ('{}') follows another '{}' message; user and assistant turns must alternate", where,
                  i + 1, m[i].role, m[i].role);
  }
}

}  // namespace

Conversation parse_conversation_row(const json& row, const std::string& where) {
  if (!row.is_object()) throw_input("{}: each row must be a JSON object", where);
  Conversation c;
  const char* sys_key = first_key(row, {"system", "system_prompt"});
  const std::string system = sys_key ? str_field(row, sys_key, where) : "";
  auto add_system = [&] {
    if (!system.empty()) push(c, "system", system);
  };
  if (const char* k = first_key(row, {"messages", "conversations"})) {
    parse_messages(row, k, c, where);
    if (!system.empty() && c.messages.front().role != "system") {
      c.messages.insert(c.messages.begin(), {"system", system});
      c.loss.insert(c.loss.begin(), int8_t(-1));
    }
  } else if (row.contains("conversation")) {
    add_system();
    parse_pairs(row, c, where);
  } else if (row.contains("instruction")) {
    // alpaca; swift's AlpacaPreprocessor joins instruction and input with a newline.
    add_system();
    std::string q = str_field(row, "instruction", where);
    const std::string input = str_field(row, "input", where);
    if (!input.empty()) q = q.empty() ? input : q + "\n" + input;
    push(c, "user", q);
    if (row.contains("output") && !row["output"].is_null()) push(c, "assistant", str_field(row, "output", where));
  } else if (row.contains("query")) {
    add_system();
    if (row.contains("history") && !row["history"].is_null()) {
      const auto& h = row["history"];
      if (!h.is_array()) throw_input("{}: 'history' must be a list of [query, response] pairs", where);
      for (const auto& pair : h) {
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
          throw_input("{}: 'history' must be a list of [query, response] pairs", where);
        push(c, "user", pair[0].get<std::string>());
        push(c, "assistant", pair[1].get<std::string>());
      }
    }
    push(c, "user", str_field(row, "query", where));
    if (row.contains("response") && !row["response"].is_null()) {
      // A list of responses takes the first, as swift does.
      const json& r = row["response"];
      if (r.is_array() && !r.empty() && r[0].is_string()) push(c, "assistant", r[0].get<std::string>());
      else push(c, "assistant", str_field(row, "response", where));
    }
  } else if (row.contains("text")) {
    push(c, "assistant", str_field(row, "text", where));
  } else {
    throw_input("{}: a row needs 'messages', 'conversations', 'query', 'instruction' or 'text' (swift's formats)",
                where);
  }
  check_order(c, where);
  return c;
}

std::vector<Message> parse_conversation(const json& row, const std::string& where) {
  return parse_conversation_row(row, where).messages;
}

ChatRow parse_chat_row(const json& row, const std::string& where) {
  if (row.is_object() && row.contains("text") &&
      !first_key(row, {"messages", "conversations", "conversation", "query", "instruction"}))
    throw_input("{}: a 'text' row has no prompt to answer; use 'messages' or 'query'", where);
  ChatRow r;
  r.prompt = parse_conversation(row, where);
  if (r.prompt.back().role == "assistant") {
    r.label = r.prompt.back().content;
    r.prompt.pop_back();
  }
  if (r.prompt.empty() || r.prompt.back().role != "user")
    throw_input("{}: the conversation must end with a user turn (optionally followed by the reference answer)", where);
  return r;
}

void apply_loss_overrides(const Conversation& c, std::vector<uint8_t>& mask, const std::string& where) {
  bool any = false;
  for (int8_t l : c.loss) any |= l >= 0;
  if (!any) return;
  std::vector<std::pair<size_t, size_t>> runs;  // [begin, end) of each run of 1s
  for (size_t t = 0; t < mask.size(); ++t) {
    if (!mask[t]) continue;
    size_t e = t;
    while (e < mask.size() && mask[e]) ++e;
    runs.emplace_back(t, e);
    t = e;
  }
  size_t assistants = 0;
  for (const auto& m : c.messages) assistants += m.role == "assistant";
  if (runs.size() != assistants)
    throw_input(
        "{}: per-message 'loss' needs each assistant reply to render as its own span, but the template shows "
        "{} spans for {} assistant messages (an empty reply?)",
        where, runs.size(), assistants);
  size_t k = 0;
  for (size_t i = 0; i < c.messages.size(); ++i) {
    if (c.messages[i].role != "assistant") continue;
    if (c.loss[i] == 0) std::fill(mask.begin() + long(runs[k].first), mask.begin() + long(runs[k].second), 0);
    ++k;
  }
}

}  // namespace moe::text
