// Parity helper: loads an HF model dir with moectl's engine, runs the given ids, and prints
// one JSON object: the last position's logits and a greedy continuation (not stopping at
// eos). run_parity.py compares both against the independent PyTorch reference.
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/mcore_export.h"
#include "core/error.h"
#include "infer/generator.h"
#include "infer/kv_cache.h"

int main(int argc, char** argv) {
  try {
    std::string model_dir, ids_arg;
    int greedy = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
      std::string k = argv[i];
      if (k == "--model") model_dir = argv[i + 1];
      else if (k == "--ids") ids_arg = argv[i + 1];
      else if (k == "--greedy") greedy = std::stoi(argv[i + 1]);
    }
    if (model_dir.empty() || ids_arg.empty()) {
      std::fprintf(stderr, "usage: moe_forward_dump --model DIR --ids 1,2,3 [--greedy N]\n");
      return 2;
    }
    std::vector<int32_t> ids;
    std::stringstream ss(ids_arg);
    for (std::string tok; std::getline(ss, tok, ',');) ids.push_back(int32_t(std::stoi(tok)));
    auto loaded = moe::checkpoint::load_model(model_dir);
    moe::model::Transformer model(loaded.config, std::move(loaded.state));
    moe::infer::KvCache cache(model.config());
    std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
    model.forward(ids, cache, logits.data());
    moe::infer::Generator gen(model);
    moe::infer::GenerationConfig cfg;
    cfg.max_new_tokens = greedy;
    auto res = gen.generate(ids, cfg);
    nlohmann::json out;
    out["last_logits"] = logits;
    out["generated"] = res.ids;
    std::cout << out.dump() << "\n";
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe_forward_dump: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {  // a bad number in the arguments, a failed write
    std::fprintf(stderr, "moe_forward_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
