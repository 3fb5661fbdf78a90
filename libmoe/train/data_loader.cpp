#include "train/data_loader.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "core/error.h"

namespace moe::train {

int64_t MicroBatch::loss_tokens() const {
  return std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l >= 0; });
}

namespace {
// Best-fit decreasing: longest first, each into the fullest row it still fits.
std::vector<std::vector<int32_t>> pack(const std::vector<Sample>& s, int max_length) {
  std::vector<int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return s[size_t(a)].tokens.size() > s[size_t(b)].tokens.size(); });
  std::vector<std::vector<int32_t>> rows;
  std::multimap<int64_t, size_t> free_space;  // room left -> row
  for (int32_t i : idx) {
    const int64_t len = int64_t(s[size_t(i)].tokens.size());
    auto it = free_space.lower_bound(len);
    size_t row;
    int64_t room;
    if (it == free_space.end()) {
      row = rows.size(), room = max_length;
      rows.emplace_back();
    } else {
      row = it->second, room = it->first;
      free_space.erase(it);
    }
    rows[row].push_back(i);
    free_space.emplace(room - len, row);
  }
  return rows;
}
}  // namespace

DataLoader::DataLoader(const std::vector<Sample>& samples, int mbs, bool packing, int max_length, uint64_t seed,
                       bool shuffle)
    : samples_(samples), mbs_(mbs), seed_(seed), shuffle_(shuffle) {
  if (mbs < 1) throw_input("--micro_batch_size must be >= 1, got {}", mbs);
  MOE_ASSERT(!samples.empty(), "data loader over no samples");
  if (packing) {
    rows_ = pack(samples, max_length);
  } else {
    for (size_t i = 0; i < samples.size(); ++i) rows_.push_back({int32_t(i)});
  }
  order_epoch();
}

void DataLoader::order_epoch() {
  order_.resize(rows_.size());
  std::iota(order_.begin(), order_.end(), size_t(0));
  if (shuffle_) {
    std::mt19937_64 rng(seed_ * 1000003ULL + uint64_t(pos_.epoch));
    std::shuffle(order_.begin(), order_.end(), rng);
  }
}

void DataLoader::restore(LoaderPosition p) {
  pos_ = p;
  if (pos_.index > int64_t(rows_.size())) pos_.index = int64_t(rows_.size());
  order_epoch();
}

MicroBatch DataLoader::next() {
  MicroBatch mb;
  mb.cu_seqlens.push_back(0);
  for (int r = 0; r < mbs_; ++r) {
    if (pos_.index >= int64_t(rows_.size())) {
      ++pos_.epoch, pos_.index = 0;
      order_epoch();
    }
    for (int32_t si : rows_[order_[size_t(pos_.index)]]) {
      const Sample& s = samples_[size_t(si)];
      mb.tokens.insert(mb.tokens.end(), s.tokens.begin(), s.tokens.end());
      mb.labels.insert(mb.labels.end(), s.labels.begin(), s.labels.end());
      for (size_t t = 0; t < s.tokens.size(); ++t) mb.position_ids.push_back(int32_t(t));
      mb.cu_seqlens.push_back(int32_t(mb.tokens.size()));
    }
    ++pos_.index, ++mb.rows;
  }
  return mb;
}

}  // namespace moe::train
