#include "plan/cluster.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe::plan {

namespace fs = std::filesystem;

GpuSpec load_gpu_spec_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_input("{}: cannot open GPU preset", path);
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_input("{}: not a JSON object (fix the GPU preset file)", path);
  auto number = [&](const char* k, bool required) {
    if (!j.contains(k)) {
      if (required) throw_input("{}: missing field '{}' (a number)", path, k);
      return 0.0;
    }
    if (!j[k].is_number()) throw_input("{}: field '{}' must be a number, got {}", path, k, j[k].dump());
    return j[k].get<double>();
  };
  GpuSpec g;
  g.name = j.value("name", fs::path(path).stem().string());
  g.memory_gib = number("memory_gib", true);
  g.bf16_tflops = number("bf16_tflops", true);
  g.fp8_tflops = number("fp8_tflops", false);
  g.hbm_gbps = number("hbm_gbps", true);
  g.intra_node_gbps = number("intra_node_gbps", true);
  g.inter_node_gbps = number("inter_node_gbps", true);
  if (j.contains("gpus_per_node")) g.gpus_per_node = int(number("gpus_per_node", true));
  g.source = j.value("source", "");
  for (auto [v, k] : {std::pair{g.memory_gib, "memory_gib"},
                      {g.bf16_tflops, "bf16_tflops"},
                      {g.hbm_gbps, "hbm_gbps"},
                      {g.intra_node_gbps, "intra_node_gbps"},
                      {g.inter_node_gbps, "inter_node_gbps"}})
    if (!(v > 0)) throw_input("{}: field '{}' must be > 0, got {}", path, k, v);
  return g;
}

std::vector<std::string> list_gpu_presets(const std::vector<std::string>& dirs) {
  std::vector<std::string> names;
  for (const auto& d : dirs) {
    std::error_code ec;
    if (!fs::is_directory(d, ec)) continue;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
    if (!names.empty()) break;
  }
  std::sort(names.begin(), names.end());
  return names;
}

GpuSpec find_gpu_preset(const std::string& name, const std::vector<std::string>& dirs) {
  std::error_code ec;
  if (name.size() > 5 && name.substr(name.size() - 5) == ".json" && fs::is_regular_file(name, ec))
    return load_gpu_spec_file(name);
  for (const auto& d : dirs) {
    fs::path p = fs::path(d) / (name + ".json");
    if (fs::is_regular_file(p, ec)) return load_gpu_spec_file(p.string());
  }
  std::string known;
  for (const auto& n : list_gpu_presets(dirs)) known += (known.empty() ? "" : ", ") + n;
  if (known.empty())
    throw_input(
        "--gpu {}: no GPU presets found (looked in configs/gpus/ beside the source tree; pass --gpu_presets DIR "
        "or give --gpu_memory_gib, --gpu_tflops, --intra_node_gbps, --inter_node_gbps)",
        name);
  throw_input("--gpu {}: unknown GPU preset (known: {}; or a path to a preset .json file)", name, known);
}

GroupSpan group_span(int size, int stride, int per_node) {
  GroupSpan g;
  g.size = size;
  if (stride >= per_node) {
    g.per_node = 1;
  } else {
    g.per_node = std::min(size, std::max(1, per_node / stride));
  }
  return g;
}

}  // namespace moe::plan
