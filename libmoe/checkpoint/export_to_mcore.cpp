#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "checkpoint/load_hf.h"
#include "checkpoint/mcore_export.h"
#include "checkpoint/mcore_reader.h"
#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "core/output_dir.h"
#include "io/safetensors.h"
#include "io/torch_file.h"
#include "model/hf_config.h"
#include "model/state_dict.h"
#include "model/weight_map.h"

namespace moe::checkpoint {

namespace fs = std::filesystem;
using model::Fuse;
using model::load_hf_config;
using model::ModelConfig;
using model::ShardSpec;
using model::StateDict;
using model::WeightMap;
using model::WeightRule;
namespace names = model::names;

// config.json (with torch_dtype set), generation_config.json and tokenizer files travel along.
void copy_side_files(const fs::path& from, const fs::path& to, DType dtype, const ModelConfig& c) {
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string n = e.path().filename().string();
    const bool side = n == "generation_config.json" || n.rfind("tokenizer", 0) == 0 || n == "special_tokens_map.json" ||
                      n == "vocab.json" || n == "merges.txt" || n == "added_tokens.json";
    if (e.is_regular_file() && side) fs::copy_file(e.path(), to / n, fs::copy_options::overwrite_existing);
  }
  auto cfg = nlohmann::json::parse(read_text_file((from / "config.json").string()));
  cfg["torch_dtype"] = std::string(torch_dtype_name(dtype));
  if (c.moe_router_enable_expert_bias) cfg["moe_router_enable_expert_bias"] = true;
  write_file_atomic((to / "config.json").string(), cfg.dump(2) + "\n");
}

// Megatron's argument namespace for this model (what Megatron-LM reads back from a checkpoint).
io::PyPtr megatron_args(const ModelConfig& c, const ExportOptions& opt, const ShardSpec& spec) {
  using io::PyValue;
  auto a = PyValue::container(PyValue::kNamespace);
  auto i = [&](const char* k, int64_t v) { a->set(k, PyValue::integer(v)); };
  auto b = [&](const char* k, bool v) { a->set(k, PyValue::boolean(v)); };
  auto f = [&](const char* k, double v) { a->set(k, PyValue::floating(v)); };
  i("num_layers", c.num_layers), i("hidden_size", c.hidden_size), i("ffn_hidden_size", c.ffn_hidden_size);
  i("num_attention_heads", c.num_attention_heads), i("num_query_groups", c.num_query_groups);
  b("group_query_attention", c.num_query_groups != c.num_attention_heads), i("kv_channels", c.kv_channels);
  i("padded_vocab_size", spec.padded_vocab());
  i("make_vocab_size_divisible_by", opt.make_vocab_size_divisible_by);
  i("max_position_embeddings", c.max_position_embeddings), f("rotary_base", c.rotary_base);
  f("norm_epsilon", c.norm_epsilon), a->set("normalization", PyValue::str("RMSNorm"));
  a->set("position_embedding_type", PyValue::str("rope")), b("swiglu", true), b("add_bias_linear", false);
  b("add_qkv_bias", c.add_qkv_bias), b("qk_layernorm", c.qk_layernorm);
  b("untie_embeddings_and_output_weights", c.untie_embeddings_and_output_weights);
  const dist::ParallelLayout& p = spec.layout();
  i("tensor_model_parallel_size", p.tp), i("pipeline_model_parallel_size", p.pp), i("expert_model_parallel_size", p.ep);
  i("expert_tensor_parallel_size", p.etp);
  b("sequence_parallel", p.tp > 1 && p.ep > 1);  // Megatron requires it when TP and EP are both on
  a->set("num_experts", c.num_experts ? PyValue::integer(c.num_experts) : PyValue::none());
  i("moe_router_topk", c.moe_router_topk), i("moe_ffn_hidden_size", c.moe_ffn_hidden_size);
  b("moe_router_pre_softmax", c.moe_router_pre_softmax), b("moe_grouped_gemm", true);
  b("moe_router_enable_expert_bias", c.moe_router_enable_expert_bias);
  i("moe_shared_expert_intermediate_size", c.moe_shared_expert_intermediate_size);
  b("bf16", opt.dtype == DType::BF16), b("fp16", opt.dtype == DType::F16);  // unset: fp32
  a->set("ckpt_format", PyValue::str(opt.format == CkptFormat::kTorchDist ? "torch_dist" : "torch"));
  b("no_save_optim", true), b("no_save_rng", true);  // converted weights: Megatron requests neither
  return a;
}

