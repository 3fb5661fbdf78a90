#include "checkpoint/torch_dist.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "checkpoint/mcore_export.h"
#include "core/error.h"
#include "model/state_dict.h"

namespace moe::checkpoint {

namespace fs = std::filesystem;
using io::PyPtr;
using io::PyValue;

namespace {

const std::string kMeta = "torch.distributed.checkpoint.metadata.";
const std::string kShard = "torch.distributed._shard.sharded_tensor.metadata.";
const std::string kStorageInfo = "torch.distributed.checkpoint.filesystem._StorageInfo";

// Exactly the globals a PyTorch distributed-checkpoint .metadata pickle holds.
const std::vector<std::string>& metadata_classes() {
  static const std::vector<std::string> c = {kMeta + "Metadata",
                                             kMeta + "TensorStorageMetadata",
                                             kMeta + "ChunkStorageMetadata",
                                             kMeta + "BytesStorageMetadata",
                                             kMeta + "MetadataIndex",
                                             kMeta + "StorageMeta",
                                             kStorageInfo,
                                             kShard + "TensorProperties",
                                             kShard + "MEM_FORMAT_ENCODING",
                                             "torch.Size",
                                             "torch.strided",
                                             "torch.serialization._get_layout",
                                             "torch.float32",
                                             "torch.float",
                                             "torch.bfloat16",
                                             "torch.float16",
                                             "torch.half",
                                             "torch.float64",
                                             "torch.uint8",
                                             "torch.int8",
                                             "torch.int16",
                                             "torch.int32",
                                             "torch.int64",
                                             "torch.bool",
                                             "pathlib.PosixPath",
                                             "pathlib._local.PosixPath"};
  return c;
}

std::string dtype_global(DType t) {
  switch (t) {
    case DType::F32: return "torch.float32";
    case DType::BF16: return "torch.bfloat16";
    case DType::F16: return "torch.float16";
  }
  return "?";
}

bool dtype_from_global(const std::string& g, DType* t) {
  if (g == "torch.float32" || g == "torch.float") *t = DType::F32;
  else if (g == "torch.bfloat16") *t = DType::BF16;
  else if (g == "torch.float16" || g == "torch.half") *t = DType::F16;
  else return false;
  return true;
}

std::string join(const std::vector<int64_t>& xs, char sep) {
  std::string s;
  for (size_t i = 0; i < xs.size(); ++i) s += (i ? std::string(1, sep) : "") + std::to_string(xs[i]);
  return s;
}

bool homogeneous(const model::ModelConfig& c) {
  for (int l = 1; l < c.num_layers; ++l)
    if (c.is_moe_layer(l) != c.is_moe_layer(0)) return false;
  return true;
}

// "mlp.experts.linear_fc1.weight7" -> ("mlp.experts.experts.linear_fc1.weight", 7); others -1.
std::pair<std::string, int64_t> expert_rest(const std::string& rest) {
  const std::string ex = "mlp.experts.";
  if (rest.rfind(ex, 0) != 0) return {rest, -1};
  std::string r = "mlp.experts.experts." + rest.substr(ex.size());
  const size_t digits = r.find_last_not_of("0123456789") + 1;
  if (digits == r.size()) return {r, -1};  // _extra_state
  return {r.substr(0, digits), std::stoll(r.substr(digits))};
}

// Chunks tile the global shape exactly: every one inside it, no two overlapping, volumes adding
// up. Returns "" or what is wrong.
std::string tiling_error(const Shape& global, const std::vector<std::vector<int64_t>>& offs,
                         const std::vector<Shape>& sizes) {
  __int128 total = 0;
  for (size_t i = 0; i < offs.size(); ++i) {
    if (offs[i].size() != global.size() || sizes[i].size() != global.size())
      return fmt::format("chunk {} has {} dims, the tensor {}", i, offs[i].size(), global.size());
    __int128 v = 1;
    for (size_t d = 0; d < global.size(); ++d) {
      if (offs[i][d] < 0 || sizes[i][d] < 0 || offs[i][d] + sizes[i][d] > global[d])
        return fmt::format("chunk at offsets [{}] sizes [{}] lies outside the global shape {}", join(offs[i], ','),
                           join(sizes[i], ','), shape_str(global));
      v *= sizes[i][d];
    }
    total += v;
  }
  for (size_t i = 0; i < offs.size(); ++i)
    for (size_t j = i + 1; j < offs.size(); ++j) {
      bool overlap = true;
      for (size_t d = 0; d < global.size() && overlap; ++d)
        overlap = offs[i][d] < offs[j][d] + sizes[j][d] && offs[j][d] < offs[i][d] + sizes[i][d];
      if (overlap)
        return fmt::format("chunks at offsets [{}] and [{}] overlap", join(offs[i], ','), join(offs[j], ','));
    }
  __int128 want = 1;
  for (int64_t g : global) want *= g;
  if (total != want) return fmt::format("chunks cover {} of {} elements (a gap)", int64_t(total), int64_t(want));
  return "";
}

}  // namespace

CkptFormat parse_ckpt_format(const std::string& flag, const std::string& value) {
  if (value == "torch_dist") return CkptFormat::kTorchDist;
  if (value == "torch") return CkptFormat::kTorch;
  throw_input("{} '{}': expected torch_dist (Megatron's default) or torch (legacy mp_rank_* files)", flag, value);
}

fs::path checkpoint_iteration_dir(const std::string& mcore_dir) {
  char name[32];
  std::snprintf(name, sizeof name, "iter_%07lld", static_cast<long long>(read_checkpoint_tracker(mcore_dir)));
  return fs::path(mcore_dir) / name;
}

CkptFormat detect_checkpoint_format(const fs::path& iter_dir) {
  const fs::path mj = iter_dir / "metadata.json";
  if (fs::exists(mj)) {
    auto j = nlohmann::json::parse(read_text_file(mj.string()), nullptr, false);
    if (!j.is_discarded() && j.is_object()) {
      const auto b = j.find("sharded_backend");
      if (b == j.end() || !b->is_string())
        throw_input(
            "{}: no 'sharded_backend' string; a torch_dist checkpoint has {{\"sharded_backend\": \"torch_dist\"}}",
            mj.string());
      if (*b != "torch_dist")
        throw_input("{}: sharded_backend '{}' is not supported; moectl reads torch_dist (and legacy torch) checkpoints",
                    mj.string(), b->get<std::string>());
      return CkptFormat::kTorchDist;
    }
  }
  if (fs::is_directory(iter_dir))
    for (const auto& e : fs::directory_iterator(iter_dir))
      if (e.path().filename().string().rfind("mp_rank_0", 0) == 0) return CkptFormat::kTorch;
  if (fs::exists(mj)) throw_input("{}: not valid JSON (a torch_dist checkpoint's metadata.json)", mj.string());
  throw_input("{}: neither a torch_dist checkpoint (metadata.json) nor legacy mp_rank_* dirs", iter_dir.string());
}

DistKey dist_key(const model::ModelConfig& c, const std::string& canonical, const Shape& stored_shape) {
  const std::string pre = "decoder.layers.";
  if (canonical.rfind(pre, 0) != 0) return {canonical, {}, stored_shape};
  const size_t dot = canonical.find('.', pre.size());
  MOE_ASSERT(dot != std::string::npos, "canonical name {} has no layer", canonical);
  const int64_t layer = std::stoll(canonical.substr(pre.size(), dot - pre.size()));
  const auto [rest, expert] = expert_rest(canonical.substr(dot + 1));
  DistKey k;
  if (homogeneous(c)) {
    k.fqn = pre + rest, k.index = {layer}, k.global = {c.num_layers};
  } else {
    k.fqn = pre + std::to_string(layer) + "." + rest;
  }
  if (expert >= 0) k.index.push_back(expert), k.global.push_back(c.num_experts);
  k.global.insert(k.global.end(), stored_shape.begin(), stored_shape.end());
  return k;
}

namespace {
// The TENorm modules of layer `layer` (q/k layernorm, the MoE layer's pre-MLP norm; the input
// norm and a dense layer's pre-MLP norm are fused into linear_qkv / linear_fc1). TE builds whose
// RMSNorm is an ops-based module request an `_extra_state` for each; older ones request none. A
// torch_dist load ignores keys it does not request, so writing them serves both. The legacy
// format is loaded strictly by module, so only torch_dist gets them.
std::vector<std::string> te_norm_extra_states(const model::ModelConfig& c, int layer) {
  const std::string L = model::names::layer(layer);
  std::vector<std::string> e;
  if (c.qk_layernorm) {
    e.push_back(L + "self_attention.q_layernorm._extra_state");
    e.push_back(L + "self_attention.k_layernorm._extra_state");
  }
  if (c.is_moe_layer(layer)) e.push_back(L + "pre_mlp_layernorm._extra_state");
  return e;
}
}  // namespace

std::vector<std::string> dist_extra_state_keys(const model::ModelConfig& c) {
  std::vector<std::string> out;
  const bool homog = homogeneous(c);
  for (int l = 0; l < c.num_layers; ++l) {
    std::vector<std::string> names = te_extra_states(c, l);
    for (auto& n : te_norm_extra_states(c, l)) names.push_back(std::move(n));
    for (const auto& name : names) {
      const auto [rest, unused] = expert_rest(name.substr(model::names::layer(l).size()));
      const bool expert = rest.rfind("mlp.experts.experts.", 0) == 0;
      for (int64_t e = 0; e < (expert ? c.num_experts : 1); ++e) {
        std::vector<int64_t> off, shape;
        if (homog) off.push_back(l), shape.push_back(c.num_layers);
        if (expert) off.push_back(e), shape.push_back(c.num_experts);
        if (off.empty()) off.push_back(0), shape.push_back(1);
        out.push_back((homog ? "decoder.layers." : model::names::layer(l)) + rest + "/shard_" + join(off, '.') + "_" +
                      join(shape, '.'));
      }
    }
  }
  out.push_back("decoder.final_layernorm._extra_state/shard_0_1");
  return out;
}

PyPtr empty_extra_state() {
  io::TensorRef r;
  r.storage_key = "0", r.shape = {0}, r.stride = {1}, r.unsupported_storage = "torch.ByteStorage";
  auto list = PyValue::container(PyValue::kList);
  list->items.push_back(PyValue::tensor_ref(r));
  return list;
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

void collect_storages(const PyValue& v, std::set<std::string>* keys) {
  if (v.kind == PyValue::kTensor) keys->insert(v.tensor.storage_key);
  for (const auto& x : v.items) collect_storages(*x, keys);
  for (const auto& [k, x] : v.entries) collect_storages(*x, keys);
}

}  // namespace

std::vector<DistRecord> write_dist_files(const fs::path& dir, int rank, int thread_count, std::vector<DistChunk> chunks,
                                         const std::vector<DistObject>& objects,
                                         const std::function<void(uint64_t)>& progress) {
  const size_t files = size_t(std::max(thread_count, 1));
  // Largest first onto the least loaded file; objects (tiny) into the first file.
  std::vector<size_t> order(chunks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return chunks[a].nbytes() > chunks[b].nbytes(); });
  std::vector<std::vector<size_t>> of_file(files);
  std::vector<uint64_t> load(files, 0);
  for (size_t i : order) {
    const size_t f = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    of_file[f].push_back(i), load[f] += chunks[i].nbytes();
  }
  std::vector<std::vector<DistRecord>> recs(files);
  std::mutex mu;
  std::exception_ptr failure;
  auto write_file = [&](size_t f) {
    try {
      if (of_file[f].empty() && (f != 0 || objects.empty())) return;
      const std::string name = fmt::format("__{}_{}.distcp", rank, f);
      OutputFile out((dir / name).string());
      uint64_t pos = 0;
      auto place = [&](const PyValue& root, const std::function<void(io::TorchFileWriter&)>& storages) {
        const uint64_t base = (pos + 63) / 64 * 64;  // items start aligned, so tensors map aligned
        io::TorchFileWriter w(out, base, root);
        storages(w);
        const uint64_t len = w.finish();
        pos = base + len;
        return std::pair<uint64_t, uint64_t>{base, len};
      };
      if (f == 0)
        for (const auto& o : objects) {
          std::set<std::string> keys;
          collect_storages(*o.value, &keys);
          const auto [at, len] = place(*o.value, [&](io::TorchFileWriter& w) {
            for (const auto& k : keys) w.add_storage_streamed(k, 0, [](io::TorchFileWriter::Sink&) {});
          });
          DistRecord r;
          r.fqn = o.key, r.is_bytes = true, r.file = name, r.offset = at, r.length = len;
          recs[f].push_back(r);
        }
      for (size_t i : of_file[f]) {
        DistChunk& c = chunks[i];
        const auto root = PyValue::tensor_ref(io::contiguous_ref("0", c.dtype, c.sizes));
        const auto [at, len] =
            place(*root, [&](io::TorchFileWriter& w) { w.add_storage_streamed("0", c.nbytes(), c.fill); });
        DistRecord r;
        r.fqn = c.fqn, r.global = c.global, r.dtype = c.dtype, r.offsets = c.offsets, r.sizes = c.sizes;
        r.file = name, r.offset = at, r.length = len;
        recs[f].push_back(r);
        c.fill = nullptr;  // whatever it held (a converted tensor) goes now
        if (progress) {
          std::lock_guard<std::mutex> lock(mu);
          progress(r.sizes.empty() ? 0 : uint64_t(shape_numel(r.sizes)) * dtype_size(r.dtype));
        }
      }
      out.close();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> helpers;
  for (size_t f = 1; f < files; ++f) helpers.emplace_back(write_file, f);
  write_file(0);
  for (auto& t : helpers) t.join();
  if (failure) std::rethrow_exception(failure);
  std::vector<DistRecord> all;
  for (auto& r : recs) all.insert(all.end(), r.begin(), r.end());
  return all;
}

void write_dist_records(const fs::path& dir, int rank, const std::vector<DistRecord>& records) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : records)
    j.push_back({{"fqn", r.fqn},
                 {"bytes", r.is_bytes},
                 {"global", r.global},
                 {"dtype", std::string(torch_dtype_name(r.dtype))},
                 {"offsets", r.offsets},
                 {"sizes", r.sizes},
                 {"file", r.file},
                 {"offset", r.offset},
                 {"length", r.length}});
  write_file_atomic((dir / fmt::format(".moectl_dist_records_{}.json", rank)).string(), j.dump());
}

