// The KV cache as the model sees it: where attention appends each layer's rotated keys and values
// and reads the earlier positions back. The model only uses this interface; infer/kv_cache.h
// holds the implementation the generator owns (model cannot include infer).
#pragma once
#include <cstdint>

namespace moe::model {

// Per layer, [capacity, ng, d] fp32 keys and values of positions 0 .. length(). The pointers from
// keys()/values() stay valid until the next reserve().
class KvStore {
 public:
  virtual ~KvStore() = default;
  // Positions already held.
  virtual int64_t length() const = 0;
  // Makes room for positions [0, n) in every layer (may move the buffers).
  virtual void reserve(int64_t n) = 0;
  virtual float* keys(int layer) = 0;
  virtual float* values(int layer) = 0;
  // Marks n more positions (written through keys()/values()) as held.
  virtual void advance(int64_t n) = 0;
};

}  // namespace moe::model
