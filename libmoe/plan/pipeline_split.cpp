#include "plan/pipeline_split.h"

namespace moe::plan {

bool split_pipeline(int layers, int pp, int vpp, PipelineSplit* out) {
  if (pp < 1 || vpp < 1 || layers < 1) return false;
  const int chunks = pp * vpp;
  if (chunks > layers) return false;
  PipelineSplit s;
  s.chunk_layers = (layers + chunks - 1) / chunks;
  const int deficit = s.chunk_layers * chunks - layers;
  s.first_chunk = s.chunk_layers - (deficit + 1) / 2;
  s.last_chunk = s.chunk_layers - deficit / 2;
  if (deficit > 0 && (chunks < 2 || s.first_chunk < 1 || s.last_chunk < 1)) return false;
  if (chunks == 1 && deficit > 0) return false;
  *out = s;
  return true;
}

StageLayers stage_layers(const ModelShape& m, const Layout& l, int stage) {
  PipelineSplit s;
  StageLayers r;
  if (!split_pipeline(m.num_layers, l.pp, l.vpp, &s)) return r;
  const int chunks = l.pp * l.vpp;
  for (int v = 0; v < l.vpp; ++v) {
    const int k = v * l.pp + stage;
    const int size = k == 0 ? s.first_chunk : k == chunks - 1 ? s.last_chunk : s.chunk_layers;
    const int begin = k == 0 ? 0 : k * s.chunk_layers - (s.chunk_layers - s.first_chunk);
    r.layers += size;
    r.moe_layers += m.moe_layers_in(begin, begin + size);
  }
  return r;
}

}  // namespace moe::plan
