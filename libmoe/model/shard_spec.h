// ShardSpec: the one place that says how each canonical tensor splits over tensor (TP),
// pipeline (PP) and expert (EP, ETP) parallel ranks, and what it is called on the rank that holds
// it (layer numbers local to the stage, experts local to the EP rank). Checkpoint writing and
// merging use it; the engine and the planner will too. It takes the job's dist::ParallelLayout;
// only TP, PP, EP and ETP shape the files (CP and DP ranks hold copies). Expert tensors split over
// ETP; the legacy format names files by (TP rank, PP rank, EP rank) only, so it can hold ETP that
// divides TP (see rank_files()).
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "dist/parallel_layout.h"
#include "model/model_config.h"

namespace moe::model {

struct LocalShapes {
  int64_t heads = 0, query_groups = 0;      // attention heads and key/value groups on this TP rank
  int64_t expert_begin = 0, experts = 0;    // this EP rank's experts [begin, begin + experts)
  int64_t vocab_begin = 0, vocab_rows = 0;  // this TP rank's rows of the (padded) vocabulary
  int layer_begin = 0, layers = 0;          // this pipeline stage's layers
  // MLP widths on this rank: the dense MLP and the shared expert split over TP, each expert over ETP.
  int64_t ffn = 0, moe_ffn = 0, shared_ffn = 0;
};

class ShardSpec {
 public:
  // InputError naming the flag when the model does not divide over the layout's TP, PP, EP and
  // ETP.
  ShardSpec(const ModelConfig& c, const dist::ParallelLayout& layout, int make_vocab_size_divisible_by);
  const dist::ParallelLayout& layout() const { return p_; }
  int64_t padded_vocab() const { return padded_vocab_; }
  // The model's layers in pp x vpp chunks (model order; chunk k on pipeline stage k % pp as its
  // virtual chunk k / pp): chunk k holds [chunk_begin(k), chunk_begin(k + 1)), even, or uneven by
  // the layout's first/last stage layers (vpp 1). With vpp 1, chunk k is stage k's layers. Layer
  // names in a rank file are local to the chunk (Megatron's model0, model1, ... dicts).
  int chunk_begin(int k) const { return chunk_begin_[size_t(k)]; }
  int chunk_of_layer(int layer) const;
  int stage_of_layer(int layer) const;
  // Megatron's per-rank directory: mp_rank_TT[_PPP][_EEE].
  std::string rank_dir(int tp, int pp, int ep) const;
  // The shapes rank (tp, pp, ep) holds: the engine sizes every module from them. With the
  // one-rank layout, the whole model (vocabulary unpadded: the engine reads the model's own rows).
  LocalShapes local_shapes(int tp, int pp, int ep) const;

  // The rank files of the layout, ordered by (pp, ep, tp). Megatron ranks a stage's processes
  // with TP fastest for dense layers and ETP, then EP, fastest for experts (RankGenerator order
  // tp-cp-ep-dp-pp), and process i writes mp_rank_{i % TP}[_PPP]_{(i / ETP) % EP}: with
  // ETP == TP that is every (tp, ep) pair; with ETP < TP only the pairs some process has (e.g.
  // TP2 ETP1 EP2: (0,0) and (1,1)). File (tp, ep) holds expert tensor-parallel rank tp % ETP of
  // EP rank ep's experts.
  struct RankFile {
    int tp, pp, ep;
  };
  std::vector<RankFile> rank_files() const;

  struct Piece {
    std::string name;  // the rank-local name
    Tensor tensor;     // this rank's slice (a copy unless the tensor is replicated)
  };
  // The part of canonical tensor `name` (full shape, vocab already padded) that rank file
  // (tp, pp, ep) holds; empty if it holds none of it.
  std::vector<Piece> shard(const std::string& name, const Tensor& full, int tp, int pp, int ep) const;
  // Without data: the rank-local name and shape of that part, or false if the rank holds none.
  bool local_part(const std::string& name, const Shape& full_shape, int tp, int pp, int ep, std::string* local,
                  Shape* shape) const;
  // Reassembles canonical tensor `name` of shape `shape` from the rank files that hold it;
  // `get(tp, pp, ep, local)` returns a rank's tensor by local name (InputError if missing).
  // When one piece is the whole tensor in `dtype`, that piece itself is returned (no copy).
  template <class Get>
  Tensor merge(const std::string& name, const Shape& shape, DType dtype, Get&& get) const;
  // The rank files merge() reads for `name`, in piece order: visit(tp, pp, ep, local name).
  template <class Visit>
  void for_each_piece(const std::string& name, Visit&& visit) const;
  // Whether canonical tensor `name` is split over tensor-parallel ranks (TP, or ETP for experts);
  // false: every TP rank holds the same copy (norms, router, shared-expert gate).
  bool tp_split(const std::string& name) const { return split_ways(where(name)) > 1; }

 private:
  enum class Split { kReplicated, kRows, kCols, kGatedRows };
  struct Where {
    int layer = -1;   // global layer, -1 if not a layer tensor
    int expert = -1;  // global expert, -1 if not an expert tensor (split over ETP, not TP)
    Split split = Split::kReplicated;
    bool first_stage = false, last_stage = false;  // embedding / final norm, output layer
  };
  Where where(const std::string& name) const;
  bool holds(const Where& w, int pp, int ep) const;
  // Pieces the tensor splits into (TP, ETP or 1), and which piece rank file `tp` holds.
  int split_ways(const Where& w) const { return w.split == Split::kReplicated ? 1 : w.expert >= 0 ? p_.etp : p_.tp; }
  int piece_of(const Where& w, int tp) const { return w.split == Split::kReplicated ? 0 : tp % split_ways(w); }
  std::string local_name(const std::string& name, const Where& w) const;
  ModelConfig c_;
  dist::ParallelLayout p_;
  int64_t padded_vocab_;
  std::vector<int> chunk_begin_;  // pp x vpp + 1 entries
};

// The first layer of every model chunk of `layout` (pp x vpp chunks, model order) and num_layers
// last: Megatron's split, even or with the first/last stage's layers given. InputError naming the
// flags and numbers when the layers do not split that way.
std::vector<int> pipeline_chunk_begins(int num_layers, const dist::ParallelLayout& layout);

}  // namespace moe::model

#include "model/shard_spec_merge.h"
