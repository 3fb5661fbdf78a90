// `moectl infer`: chat with a model (interactive REPL, streamed) or answer a dataset in
// batch (--val_dataset -> --result_path), with swift's flags.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/mcore_export.h"
#include "commands.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/chat_session.h"
#include "infer/generation_defaults.h"
#include "kernels/device.h"
#include "text/chat_rows.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moectl {

namespace {

struct InferArgs {
  std::string model, system, template_name, result_path, infer_backend = "transformers", device = "cpu";
  std::string device_name;  // what --device resolved to, for the speed line
  std::vector<std::string> val_dataset, adapters;
  bool system_given = false;  // --system '' means no system prompt, not the template's
  bool stream = true, logprobs = false, verbose = false;
  // Wide types, so an out-of-range value reaches our range check rather than wrapping.
  std::optional<double> temperature, top_p, repetition_penalty, top_k;
  int64_t max_new_tokens = 512, top_logprobs = 0, max_batch_size = 1;
  uint64_t seed = 42;
};

namespace fs = std::filesystem;

// Every numeric flag, checked before the model loads: one line naming the flag and its range.
void validate_flags(const InferArgs& a) {
  // swift's backends: transformers (3.x: pt) is the in-process engine, which moectl's is.
  if (a.infer_backend == "pt")
    moe::log().warn("--infer_backend pt is swift 3.x's name for transformers: moectl's own engine answers");
  else if (a.infer_backend != "transformers")
    moe::throw_input(
        "--infer_backend {}: moectl answers with its own engine, swift's transformers backend; pass --infer_backend "
        "transformers (or leave it out)",
        a.infer_backend);
  if (!a.adapters.empty())
    moe::throw_input("--adapters {}: LoRA adapters are not in moectl yet; merge them into the model first",
                     a.adapters.front());
  auto check = [](const char* name, const std::optional<double>& v) {
    if (!v) return;
    const std::string why = moe::infer::sampling_value_problem(name, *v);
    if (!why.empty()) moe::throw_input("--{} {}: {}", name, *v, why);
  };
  check("temperature", a.temperature);
  check("top_k", a.top_k);
  check("top_p", a.top_p);
  check("repetition_penalty", a.repetition_penalty);
  if (a.max_new_tokens < 1 || a.max_new_tokens > INT_MAX)
    moe::throw_input("--max_new_tokens {}: must be a whole number from 1 to {}", a.max_new_tokens, INT_MAX);
  if (a.top_logprobs < 0 || a.top_logprobs > 20)
    moe::throw_input("--top_logprobs {}: must be from 0 to 20 (as OpenAI's API)", a.top_logprobs);
  if (a.top_logprobs > 0 && !a.logprobs) moe::throw_input("--top_logprobs needs --logprobs true");
  if (a.max_batch_size == 0 || a.max_batch_size < -1 || a.max_batch_size > INT_MAX)
    moe::throw_input("--max_batch_size {}: rows decoded together, >= 1 (-1: every row of the dataset)",
                     a.max_batch_size);
}

// Checked before the model loads, so a bad path costs nothing: the answers go to a sibling
// .tmp and are renamed over it at the end, which needs a file name in a writable directory.
void check_result_path(const std::string& path) {
  const fs::path p(path);
  if (!p.has_filename() || fs::is_directory(p))
    moe::throw_input("--result_path {}: is a directory; give a file in it, e.g. {}", path,
                     (p / "result.jsonl").lexically_normal().string());
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  if (!fs::is_directory(dir))
    moe::throw_input("--result_path {}: directory {} does not exist; create it first", path, dir.string());
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    moe::throw_input("--result_path {}: directory {} is not writable; choose another path", path, dir.string());
  if (fs::exists(p) && !fs::is_regular_file(p))
    moe::throw_input("--result_path {}: exists and is not a regular file; choose another path", path);
}

// swift's default when --val_dataset comes without --result_path (InferArguments._get_result_path):
// <model dir>/infer_result/<YYYYMMDD-HHMMSS>.jsonl for a checkpoint written by a run (it holds
// args.json), else result/<model dir name>/infer_result/<...>.jsonl under the working directory.
std::string default_result_path(const std::string& model) {
  const fs::path m = fs::path(model).lexically_normal();
  const fs::path name = m.has_filename() ? m.filename() : m.parent_path().filename();
  const fs::path root = fs::exists(m / "args.json") ? m : fs::path("result") / name;
  const fs::path dir = fs::absolute(root / "infer_result");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) moe::throw_input("cannot create {} for the results ({}); pass --result_path", dir.string(), ec.message());
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return (dir / (std::string(stamp) + ".jsonl")).string();
}

// Removes a half-written file unless the run got as far as renaming it into place.
struct RemoveUnlessKept {
  std::string path;
  bool keep = false;
  ~RemoveUnlessKept() {
    std::error_code ec;
    if (!keep) fs::remove(path, ec);
  }
};

