#include "infer/generation_defaults.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"

namespace moe::infer {

SamplingParams load_sampling_defaults(const std::string& model_dir) {
  SamplingParams p;
  const auto path = std::filesystem::path(model_dir) / "generation_config.json";
  if (!std::filesystem::exists(path)) return p;
  auto j = nlohmann::json::parse(read_text_file(path.string()), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_input("{}: not a valid JSON object", path.string());
  auto num = [&](const char* k, double def) {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_number()) throw_input("{}: field '{}' must be a number", path.string(), k);
    return j[k].get<double>();
  };
  // The same rules as the flags, so a bad file fails up front with its name rather than
  // sampling garbage; fields a greedy config never reads are still checked, as HF does on load.
  auto checked = [&](const char* k, double def) {
    const double v = num(k, def);
    const std::string why = sampling_value_problem(k, v);
    if (!why.empty()) throw_input("{}: {} is {}; it {}", path.string(), k, v, why);
    return v;
  };
  if (j.contains("do_sample") && !j["do_sample"].is_boolean())
    throw_input("{}: field 'do_sample' must be true or false", path.string());
  const bool do_sample = j.value("do_sample", false);
  const double temperature = checked("temperature", 1.0);
  p.temperature = do_sample ? float(temperature) : 0.0f;
  p.top_k = int(checked("top_k", 0));
  p.top_p = float(checked("top_p", 1.0));
  p.repetition_penalty = float(checked("repetition_penalty", 1.0));
  return p;
}

}  // namespace moe::infer
