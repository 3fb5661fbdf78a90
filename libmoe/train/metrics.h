// What a training run reports: the versioned output directory (SAVE/vN-YYYYMMDD-HHMMSS),
// logging.jsonl lines with swift's keys, durations as swift prints them, and peak memory.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace moe::train {

// SAVE/vN-YYYYMMDD-HHMMSS with N = 1 + the largest existing vN- prefix (v0 first); SAVE itself
// when add_version is false. Created.
std::string make_output_dir(const std::string& save, bool add_version);

// "1d 2h 3m 4s" (leading zero units left out), as swift's remaining_time.
std::string format_duration(double seconds);

// Peak resident memory of this process in GiB.
double peak_rss_gib();

// Appends one JSON object per line to OUT/logging.jsonl, flushed each time; floats rounded to
// 8 significant digits.
class JsonlLog {
 public:
  explicit JsonlLog(std::string path) : path_(std::move(path)) {}
  void write(nlohmann::json line) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace moe::train
