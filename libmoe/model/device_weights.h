// A stage's weights copied into a backend's memory (a GPU's): what the model's forward reads when
// its ops run there.
#pragma once
#include "kernels/backend.h"
#include "model/stage.h"

namespace moe::model {

// Every tensor of `w` copied into `b`'s memory, in its stored dtype, as views that keep their
// copies alive; a tensor `w` holds twice (a head tied to the embedding) is copied once. `w`
// unchanged when b's memory is the host's.
StageWeights weights_on_device(const StageWeights& w, const Backend& b);

}  // namespace moe::model