// The `_extra_state` entries a TransformerEngine-spec GPTModel has (None: no FP8 state).
std::vector<std::string> te_extra_states(const ModelConfig& c, int layer) {
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

namespace {

// Where the canonical tensors of an export come from: an HF dir, or a Megatron dir of either
// format. Bytes that lie as they are in a mapped file are copied file to file.
class Source {
 public:
  explicit Source(const std::string& dir) {
    if (fs::exists(fs::path(dir) / "latest_checkpointed_iteration.txt")) {
      mc_ = std::make_unique<McoreReader>(dir);
      c_ = mc_->config();
      if (!mc_->dist()) mc_->open_all();
      const WeightMap map = WeightMap::for_config(c_);
      for (const auto& rule : map.rules()) mc_->check(rule);  // every key, before anything is written
    } else {
      c_ = load_hf_config(dir);
      hf_ = std::make_unique<HfWeights>(dir, c_);
    }
  }
  const ModelConfig& config() const { return c_; }
  // The canonical tensor (vocabulary unpadded), in the dtype it is stored in where it can be.
  Tensor canonical(const WeightRule& rule) const {
    if (hf_) return hf_->canonical(rule);
    const DType dt = rule.buffer ? DType::F32 : c_.params_dtype;
    if (mc_->dist()) {
      const DType stored = mc_->dist()->dtype(mc_->dist_shape_checked(rule).fqn);
      DistReader::Stored st;
      Tensor t = mc_->dist_tensor(rule, stored, &st);
      if (st.file) {
        std::lock_guard<std::mutex> lock(mu_);
        stored_[rule.mcore] = st;
      }
      return t;
    }
    auto get = [&](int tp, int pp, int ep, const std::string& local) {
      const auto& rk = mc_->rank(tp, pp, ep);
      return rk.file->tensor(mc_->ref(rk, local));
    };
    Tensor t = mc_->spec().merge(rule.mcore, mc_->stored_shape(rule), dt, get);
    return is_vocab_tensor(rule.mcore) ? t.slice_rows(0, c_.vocab_size) : t;
  }
  void release(const WeightRule& rule) const {
    if (hf_) return hf_->release(rule);
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = stored_.find(rule.mcore); it != stored_.end()) mc_->dist()->release(it->second), stored_.erase(it);
  }
  bool stored_in(const WeightRule& rule, const Tensor& t, const MappedFile** file, uint64_t* offset) const {
    if (hf_) return hf_->stored_in(rule, t, file, offset);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = stored_.find(rule.mcore);
    if (it == stored_.end()) return false;
    const auto* p = static_cast<const unsigned char*>(t.raw());
    const unsigned char* b = it->second.file->data() + it->second.offset;
    if (p < b || p + t.nbytes() > b + it->second.size) return false;
    *file = it->second.file, *offset = uint64_t(p - it->second.file->data());
    return true;
  }
  bool stored_parts(const WeightRule& rule, DType dtype, std::vector<HfWeights::StoredPart>* parts) const {
    return hf_ && hf_->stored_parts(rule, dtype, parts);
  }

 private:
  ModelConfig c_;
  std::unique_ptr<HfWeights> hf_;
  std::unique_ptr<McoreReader> mc_;
  mutable std::mutex mu_;
  mutable std::map<std::string, DistReader::Stored> stored_;
};

}  // namespace

