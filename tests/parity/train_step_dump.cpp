// Parity helper for training: loads an HF model dir, runs one forward/backward of moectl's
// training engine on a packed micro-batch and writes the gradients under their HF names (as
// safetensors, through the same WeightMap the export uses) plus one JSON line with the
// losses. train_parity.py compares both with PyTorch autograd on the independent reference.
//   moe_train_step_dump --model DIR --tokens 1,2,.. --labels 2,-100,.. --cu 0,5,9 --out DIR
//                       [--aux_loss_coeff X] [--z_loss_coeff X] [--load_balancing_type T]
//                       [--capacity_factor X] [--recompute none|selective|full]
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/load_hf.h"
#include "checkpoint/mcore_export.h"
#include "core/error.h"
#include "model/train_model.h"

namespace {
std::vector<int32_t> ints(const std::string& s) {
  std::vector<int32_t> v;
  std::stringstream ss(s);
  for (std::string tok; std::getline(ss, tok, ',');) v.push_back(int32_t(std::stoi(tok)));
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    std::map<std::string, std::string> a;
    for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
    if (!a.count("--model") || !a.count("--tokens") || !a.count("--labels") || !a.count("--cu") || !a.count("--out")) {
      std::fprintf(stderr, "usage: moe_train_step_dump --model DIR --tokens .. --labels .. --cu .. --out DIR\n");
      return 2;
    }
    auto loaded = moe::checkpoint::load_model(a["--model"]);
    moe::model::TrainOptions opt;
    if (a.count("--aux_loss_coeff")) opt.moe.aux_loss_coeff = std::stod(a["--aux_loss_coeff"]);
    if (a.count("--z_loss_coeff")) opt.moe.z_loss_coeff = std::stod(a["--z_loss_coeff"]);
    if (a.count("--load_balancing_type")) opt.moe.load_balancing_type = a["--load_balancing_type"];
    if (a.count("--capacity_factor")) opt.moe.capacity_factor = std::stod(a["--capacity_factor"]);
    if (a.count("--recompute")) moe::model::parse_recompute(a["--recompute"], &opt.recompute.granularity);
    moe::model::TrainModel model(loaded.config, loaded.state, opt);
    const auto tokens = ints(a["--tokens"]), labels = ints(a["--labels"]), cu = ints(a["--cu"]);
    std::vector<int32_t> pos(tokens.size());
    for (size_t s = 0; s + 1 < cu.size(); ++s)
      for (int32_t t = cu[s]; t < cu[s + 1]; ++t) pos[size_t(t)] = t - cu[s];
    int64_t n = 0;
    for (int32_t l : labels) n += l >= 0;
    auto st = model.forward_backward({tokens, labels, pos, cu}, 1.0f / float(n), 1.0f);
    std::filesystem::create_directories(a["--out"]);
    moe::checkpoint::save_hf_weights(model.config(), model.grads(), a["--out"]);
    nlohmann::json out;
    out["lm_loss"] = st.lm_loss_sum / double(st.loss_tokens);
    out["loss_tokens"] = st.loss_tokens;
    out["aux_loss"] = st.aux_loss;
    out["z_loss"] = st.z_loss;
    out["tokens_per_expert"] = st.tokens_per_expert;
    std::cout << out.dump() << "\n";
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe_train_step_dump: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {  // a bad number in the arguments, a failed write
    std::fprintf(stderr, "moe_train_step_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
