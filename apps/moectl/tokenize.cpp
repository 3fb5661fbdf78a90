// `moectl tokenize`: what the model's tokenizer makes of a text (ids and tokens, one JSON line
// per input), or the text of ids with --decode true.
#include <cstdio>
#include <fstream>
#include <iostream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "model/hf_config.h"
#include "text/chat_rows.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moectl {

namespace {

// `--dataset`: each row rendered through the chat template; on a terminal the trained
// (loss-masked) spans are green, otherwise they are wrapped in [[...]].
template <class Args>
void render_dataset(const Args& a, const moe::text::Tokenizer& tok) {
  std::string name = a.template_name;
  if (name.empty()) {
    auto cfg = moe::model::load_hf_config(a.model);
    name = moe::text::default_template_for(cfg.model_type, &tok);
  }
  auto tmpl = moe::text::make_template(name);
  std::ifstream in(a.dataset);
  if (!in) moe::throw_input("--dataset {}: cannot open", a.dataset);
  const bool tty = isatty(fileno(stdout));
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = a.dataset + ":" + std::to_string(n);
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) moe::throw_input("{}: not valid JSON", where);
    moe::text::ChatRow row = moe::text::parse_chat_row(j, where);
    std::vector<moe::text::Message> msgs = row.prompt;
    if (!row.label.empty()) msgs.push_back({"assistant", row.label});
    const bool has_system = !msgs.empty() && msgs[0].role == "system";
    if (!has_system && !tmpl->default_system().empty()) msgs.insert(msgs.begin(), {"system", tmpl->default_system()});
    auto r = tmpl->render(msgs, tok, /*add_generation_prompt=*/row.label.empty());
    std::string shown;
    for (size_t i = 0; i < r.ids.size();) {
      size_t e = i;
      while (e < r.ids.size() && r.loss_mask[e] == r.loss_mask[i]) ++e;
      const bool trained = r.loss_mask[i] != 0;  // shown green on a terminal, else in [[ ]]
      if (trained) shown += tty ? "\033[32m" : "[[";
      shown += tok.decode(std::vector<int32_t>(r.ids.begin() + long(i), r.ids.begin() + long(e)));
      if (trained) shown += tty ? "\033[0m" : "]]";
      i = e;
    }
    nlohmann::json out{{"ids", r.ids}, {"loss_mask", r.loss_mask}, {"text", tok.decode(r.ids)}};
    std::puts(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    std::puts(shown.c_str());
  }
}

}  // namespace

void add_tokenize_command(CLI::App& root) {
  struct Args {
    std::string model, text, file, dataset, template_name, model_type;
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
  c->add_option("--dataset", a->dataset,
                "Render each conversation of this .jsonl with --template and show the loss mask");
  c->add_option("--template", a->template_name, "Chat template for --dataset (default: from config.json's model_type)");
  c->callback([a] {
    auto tok = moe::text::Tokenizer::load(a->model);
    if (!a->dataset.empty()) {
      render_dataset(*a, *tok);
      return;
    }
    if (a->text.empty() == a->file.empty()) moe::throw_input("give exactly one of --text, --file or --dataset");
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
        const int64_t vocab = tok->vocab_size();
        for (const auto& x : ids) {
          if (!x.is_number_integer()) moe::throw_input("input {}: ids must be integers", i + 1);
          // Checked before narrowing, so 2^32 is not read as 0; HF's decode raises on these too.
          const bool in_range = x.is_number_unsigned() ? x.get<uint64_t>() < uint64_t(vocab)
                                                       : x.get<int64_t>() >= 0 && x.get<int64_t>() < vocab;
          if (!in_range)
            moe::throw_input("input {}: id {} is out of range; the tokenizer's vocab has {} ids (0 to {})", i + 1,
                             x.dump(), vocab, vocab - 1);
          v.push_back(int32_t(x.get<int64_t>()));
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
