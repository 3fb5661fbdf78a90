// `moectl infer`: chat with a model (interactive REPL, streamed) or answer a dataset in
// batch (--val_dataset -> --result_path), with swift's flags.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/log.h"
#include "text/chat_rows.h"
#include "infer/chat_session.h"
#include "infer/generation_defaults.h"
#include "model/mcore_export.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moectl {

namespace {

struct InferArgs {
  std::string model, system, template_name, val_dataset, result_path;
  bool system_given = false;  // --system '' means no system prompt, not the template's
  bool stream = true, logprobs = false, verbose = false;
  std::optional<float> temperature, top_p, repetition_penalty;
  std::optional<int> top_k;
  int max_new_tokens = 512, top_logprobs = 0;
  uint64_t seed = 42;
};

void print_speed(const moe::infer::GenerationResult& r, bool verbose) {
  const double pre = r.prefill_seconds > 0 ? double(r.prefilled_tokens) / r.prefill_seconds : 0;
  const double dec = r.decode_seconds > 0 ? double(r.ids.size()) / r.decode_seconds : 0;
  std::FILE* out = verbose ? stdout : stderr;
  std::fprintf(out, "[prefill %lld tokens, %.1f tokens/s | decode %zu tokens, %.1f tokens/s]\n",
               (long long)r.prefilled_tokens, pre, r.ids.size(), dec);
  std::fflush(out);
}

nlohmann::json logprobs_json(const moe::infer::GenerationResult& r, const moe::text::Tokenizer& tok) {
  auto entry = [&](int32_t id, float lp) {
    std::string b = tok.token_bytes(id);
    nlohmann::json bytes = nlohmann::json::array();
    for (unsigned char ch : b) bytes.push_back(int(ch));
    return nlohmann::json{{"token", tok.token_text(id)}, {"id", id}, {"logprob", lp}, {"bytes", bytes}};
  };
  nlohmann::json content = nlohmann::json::array();
  for (const auto& t : r.logprobs) {
    auto e = entry(t.id, t.logprob);
    e["top_logprobs"] = nlohmann::json::array();
    for (const auto& [id, lp] : t.top) e["top_logprobs"].push_back(entry(id, lp));
    content.push_back(e);
  }
  return {{"content", content}};
}

void run_batch(const InferArgs& a, moe::infer::ChatSession& chat, const moe::infer::GenerationConfig& cfg,
               const moe::text::Tokenizer& tok) {
  if (a.result_path.empty()) moe::throw_input("--val_dataset needs --result_path OUT.jsonl for the answers");
  std::ifstream in(a.val_dataset);
  if (!in) moe::throw_input("--val_dataset {}: cannot open", a.val_dataset);
  // Parse every row first, so a bad row fails before any generation work.
  std::vector<moe::text::ChatRow> rows;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = a.val_dataset + ":" + std::to_string(n);
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) moe::throw_input("{}: not valid JSON", where);
    rows.push_back(moe::text::parse_chat_row(j, where));
  }
  const std::string tmp = a.result_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) moe::throw_input("--result_path {}: cannot create", a.result_path);
    for (const auto& row : rows) {
      std::string reply;
      auto res = chat.complete(row.prompt, cfg, {}, &reply);
      nlohmann::json msgs = nlohmann::json::array();
      for (const auto& m : row.prompt) msgs.push_back({{"role", m.role}, {"content", m.content}});
      nlohmann::json o{{"response", reply},
                       {"labels", row.label},
                       {"messages", msgs},
                       {"prompt_tokens", res.prompt_tokens},
                       {"completion_tokens", res.ids.size()},
                       {"finish_reason", res.finish_reason}};
      if (a.logprobs) o["logprobs"] = logprobs_json(res, tok);
      out << o.dump() << "\n";
      if (a.verbose) print_speed(res, false);
    }
  }
  std::filesystem::rename(tmp, a.result_path);
  moe::log().info("wrote {} answers to {}", rows.size(), a.result_path);
}

