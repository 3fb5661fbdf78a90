// `moectl tokenize`: what the model's tokenizer makes of a text (ids and tokens, one JSON line
// per input), or the text of ids with --decode true.
#include <cstdio>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "text/tokenizer.h"

namespace moectl {

void add_tokenize_command(CLI::App& root) {
  struct Args {
    std::string model, text, file;
    bool json_list = false, add_special_tokens = false, decode = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = root.add_subcommand("tokenize", "Show token ids and tokens of texts (or decode ids)");
  c->add_option("--model", a->model, "Model directory with tokenizer.json")->required();
  c->add_option("--text", a->text, "One input text (or ids as a JSON list with --decode true)");
  c->add_option("--file", a->file, "Inputs, one per line (or a JSON list with --json_list true)");
  c->add_option("--json_list", a->json_list, "--file holds a JSON list of strings (true|false)");
  c->add_option("--add_special_tokens", a->add_special_tokens, "Add the bos token if the tokenizer asks for it");
  c->add_option("--decode", a->decode, "Inputs are JSON id lists; print their text (true|false)");
  c->callback([a] {
    if (a->text.empty() == a->file.empty()) moe::throw_input("give exactly one of --text or --file");
    auto tok = moe::text::Tokenizer::load(a->model);
    std::vector<std::string> inputs;
    if (!a->text.empty()) {
      inputs.push_back(a->text);
    } else if (a->json_list) {
      auto j = nlohmann::json::parse(moe::read_text_file(a->file), nullptr, false);
      if (j.is_discarded() || !j.is_array()) moe::throw_input("--file {}: expected a JSON list of strings", a->file);
      for (const auto& s : j) {
        if (!s.is_string()) moe::throw_input("--file {}: every entry must be a string", a->file);
        inputs.push_back(s.get<std::string>());
      }
    } else {
      std::ifstream in(a->file);
      if (!in) moe::throw_input("--file {}: cannot open", a->file);
      for (std::string line; std::getline(in, line);) inputs.push_back(line);
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      nlohmann::json out;
      if (a->decode) {
        auto ids = nlohmann::json::parse(inputs[i], nullptr, false);
        if (ids.is_discarded() || !ids.is_array())
          moe::throw_input("input {}: --decode expects a JSON list of ids", i + 1);
        std::vector<int32_t> v;
        for (const auto& x : ids) {
          if (!x.is_number_integer()) moe::throw_input("input {}: ids must be integers", i + 1);
          v.push_back(x.get<int32_t>());
        }
        out["text"] = tok->decode(v);
      } else {
        auto ids = tok->encode(inputs[i], a->add_special_tokens);
        nlohmann::json tokens = nlohmann::json::array();
        for (int32_t id : ids) tokens.push_back(tok->token_text(id));
        out["ids"] = ids;
        out["tokens"] = tokens;
      }
      std::puts(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  });
}

}  // namespace moectl
