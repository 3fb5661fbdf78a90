// Where an op runs: the CPU (OpenMP threads, OpenBLAS) or one CUDA device and stream. Held by
// the model's Context and handed to every op (kernels/ops.h), which dispatches on it.
#pragma once

namespace moe {

struct Backend {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int device = 0;          // CUDA device ordinal
  void* stream = nullptr;  // cudaStream_t (kept opaque here)
  bool is_cpu() const { return kind == Kind::kCpu; }
};

}  // namespace moe
