#include "infer/chat_rows.h"

#include "core/error.h"

namespace moe::infer {

namespace {
std::string str_field(const nlohmann::json& j, const char* k, const std::string& where) {
  if (!j.contains(k) || j[k].is_null()) return "";
  if (!j[k].is_string()) throw_input("{}: field '{}' must be a string", where, k);
  return j[k].get<std::string>();
}
}  // namespace

ChatRow parse_chat_row(const nlohmann::json& row, const std::string& where) {
  if (!row.is_object()) throw_input("{}: each line must be a JSON object", where);
  ChatRow r;
  if (row.contains("messages")) {
    const auto& m = row["messages"];
    if (!m.is_array() || m.empty()) throw_input("{}: 'messages' must be a non-empty list", where);
    for (const auto& msg : m) {
      if (!msg.is_object()) throw_input("{}: each message must be an object with 'role' and 'content'", where);
      std::string role = str_field(msg, "role", where);
      if (role != "system" && role != "user" && role != "assistant")
        throw_input("{}: message role '{}' is not one of system, user, assistant", where, role);
      r.prompt.push_back({role, str_field(msg, "content", where)});
    }
    if (r.prompt.back().role == "assistant") {
      r.label = r.prompt.back().content;
      r.prompt.pop_back();
    }
  } else if (row.contains("query")) {
    std::string system = str_field(row, "system", where);
    if (!system.empty()) r.prompt.push_back({"system", system});
    if (row.contains("history") && !row["history"].is_null()) {
      const auto& h = row["history"];
      if (!h.is_array()) throw_input("{}: 'history' must be a list of [query, response] pairs", where);
      for (const auto& pair : h) {
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
          throw_input("{}: 'history' must be a list of [query, response] pairs", where);
        r.prompt.push_back({"user", pair[0].get<std::string>()});
        r.prompt.push_back({"assistant", pair[1].get<std::string>()});
      }
    }
    r.prompt.push_back({"user", str_field(row, "query", where)});
    r.label = str_field(row, "response", where);
  } else {
    throw_input("{}: a row needs 'messages' or 'query' (swift's formats)", where);
  }
  if (r.prompt.empty() || r.prompt.back().role != "user")
    throw_input("{}: the conversation must end with a user turn (optionally followed by the reference answer)", where);
  return r;
}

}  // namespace moe::infer
