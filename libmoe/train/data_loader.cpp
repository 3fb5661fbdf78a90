#include "train/data_loader.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"

namespace moe::train {

int64_t MicroBatch::loss_tokens() const {
  return std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l >= 0; });
}

nlohmann::json to_json(const LoaderPosition& p) { return {{"epoch", p.epoch}, {"index", p.index}, {"seed", p.seed}}; }

LoaderPosition loader_position_from_json(const nlohmann::json& j) {
  auto get = [&](const char* k) {
    const bool ok = j.is_object() && j.contains(k) &&
                    (j[k].is_number_unsigned() || (j[k].is_number_integer() && j[k].get<int64_t>() >= 0));
    if (!ok) throw_input("data position: field '{}' must be a non-negative integer", k);
    return j[k].get<uint64_t>();
  };
  LoaderPosition p;
  p.epoch = int64_t(get("epoch")), p.index = int64_t(get("index"));
  if (j.is_object() && j.contains("seed")) p.seed = get("seed");
  return p;
}

namespace {
// Best-fit decreasing: longest first, each into the fullest row it still fits.
std::vector<std::vector<int32_t>> pack(const std::vector<Sample>& s, int max_length) {
  std::vector<int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int32_t a, int32_t b) { return s[size_t(a)].tokens.size() > s[size_t(b)].tokens.size(); });
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
  pos_.seed = seed;
  if (packing) {
    for (const auto& s : samples)
      MOE_ASSERT(!s.tokens.empty() && s.tokens.size() <= size_t(max_length) && s.labels.size() == s.tokens.size(),
                 "packing a sample of {} tokens into rows of {}", s.tokens.size(), max_length);
    rows_ = pack(samples, max_length);
  } else {
    for (size_t i = 0; i < samples.size(); ++i) rows_.push_back({int32_t(i)});
  }
  order_epoch();
}

namespace {
const std::vector<Sample> kNoSamples;
}

DataLoader::DataLoader(SampleStream& stream, int mbs, uint64_t seed)
    : samples_(kNoSamples), stream_(&stream), mbs_(mbs), seed_(seed), shuffle_(false) {
  if (mbs < 1) throw_input("--micro_batch_size must be >= 1, got {}", mbs);
  pos_.seed = seed;
  stream_->restart();
}

bool DataLoader::take(Sample& s) {
  if (stream_->next(s)) return true;
  if (pos_.index == 0)
    throw_input("--dataset: no trainable rows in the stream (all too long or without assistant turns)");
  log().warn("--streaming: the dataset ended after {} samples; epoch {} reads it again", pos_.index, pos_.epoch + 1);
  ++pos_.epoch, pos_.index = 0;
  stream_->restart();
  return stream_->next(s);
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
  if (stream_) {  // the order does not depend on the seed: read up to the saved position again
    pos_ = {std::max<int64_t>(p.epoch, 0), 0, seed_};
    stream_->restart();
    for (int64_t i = 0; i < p.index; ++i) {
      if (!stream_->next(streamed_)) {
        log().warn(
            "--streaming: the saved data position ({} samples into epoch {}) is past the stream's end ({}): "
            "the next epoch starts",
            p.index, p.epoch, i);
        ++pos_.epoch, pos_.index = 0;
        stream_->restart();
        return;
      }
      ++pos_.index;
    }
    return;
  }
  if (p.seed != 0 && p.seed != seed_)
    log().warn("the saved data position was taken with seed {}, this run uses seed {}: the data order differs", p.seed,
               seed_);
  pos_ = p;
  pos_.seed = seed_;
  if (pos_.epoch < 0) pos_.epoch = 0;
  if (pos_.index < 0) pos_.index = 0;
  if (pos_.index > int64_t(rows_.size())) pos_.index = int64_t(rows_.size());
  order_epoch();
}

MicroBatch DataLoader::next() {
  MicroBatch mb;
  next(mb);
  return mb;
}

void DataLoader::next(MicroBatch& mb) {
  mb.tokens.clear(), mb.labels.clear(), mb.position_ids.clear(), mb.cu_seqlens.clear();
  mb.rows = 0;
  mb.cu_seqlens.push_back(0);
  if (stream_) {
    for (int r = 0; r < mbs_; ++r) {
      take(streamed_);
      const Sample& s = streamed_;
      mb.tokens.insert(mb.tokens.end(), s.tokens.begin(), s.tokens.end());
      mb.labels.insert(mb.labels.end(), s.labels.begin(), s.labels.end());
      for (size_t t = 0; t < s.tokens.size(); ++t) mb.position_ids.push_back(int32_t(t));
      mb.cu_seqlens.push_back(int32_t(mb.tokens.size()));
      ++pos_.index, ++mb.rows;
    }
    return;
  }
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
}

}  // namespace moe::train