void export_hf_to_mcore(const std::string& hf_dir, const std::string& out_dir, const ExportOptions& opt_in) {
  resolve_output_dir("--output_dir", out_dir, {hf_dir});  // refused before anything is read
  // Canonical tensors are built one at a time from the mapped input files: memory stays around
  // one tensor (and its slice), whatever the model size.
  const Source weights(hf_dir);
  const ModelConfig c = weights.config();
  ExportOptions opt = opt_in;
  opt.dtype = opt.dtype.value_or(c.params_dtype);
  const ShardSpec spec(c, opt.layout, opt.make_vocab_size_divisible_by);
  const dist::ParallelLayout& p = spec.layout();
  const auto staged = begin_output(hf_dir, out_dir, opt.overwrite);
  const fs::path tmp = staged->path();
  const int64_t Vp = spec.padded_vocab();

  const WeightMap map = WeightMap::for_config(c);
  std::map<std::string, const WeightRule*> rule_of;
  for (const auto& rule : map.rules()) rule_of[rule.mcore] = &rule;
  // Buffers (the expert bias) stay fp32 in every checkpoint dtype.
  auto dtype_of = [&](const std::string& src) { return rule_of.at(src)->buffer ? DType::F32 : *opt.dtype; };
  auto full_tensor = [&](const std::string& name, Tensor t) {
    if (t.dtype() != dtype_of(name)) t = t.to(dtype_of(name));
    if (is_vocab_tensor(name) && Vp != t.dim(0)) {  // zero rows up to Megatron's padded vocabulary
      Tensor padded({Vp, t.dim(1)}, *opt.dtype);
      std::memcpy(padded.raw(), t.raw(), t.nbytes());
      t = padded;
    }
    return t;
  };
  auto full_shape = [&](const std::string& src) {
    Shape s = rule_of.at(src)->shape;
    if (is_vocab_tensor(src)) s[0] = Vp;
    return s;
  };
  auto write_side_files = [&] {
    copy_side_files(hf_dir, tmp, *opt.dtype, c);
    nlohmann::json aj{{"model_type", c.model_type},
                      {"torch_dtype", torch_dtype_name(*opt.dtype)},
                      {"ckpt_format", opt.format == CkptFormat::kTorchDist ? "torch_dist" : "torch"},
                      {"tensor_model_parallel_size", p.tp},
                      {"pipeline_model_parallel_size", p.pp},
                      {"expert_model_parallel_size", p.ep},
                      {"expert_tensor_parallel_size", p.etp},
                      {"padded_vocab_size", Vp},
                      {"make_vocab_size_divisible_by", opt.make_vocab_size_divisible_by},
                      {"train_type", "full"}};
    write_file_atomic((tmp / "args.json").string(), aj.dump(2) + "\n");
    write_file_atomic((tmp / "latest_checkpointed_iteration.txt").string(), "1");  // last: marks it complete
    staged->commit();
  };

  if (opt.format == CkptFormat::kTorchDist) {
    // One chunk per sharded key, the whole global tensor: its canonical tensors (layers, then
    // experts, in index order) streamed one after another, each copied file to file when its
    // bytes are stored as they are.
    const fs::path it_dir = tmp / "iter_0000001";
    fs::create_directories(it_dir);
    std::vector<std::string> order;
    std::map<std::string, std::vector<std::pair<std::vector<int64_t>, const WeightRule*>>> members;
    std::map<std::string, Shape> global;
    for (const auto& rule : map.rules()) {
      const DistKey k = dist_key(c, rule.mcore, full_shape(rule.mcore));
      if (!members.count(k.fqn)) order.push_back(k.fqn), global[k.fqn] = k.global;
      members[k.fqn].push_back({k.index, &rule});
    }
    uint64_t bytes_total = 0, bytes_done = 0;
    for (const auto& rule : map.rules())
      bytes_total += uint64_t(shape_numel(full_shape(rule.mcore))) * dtype_size(dtype_of(rule.mcore));
    int tensors_done = 0;
    std::vector<DistChunk> chunks;
    for (const auto& fqn : order) {
      auto& ms = members[fqn];
      std::sort(ms.begin(), ms.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      const Shape& g = global[fqn];
      MOE_ASSERT(shape_numel(Shape(g.begin(), g.begin() + std::ptrdiff_t(ms[0].first.size()))) == int64_t(ms.size()),
                 "{}: {} tensors do not fill its leading axes", fqn, ms.size());
      DistChunk ch;
      ch.fqn = fqn, ch.global = g, ch.dtype = dtype_of(ms[0].second->mcore);
      ch.offsets.assign(g.size(), 0), ch.sizes = g;
      const auto* list = &ms;
      ch.fill = [&, list](io::TorchFileWriter::Sink& sink) {
        std::vector<HfWeights::StoredPart> parts;
        for (const auto& [index, rp] : *list) {
          const WeightRule& rule = *rp;
          const uint64_t n = uint64_t(shape_numel(full_shape(rule.mcore))) * dtype_size(dtype_of(rule.mcore));
          if (rule.fuse != Fuse::kCopy && weights.stored_parts(rule, *opt.dtype, &parts)) {
            std::vector<io::TorchFileWriter::FileBytes> runs;
            for (const auto& r : map.mcore_runs(rule, dtype_size(*opt.dtype)))
              runs.push_back({parts[r.part].file, parts[r.part].offset + r.offset, r.size});
            sink.copy(runs);
          } else {
            const Tensor t = full_tensor(rule.mcore, weights.canonical(rule));
            MOE_ASSERT(t.nbytes() == n, "{}: {} bytes, planned {}", rule.mcore, t.nbytes(), n);
            const MappedFile* in = nullptr;
            uint64_t at = 0;
            if (weights.stored_in(rule, t, &in, &at)) sink.copy({{in, at, size_t(n)}});
            else sink.write(t.raw(), t.nbytes());
            weights.release(rule);
          }
        }
      };
      chunks.push_back(std::move(ch));
    }
    std::vector<DistObject> objects;
    const auto extra = empty_extra_state();
    for (const auto& k : dist_extra_state_keys(c)) objects.push_back({k, extra});
    const auto records = write_dist_files(it_dir, 0, opt.thread_count, std::move(chunks), objects, [&](uint64_t b) {
      bytes_done += b, ++tensors_done;
      if (opt.progress) opt.progress(bytes_done, bytes_total, tensors_done, int(order.size()));
    });
    auto common = io::PyValue::container(io::PyValue::kDict);
    common->set("args", megatron_args(c, opt, spec));
    common->set("checkpoint_version", io::PyValue::floating(3.0));
    common->set("iteration", io::PyValue::integer(1));
    common->set("num_floating_point_operations_so_far", io::PyValue::integer(0));
    auto content = io::PyValue::container(io::PyValue::kDict);
    content->set("singleton_local_shards", io::PyValue::boolean(false));
    content->set("chained_optim_avoid_prefix", io::PyValue::boolean(true));
    common->set("content_metadata", content);
    io::write_torch_file((it_dir / "common.pt").string(), *common, {});
    finish_dist_checkpoint(it_dir, records);
    write_side_files();
    log().info("wrote {} sharded tensors and {} objects (torch_dist) to {}", order.size(), objects.size(), out_dir);
    return;
  }

  // (canonical name, where its data comes from): every rule, plus, with tied embeddings over
  // several stages, the last stage's own copy of the word embeddings as output_layer.weight.
  std::vector<std::pair<std::string, std::string>> sources;
  for (const auto& rule : map.rules()) sources.push_back({rule.mcore, rule.mcore});
  if (!c.untie_embeddings_and_output_weights && p.pp > 1) sources.push_back({names::kOutput, names::kEmbedding});

  const int per_stage = c.num_layers / p.pp;
  const auto args = megatron_args(c, opt, spec);
  int files = 0;
  // Totals for the progress callback: every slice of every rank.
  uint64_t bytes_total = 0, bytes_done = 0;
  int tensors_total = 0, tensors_done = 0;
  const auto rank_files = spec.rank_files();
  for (const auto& [tp, pp, ep] : rank_files)
    for (const auto& [name, src] : sources) {
      std::string local;
      Shape shape;
      if (!spec.local_part(name, full_shape(src), tp, pp, ep, &local, &shape)) continue;
      bytes_total += uint64_t(shape_numel(shape)) * dtype_size(dtype_of(src)), ++tensors_total;
    }
  // One rank file at a time, one tensor at a time: the pickle names every storage up front
  // (shapes only), then each slice is cut from the mapped input, written and dropped.
  for (const auto& [tp, pp, ep] : rank_files) {
    auto model = io::PyValue::container(io::PyValue::kOrderedDict);
    struct Held {
      std::string name, src;  // canonical name, and the rule its data comes from
      bool whole;             // this rank holds the whole canonical tensor, unpadded
    };
    std::vector<Held> held;  // in storage order
    for (const auto& [name, src] : sources) {
      std::string local;
      Shape shape;
      if (!spec.local_part(name, full_shape(src), tp, pp, ep, &local, &shape)) continue;
      const std::string key = std::to_string(held.size());
      model->set(local, io::PyValue::tensor_ref(io::contiguous_ref(key, dtype_of(src), shape)));
      held.push_back({name, src, shape == rule_of.at(src)->shape});
    }
    for (int l = 0; l < per_stage; ++l) {
      const int global = pp * per_stage + l;
      for (auto e : te_extra_states(c, global)) {
        e.replace(0, names::layer(global).size(), names::layer(l));  // layer numbers are local to the stage
        model->set(e, io::PyValue::none());
      }
    }
    if (pp == p.pp - 1 && (c.untie_embeddings_and_output_weights || p.pp > 1))
      model->set("output_layer._extra_state", io::PyValue::none());
    auto root = io::PyValue::container(io::PyValue::kDict);
    root->set("args", args);
    root->set("checkpoint_version", io::PyValue::floating(3.0));
    root->set("iteration", io::PyValue::integer(1));
    root->set("model", model);
    const fs::path rank_dir = tmp / "iter_0000001" / spec.rank_dir(tp, pp, ep);
    fs::create_directories(rank_dir);
    io::TorchFileWriter w((rank_dir / "model_optim_rng.pt").string(), *root);
    std::vector<HfWeights::StoredPart> parts;
    for (size_t i = 0; i < held.size(); ++i) {
      const auto& [name, src, whole] = held[i];
      const WeightRule& rule = *rule_of.at(src);
      // A fused tensor this rank holds whole, from parts stored in the output dtype: its bytes
      // are runs of the stored parts' bytes (WeightMap::mcore_runs), copied file to file
      // without assembling it in memory.
      if (whole && rule.fuse != Fuse::kCopy && weights.stored_parts(rule, *opt.dtype, &parts)) {
        std::vector<io::TorchFileWriter::FileBytes> runs;
        uint64_t bytes = 0;
        for (const auto& r : map.mcore_runs(rule, dtype_size(*opt.dtype))) {
          MOE_ASSERT(r.offset + r.size <= parts[r.part].size, "{}: run past its part", name);
          runs.push_back({parts[r.part].file, parts[r.part].offset + r.offset, r.size});
          bytes += r.size;
        }
        MOE_ASSERT(bytes == uint64_t(shape_numel(rule.shape)) * dtype_size(*opt.dtype), "{}: runs cover {} bytes", name,
                   bytes);
        w.add_storage_from(std::to_string(i), runs);
        bytes_done += bytes, ++tensors_done;
        if (opt.progress) opt.progress(bytes_done, bytes_total, tensors_done, tensors_total);
        continue;
      }
      const auto pieces = spec.shard(name, full_tensor(src, weights.canonical(rule)), tp, pp, ep);
      MOE_ASSERT(pieces.size() == 1, "{} expected one piece", name);
      const MappedFile* in = nullptr;
      uint64_t at = 0;
      if (weights.stored_in(rule, pieces[0].tensor, &in, &at))  // bytes as stored: copied file to file
        w.add_storage_from(std::to_string(i), *in, at, pieces[0].tensor.nbytes());
      else w.add_storage(std::to_string(i), pieces[0].tensor);
      weights.release(rule);
      bytes_done += pieces[0].tensor.nbytes(), ++tensors_done;
      if (opt.progress) opt.progress(bytes_done, bytes_total, tensors_done, tensors_total);
    }
    w.finish();
    ++files;
  }
  write_side_files();
  log().info("wrote {} rank files to {}", files, out_dir);
}

}  // namespace moe::checkpoint
