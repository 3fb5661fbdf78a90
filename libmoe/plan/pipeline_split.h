// How a model's layers split into pipeline stages and virtual (interleaved) chunks. Even when
// pp x vpp divides the layers; otherwise every chunk holds ceil(layers / (pp x vpp)) layers
// except the model's first and last chunk, which give up the remainder (Megatron's
// --decoder_first_pipeline_num_layers / --decoder_last_pipeline_num_layers), each keeping at
// least one layer. Chunk k (model order) runs on stage k % pp.
#pragma once
#include "plan/layout.h"
#include "plan/model_shape.h"

namespace moe::plan {

struct PipelineSplit {
  int chunk_layers = 0;                 // layers of a full chunk
  int first_chunk = 0, last_chunk = 0;  // layers of the model's first and last chunk
  bool even() const { return first_chunk == chunk_layers && last_chunk == chunk_layers; }
};

// False when `layers` cannot split over pp x vpp chunks that way.
bool split_pipeline(int layers, int pp, int vpp, PipelineSplit* out);

struct StageLayers {
  int layers = 0, moe_layers = 0;
};
// Layers (and MoE layers among them) on pipeline stage `stage`. Precondition: split_pipeline succeeds.
StageLayers stage_layers(const ModelShape& m, const Layout& l, int stage);

}  // namespace moe::plan