void run_interactive(const InferArgs& a, moe::infer::ChatSession& chat, const moe::infer::GenerationConfig& cfg) {
  std::string line;
  while (true) {
    std::printf("<<< ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line == "exit" || line == "quit") break;
    if (line == "clear") {
      chat.clear();
      continue;
    }
    std::string reply;
    auto on_text = [&](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    moe::infer::GenerationResult res;
    try {
      res = chat.turn(line, cfg, a.stream ? on_text : std::function<void(const std::string&)>{}, &reply);
    } catch (const moe::InputError& e) {  // a bad line (e.g. not UTF-8) should not end the session
      std::fprintf(stderr, "moectl: error: %s\n", e.what());
      continue;
    }
    if (!a.stream) std::fwrite(reply.data(), 1, reply.size(), stdout);
    std::printf("\n");
    std::fflush(stdout);
    print_speed(res, a.verbose);
  }
  std::printf("\n");
}

}  // namespace

void add_infer_command(CLI::App& root) {
  auto a = std::make_shared<InferArgs>();
  CLI::App* c = root.add_subcommand("infer", "Chat with a model (interactive) or answer a dataset (--val_dataset)");
  c->add_option("--model", a->model, "Hugging Face model directory, or a Megatron one written by export")->required();
  c->add_option("--stream", a->stream, "Print tokens as they are generated (true|false)");
  c->add_option("--temperature", a->temperature, "Sampling temperature; 0 = greedy (default: generation_config.json)");
  c->add_option("--top_k", a->top_k, "Keep the k most likely tokens; 0 = off");
  c->add_option("--top_p", a->top_p, "Nucleus sampling mass; 1 = off");
  c->add_option("--repetition_penalty", a->repetition_penalty, "HF-style repetition penalty; 1 = off");
  c->add_option("--max_new_tokens", a->max_new_tokens, "Most tokens to generate per answer")->check(CLI::PositiveNumber);
  c->add_option("--system", a->system, "System prompt (default: the template's; '' for none)")
      ->each([a](const std::string&) { a->system_given = true; });
  c->add_option("--seed", a->seed, "Random seed for sampling");
  c->add_option("--template", a->template_name, "Chat template (default from model_type; raw = plain completion)");
  c->add_option("--val_dataset", a->val_dataset, "Answer every row of this .jsonl (messages or query/response)");
  c->add_option("--result_path", a->result_path, "Where batch answers go (.jsonl)");
  c->add_option("--logprobs", a->logprobs, "Add per-token logprobs to the result file (true|false)");
  c->add_option("--top_logprobs", a->top_logprobs, "Alternatives per token with --logprobs")->check(CLI::NonNegativeNumber);
  c->add_option("--verbose", a->verbose, "Print speed on stdout and progress logs (true|false)");
  c->callback([a] {
    if (a->verbose) moe::set_log_level(spdlog::level::info);
    auto loaded = moe::model::load_model(a->model);
    const std::string model_type = loaded.config.model_type;
    moe::model::Transformer model(std::move(loaded.config), std::move(loaded.state));
    auto tok = moe::text::Tokenizer::load(a->model);
    const std::string tname = a->template_name.empty() ? moe::text::default_template_for(model_type) : a->template_name;
    auto tmpl = a->system_given ? moe::text::make_template(tname, a->system) : moe::text::make_template(tname);
    moe::infer::GenerationConfig cfg;
    cfg.sampling = moe::infer::load_sampling_defaults(a->model);
    if (a->temperature) cfg.sampling.temperature = *a->temperature;
    if (a->top_k) cfg.sampling.top_k = *a->top_k;
    if (a->top_p) cfg.sampling.top_p = *a->top_p;
    if (a->repetition_penalty) cfg.sampling.repetition_penalty = *a->repetition_penalty;
    cfg.sampling.seed = a->seed;
    cfg.max_new_tokens = a->max_new_tokens;
    cfg.logprobs = a->logprobs;
    cfg.top_logprobs = a->top_logprobs;
    if (a->top_logprobs > 0 && !a->logprobs) moe::throw_input("--top_logprobs needs --logprobs true");
    moe::infer::ChatSession chat(model, *tok, *tmpl, a->system);
    if (!a->val_dataset.empty()) run_batch(*a, chat, cfg, *tok);
    else run_interactive(*a, chat, cfg);
  });
}

}  // namespace moectl
