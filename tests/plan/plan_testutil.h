// Helpers for the planner tests: the example configs and GPU presets of the source tree.
#pragma once
#include <cstdlib>
#include <string>

#include "model/hf_config.h"
#include "plan/cluster.h"
#include "plan/model_shape.h"

namespace moe::plan::testing {

inline std::string source_dir() {
  const char* s = std::getenv("MOE_SOURCE_DIR");
  return s ? s : ".";
}

inline ModelShape example_model(const std::string& name) {
  return ModelShape::from_config(model::load_hf_config(source_dir() + "/configs/" + name));
}

inline Cluster cluster(const std::string& gpu, int nnodes, int per_node = 8) {
  Cluster c;
  c.nnodes = nnodes;
  c.nproc_per_node = per_node;
  c.gpu = find_gpu_preset(gpu, {source_dir() + "/configs/gpus"});
  return c;
}

}  // namespace moe::plan::testing
