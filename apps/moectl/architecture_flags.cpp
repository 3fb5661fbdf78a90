#include "architecture_flags.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"

namespace moectl {

namespace {

using moe::model::ModelConfig;

struct NumberFlag {
  const char* flag;
  std::function<double(const ModelConfig&)> of;
};
struct SwitchFlag {
  const char* flag;
  std::function<bool(const ModelConfig&)> of;
};
// A value compared as JSON with config.json's: a name (model_type) or an object (rope_scaling).
struct TextFlag {
  const char* flag;
  std::function<nlohmann::json(const ModelConfig&, const nlohmann::json& config_json)> of;
  bool json_value;  // the flag's text is JSON (an object, or null); else a plain string
};

const std::vector<NumberFlag>& number_flags() {
  static const std::vector<NumberFlag> f = {
      {"num_layers", [](const ModelConfig& c) { return c.num_layers; }},
      {"hidden_size", [](const ModelConfig& c) { return c.hidden_size; }},
      {"ffn_hidden_size", [](const ModelConfig& c) { return c.ffn_hidden_size; }},
      {"num_attention_heads", [](const ModelConfig& c) { return c.num_attention_heads; }},
      {"num_query_groups", [](const ModelConfig& c) { return c.num_query_groups; }},
      {"kv_channels", [](const ModelConfig& c) { return c.kv_channels; }},
      {"max_position_embeddings", [](const ModelConfig& c) { return double(c.max_position_embeddings); }},
      {"norm_epsilon", [](const ModelConfig& c) { return c.norm_epsilon; }},
      {"rotary_base", [](const ModelConfig& c) { return c.rotary_base; }},
      {"num_experts", [](const ModelConfig& c) { return c.num_experts; }},
      {"moe_ffn_hidden_size", [](const ModelConfig& c) { return c.moe_ffn_hidden_size; }},
      {"moe_router_topk", [](const ModelConfig& c) { return c.moe_router_topk; }},
      {"moe_shared_expert_intermediate_size",
       [](const ModelConfig& c) { return c.moe_shared_expert_intermediate_size; }},
      // Megatron pads the vocabulary to make_vocab_size_divisible_by; swift passes the HF size.
      {"padded_vocab_size", [](const ModelConfig& c) { return double(c.vocab_size); }},
      // Every family rotates the whole head and has no dropout.
      {"rotary_percent", [](const ModelConfig&) { return 1.0; }},
      {"attention_dropout", [](const ModelConfig&) { return 0.0; }},
      {"hidden_dropout", [](const ModelConfig&) { return 0.0; }},
  };
  return f;
}

const std::vector<SwitchFlag>& switch_flags() {
  static const std::vector<SwitchFlag> f = {
      {"qk_layernorm", [](const ModelConfig& c) { return c.qk_layernorm; }},
      {"add_qkv_bias", [](const ModelConfig& c) { return c.add_qkv_bias; }},
      {"untie_embeddings_and_output_weights",
       [](const ModelConfig& c) { return c.untie_embeddings_and_output_weights; }},
      {"group_query_attention", [](const ModelConfig& c) { return c.num_query_groups < c.num_attention_heads; }},
      {"moe_router_pre_softmax", [](const ModelConfig& c) { return c.moe_router_pre_softmax; }},
      // What every family has: SwiGLU MLPs and linear layers without bias (the QKV bias apart).
      {"swiglu", [](const ModelConfig&) { return true; }},
      {"disable_bias_linear", [](const ModelConfig&) { return true; }},
  };
  return f;
}

const std::vector<TextFlag>& text_flags() {
  static const std::vector<TextFlag> f = {
      {"model_type", [](const ModelConfig& c, const nlohmann::json&) { return nlohmann::json(c.model_type); }, false},
      {"normalization", [](const ModelConfig&, const nlohmann::json&) { return nlohmann::json("RMSNorm"); }, false},
      {"position_embedding_type", [](const ModelConfig&, const nlohmann::json&) { return nlohmann::json("rope"); },
       false},
      {"rope_scaling",
       [](const ModelConfig&, const nlohmann::json& j) {
         return j.is_object() && j.contains("rope_scaling") ? j["rope_scaling"] : nlohmann::json(nullptr);
       },
       true},
  };
  return f;
}

[[noreturn]] void disagree(const std::string& flag, const std::string& given, const std::string& file,
                           const std::string& model) {
  moe::throw_input(
      "--{} {} disagrees with {} ({}); moectl takes the architecture from config.json: leave the flag out or "
      "pass the same value",
      flag, given, file, model);
}

nlohmann::json read_config_json(const std::string& file) {
  std::ifstream in(file);
  auto j = nlohmann::json::parse(in, nullptr, false);
  return j.is_discarded() ? nlohmann::json::object() : j;
}

// One architecture value, given on the command line or in the extra-kwargs object, checked
// against the model; false when `flag` is not an architecture flag.
bool check_one(const std::string& flag, const nlohmann::json& v, const ModelConfig& config,
               const nlohmann::json& config_json, const std::string& file) {
  for (const auto& n : number_flags()) {
    if (flag != n.flag) continue;
    const double m = n.of(config);
    if (!v.is_number()) disagree(flag, v.dump(), file, fmt::format("{}", m));
    const double x = v.get<double>();
    if (!(std::fabs(x - m) <= 1e-9 * std::max(std::fabs(x), std::fabs(m))))
      disagree(flag, fmt::format("{}", x), file, fmt::format("{}", m));
    return true;
  }
  for (const auto& s : switch_flags()) {
    if (flag != s.flag) continue;
    const bool m = s.of(config);
    if (!v.is_boolean() || v.get<bool>() != m) disagree(flag, v.dump(), file, m ? "true" : "false");
    return true;
  }
  for (const auto& t : text_flags()) {
    if (flag != t.flag) continue;
    const nlohmann::json m = t.of(config, config_json);
    if (v != m)
      disagree(flag, v.is_string() ? v.get<std::string>() : v.dump(), file,
               m.is_string() ? m.get<std::string>() : m.dump());
    return true;
  }
  return false;
}

}  // namespace

void add_architecture_flags(CLI::App* c, ArchitectureFlags& f) {
  for (const auto& n : number_flags())
    c->add_option(std::string("--") + n.flag, f.numbers[n.flag], "Architecture: checked against config.json");
  for (const auto& s : switch_flags())
    c->add_option(std::string("--") + s.flag, f.switches[s.flag], "Architecture: checked against config.json");
  for (const auto& t : text_flags())
    c->add_option(std::string("--") + t.flag, f.texts[t.flag],
                  std::string("Architecture: checked against config.json") + (t.json_value ? " (JSON)" : ""));
  c->add_option("--extra_megatron_kwargs,--megatron_extra_kwargs", f.extra_kwargs,
                "Architecture: a JSON object of Megatron flags, each checked against config.json");
}

nlohmann::json check_architecture_flags(const CLI::App& c, const ArchitectureFlags& f, const ModelConfig& config,
                                        const std::string& config_file) {
  const nlohmann::json config_json = read_config_json(config_file);
  nlohmann::json given = nlohmann::json::object();
  auto was_given = [&](const char* flag) { return c.count(std::string("--") + flag) > 0; };
  for (const auto& n : number_flags())
    if (was_given(n.flag))
      check_one(n.flag, f.numbers.at(n.flag), config, config_json, config_file), given[n.flag] = f.numbers.at(n.flag);
  for (const auto& s : switch_flags())
    if (was_given(s.flag))
      check_one(s.flag, f.switches.at(s.flag), config, config_json, config_file), given[s.flag] = f.switches.at(s.flag);
  for (const auto& t : text_flags()) {
    if (!was_given(t.flag)) continue;
    const std::string& text = f.texts.at(t.flag);
    nlohmann::json v = text;
    if (t.json_value) {
      v = nlohmann::json::parse(text, nullptr, false);
      if (v.is_discarded() || !(v.is_object() || v.is_null()))
        moe::throw_input("--{} {}: not a JSON object (e.g. '{{\"rope_type\": \"yarn\", \"factor\": 4.0}}')", t.flag,
                         text);
    }
    check_one(t.flag, v, config, config_json, config_file);
    given[t.flag] = v;
  }
  if (!f.extra_kwargs.empty()) {
    const auto extra = nlohmann::json::parse(f.extra_kwargs, nullptr, false);
    if (extra.is_discarded() || !extra.is_object())
      moe::throw_input("--extra_megatron_kwargs {}: not a JSON object of Megatron flags (e.g. '{{\"num_layers\": 4}}')",
                       f.extra_kwargs);
    for (const auto& [key, v] : extra.items())
      if (!check_one(key, v, config, config_json, config_file))
        moe::throw_input(
            "--extra_megatron_kwargs: key {} is not an architecture flag moectl checks; pass it as --{} on the "
            "command line",
            key, key);
    given["extra_megatron_kwargs"] = extra;
  }
  return given;
}

}  // namespace moectl
