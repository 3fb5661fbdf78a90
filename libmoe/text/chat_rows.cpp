#include "text/chat_rows.h"

#include "core/error.h"

namespace moe::text {

namespace {
std::string str_field(const nlohmann::json& j, const char* k, const std::string& where) {
  if (!j.contains(k) || j[k].is_null()) return "";
  if (!j[k].is_string()) throw_input("{}: field '{}' must be a string", where, k);
  return j[k].get<std::string>();
}
}  // namespace

std::vector<Message> parse_conversation(const nlohmann::json& row, const std::string& where) {
  if (!row.is_object()) throw_input("{}: each row must be a JSON object", where);
  std::vector<Message> c;
  const std::string system = str_field(row, "system", where);
  if (row.contains("messages")) {
    const auto& m = row["messages"];
    if (!m.is_array() || m.empty()) throw_input("{}: 'messages' must be a non-empty list", where);
    for (const auto& msg : m) {
      if (!msg.is_object()) throw_input("{}: each message must be an object with 'role' and 'content'", where);
      std::string role = str_field(msg, "role", where);
      if (role != "system" && role != "user" && role != "assistant")
        throw_input("{}: message role '{}' is not one of system, user, assistant", where, role);
      c.push_back({role, str_field(msg, "content", where)});
    }
    for (size_t i = 0; i < c.size(); ++i) {
      if (c[i].role == "system" && i > 0)
        throw_input("{}: message {} is a system message; only the first message may be one", where, i + 1);
      if (i > 0 && c[i].role != "system" && c[i].role == c[i - 1].role)
        throw_input("{}: message {} ('{}') follows another '{}' message; user and assistant turns must alternate",
                    where, i + 1, c[i].role, c[i].role);
    }
    if (!system.empty() && c.front().role != "system") c.insert(c.begin(), {"system", system});
  } else if (row.contains("query")) {
    if (!system.empty()) c.push_back({"system", system});
    if (row.contains("history") && !row["history"].is_null()) {
      const auto& h = row["history"];
      if (!h.is_array()) throw_input("{}: 'history' must be a list of [query, response] pairs", where);
      for (const auto& pair : h) {
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
          throw_input("{}: 'history' must be a list of [query, response] pairs", where);
        c.push_back({"user", pair[0].get<std::string>()});
        c.push_back({"assistant", pair[1].get<std::string>()});
      }
    }
    c.push_back({"user", str_field(row, "query", where)});
    if (row.contains("response") && !row["response"].is_null()) c.push_back({"assistant", str_field(row, "response", where)});
  } else if (row.contains("instruction")) {
    if (!system.empty()) c.push_back({"system", system});
    std::string q = str_field(row, "instruction", where);
    const std::string input = str_field(row, "input", where);
    if (!input.empty()) q += "\n" + input;  // swift's AlpacaPreprocessor joins them with a newline
    c.push_back({"user", q});
    if (row.contains("output") && !row["output"].is_null()) c.push_back({"assistant", str_field(row, "output", where)});
  } else if (row.contains("text")) {
    c.push_back({"assistant", str_field(row, "text", where)});
  } else {
    throw_input("{}: a row needs 'messages', 'query', 'instruction' or 'text' (swift's formats)", where);
  }
  return c;
}

ChatRow parse_chat_row(const nlohmann::json& row, const std::string& where) {
  if (row.is_object() && row.contains("text") && !row.contains("messages") && !row.contains("query"))
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

}  // namespace moe::text