std::vector<DistRecord> read_dist_records(const fs::path& dir) {
  std::vector<DistRecord> out;
  std::vector<fs::path> done;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(".moectl_dist_records_", 0) != 0) continue;
    const auto j = nlohmann::json::parse(read_text_file(e.path().string()));
    for (const auto& x : j) {
      DistRecord r;
      r.fqn = x["fqn"], r.is_bytes = x["bytes"], r.global = x["global"].get<Shape>();
      MOE_ASSERT(parse_torch_dtype(x["dtype"].get<std::string>(), &r.dtype), "bad dtype in {}", n);
      r.offsets = x["offsets"].get<std::vector<int64_t>>(), r.sizes = x["sizes"].get<Shape>();
      r.file = x["file"], r.offset = x["offset"], r.length = x["length"];
      out.push_back(r);
    }
    done.push_back(e.path());
  }
  for (const auto& p : done) fs::remove(p);
  return out;
}

void finish_dist_checkpoint(const fs::path& dir, const std::vector<DistRecord>& records) {
  auto size = [](const std::vector<int64_t>& xs) {
    std::vector<PyPtr> items;
    items.reserve(xs.size());
    for (int64_t x : xs) items.push_back(PyValue::integer(x));
    return PyValue::object("torch.Size", {PyValue::tuple(items)}, nullptr, false);
  };
  auto dataclass = [](const std::string& cls, const std::vector<std::pair<std::string, PyPtr>>& fields) {
    auto st = PyValue::container(PyValue::kDict);
    for (const auto& [k, v] : fields) st->set(k, v);
    return PyValue::object(cls, {}, st);
  };
  // Tensors in first-seen order, their chunks in record order.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const DistRecord*>> by_fqn;
  for (const auto& r : records) {
    if (!by_fqn.count(r.fqn)) order.push_back(r.fqn);
    by_fqn[r.fqn].push_back(&r);
  }
  auto sd_meta = PyValue::container(PyValue::kDict), storage = PyValue::container(PyValue::kDict);
  auto mcore = PyValue::container(PyValue::kDict);
  for (const auto& fqn : order) {
    const auto& rs = by_fqn[fqn];
    if (rs[0]->is_bytes) {
      MOE_ASSERT(rs.size() == 1, "object {} written {} times", fqn, rs.size());
      sd_meta->entries.push_back({PyValue::str(fqn), dataclass(kMeta + "BytesStorageMetadata", {})});
      storage->entries.push_back(
          {dataclass(kMeta + "MetadataIndex",
                     {{"fqn", PyValue::str(fqn)}, {"offset", PyValue::none()}, {"index", PyValue::none()}}),
           dataclass(kStorageInfo, {{"relative_path", PyValue::str(rs[0]->file)},
                                    {"offset", PyValue::integer(int64_t(rs[0]->offset))},
                                    {"length", PyValue::integer(int64_t(rs[0]->length))}})});
      continue;
    }
    std::vector<std::vector<int64_t>> offs;
    std::vector<Shape> sizes;
    auto chunks = PyValue::container(PyValue::kList);
    for (size_t i = 0; i < rs.size(); ++i) {
      const DistRecord& r = *rs[i];
      MOE_ASSERT(r.global == rs[0]->global && r.dtype == rs[0]->dtype, "{}: ranks disagree on its shape", fqn);
      offs.push_back(r.offsets), sizes.push_back(r.sizes);
      chunks->items.push_back(
          dataclass(kMeta + "ChunkStorageMetadata", {{"offsets", size(r.offsets)}, {"sizes", size(r.sizes)}}));
      storage->entries.push_back({dataclass(kMeta + "MetadataIndex", {{"fqn", PyValue::str(fqn)},
                                                                      {"offset", size(r.offsets)},
                                                                      {"index", PyValue::integer(int64_t(i))}}),
                                  dataclass(kStorageInfo, {{"relative_path", PyValue::str(r.file)},
                                                           {"offset", PyValue::integer(int64_t(r.offset))},
                                                           {"length", PyValue::integer(int64_t(r.length))}})});
    }
    const std::string bad = tiling_error(rs[0]->global, offs, sizes);
    MOE_ASSERT(bad.empty(), "{}: the saved chunks do not tile it: {}", fqn, bad);
    auto props = PyValue::object(
        kShard + "TensorProperties", {},
        PyValue::tuple({PyValue::global(dtype_global(rs[0]->dtype)), PyValue::global("torch.strided"),
                        PyValue::boolean(false),
                        PyValue::object(kShard + "MEM_FORMAT_ENCODING", {PyValue::integer(0)}, nullptr, false),
                        PyValue::boolean(false)}));
    sd_meta->entries.push_back(
        {PyValue::str(fqn), dataclass(kMeta + "TensorStorageMetadata",
                                      {{"properties", props}, {"size", size(rs[0]->global)}, {"chunks", chunks}})});
    mcore->set(fqn, PyValue::container(PyValue::kDict));
  }
  const auto meta = dataclass(kMeta + "Metadata", {{"state_dict_metadata", sd_meta},
                                                   {"planner_data", PyValue::none()},
                                                   {"storage_data", storage},
                                                   {"mcore_data", mcore}});
  write_file_atomic((dir / ".metadata").string(), io::pickle_dumps(*meta));
  // Last: what makes the directory a torch_dist checkpoint.
  write_file_atomic((dir / "metadata.json").string(),
                    R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1})");
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

