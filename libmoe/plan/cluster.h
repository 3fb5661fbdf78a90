// Cluster: the GPUs a plan is for (count, node size, and one GpuSpec: memory, peak FLOP/s,
// HBM and link bandwidths) and which link a process group crosses given Megatron's rank
// order. GPU presets are JSON files in configs/gpus/ (one per GPU, with their sources).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe::plan {

struct GpuSpec {
  std::string name;
  double memory_gib = 0;       // usable device memory as the driver reports it
  double bf16_tflops = 0;      // dense (no sparsity) BF16 tensor-core peak
  double fp8_tflops = 0;       // dense FP8 peak; 0 = no FP8 tensor cores
  double hbm_gbps = 0;         // device memory bandwidth, GB/s
  double intra_node_gbps = 0;  // achievable NCCL bus bandwidth per GPU per direction inside a node, GB/s
  double inter_node_gbps = 0;  // achievable network bandwidth per GPU per direction across nodes, GB/s
  int gpus_per_node = 8;       // the usual node size for this GPU
  std::string source;          // where the numbers come from
};

// Reads a preset JSON file (fields as GpuSpec; InputError naming the file and the field).
GpuSpec load_gpu_spec_file(const std::string& path);
// Finds `name` (a preset name such as H100-SXM-80G, or a path to a .json file) in `dirs`;
// InputError listing the known presets when it is not there.
GpuSpec find_gpu_preset(const std::string& name, const std::vector<std::string>& dirs);
// Preset names (file stems) found in the first of `dirs` that exists.
std::vector<std::string> list_gpu_presets(const std::vector<std::string>& dirs);

// The largest cluster a plan is made for: above the largest built (about 100k GPUs), and small
// enough that the GPU count and every product of parallel sizes fit in int.
inline constexpr int64_t kMaxGpus = int64_t(1) << 17;
inline constexpr int64_t kMaxGpusPerNode = 1024;  // an NVLink domain; GB200 NVL72 has 72

struct Cluster {
  int nnodes = 1, nproc_per_node = 8;
  GpuSpec gpu;
  int world() const { return nnodes * nproc_per_node; }
};

// How a process group of `size` ranks spaced `stride` apart (Megatron rank order) sits on
// nodes of `per_node` GPUs: the members that share a node with any one member, and whether the
// group leaves the node.
struct GroupSpan {
  int size = 1, per_node = 1;
  bool crosses_nodes() const { return per_node < size; }
  // Fraction of an all-to-all's bytes that leave the node.
  double off_node_fraction() const { return size <= 1 ? 0.0 : double(size - per_node) / double(size); }
};
GroupSpan group_span(int size, int stride, int per_node);

}  // namespace moe::plan