nlohmann::json messages_json(const std::vector<moe::text::Message>& msgs) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& m : msgs) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

// The speed line names the device that ran (issue 17: "cpu", "cuda:0").
void print_speed(const moe::infer::GenerationResult& r, bool verbose, const std::string& device) {
  const double pre = r.prefill_seconds > 0 ? double(r.prefilled_tokens) / r.prefill_seconds : 0;
  const double dec = r.decode_seconds > 0 ? double(r.ids.size()) / r.decode_seconds : 0;
  std::FILE* out = verbose ? stdout : stderr;
  std::fprintf(out, "[prefill %lld tokens, %.1f tokens/s | decode %zu tokens, %.1f tokens/s | %s]\n",
               (long long)r.prefilled_tokens, pre, r.ids.size(), dec, device.c_str());
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
  // Parse every row of every file first (in the order given, as swift concatenates them), so a
  // bad row fails before any generation work.
  std::vector<moe::text::ChatRow> rows;
  std::vector<std::string> origin;  // file:line of each row, for its warning
  for (const std::string& file : a.val_dataset) {
    std::ifstream in(file);
    if (!in) moe::throw_input("--val_dataset {}: cannot open", file);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = file + ":" + std::to_string(n);
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded()) moe::throw_input("{}: not valid JSON", where);
      rows.push_back(moe::text::parse_chat_row(j, where));
      origin.push_back(where);
    }
  }
  RemoveUnlessKept tmp{a.result_path + ".tmp"};
  size_t failed = 0;
  {
    std::ofstream out(tmp.path, std::ios::trunc);
    if (!out) moe::throw_input("--result_path {}: cannot create {}", a.result_path, tmp.path);
    // Rows go in groups of --max_batch_size, each group decoded together (swift's transformers
    // backend batches the same way); the answers are written in the dataset's order.
    const size_t group = a.max_batch_size < 0 ? std::max<size_t>(rows.size(), 1) : size_t(a.max_batch_size);
    for (size_t g0 = 0; g0 < rows.size(); g0 += group) {
      const size_t g1 = std::min(rows.size(), g0 + group);
      std::vector<std::vector<moe::text::Message>> prompts;
      for (size_t i = g0; i < g1; ++i) prompts.push_back(rows[i].prompt);
      std::vector<std::string> replies, errors;
      std::vector<moe::infer::GenerationResult> results;
      if (group == 1) {  // one row: the session's own path (its prefix cache across rows)
        replies.resize(1), errors.resize(1);
        try {
          results.push_back(chat.complete(prompts[0], cfg, {}, &replies[0]));
        } catch (const moe::infer::RequestError& e) {
          results.emplace_back();
          errors[0] = e.what();
        }
      } else {
        results = chat.complete_batch(prompts, cfg, &replies, &errors);
      }
      for (size_t j = 0; j < results.size(); ++j) {
        const size_t i = g0 + j;
        const auto& res = results[j];
        nlohmann::json o{{"labels", rows[i].label}, {"messages", messages_json(rows[i].prompt)}};
        if (errors[j].empty()) {
          o["response"] = replies[j];
          o["prompt_tokens"] = res.prompt_tokens;
          o["completion_tokens"] = res.ids.size();
          o["finish_reason"] = res.finish_reason;
          if (a.logprobs) o["logprobs"] = logprobs_json(res, tok);
          if (a.verbose) print_speed(res, false, a.device_name);
        } else {
          // One row that cannot be answered (e.g. longer than the context) gets an error entry
          // in its place, so the result file still lines up with the dataset.
          ++failed;
          o["response"] = nullptr;
          o["finish_reason"] = "error";
          o["error"] = errors[j];
          moe::log().warn("{}: {}", origin[i], errors[j]);
        }
        out << o.dump() << "\n";
      }
    }
    out.flush();
    if (!out) moe::throw_input("--result_path {}: writing {} failed (disk full?)", a.result_path, tmp.path);
  }
  std::error_code ec;
  fs::rename(tmp.path, a.result_path, ec);
  if (ec) moe::throw_input("--result_path {}: cannot rename {} onto it ({})", a.result_path, tmp.path, ec.message());
  tmp.keep = true;
  if (failed > 0)
    moe::log().warn("{} of {} rows could not be answered: see their \"error\" entries", failed, rows.size());
  std::fprintf(stderr, "The inference results have been saved to result_path: `%s`.\n", a.result_path.c_str());
}

