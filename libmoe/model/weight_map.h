// WeightMap: the only place that knows Hugging Face tensor names. One rule per canonical
// (Megatron-Core) tensor says which HF tensors make it and how: copied, fused as QKV per
// query group, or gate/up concatenated into fc1. HF loading and export both go through it.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

namespace moe::model {

enum class Fuse {
  kCopy,    // one HF tensor, same layout
  kQkv,     // q, k, v -> rows grouped per query group: [q heads of group g; k_g; v_g] for each g
  kGateUp,  // gate, up -> [gate; up]
};

struct WeightRule {
  std::string mcore;             // canonical name
  Shape shape;                   // canonical shape
  std::vector<std::string> hf;   // HF names, in fusion order
  std::vector<Shape> hf_shapes;  // their shapes
  Fuse fuse = Fuse::kCopy;
  // A buffer the optimizer does not train (the router's expert bias): kept in fp32 whatever the
  // checkpoint dtype, as Megatron keeps it.
  bool buffer = false;
};

// The layer and expert counts HF tensor names imply (one past the largest layer / expert
// index), so config.json can be checked against the weights before the rules are built.
struct HfCounts {
  int64_t layers = 0, experts = 0;
};
HfCounts hf_counts(const std::vector<std::string>& hf_names);

class WeightMap {
 public:
  // The rules for one model, in a stable order (embedding, layers, final norm, output).
  static WeightMap for_config(const ModelConfig& c);
  const std::vector<WeightRule>& rules() const& { return rules_; }
  // Iterating the rules of a temporary WeightMap would dangle: keep the map in a variable.
  const std::vector<WeightRule>& rules() const&& = delete;

  // HF tensors (ordered as rule.hf, shapes already checked) -> the canonical tensor.
  // kCopy returns the input itself (no copy, may borrow a mapped file).
  Tensor to_mcore(const WeightRule& rule, const std::vector<Tensor>& hf) const;
  // The inverse: canonical tensor -> HF tensors in rule.hf order. kCopy and kGateUp return
  // views of `mcore` (sharing its storage); kQkv returns new tensors.
  std::vector<Tensor> to_hf(const WeightRule& rule, const Tensor& mcore) const;
  // What to_mcore copies for a fused rule: the canonical tensor's bytes as runs of its HF
  // tensors' bytes (elements of `elem_size` bytes), in canonical order. Export uses it to copy
  // fused tensors file to file without assembling them in memory.
  struct ByteRun {
    size_t part;    // index into rule.hf
    size_t offset;  // bytes into that HF tensor
    size_t size;
  };
  std::vector<ByteRun> mcore_runs(const WeightRule& rule, size_t elem_size) const;

 private:
  explicit WeightMap(const ModelConfig& c) : cfg_(c) {}
  ModelConfig cfg_;
  std::vector<WeightRule> rules_;
};

}  // namespace moe::model
