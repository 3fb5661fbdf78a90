#include "model/hf_config.h"

#include <cmath>
#include <cstdint>
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
  // An integer in [lo, hi], checked before the caller narrows or multiplies it.
  int64_t integer_in(const char* k, int64_t lo, int64_t hi) const { return in_range(integer(k), k, lo, hi); }
  int64_t integer_in(const char* k, int64_t lo, int64_t hi, int64_t def) const {
    return has(k) ? in_range(integer(k), k, lo, hi) : def;
  }
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
  std::vector<int> int_list(const char* k, int64_t lo, int64_t hi) const {
    std::vector<int> out;
    if (!has(k)) return out;
    if (j_[k].is_number()) return {int(in_range(as_int(j_[k], k), k, lo, hi))};
    if (!j_[k].is_array()) throw_input("{}: field '{}' must be an integer or a list of integers", src_, k);
    for (const auto& v : j_[k]) out.push_back(int(in_range(as_int(v, k), k, lo, hi)));
    return out;
  }

 private:
  int64_t in_range(int64_t v, const char* k, int64_t lo, int64_t hi) const {
    if (v < lo || v > hi) throw_input("{}: field '{}' must be an integer from {} to {}, got {}", src_, k, lo, hi, v);
    return v;
  }
  int64_t as_int(const json& v, const char* k) const {
    // JSON integers above INT64_MAX arrive as unsigned and would wrap in get<int64_t>().
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
      throw_input("{}: field '{}' is {}, too large for any size", src_, k, v.dump());
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      // Only whole numbers inside int64's range convert: casting any other double is undefined.
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return int64_t(d);
    }
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
  r.original_max_position_embeddings = s.integer_in("original_max_position_embeddings", 0, SizeLimits::kPositions, 0);
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

  using L = SizeLimits;
  c.num_layers = int(f.integer_in("num_hidden_layers", 1, L::kLayers));
  c.hidden_size = int(f.integer_in("hidden_size", 1, L::kHidden));
  c.num_attention_heads = int(f.integer_in("num_attention_heads", 1, L::kHeads));
  c.num_query_groups = int(f.integer_in("num_key_value_heads", 1, L::kHeads, c.num_attention_heads));
  int64_t default_head_dim = mt == "qwen3" ? 128 : c.hidden_size / c.num_attention_heads;
  c.kv_channels = int(f.integer_in("head_dim", 1, L::kHeadDim, default_head_dim));
  c.vocab_size = f.integer_in("vocab_size", 1, L::kVocab);
  c.max_position_embeddings = f.integer_in("max_position_embeddings", 1, L::kPositions, 32768);
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
    const int64_t w = f.integer("sliding_window");
    if (w < c.max_position_embeddings)
      throw_input(
          "{}: sliding_window {} is smaller than max_position_embeddings {}; sliding-window attention is not "
          "supported (set sliding_window to null)",
          src, w, c.max_position_embeddings);
  }

  std::string dtype = f.has("torch_dtype") ? f.string("torch_dtype", "") : f.string("dtype", "float32");
  if (!parse_torch_dtype(dtype, &c.params_dtype))
    throw_input("{}: torch_dtype '{}' is not supported (expected float32, bfloat16 or float16)", src, dtype);

  c.moe_layer_pattern.assign(size_t(std::max(c.num_layers, 0)), false);
  c.moe_router_enable_expert_bias = f.boolean("moe_router_enable_expert_bias", false);
  if (mt == "mixtral") {
    c.num_experts = int(f.integer_in("num_local_experts", 1, L::kExperts, 8));
    c.moe_router_topk = int(f.integer_in("num_experts_per_tok", 1, L::kExperts, 2));
    c.moe_ffn_hidden_size = int(f.integer_in("intermediate_size", 1, L::kFfn));
    c.moe_router_pre_softmax = false;  // Mixtral always renormalises the top-k weights
    c.moe_layer_pattern.assign(c.moe_layer_pattern.size(), true);
  } else if (mt == "qwen2_moe" || mt == "qwen3_moe") {
    bool q2 = mt == "qwen2_moe";
    // num_experts 0 is a dense model; a negative count is an error (QA #15), not "dense".
    c.num_experts = int(f.integer_in("num_experts", 0, L::kExperts, q2 ? 60 : 128));
    c.moe_router_topk = int(f.integer_in("num_experts_per_tok", 0, L::kExperts, q2 ? 4 : 8));
    c.moe_ffn_hidden_size = int(f.integer_in("moe_intermediate_size", 0, L::kFfn, q2 ? 1408 : 768));
    c.moe_router_pre_softmax = !f.boolean("norm_topk_prob", false);
    c.ffn_hidden_size = int(f.integer_in("intermediate_size", 0, L::kFfn, 0));
    if (q2) {
      c.moe_shared_expert_intermediate_size = int(f.integer_in("shared_expert_intermediate_size", 0, L::kFfn, 5632));
      c.moe_shared_expert_gate = c.moe_shared_expert_intermediate_size > 0;
    }
    const int64_t step = f.integer_in("decoder_sparse_step", 1, L::kLayers, 1);
    std::vector<bool> dense(size_t(c.num_layers), false);
    for (int l : f.int_list("mlp_only_layers", 0, c.num_layers - 1)) dense[size_t(l)] = true;
    for (int l = 0; l < c.num_layers; ++l)
      c.moe_layer_pattern[size_t(l)] = !dense[size_t(l)] && c.num_experts > 0 && (l + 1) % step == 0;
  } else {
    c.ffn_hidden_size = int(f.integer_in("intermediate_size", 1, L::kFfn));
  }

  // Special token ids: generation_config.json wins over config.json, as in HF generate().
  // Token ids index the embedding: each must be a row of it.
  const int64_t max_id = c.vocab_size - 1;
  c.bos_token_id = int(f.integer_in("bos_token_id", 0, max_id, -1));
  c.eos_token_ids = f.int_list("eos_token_id", 0, max_id);
  fs::path gen = cfg_path.parent_path() / "generation_config.json";
  if (fs::exists(gen)) {
    json g = parse_json_file(gen.string());
    Fields gf(g, gen.string());
    if (gf.has("bos_token_id")) c.bos_token_id = int(gf.integer_in("bos_token_id", 0, max_id));
    if (gf.has("eos_token_id")) c.eos_token_ids = gf.int_list("eos_token_id", 0, max_id);
  }
  validate_config(c, src);
  return c;
}

}  // namespace moe::model
