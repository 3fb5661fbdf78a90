#include "train/metrics.h"

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <regex>

#include "core/error.h"

namespace moe::train {

namespace fs = std::filesystem;

std::string make_output_dir(const std::string& save, bool add_version) {
  fs::create_directories(save);
  if (!add_version) return save;
  int next = 0;
  const std::regex re("v(\\d+)-.*");
  for (const auto& e : fs::directory_iterator(save)) {
    std::smatch m;
    const std::string n = e.path().filename().string();
    if (std::regex_match(n, m, re)) next = std::max(next, std::stoi(m[1].str()) + 1);
  }
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  const fs::path dir = fs::path(save) / ("v" + std::to_string(next) + "-" + stamp);
  fs::create_directories(dir);
  return dir.string();
}

std::string format_duration(double s) {
  int64_t t = int64_t(std::llround(std::max(0.0, s)));
  const int64_t d = t / 86400, h = t / 3600 % 24, m = t / 60 % 60, sec = t % 60;
  std::string out;
  if (d) out += std::to_string(d) + "d ";
  if (d || h) out += std::to_string(h) + "h ";
  if (d || h || m) out += std::to_string(m) + "m ";
  return out + std::to_string(sec) + "s";
}

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

namespace {
void round_floats(nlohmann::json& j) {
  if (j.is_number_float()) {
    const double v = j.get<double>();
    if (std::isfinite(v) && v != 0) {
      const double scale = std::pow(10.0, 7 - std::floor(std::log10(std::fabs(v))));
      j = std::round(v * scale) / scale;
    }
  } else if (j.is_structured()) {
    for (auto& x : j) round_floats(x);
  }
}
}  // namespace

void JsonlLog::write(nlohmann::json line) const {
  round_floats(line);
  FILE* f = std::fopen(path_.c_str(), "a");
  if (!f) throw_input("cannot append to {}", path_);
  const std::string s = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(s.data(), 1, s.size(), f);
  std::fclose(f);
}

}  // namespace moe::train
