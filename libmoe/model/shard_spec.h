// ShardSpec: the one place that says how each canonical tensor splits over tensor (TP),
// pipeline (PP) and expert (EP) parallel ranks, and what it is called on the rank that holds
// it (layer numbers local to the stage, experts local to the EP rank). Checkpoint writing and
// merging use it; the engine and the planner will too. Expert tensors split by ETP = TP, the
// Megatron default and the only grid the legacy format can express.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

namespace moe::model {

struct ParallelLayout {
  int tp = 1, pp = 1, ep = 1;
};

class ShardSpec {
 public:
  // InputError naming the flag when the model does not divide over the layout.
  ShardSpec(const ModelConfig& c, ParallelLayout layout, int make_vocab_size_divisible_by);
  const ParallelLayout& layout() const { return p_; }
  int64_t padded_vocab() const { return padded_vocab_; }
  // Megatron's per-rank directory: mp_rank_TT[_PPP][_EEE].
  std::string rank_dir(int tp, int pp, int ep) const;

  struct Piece {
    std::string name;  // the rank-local name
    Tensor tensor;     // this rank's slice (a copy unless the tensor is replicated)
  };
  // The part of canonical tensor `name` (full shape, vocab already padded) that rank
  // (tp, pp, ep) holds; empty if it holds none of it.
  std::vector<Piece> shard(const std::string& name, const Tensor& full, int tp, int pp, int ep) const;
  // Without data: the rank-local name and shape of that part, or false if the rank holds none.
  bool local_part(const std::string& name, const Shape& full_shape, int tp, int pp, int ep, std::string* local,
                  Shape* shape) const;
  // Reassembles canonical tensor `name` of shape `shape` from the ranks that hold it; `get`
  // returns a rank's tensor by local name (InputError if missing).
  template <class Get>
  Tensor merge(const std::string& name, const Shape& shape, DType dtype, Get&& get) const;

 private:
  enum class Split { kReplicated, kRows, kCols, kGatedRows };
  struct Where {
    int layer = -1;   // global layer, -1 if not a layer tensor
    int expert = -1;  // global expert, -1 if not an expert tensor
    Split split = Split::kReplicated;
    bool first_stage = false, last_stage = false;  // embedding / final norm, output layer
  };
  Where where(const std::string& name) const;
  bool holds(const Where& w, int pp, int ep) const;
  std::string local_name(const std::string& name, const Where& w) const;
  ModelConfig c_;
  ParallelLayout p_;
  int64_t padded_vocab_;
};

}  // namespace moe::model

#include "model/shard_spec_merge.h"