// A dataclass field (its pickled __dict__), or null.
PyPtr field(const PyPtr& obj, const char* name) {
  if (!obj || obj->kind != PyValue::kObject || !obj->state) return nullptr;
  return obj->state->get(name);
}

bool is_class(const PyPtr& v, const std::string& cls) { return v && v->kind == PyValue::kObject && v->s == cls; }

}  // namespace

DistReader::DistReader(const fs::path& iter_dir) : dir_(iter_dir) {
  const fs::path mp = iter_dir / ".metadata";
  const std::string where = mp.string();
  if (!fs::exists(mp)) throw_input("{}: missing (metadata.json names this dir a torch_dist checkpoint)", where);
  const std::string raw = read_text_file(where);
  const PyPtr root = io::pickle_loads(raw, where, metadata_classes());
  auto bad = [&](const std::string& what) {
    throw_input("{}: {} (not a PyTorch distributed-checkpoint Metadata; the checkpoint is corrupt)", where, what);
  };
  if (!is_class(root, kMeta + "Metadata")) bad("the root is not a Metadata object");
  const PyPtr sdm = field(root, "state_dict_metadata"), sd = field(root, "storage_data");
  if (!sdm || sdm->kind != PyValue::kDict || !sd || sd->kind != PyValue::kDict)
    bad("state_dict_metadata or storage_data is not a dict");
  auto ints = [&](const PyPtr& v, const std::string& what) {
    PyPtr t = v;
    if (is_class(t, "torch.Size") && t->items.size() == 1) t = t->items[0];
    if (!t || (t->kind != PyValue::kTuple && t->kind != PyValue::kList)) bad(what + " is not a torch.Size");
    std::vector<int64_t> out;
    for (const auto& x : t->items) {
      if (x->kind != PyValue::kInt) bad(what + " holds a non-integer");
      out.push_back(x->i);
    }
    return out;
  };
  // storage_data: (fqn, chunk offsets) -> (file, offset, length)
  std::map<std::pair<std::string, std::vector<int64_t>>, Item> where_of;
  std::map<std::string, size_t> file_index;
  for (const auto& [k, v] : sd->entries) {
    if (!is_class(k, kMeta + "MetadataIndex") || !is_class(v, kStorageInfo))
      bad("a storage_data entry of other classes");
    const PyPtr fqn = field(k, "fqn"), off = field(k, "offset");
    const PyPtr rel = field(v, "relative_path"), at = field(v, "offset"), len = field(v, "length");
    if (!fqn || fqn->kind != PyValue::kStr || !rel || rel->kind != PyValue::kStr || !at || at->kind != PyValue::kInt ||
        !len || len->kind != PyValue::kInt)
      bad("a storage_data entry lacks fqn, relative_path, offset or length");
    const std::string& name = rel->s;
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      throw_input("{}: storage file name '{}' for '{}' is not a file in the checkpoint dir", where, name, fqn->s);
    if (!file_index.count(name)) {
      const fs::path fp = iter_dir / name;
      if (!fs::exists(fp))
        throw_input("{}: names {} for '{}', which is missing (an incomplete copy of the checkpoint?)", where,
                    fp.string(), fqn->s);
      file_index[name] = files_.size();
      files_.push_back(MappedFile::open(fp.string()));
      file_names_.push_back(name);
    }
    const size_t f = file_index[name];
    if (at->i < 0 || len->i <= 0 || uint64_t(at->i) + uint64_t(len->i) > files_[f]->size())
      throw_input("{}: '{}' lies at bytes [{}, {}) of {}, which holds {} bytes (truncated file?)", where, fqn->s, at->i,
                  at->i + len->i, name, files_[f]->size());
    std::vector<int64_t> o;
    if (off && off->kind != PyValue::kNone) o = ints(off, "a MetadataIndex offset");
    where_of[{fqn->s, o}] = {f, uint64_t(at->i), uint64_t(len->i)};
  }
  for (const auto& [k, v] : sdm->entries) {
    if (k->kind != PyValue::kStr) bad("a state_dict_metadata key is not a string");
    const std::string& fqn = k->s;
    if (is_class(v, kMeta + "BytesStorageMetadata")) {
      auto it = where_of.find({fqn, {}});
      if (it == where_of.end()) throw_input("{}: object '{}' has no storage_data entry", where, fqn);
      objects_[fqn] = it->second;
      continue;
    }
    if (!is_class(v, kMeta + "TensorStorageMetadata")) bad("entry '" + fqn + "' is neither tensor nor bytes metadata");
    TensorMeta m;
    m.global = ints(field(v, "size"), "the size of '" + fqn + "'");
    const PyPtr props = field(v, "properties");
    const PyPtr st = props ? props->state : nullptr;
    if (!is_class(props, kShard + "TensorProperties") || !st || st->items.empty() ||
        st->items[0]->kind != PyValue::kGlobal)
      bad("'" + fqn + "' has no TensorProperties dtype");
    const bool known = dtype_from_global(st->items[0]->s, &m.dtype);
    const PyPtr chunks = field(v, "chunks");
    if (!chunks || chunks->kind != PyValue::kList) bad("'" + fqn + "' has no chunk list");
    std::vector<std::vector<int64_t>> offs;
    std::vector<Shape> sizes;
    for (const auto& c : chunks->items) {
      if (!is_class(c, kMeta + "ChunkStorageMetadata")) bad("a chunk of '" + fqn + "' is not ChunkStorageMetadata");
      Chunk ch;
      ch.offsets = ints(field(c, "offsets"), "chunk offsets of '" + fqn + "'");
      ch.sizes = ints(field(c, "sizes"), "chunk sizes of '" + fqn + "'");
      auto it = where_of.find({fqn, ch.offsets});
      if (it == where_of.end())
        throw_input("{}: chunk of '{}' at offsets [{}] has no storage_data entry", where, fqn, join(ch.offsets, ','));
      ch.file = it->second.file, ch.offset = it->second.offset, ch.length = it->second.length;
      offs.push_back(ch.offsets), sizes.push_back(ch.sizes);
      m.chunks.push_back(ch);
    }
    const std::string tiling = tiling_error(m.global, offs, sizes);
    if (!tiling.empty()) throw_input("{}: tensor '{}' {}: its chunks must tile it exactly", where, fqn, tiling);
    if (!known) continue;  // e.g. an int64 step counter: present, never read as a weight
    tensors_[fqn] = std::move(m);
  }
}