// A line of the REPL without its CRLF '\r' and surrounding blanks, for commands and emptiness.
std::string trimmed(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

void run_interactive(const InferArgs& a, moe::infer::ChatSession& chat, const moe::infer::GenerationConfig& cfg) {
  // swift appends one line per turn to --result_path in the REPL too; each is flushed, so an
  // interrupted session keeps its turns and there is no .tmp to leave behind.
  std::ofstream results;
  if (!a.result_path.empty()) {
    results.open(a.result_path, std::ios::app);
    if (!results) moe::throw_input("--result_path {}: cannot open for appending", a.result_path);
  }
  std::string line;
  while (true) {
    std::printf("<<< ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF input
    const std::string cmd = trimmed(line);
    if (cmd.empty()) continue;  // an empty line is not a question
    if (cmd == "exit" || cmd == "quit") break;
    if (cmd == "clear") {
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
    } catch (const moe::infer::RequestError& e) {  // this turn only: the conversation goes on
      std::fprintf(stderr, "moectl: error: %s\n", e.what());
      continue;
    }
    if (!a.stream) std::fwrite(reply.data(), 1, reply.size(), stdout);
    std::printf("\n");
    std::fflush(stdout);
    print_speed(res, a.verbose, a.device_name);
    if (results.is_open()) {
      results << nlohmann::json{{"response", reply}, {"messages", messages_json(chat.history())}}.dump() << "\n";
      results.flush();
      if (!results) moe::throw_input("--result_path {}: writing failed (disk full?)", a.result_path);
    }
  }
  std::printf("\n");
  if (results.is_open())
    std::fprintf(stderr, "The inference results have been saved to result_path: `%s`.\n", a.result_path.c_str());
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
  c->add_option("--max_new_tokens", a->max_new_tokens, "Most tokens to generate per answer (clipped to the context)");
  c->add_option("--system", a->system, "System prompt (default: the template's; '' for none)")
      ->each([a](const std::string&) { a->system_given = true; });
  c->add_option("--seed", a->seed, "Random seed for sampling");
  c->add_option("--template", a->template_name, "Chat template (default from model_type; raw = plain completion)");
  c->add_option("--val_dataset", a->val_dataset,
                "Answer every row of these .jsonl files, in order (messages or query/response)");
  c->add_option("--max_batch_size", a->max_batch_size,
                "Rows of --val_dataset decoded together (default 1; -1: all); same answers, more rows/s");
  c->add_option("--infer_backend", a->infer_backend,
                "transformers (pt in swift 3.x): moectl's engine; vllm, sglang, lmdeploy are not in moectl")
      ->check(CLI::IsMember({"transformers", "pt", "vllm", "sglang", "lmdeploy"}));
  c->add_option("--adapters", a->adapters, "Not yet in moectl: LoRA adapters");
  c->add_option("--result_path", a->result_path,
                "Answers as JSON lines: replaced in batch mode (default infer_result/<time>.jsonl), appended per turn "
                "in the REPL");
  c->add_option("--logprobs", a->logprobs, "Add per-token logprobs to the result file (true|false)");
  c->add_option("--top_logprobs", a->top_logprobs, "Alternatives per token with --logprobs (0-20)");
  c->add_option("--verbose", a->verbose, "Print speed on stdout and progress logs (true|false)");
  c->add_option("--device", a->device,
                "Where the model runs: cpu (default), cuda, cuda:N, or auto (the first GPU when one is usable)");
  c->callback([a] {
    if (a->verbose) moe::set_log_level(spdlog::level::info);
    validate_flags(*a);
    if (!a->result_path.empty()) check_result_path(a->result_path);
    else if (!a->val_dataset.empty()) a->result_path = default_result_path(a->model);
    moe::Backend backend = moe::backend_for_device(a->device);  // before the load: a bad --device costs nothing
    a->device_name = moe::backend_name(backend);
    auto loaded = moe::checkpoint::load_model(a->model);
    const std::string model_type = loaded.config.model_type;
    moe::model::Transformer model(std::move(loaded.config), std::move(loaded.state), std::move(backend));
    auto tok = moe::text::Tokenizer::load(a->model);
    const std::string tname = a->template_name.empty() ? moe::text::default_template_for(model_type) : a->template_name;
    auto tmpl = a->system_given ? moe::text::make_template(tname, a->system) : moe::text::make_template(tname);
    moe::infer::GenerationConfig cfg;
    cfg.sampling = moe::infer::load_sampling_defaults(a->model);
    if (a->temperature) cfg.sampling.temperature = float(*a->temperature);
    if (a->top_k) cfg.sampling.top_k = int(*a->top_k);
    if (a->top_p) cfg.sampling.top_p = float(*a->top_p);
    if (a->repetition_penalty) cfg.sampling.repetition_penalty = float(*a->repetition_penalty);
    cfg.sampling.seed = a->seed;
    cfg.max_new_tokens = int(a->max_new_tokens);
    cfg.logprobs = a->logprobs;
    cfg.top_logprobs = int(a->top_logprobs);
    moe::infer::ChatSession chat(model, *tok, *tmpl, a->system);
    try {
      if (!a->val_dataset.empty()) run_batch(*a, chat, cfg, *tok);
      else run_interactive(*a, chat, cfg);
    } catch (const moe::infer::NonFiniteLogits& e) {
      moe::throw_input("--model {}: {}", a->model, e.what());
    }
  });
}

}  // namespace moectl
