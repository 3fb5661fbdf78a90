#include "model/hf_config.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"

namespace moe::model {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& supported_model_types() {
  static const std::vector<std::string> types = {"qwen3_moe", "qwen2_moe", "mixtral", "qwen2", "qwen3", "llama"};
  return types;
}

namespace {

// Typed access to config.json fields with errors that name the file and the field.
class Fields {
 public:
  Fields(const json& j, std::string src) : j_(j), src_(std::move(src)) {}
  const std::string& src() const { return src_; }
  bool has(const char* k) const { return j_.contains(k) && !j_[k].is_null(); }
  const json& raw(const char* k) const { return j_[k]; }

  int64_t integer(const char* k) const {
    if (!has(k)) throw_input("{}: missing field '{}' (an integer)", src_, k);
    return as_int(j_[k], k);
  }
  int64_t integer(const char* k, int64_t def) const { return has(k) ? as_int(j_[k], k) : def; }
  double number(const char* k, double def) const {
    if (!has(k)) return def;
    if (!j_[k].is_number()) throw_input("{}: field '{}' must be a number, got {}", src_, k, j_[k].dump());
    return j_[k].get<double>();
  }
  bool boolean(const char* k, bool def) const {
    if (!has(k)) return def;
    if (!j_[k].is_boolean()) throw_input("{}: field '{}' must be true or false, got {}", src_, k, j_[k].dump());
    return j_[k].get<bool>();
  }
  std::string string(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j_[k].is_string()) throw_input("{}: field '{}' must be a string, got {}", src_, k, j_[k].dump());
    return j_[k].get<std::string>();
  }
  std::vector<int> int_list(const char* k) const {
    std::vector<int> out;
    if (!has(k)) return out;
    if (j_[k].is_number_integer()) return {int(as_int(j_[k], k))};
    if (!j_[k].is_array()) throw_input("{}: field '{}' must be an integer or a list of integers", src_, k);
    for (const auto& v : j_[k]) out.push_back(int(as_int(v, k)));
    return out;
  }

 private:
  int64_t as_int(const json& v, const char* k) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>()))) return int64_t(v.get<double>());
    throw_input("{}: field '{}' must be an integer, got {}", src_, k, v.dump());
  }
  const json& j_;
  std::string src_;
};

json parse_json_file(const std::string& path) {
  std::string text = read_text_file(path);
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw_input("{}: not valid JSON (fix or re-download the file)", path);
  if (!j.is_object()) throw_input("{}: expected a JSON object at the top level", path);
  return j;
}

RopeScaling parse_rope_scaling(const Fields& f) {
  RopeScaling r;
  const char* key = f.has("rope_scaling") ? "rope_scaling" : (f.has("rope_parameters") ? "rope_parameters" : nullptr);
  if (!key) return r;
  const json& rs = f.raw(key);
  if (!rs.is_object()) throw_input("{}: field '{}' must be an object or null", f.src(), key);
  std::string src = f.src() + ": " + key;
  Fields s(rs, src);
  std::string type = s.string("rope_type", s.string("type", "default"));
  if (type == "default") return r;
  if (type != "linear" && type != "llama3" && type != "yarn")
    throw_input("{}: rope_type '{}' is not supported (supported: default, linear, llama3, yarn)", f.src(), type);
  r.type = type;
  r.factor = s.number("factor", 0.0);
  if (!(r.factor > 0)) throw_input("{}.factor must be a positive number for rope_type '{}'", src, type);
  r.original_max_position_embeddings = s.integer("original_max_position_embeddings", 0);
  if (type == "llama3") {
    r.low_freq_factor = s.number("low_freq_factor", 1.0);
    r.high_freq_factor = s.number("high_freq_factor", 4.0);
    if (r.original_max_position_embeddings <= 0)
      throw_input("{}.original_max_position_embeddings is required for rope_type 'llama3'", src);
  }
  if (type == "yarn") {
    r.beta_fast = s.number("beta_fast", 32.0);
    r.beta_slow = s.number("beta_slow", 1.0);
    r.attention_factor = s.number("attention_factor", 0.0);
    r.mscale = s.number("mscale", 0.0);
    r.mscale_all_dim = s.number("mscale_all_dim", 0.0);
    r.truncate = s.boolean("truncate", true);
  }
  return r;
}

}  // namespace

