#include <atomic>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "checkpoint/mcore_export.h"
#include "checkpoint/mcore_reader.h"
#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "io/safetensors.h"

namespace moe::checkpoint {

namespace fs = std::filesystem;
using model::ModelConfig;
using model::ShardSpec;
using model::StateDict;
using model::WeightMap;
using model::WeightRule;
namespace names = model::names;

// Streams: the HF shards are planned from shapes alone (the names, order and bytes that
// save_hf_weights writes), then each canonical tensor is merged from its rank files, split into
// its HF tensors and written at its planned offset, by two workers taking rules in turn. Bytes
// stored whole in the output dtype are copied file to file by the kernel; the rest pass through
// one merged tensor per worker, so memory stays around two tensors whatever the model size.
void export_mcore_to_hf(const std::string& mcore_dir, const std::string& out_dir, const ExportOptions& opt_in) {
  resolve_output_dir("--output_dir", out_dir, {mcore_dir});  // refused before anything is read
  McoreReader r(mcore_dir);
  const ModelConfig& c = r.config();
  ExportOptions opt = opt_in;
  opt.dtype = opt.dtype.value_or(c.params_dtype);
  const ShardSpec& spec = r.spec();
  const WeightMap map = WeightMap::for_config(c);
  const auto& rules = map.rules();
  if (!r.dist()) r.open_all();
  for (const auto& rule : rules) r.check(rule);  // every piece, before anything is written

  std::vector<io::TensorDesc> descs;
  std::vector<uint64_t> sizes;
  std::vector<size_t> first_desc;  // rule -> index of its first HF tensor
  for (const auto& rule : rules) {
    first_desc.push_back(descs.size());
    for (size_t i = 0; i < rule.hf.size(); ++i) {
      descs.push_back({rule.hf[i], rule.buffer ? DType::F32 : *opt.dtype, rule.hf_shapes[i]});
      sizes.push_back(descs.back().nbytes());
    }
  }
  const io::SafetensorsShardPlan plan = io::plan_safetensors_shards(sizes, opt.max_shard_bytes);
  const auto staged = begin_output(mcore_dir, out_dir, opt.overwrite);
  const fs::path tmp = staged->path();
  std::vector<std::unique_ptr<OutputFile>> outs;
  std::vector<std::pair<size_t, uint64_t>> at(descs.size());  // HF tensor -> (output file, offset)
  std::vector<std::pair<std::string, std::vector<std::string>>> index;
  for (size_t f = 0; f < plan.files.size(); ++f) {
    std::vector<io::TensorDesc> in_file;
    for (size_t d : plan.members[f]) in_file.push_back(descs[d]);
    const fs::path path = tmp / plan.files[f];
    const std::string header = io::safetensors_header_bytes(path.string(), in_file);
    outs.push_back(std::make_unique<OutputFile>(path.string()));
    outs.back()->write_at(0, header.data(), header.size());
    uint64_t off = header.size();
    index.push_back({plan.files[f], {}});
    for (size_t d : plan.members[f]) at[d] = {f, off}, off += sizes[d], index.back().second.push_back(descs[d].name);
  }

  std::mutex mu;
  uint64_t bytes_done = 0;
  int tensors_done = 0;
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  auto work = [&] {
    try {
      for (size_t k; (k = next.fetch_add(1)) < rules.size();) {
        const WeightRule& rule = rules[k];
        struct Piece {
          const MappedFile* file;
          std::pair<size_t, size_t> range;  // offset, size
        };
        std::vector<Piece> pieces;
        auto get = [&](int tp, int pp, int ep, const std::string& local) {
          const auto& rk = r.rank(tp, pp, ep);
          const io::TensorRef& ref = r.ref(rk, local);
          pieces.push_back({&rk.file->mapped(), rk.file->locate(ref)});
          return rk.file->tensor(ref);
        };
        const DType want = rule.buffer ? DType::F32 : *opt.dtype;
        Tensor m;
        if (r.dist()) {
          DistReader::Stored st;
          m = r.dist_tensor(rule, want, &st);
          if (st.file) pieces.push_back({st.file, {size_t(st.offset), size_t(st.size)}});
        } else {
          m = spec.merge(rule.mcore, r.stored_shape(rule), want, get);
          if (is_vocab_tensor(rule.mcore)) m = m.slice_rows(0, c.vocab_size);  // drop Megatron's padding rows
        }
        const std::vector<Tensor> hf = map.to_hf(rule, m);
        uint64_t bytes = 0;
        for (size_t i = 0; i < hf.size(); ++i) {
          const size_t d = first_desc[k] + i;
          MOE_ASSERT(hf[i].nbytes() == sizes[d], "{}: {} bytes, planned {}", rule.hf[i], hf[i].nbytes(), sizes[d]);
          const auto* p = static_cast<const unsigned char*>(hf[i].raw());
          const Piece* stored = nullptr;  // the rank file it lies in, when these are its stored bytes
          for (const auto& pc : pieces) {
            const unsigned char* b = pc.file->data() + pc.range.first;
            if (p >= b && p + sizes[d] <= b + pc.range.second) stored = &pc;
          }
          OutputFile& out = *outs[at[d].first];
          if (stored) out.copy_at(at[d].second, *stored->file, uint64_t(p - stored->file->data()), sizes[d]);
          else out.write_at(at[d].second, p, sizes[d]);
          bytes += sizes[d];
        }
        for (const auto& pc : pieces) pc.file->drop_pages(pc.range.first, pc.range.second);
        if (opt.progress) {
          std::lock_guard<std::mutex> lock(mu);
          bytes_done += bytes, tensors_done += int(hf.size());
          opt.progress(bytes_done, plan.total_bytes, tensors_done, int(descs.size()));
        }
      }
    } catch (...) {
      next = rules.size();  // the other worker stops at its next tensor
      std::lock_guard<std::mutex> lock(mu);
      if (!failure) failure = std::current_exception();
    }
  };
  std::thread helper(work);
  work();
  helper.join();
  if (failure) std::rethrow_exception(failure);
  for (auto& o : outs) o->close();
  if (plan.files.size() > 1)
    write_file_atomic((tmp / "model.safetensors.index.json").string(),
                      io::safetensors_index_json(index, plan.total_bytes));
  copy_side_files(fs::path(mcore_dir), tmp, *opt.dtype, c);
  staged->commit();
  log().info("wrote {} tensors in {} files to {}", descs.size(), plan.files.size(), out_dir);
}

}  // namespace moe::checkpoint
