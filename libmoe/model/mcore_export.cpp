#include "model/mcore_export.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "io/torch_file.h"
#include "model/hf_config.h"
#include "model/load_hf.h"
#include "model/state_dict.h"
#include "model/weight_map.h"

namespace moe::model {

namespace fs = std::filesystem;

namespace {

const char* kRankFile = "mp_rank_00/model_optim_rng.pt";

int64_t padded_vocab(int64_t v, int multiple) { return (v + multiple - 1) / multiple * multiple; }

bool is_vocab_tensor(const std::string& name) { return name == names::kEmbedding || name == names::kOutput; }

// Output directory handling shared by both directions: refuse a non-empty target unless
// --overwrite, build in "<out>.tmp", rename at the end.
fs::path begin_output(const std::string& out_dir, bool overwrite) {
  const fs::path out(out_dir);
  if (fs::exists(out) && !fs::is_empty(out) && !overwrite)
    throw_input("--output_dir {} exists and is not empty (pass --overwrite true to replace it)", out_dir);
  const fs::path tmp = out.string() + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  return tmp;
}

void finish_output(const fs::path& tmp, const std::string& out_dir) {
  fs::remove_all(out_dir);
  fs::rename(tmp, out_dir);
}

// config.json (with torch_dtype set), generation_config.json and tokenizer files travel along.
void copy_side_files(const fs::path& from, const fs::path& to, DType dtype) {
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string n = e.path().filename().string();
    const bool side = n == "generation_config.json" || n.rfind("tokenizer", 0) == 0 || n == "special_tokens_map.json" ||
                      n == "vocab.json" || n == "merges.txt" || n == "added_tokens.json";
    if (e.is_regular_file() && side) fs::copy_file(e.path(), to / n, fs::copy_options::overwrite_existing);
  }
  auto cfg = nlohmann::json::parse(read_text_file((from / "config.json").string()));
  cfg["torch_dtype"] = std::string(torch_dtype_name(dtype));
  write_file_atomic((to / "config.json").string(), cfg.dump(2) + "\n");
}

// Megatron's argument namespace for this model (what Megatron-LM reads back from a checkpoint).
io::PyPtr megatron_args(const ModelConfig& c, const ExportOptions& opt) {
  using io::PyValue;
  auto a = PyValue::container(PyValue::kNamespace);
  auto i = [&](const char* k, int64_t v) { a->set(k, PyValue::integer(v)); };
  auto b = [&](const char* k, bool v) { a->set(k, PyValue::boolean(v)); };
  auto f = [&](const char* k, double v) { a->set(k, PyValue::floating(v)); };
  i("num_layers", c.num_layers), i("hidden_size", c.hidden_size), i("ffn_hidden_size", c.ffn_hidden_size);
  i("num_attention_heads", c.num_attention_heads), i("num_query_groups", c.num_query_groups);
  b("group_query_attention", c.num_query_groups != c.num_attention_heads), i("kv_channels", c.kv_channels);
  i("padded_vocab_size", padded_vocab(c.vocab_size, opt.make_vocab_size_divisible_by));
  i("make_vocab_size_divisible_by", opt.make_vocab_size_divisible_by);
  i("max_position_embeddings", c.max_position_embeddings), f("rotary_base", c.rotary_base);
  f("norm_epsilon", c.norm_epsilon), a->set("normalization", PyValue::str("RMSNorm"));
  a->set("position_embedding_type", PyValue::str("rope")), b("swiglu", true), b("add_bias_linear", false);
  b("add_qkv_bias", c.add_qkv_bias), b("qk_layernorm", c.qk_layernorm);
  b("untie_embeddings_and_output_weights", c.untie_embeddings_and_output_weights);
  i("tensor_model_parallel_size", 1), i("pipeline_model_parallel_size", 1), i("expert_model_parallel_size", 1);
  i("expert_tensor_parallel_size", 1), i("virtual_pipeline_model_parallel_size", 0);
  a->set("num_experts", c.num_experts ? PyValue::integer(c.num_experts) : PyValue::none());
  i("moe_router_topk", c.moe_router_topk), i("moe_ffn_hidden_size", c.moe_ffn_hidden_size);
  b("moe_router_pre_softmax", c.moe_router_pre_softmax), b("moe_grouped_gemm", true);
  i("moe_shared_expert_intermediate_size", c.moe_shared_expert_intermediate_size);
  b("bf16", opt.dtype == DType::BF16), b("fp16", opt.dtype == DType::F16);
  a->set("ckpt_format", PyValue::str("torch"));
  return a;
}

// The `_extra_state` entries a TransformerEngine-spec GPTModel has (None: no FP8 state).
std::vector<std::string> extra_states(const ModelConfig& c, int layer) {
  const std::string L = names::layer(layer);
  std::vector<std::string> e = {L + "self_attention.core_attention._extra_state",
                                L + "self_attention.linear_proj._extra_state",
                                L + "self_attention.linear_qkv._extra_state"};
  if (c.is_moe_layer(layer)) {
    e.push_back(L + "mlp.experts.linear_fc1._extra_state");
    e.push_back(L + "mlp.experts.linear_fc2._extra_state");
    if (c.moe_shared_expert_intermediate_size > 0) {
      e.push_back(L + "mlp.shared_experts.linear_fc1._extra_state");
      e.push_back(L + "mlp.shared_experts.linear_fc2._extra_state");
    }
  } else {
    e.push_back(L + "mlp.linear_fc1._extra_state");
    e.push_back(L + "mlp.linear_fc2._extra_state");
  }
  return e;
}

}  // namespace

