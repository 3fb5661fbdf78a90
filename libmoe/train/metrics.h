// What a training run reports, as Megatron-SWIFT does: logging.jsonl lines with swift's keys, durations as swift prints
// them, peak memory, and a progress-bar formatter the app draws on a terminal.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace moe::train {

// "1d 2h 3m 4s" (leading zero units left out, "0s" for nothing), swift's elapsed/remaining_time.
std::string format_duration(double seconds);
// "i/total", swift's iteration field.
std::string iteration_field(int64_t iteration, int64_t total);

// Peak resident memory of this process in GiB (getrusage's ru_maxrss).
double peak_rss_gib();
// Resident memory of this process now, in GiB (/proc/self/statm; 0 where it cannot be read).
double current_rss_gib();

// `value` rounded to 8 significant digits (the nearest double to that decimal), as swift rounds
// logged floats; non-finite values pass through.
double round8(double value);

// The eval line of logging.jsonl: every key of `metrics` prefixed "eval_" (loss -> eval_loss),
// plus "iteration". Keys already starting with "eval_" are kept.
nlohmann::json eval_line(const nlohmann::json& metrics, int64_t iteration, int64_t total);
// The final line: last/best checkpoint (null when none) and best_metric (null when not finite).
nlohmann::json summary_line(const std::string& last_checkpoint, const std::string& best_checkpoint, double best_metric);

// Appends one JSON object per line to a file (OUT/logging.jsonl), flushed and closed each time
// so a killed run keeps every line; floats rounded by round8, NaN/Inf written as null (valid
// JSON, unlike Python's NaN). InputError naming the file when it cannot be appended to.
class JsonlLog {
 public:
  explicit JsonlLog(std::string path) : path_(std::move(path)) {}
  void write(nlohmann::json line) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// tqdm-style progress text: "Train:  45%|#########           | 45/100 [00:12<00:15, 0.27s/it] <postfix>".
// Elapsed/remaining as [H:]MM:SS; remaining and rate left out until one step is done.
std::string format_progress(const std::string& desc, int64_t done, int64_t total, double elapsed_s,
                            const std::string& postfix = "", int width = 20);

// Draws format_progress on a terminal, redrawing one line in place; on anything else (a pipe, a
// log file) draws nothing, and the caller's plain log lines are the record. The app owns it: the
// library itself prints only through the logger.
class ProgressBar {
 public:
  // `out` defaults to stderr; `force_tty` overrides the isatty check (tests).
  ProgressBar(std::string desc, int64_t total, std::FILE* out = nullptr, int force_tty = -1);
  ~ProgressBar();
  bool enabled() const { return tty_; }
  void update(int64_t done, double elapsed_s, const std::string& postfix = "");
  // Clears the bar so a log line can be printed, then the next update redraws it.
  void clear();
  // Ends the bar's line (keeps the last state on screen).
  void finish();

 private:
  std::string desc_;
  int64_t total_;
  std::FILE* out_;
  bool tty_, drawn_ = false;
  size_t last_len_ = 0;
};

}  // namespace moe::train
