// Micro-batches for the trainer in Megatron-SWIFT's padding-free layout: the rows of a
// micro-batch are concatenated, cu_seqlens marks every sequence, positions restart in each,
// and attention never crosses a boundary. With packing, samples are first bin-packed
// (best-fit decreasing) into rows of max_length tokens. The order is a deterministic function
// of (seed, epoch), and the position can be saved and restored for an exact resume.
#pragma once
#include <cstdint>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "train/dataset.h"

namespace moe::train {

// T tokens of `rows` rows (samples, or packed rows of samples), S segments.
struct MicroBatch {
  std::vector<int32_t> tokens, labels;  // length T; labels[t] = target of tokens[t] or -100
  std::vector<int32_t> position_ids;    // length T; 0 at the start of every segment
  std::vector<int32_t> cu_seqlens;      // size S + 1: 0, ..., T; attention stays inside a segment
  int rows = 0;
  int64_t loss_tokens() const;  // labels != -100
};

// Where the loader is: the next row is order(seed, epoch)[index]. Saved with a checkpoint so
// that a resumed run sees exactly the batches an uninterrupted one would.
struct LoaderPosition {
  int64_t epoch = 0, index = 0;  // index: rows consumed in this epoch
  uint64_t seed = 0;             // the loader's seed; 0 in positions saved before it was recorded
};
nlohmann::json to_json(const LoaderPosition& p);
LoaderPosition loader_position_from_json(const nlohmann::json& j);  // InputError on a malformed one

// Training: DataLoader(train, mbs, packing, max_length, seed) and next() forever; epochs wrap.
// Evaluation: DataLoader(val, mbs, false, max_length, seed, /*shuffle=*/false) and
// rows_per_epoch() / mbs calls to next() pass over the validation set once in file order.
class DataLoader {
 public:
  // `samples` must outlive the loader; each must have 1..max_length tokens when packing.
  // shuffle=false keeps the given order (evaluation). With packing, rows are bin-packed once
  // (best-fit decreasing, deterministic), and the packed rows are shuffled per epoch.
  DataLoader(const std::vector<Sample>& samples, int micro_batch_size, bool packing, int max_length, uint64_t seed,
             bool shuffle = true);
  // --streaming: samples taken from `stream` in its order (no packing, no shuffle); its end starts
  // the next epoch from its first row. position() counts the samples taken in the epoch, and
  // restore() reads the stream up to there again. `stream` must outlive the loader.
  DataLoader(SampleStream& stream, int micro_batch_size, uint64_t seed);
  MicroBatch next();          // the next micro_batch_size rows; wraps around into the next epoch
  void next(MicroBatch& mb);  // the same, reusing mb's buffers (no allocation once they are grown)
  // Rows per epoch: samples, or packed rows with packing (0 when streaming: not known). The trainer's iteration count
  // for
  // --max_epochs is computed from this (swift: floor(rows / (mbs*DP)) * (mbs*DP) * E / gbs).
  int64_t rows_per_epoch() const { return int64_t(rows_.size()); }
  int64_t samples() const { return int64_t(samples_.size()); }
  // Sample indices of packed row r (in the packed order, before shuffling); for tests and logs.
  const std::vector<int32_t>& row(int64_t r) const { return rows_[size_t(r)]; }
  LoaderPosition position() const { return pos_; }
  // Continues from p (an index past the end starts the next epoch). A p.seed other than this
  // loader's (and not 0) is logged: the order then follows this loader's seed.
  void restore(LoaderPosition p);

 private:
  void order_epoch();
  bool take(Sample& s);  // streaming: the next sample, the next epoch at the stream's end
  const std::vector<Sample>& samples_;
  SampleStream* stream_ = nullptr;
  Sample streamed_;  // streaming: the sample being copied into a micro-batch
  int mbs_;
  uint64_t seed_;
  bool shuffle_;
  std::vector<std::vector<int32_t>> rows_;  // sample indices of each row
  std::vector<size_t> order_;
  LoaderPosition pos_;
};

}  // namespace moe::train