ModelConfig load_hf_config(const std::string& path) {
  fs::path p(path);
  fs::path cfg_path = fs::is_directory(p) ? p / "config.json" : p;
  if (!fs::exists(cfg_path))
    throw_input("{}: not found (point --model at a Hugging Face model directory containing config.json)",
                cfg_path.string());
  const std::string src = cfg_path.string();
  json j = parse_json_file(src);
  Fields f(j, src);

  ModelConfig c;
  if (!f.has("model_type")) throw_input("{}: missing field 'model_type'", src);
  c.model_type = f.string("model_type", "");
  const auto& types = supported_model_types();
  if (std::find(types.begin(), types.end(), c.model_type) == types.end()) {
    std::string list;
    for (const auto& t : types) list += (list.empty() ? "" : ", ") + t;
    throw_input("{}: model_type '{}' is not supported (supported: {})", src, c.model_type, list);
  }
  const std::string& mt = c.model_type;
  const bool qwen = mt.rfind("qwen", 0) == 0;

  std::string act = f.string("hidden_act", "silu");
  if (act != "silu") throw_input("{}: hidden_act '{}' is not supported (expected 'silu' for SwiGLU)", src, act);
  if (f.boolean("mlp_bias", false)) throw_input("{}: mlp_bias=true is not supported (expected false)", src);
  if (qwen && f.boolean("use_sliding_window", false))
    throw_input("{}: use_sliding_window=true is not supported (set it to false)", src);

  c.num_layers = int(f.integer("num_hidden_layers"));
  c.hidden_size = int(f.integer("hidden_size"));
  c.num_attention_heads = int(f.integer("num_attention_heads"));
  c.num_query_groups = int(f.integer("num_key_value_heads", c.num_attention_heads));
  if (c.num_attention_heads <= 0) throw_input("{}: 'num_attention_heads' must be positive", src);
  int64_t default_head_dim = mt == "qwen3" ? 128 : c.hidden_size / c.num_attention_heads;
  c.kv_channels = int(f.integer("head_dim", default_head_dim));
  c.vocab_size = f.integer("vocab_size");
  c.max_position_embeddings = f.integer("max_position_embeddings", 32768);
  c.norm_epsilon = f.number("rms_norm_eps", qwen ? 1e-6 : 1e-5);
  double theta_default = mt == "mixtral" ? 1e6 : 10000.0;
  c.rotary_base = f.number("rope_theta", theta_default);
  if (!f.has("rope_theta")) {
    for (const char* k : {"rope_parameters", "rope_scaling"})
      if (f.has(k) && f.raw(k).is_object() && f.raw(k).contains("rope_theta"))
        c.rotary_base = Fields(f.raw(k), src + ": " + k).number("rope_theta", theta_default);
  }
  c.rope_scaling = parse_rope_scaling(f);
  c.untie_embeddings_and_output_weights = !f.boolean("tie_word_embeddings", false);
  c.qk_layernorm = mt == "qwen3" || mt == "qwen3_moe";
  // HF Qwen2 / Qwen2-MoE always build q/k/v with bias; the others follow attention_bias.
  c.add_qkv_bias = (mt == "qwen2" || mt == "qwen2_moe") ? true : f.boolean("attention_bias", false);
  if (mt == "mixtral" && f.has("sliding_window")) {
    int64_t w = f.integer("sliding_window");
    if (w < c.max_position_embeddings)
      throw_input("{}: sliding_window {} is smaller than max_position_embeddings {}; sliding-window attention is not "
                  "supported (set sliding_window to null)", src, w, c.max_position_embeddings);
  }

  std::string dtype = f.has("torch_dtype") ? f.string("torch_dtype", "") : f.string("dtype", "float32");
  if (!parse_torch_dtype(dtype, &c.params_dtype))
    throw_input("{}: torch_dtype '{}' is not supported (expected float32, bfloat16 or float16)", src, dtype);

  c.moe_layer_pattern.assign(size_t(std::max(c.num_layers, 0)), false);
  if (mt == "mixtral") {
    c.num_experts = int(f.integer("num_local_experts", 8));
    c.moe_router_topk = int(f.integer("num_experts_per_tok", 2));
    c.moe_ffn_hidden_size = int(f.integer("intermediate_size"));
    c.moe_router_pre_softmax = false;  // Mixtral always renormalises the top-k weights
    c.moe_layer_pattern.assign(c.moe_layer_pattern.size(), true);
  } else if (mt == "qwen2_moe" || mt == "qwen3_moe") {
    bool q2 = mt == "qwen2_moe";
    c.num_experts = int(f.integer("num_experts", q2 ? 60 : 128));
    c.moe_router_topk = int(f.integer("num_experts_per_tok", q2 ? 4 : 8));
    c.moe_ffn_hidden_size = int(f.integer("moe_intermediate_size", q2 ? 1408 : 768));
    c.moe_router_pre_softmax = !f.boolean("norm_topk_prob", false);
    c.ffn_hidden_size = int(f.integer("intermediate_size", 0));
    if (q2) {
      c.moe_shared_expert_intermediate_size = int(f.integer("shared_expert_intermediate_size", 5632));
      c.moe_shared_expert_gate = c.moe_shared_expert_intermediate_size > 0;
    }
    int64_t step = f.integer("decoder_sparse_step", 1);
    if (step <= 0) throw_input("{}: 'decoder_sparse_step' must be >= 1, got {}", src, step);
    std::vector<int> dense_layers = f.int_list("mlp_only_layers");
    for (int l : dense_layers)
      if (l < 0 || l >= c.num_layers)
        throw_input("{}: 'mlp_only_layers' names layer {} but the model has {} layers", src, l, c.num_layers);
    for (int l = 0; l < c.num_layers; ++l) {
      bool dense = std::find(dense_layers.begin(), dense_layers.end(), l) != dense_layers.end();
      c.moe_layer_pattern[size_t(l)] = !dense && c.num_experts > 0 && (l + 1) % step == 0;
    }
  } else {
    c.ffn_hidden_size = int(f.integer("intermediate_size"));
  }

  // Special token ids: generation_config.json wins over config.json, as in HF generate().
  c.bos_token_id = int(f.integer("bos_token_id", -1));
  c.eos_token_ids = f.int_list("eos_token_id");
  fs::path gen = cfg_path.parent_path() / "generation_config.json";
  if (fs::exists(gen)) {
    json g = parse_json_file(gen.string());
    Fields gf(g, gen.string());
    if (gf.has("bos_token_id")) c.bos_token_id = int(gf.integer("bos_token_id"));
    if (gf.has("eos_token_id")) c.eos_token_ids = gf.int_list("eos_token_id");
  }
  validate_config(c, src);
  return c;
}

}  // namespace moe::model
