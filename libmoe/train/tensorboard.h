// TensorBoard event files, written without TensorFlow: TFRecord framing (length, masked CRC-32C of
// the length, the record, masked CRC-32C of the record) around hand-encoded `Event` protobufs
// (wall_time, step, and a Summary of one scalar value per tag), the format TensorBoard and
// tensorboardX read. Swift's Megatron trainer writes <run>/runs by default with tags train/<key>
// and eval/<key> for the keys of logging.jsonl; the trainer does the same through this writer.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace moe::train {

class TensorBoardWriter {
 public:
  // Creates `dir` and a new events.out.tfevents.<seconds>.<host> file in it; InputError naming
  // --tensorboard_dir when it cannot.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void scalar(const std::string& tag, int64_t step, double value);
  // Every number of a logging.jsonl line as `prefix`/<key> (an eval line's eval_ dropped from the
  // key); the file is flushed, so TensorBoard sees the step at once.
  void line(const std::string& prefix, const nlohmann::json& line, int64_t step);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& bytes);
  std::string path_;
  std::FILE* f_ = nullptr;
};

// CRC-32C (Castagnoli) of `n` bytes, as TFRecord frames use it before masking.
uint32_t crc32c(const void* p, size_t n);

}  // namespace moe::train