void export_hf_to_mcore(const std::string& hf_dir, const std::string& out_dir, const ExportOptions& opt) {
  LoadedModel m = load_hf_model(hf_dir);
  const ModelConfig& c = m.config;
  const fs::path tmp = begin_output(out_dir, opt.overwrite);
  const int64_t Vp = padded_vocab(c.vocab_size, opt.make_vocab_size_divisible_by);

  auto model = io::PyValue::container(io::PyValue::kOrderedDict);
  std::vector<std::pair<std::string, Tensor>> storages;
  auto add = [&](const std::string& name, Tensor t) {
    if (t.dtype() != opt.dtype) t = t.to(opt.dtype);
    if (is_vocab_tensor(name) && Vp != t.dim(0)) {  // pad with zero rows, as Megatron's vocab padding
      Tensor p({Vp, t.dim(1)}, opt.dtype);
      std::memcpy(p.raw(), t.raw(), t.nbytes());
      t = p;
    }
    const io::TensorRef r = io::contiguous_ref(std::to_string(storages.size()), t);
    model->set(name, io::PyValue::tensor_ref(r));
    storages.push_back({r.storage_key, t});
  };
  const WeightMap map = WeightMap::for_config(c);
  int layer = -1;
  for (const auto& rule : map.rules()) {
    // Emit each layer's _extra_state entries after its tensors (key order does not matter to torch).
    const auto pos = rule.mcore.find("decoder.layers.");
    const int this_layer = pos == 0 ? std::stoi(rule.mcore.substr(15)) : -1;
    if (this_layer != layer && layer >= 0)
      for (const auto& e : extra_states(c, layer)) model->set(e, io::PyValue::none());
    layer = this_layer;
    add(rule.mcore, m.state.at(rule.mcore));
  }
  if (c.untie_embeddings_and_output_weights) model->set("output_layer._extra_state", io::PyValue::none());

  auto root = io::PyValue::container(io::PyValue::kDict);
  root->set("args", megatron_args(c, opt));
  root->set("checkpoint_version", io::PyValue::floating(3.0));
  root->set("iteration", io::PyValue::integer(1));
  root->set("model", model);
  fs::create_directories(tmp / "iter_0000001" / "mp_rank_00");
  io::write_torch_file((tmp / "iter_0000001" / kRankFile).string(), *root, storages);
  copy_side_files(hf_dir, tmp, opt.dtype);
  nlohmann::json args{{"model_type", c.model_type}, {"torch_dtype", torch_dtype_name(opt.dtype)},
                      {"tensor_model_parallel_size", 1}, {"pipeline_model_parallel_size", 1},
                      {"expert_model_parallel_size", 1}, {"padded_vocab_size", Vp},
                      {"make_vocab_size_divisible_by", opt.make_vocab_size_divisible_by}, {"train_type", "full"}};
  write_file_atomic((tmp / "args.json").string(), args.dump(2) + "\n");
  write_file_atomic((tmp / "latest_checkpointed_iteration.txt").string(), "1");  // last: marks it complete
  finish_output(tmp, out_dir);
  log().info("wrote {} tensors to {}", storages.size(), out_dir);
}

void export_mcore_to_hf(const std::string& mcore_dir, const std::string& out_dir, const ExportOptions& opt) {
  const fs::path dir(mcore_dir);
  const fs::path tracker = dir / "latest_checkpointed_iteration.txt";
  if (!fs::exists(tracker))
    throw_input("{}: no latest_checkpointed_iteration.txt (not a Megatron checkpoint directory, or an unfinished one)",
                mcore_dir);
  std::string it = read_text_file(tracker.string());
  while (!it.empty() && std::isspace(static_cast<unsigned char>(it.back()))) it.pop_back();
  int64_t iteration = 0;
  try {
    iteration = std::stoll(it);
  } catch (...) {
    throw_input("{}: expected an iteration number, got '{}'", tracker.string(), it);
  }
  char iter_name[32];
  std::snprintf(iter_name, sizeof iter_name, "iter_%07lld", static_cast<long long>(iteration));
  const fs::path rank = dir / iter_name / kRankFile;
  if (!fs::exists(rank))
    throw_input("{}: missing; only the single-rank layout (mp_rank_00) is read so far", rank.string());
  const ModelConfig c = load_hf_config(mcore_dir);
  auto f = io::TorchFile::open(rank.string());
  auto model = f.root()->get("model");
  if (!model) throw_input("{}: no 'model' entry", rank.string());
  StateDict state;
  for (const auto& [k, v] : model->entries)
    if (k->kind == io::PyValue::kStr && v->kind == io::PyValue::kTensor) state[k->s] = f.tensor(v->tensor);
  const fs::path tmp = begin_output(out_dir, opt.overwrite);
  const WeightMap map = WeightMap::for_config(c);
  StateDict hf_state;
  for (const auto& rule : map.rules()) {
    auto found = state.find(rule.mcore);
    if (found == state.end()) throw_input("{}: tensor '{}' is missing", rank.string(), rule.mcore);
    Tensor t = found->second;
    if (is_vocab_tensor(rule.mcore)) {
      if (t.dim(0) < c.vocab_size)
        throw_input("{}: '{}' has {} rows, fewer than vocab_size {}", rank.string(), rule.mcore, t.dim(0), c.vocab_size);
      t = t.slice_rows(0, c.vocab_size);  // drop Megatron's padding rows
    }
    if (t.shape() != rule.shape)
      throw_input("{}: tensor '{}' has shape {} but config.json implies {}", rank.string(), rule.mcore,
                  shape_str(t.shape()), shape_str(rule.shape));
    hf_state[rule.mcore] = t.dtype() == opt.dtype ? t : t.to(opt.dtype);
  }
  save_hf_weights(c, hf_state, tmp.string());
  copy_side_files(dir, tmp, opt.dtype);
  finish_output(tmp, out_dir);
}

}  // namespace moe::model
