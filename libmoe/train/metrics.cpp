#include "train/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"

namespace moe::train {

namespace fs = std::filesystem;

std::string format_duration(double s) {
  const int64_t t = std::isfinite(s) ? int64_t(std::max(0.0, s)) : 0;  // swift truncates
  const int64_t d = t / 86400, h = t / 3600 % 24, m = t / 60 % 60, sec = t % 60;
  std::string out;
  if (d) out += fmt::format("{}d ", d);
  if (d || h) out += fmt::format("{}h ", h);
  if (d || h || m) out += fmt::format("{}m ", m);
  return out + fmt::format("{}s", sec);
}

std::string iteration_field(int64_t iteration, int64_t total) { return fmt::format("{}/{}", iteration, total); }

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

double current_rss_gib() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  const bool ok = std::fscanf(f, "%ld %ld", &pages, &resident) == 2;
  std::fclose(f);
  return ok ? double(resident) * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0 * 1024.0) : 0;
}

double round8(double v) {
  if (!std::isfinite(v) || v == 0) return v;
  // Through the decimal text: scaling by a power of ten and back is not exact for large or
  // tiny values, and the JSON writer would then print 17 digits.
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.8g", v);
  return std::strtod(buf, nullptr);
}

namespace {
void round_floats(nlohmann::json& j) {
  if (j.is_number_float()) {
    const double v = j.get<double>();
    j = std::isfinite(v) ? nlohmann::json(round8(v)) : nlohmann::json(nullptr);
  } else if (j.is_structured()) {
    for (auto& x : j) round_floats(x);
  }
}
}  // namespace

nlohmann::json eval_line(const nlohmann::json& metrics, int64_t iteration, int64_t total) {
  nlohmann::json line = nlohmann::json::object();
  for (const auto& [k, v] : metrics.items()) line[k.rfind("eval_", 0) == 0 ? k : "eval_" + k] = v;
  line["iteration"] = iteration_field(iteration, total);
  return line;
}

nlohmann::json summary_line(const std::string& last, const std::string& best, double best_metric) {
  auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
  return {{"last_model_checkpoint", or_null(last)},
          {"best_model_checkpoint", or_null(best)},
          {"best_metric", std::isfinite(best_metric) ? nlohmann::json(best_metric) : nlohmann::json(nullptr)}};
}

void JsonlLog::write(nlohmann::json line) const {
  round_floats(line);
  const std::string s = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::FILE* f = std::fopen(path_.c_str(), "a");
  if (!f) throw_input("cannot append to {}; check that the output directory is writable", path_);
  const bool ok = std::fwrite(s.data(), 1, s.size(), f) == s.size();
  if (std::fclose(f) != 0 || !ok) throw_input("cannot append to {} (disk full?)", path_);
}

namespace {
// tqdm's clock: [H:]MM:SS.
std::string clock(double s) {
  const int64_t t = std::isfinite(s) ? int64_t(std::max(0.0, s)) : 0;
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
  return fmt::format("{:02}:{:02}", t / 60, t % 60);
}
}  // namespace

std::string format_progress(const std::string& desc, int64_t done, int64_t total, double elapsed_s,
                            const std::string& postfix, int width) {
  done = std::max<int64_t>(done, 0);
  const double frac = total > 0 ? std::min(1.0, double(done) / double(total)) : 0.0;
  const int fill = int(frac * width);
  std::string out = fmt::format("{}: {:3}%|{}{}| {}/{} [{}", desc, int(frac * 100), std::string(size_t(fill), '#'),
                                std::string(size_t(width - fill), ' '), done, total, clock(elapsed_s));
  if (done > 0 && elapsed_s > 0) {
    const double per_it = elapsed_s / double(done);
    out += fmt::format(
        "<{}, {}]", clock(per_it * double(std::max<int64_t>(total - done, 0))),
        per_it >= 1 || per_it == 0 ? fmt::format("{:.2f}s/it", per_it) : fmt::format("{:.2f}it/s", 1 / per_it));
  } else {
    out += "<?, ?s/it]";
  }
  if (!postfix.empty()) out += " " + postfix;
  return out;
}

ProgressBar::ProgressBar(std::string desc, int64_t total, std::FILE* out, int force_tty)
    : desc_(std::move(desc)), total_(total), out_(out ? out : stderr) {
  tty_ = force_tty >= 0 ? force_tty != 0 : isatty(fileno(out_)) != 0;
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done, double elapsed_s, const std::string& postfix) {
  if (!tty_) return;
  const std::string line = format_progress(desc_, done, total_, elapsed_s, postfix);
  // Pad over the previous, longer line instead of relying on terminal erase sequences.
  const size_t pad = last_len_ > line.size() ? last_len_ - line.size() : 0;
  std::fprintf(out_, "\r%s%s", line.c_str(), std::string(pad, ' ').c_str());
  std::fflush(out_);
  last_len_ = line.size(), drawn_ = true;
}

void ProgressBar::clear() {
  if (!tty_ || !drawn_) return;
  std::fprintf(out_, "\r%s\r", std::string(last_len_, ' ').c_str());
  std::fflush(out_);
  drawn_ = false;
}

void ProgressBar::finish() {
  if (!tty_ || !drawn_) return;
  std::fprintf(out_, "\n");
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace moe::train
