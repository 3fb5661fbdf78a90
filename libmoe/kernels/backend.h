// Where an op runs: the CPU (OpenMP threads, OpenBLAS) or one CUDA device and stream. Held by
// the model's Context and handed to every op (kernels/ops.h), which dispatches on it.
// kernels/device.h makes them.
#pragma once
#include <memory>

#include "core/device_memory.h"

namespace moe {

struct Backend {
  // kCheckedHost runs the CPU kernels over memory that only ops may touch: model code on it
  // keeps the discipline a device needs (every byte across through DeviceMemory), and a test
  // that breaks it faults on the CPU instead of on a GPU machine.
  enum class Kind { kCpu, kCuda, kCheckedHost };
  Kind kind = Kind::kCpu;
  int device = 0;          // CUDA device ordinal
  void* stream = nullptr;  // cudaStream_t (kept opaque here)
  // The ops' memory when it is not the host's (null on kCpu): where arenas, caches and
  // weights for this backend live, and how bytes cross.
  std::shared_ptr<const DeviceMemory> memory;
  // The ops run the CPU kernels.
  bool is_cpu() const { return kind != Kind::kCuda; }
  // The ops' buffers are host memory that model code may read and write itself.
  bool host_memory() const { return kind == Kind::kCpu; }
};

}  // namespace moe
