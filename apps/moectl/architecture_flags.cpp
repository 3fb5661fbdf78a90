#include "architecture_flags.h"

#include <cmath>
#include <functional>
#include <vector>

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
  };
  return f;
}

}  // namespace

void add_architecture_flags(CLI::App* c, ArchitectureFlags& f) {
  for (const auto& n : number_flags())
    c->add_option(std::string("--") + n.flag, f.numbers[n.flag], "Architecture: checked against config.json");
  for (const auto& s : switch_flags())
    c->add_option(std::string("--") + s.flag, f.switches[s.flag], "Architecture: checked against config.json");
}

nlohmann::json check_architecture_flags(const CLI::App& c, const ArchitectureFlags& f, const ModelConfig& config,
                                        const std::string& config_file) {
  nlohmann::json given = nlohmann::json::object();
  for (const auto& n : number_flags()) {
    if (c.count(std::string("--") + n.flag) == 0) continue;
    const double v = f.numbers.at(n.flag), m = n.of(config);
    if (!(std::fabs(v - m) <= 1e-9 * std::max(std::fabs(v), std::fabs(m))))
      moe::throw_input(
          "--{} {} disagrees with {} ({}); moectl takes the architecture from config.json: leave the "
          "flag out or pass the same value",
          n.flag, v, config_file, m);
    given[n.flag] = v;
  }
  for (const auto& s : switch_flags()) {
    if (c.count(std::string("--") + s.flag) == 0) continue;
    const bool v = f.switches.at(s.flag), m = s.of(config);
    if (v != m)
      moe::throw_input(
          "--{} {} disagrees with {} ({}); moectl takes the architecture from config.json: leave the "
          "flag out or pass the same value",
          s.flag, v, config_file, m);
    given[s.flag] = v;
  }
  return given;
}

}  // namespace moectl
