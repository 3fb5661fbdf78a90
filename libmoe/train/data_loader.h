// Micro-batches for the trainer in Megatron-SWIFT's padding-free layout: the rows of a
// micro-batch are concatenated, cu_seqlens marks every sequence, positions restart in each,
// and attention never crosses a boundary. With packing, samples are first bin-packed
// (best-fit decreasing) into rows of max_length tokens. The order is a deterministic function
// of (seed, epoch), and the position can be saved and restored for an exact resume.
#pragma once
#include <cstdint>
#include <vector>

#include "train/dataset.h"

namespace moe::train {

struct MicroBatch {
  std::vector<int32_t> tokens, labels, position_ids, cu_seqlens;
  int rows = 0;
  int64_t loss_tokens() const;
};

struct LoaderPosition {
  int64_t epoch = 0, index = 0;  // rows consumed in this epoch
};

class DataLoader {
 public:
  // `samples` must outlive the loader. shuffle=false keeps the file order (evaluation).
  DataLoader(const std::vector<Sample>& samples, int micro_batch_size, bool packing, int max_length, uint64_t seed,
             bool shuffle = true);
  MicroBatch next();  // wraps around into the next epoch
  int64_t rows_per_epoch() const { return int64_t(rows_.size()); }
  LoaderPosition position() const { return pos_; }
  void restore(LoaderPosition p);

 private:
  void order_epoch();
  const std::vector<Sample>& samples_;
  int mbs_;
  uint64_t seed_;
  bool shuffle_;
  std::vector<std::vector<int32_t>> rows_;  // sample indices of each row
  std::vector<size_t> order_;
  LoaderPosition pos_;
};

}  // namespace moe::train