DistReader::~DistReader() = default;

const DistReader::TensorMeta& DistReader::meta(const std::string& fqn) const {
  auto it = tensors_.find(fqn);
  if (it == tensors_.end())
    throw_input("{}: no tensor '{}' (written for another model or by another tool?)", (dir_ / ".metadata").string(),
                fqn);
  return it->second;
}

const Shape& DistReader::shape(const std::string& fqn) const { return meta(fqn).global; }
DType DistReader::dtype(const std::string& fqn) const { return meta(fqn).dtype; }

const io::TorchFile& DistReader::archive(size_t file, uint64_t offset, uint64_t length) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = open_[{file, offset}];
  if (!slot)
    slot = std::make_unique<io::TorchFile>(io::TorchFile::open_range(
        files_[file], offset, length,
        fmt::format("{} bytes [{}, {})", (dir_ / file_names_[file]).string(), offset, offset + length)));
  return *slot;
}

Tensor DistReader::read(const std::string& fqn, const std::vector<int64_t>& index, DType dtype, Stored* stored) const {
  const TensorMeta& m = meta(fqn);
  const size_t k = index.size();
  MOE_ASSERT(k <= m.global.size(), "{}: index of {} dims", fqn, k);
  for (size_t d = 0; d < k; ++d)
    if (index[d] < 0 || index[d] >= m.global[d])
      throw_input("{}: tensor '{}' has {} along axis {}, index {} is outside it", (dir_ / ".metadata").string(), fqn,
                  m.global[d], d, index[d]);
  const Shape sub(m.global.begin() + std::ptrdiff_t(k), m.global.end());
  const size_t es = dtype_size(m.dtype);
  // The chunk's tensor, checked against what .metadata says of it.
  auto chunk_tensor = [&](const Chunk& c) {
    const io::TorchFile& a = archive(c.file, c.offset, c.length);
    const PyPtr& root = a.root();
    if (root->kind != PyValue::kTensor || root->tensor.shape != c.sizes || root->tensor.dtype != m.dtype ||
        !root->tensor.unsupported_storage.empty())
      throw_input("{} bytes [{}, {}): item of '{}' is not a {} tensor of shape {} as .metadata says",
                  (dir_ / file_names_[c.file]).string(), c.offset, c.offset + c.length, fqn, torch_dtype_name(m.dtype),
                  shape_str(c.sizes));
    return a.tensor(root->tensor);
  };
  auto holds_index = [&](const Chunk& c) {
    for (size_t d = 0; d < k; ++d)
      if (index[d] < c.offsets[d] || index[d] >= c.offsets[d] + c.sizes[d]) return false;
    return true;
  };
  // Element offset of `index` inside chunk c (row-major over its sizes).
  auto lead_offset = [&](const Chunk& c) {
    int64_t off = 0;
    for (size_t d = 0; d < m.global.size(); ++d) off = off * c.sizes[d] + (d < k ? index[d] - c.offsets[d] : 0);
    return off;
  };
  for (const auto& c : m.chunks) {
    if (!holds_index(c) || m.dtype != dtype) continue;
    bool whole = true;
    for (size_t d = k; d < m.global.size(); ++d) whole = whole && c.offsets[d] == 0 && c.sizes[d] == m.global[d];
    if (!whole) continue;
    const Tensor t = chunk_tensor(c);
    const auto* p = static_cast<const unsigned char*>(t.raw()) + size_t(lead_offset(c)) * es;
    if (reinterpret_cast<uintptr_t>(p) % es != 0) break;  // an unaligned item: copied below
    const MappedFile& mf = *files_[c.file];
    if (stored) *stored = {&mf, uint64_t(p - mf.data()), uint64_t(shape_numel(sub)) * es};
    return Tensor::borrow(sub, dtype, p, std::shared_ptr<const void>(files_[c.file], p));
  }
  if (stored) *stored = {};
  Tensor out(sub, dtype);
  const size_t oes = dtype_size(dtype);
  std::vector<unsigned char> tmp;
  for (const auto& c : m.chunks) {
    if (!holds_index(c)) continue;
    const Tensor t = chunk_tensor(c);
    const Shape csub(c.sizes.begin() + std::ptrdiff_t(k), c.sizes.end());
    const int64_t crow = csub.empty() ? 1 : csub.back();
    const int64_t rows = crow ? shape_numel(csub) / crow : 0;
    const auto* base = static_cast<const unsigned char*>(t.raw()) + size_t(lead_offset(c)) * es;
    for (int64_t r = 0; r < rows; ++r) {
      // destination element of this row's start: the chunk's trailing offsets plus the row's coordinates
      int64_t rem = r, dst = 0, mul = 1;
      for (size_t d = sub.size(); d-- > 0;) {
        const size_t g = k + d;
        const int64_t coord = d + 1 == sub.size() ? 0 : rem % csub[d];
        if (d + 1 != sub.size()) rem /= csub[d];
        dst += (c.offsets[g] + coord) * mul;
        mul *= sub[d];
      }
      const unsigned char* src = base + size_t(r * crow) * es;
      unsigned char* to = static_cast<unsigned char*>(out.raw()) + size_t(dst) * oes;
      if (m.dtype == dtype) {
        std::memcpy(to, src, size_t(crow) * es);
      } else {
        tmp.assign(src, src + size_t(crow) * es);  // aligned copy, then converted
        const Tensor conv = Tensor::borrow({crow}, m.dtype, tmp.data(), nullptr).to(dtype);
        std::memcpy(to, conv.raw(), conv.nbytes());
      }
    }
    files_[c.file]->drop_pages(c.offset, c.length);
  }
  return out;
}

void DistReader::release(const Stored& s) const {
  if (s.file) s.file->drop_pages(s.offset, s.size);
}

PyPtr DistReader::object(const std::string& key) const {
  auto it = objects_.find(key);
  if (it == objects_.end()) throw_input("{}: no object '{}'", (dir_ / ".metadata").string(), key);
  return archive(it->second.file, it->second.offset, it->second.length).root();
}

PyPtr DistReader::common() const {
  const fs::path p = dir_ / "common.pt";
  if (!fs::exists(p)) throw_input("{}: missing (every torch_dist checkpoint Megatron writes has it)", p.string());
  return io::TorchFile::open(p.string()).root();
}

}  // namespace moe::checkpoint
