#include "model/device_weights.h"

#include <cstddef>
#include <map>
#include <utility>

#include "core/log.h"

namespace moe::model {

namespace {

class Uploader {
 public:
  explicit Uploader(const Backend& b) : b_(b) {}
  Tensor operator()(const Tensor& t) {
    if (!t.defined() || t.numel() == 0) return t;
    auto [it, fresh] = done_.try_emplace({t.raw(), t.nbytes()});
    if (!fresh) return it->second.view(t.shape());
    auto copy = std::make_shared<DeviceArray>(b_.memory, t.nbytes(), "the model's weights");
    b_.memory->to_device(copy->get(), t.raw(), t.nbytes());
    bytes_ += t.nbytes();
    it->second = Tensor::borrow(t.shape(), t.dtype(), copy->get(), copy);
    return it->second;
  }
  // A layer's experts side by side in one block, as ops::experts_by_id reads them on a device
  // (expert e at the first's address + e x its size).
  void experts(std::vector<Tensor>& ts) {
    if (ts.empty()) return;
    size_t total = 0;
    for (const Tensor& t : ts) total += t.nbytes();
    auto block = std::make_shared<DeviceArray>(b_.memory, total, "the model's experts");
    auto* at = static_cast<std::byte*>(block->get());
    for (Tensor& t : ts) {
      b_.memory->to_device(at, t.raw(), t.nbytes());
      t = Tensor::borrow(t.shape(), t.dtype(), at, block);
      at += t.nbytes();
    }
    bytes_ += total;
  }
  size_t bytes() const { return bytes_; }

 private:
  const Backend& b_;
  std::map<std::pair<const void*, size_t>, Tensor> done_;  // by host bytes: shared storage stays shared
  size_t bytes_ = 0;
};

}  // namespace

StageWeights weights_on_device(const StageWeights& w, const Backend& b) {
  if (b.host_memory()) return w;
  Uploader up(b);
  StageWeights d = w;
  for (LayerWeights& l : d.layers) {
    AttentionWeights& a = l.attn;
    for (Tensor* t :
         {&a.input_norm, &a.qkv, &a.qkv_bias, &a.q_norm, &a.k_norm, &a.proj, &l.pre_mlp_norm, &l.moe.router,
          &l.moe.expert_bias, &l.moe.shared_fc1, &l.moe.shared_fc2, &l.moe.shared_gate, &l.mlp.fc1, &l.mlp.fc2})
      *t = up(*t);
    up.experts(l.moe.fc1_E);
    up.experts(l.moe.fc2_E);
  }
  for (Tensor* t : {&d.embedding, &d.final_norm, &d.output}) *t = up(*t);
  log().info("weights on the device: {:.1f} MiB", double(up.bytes()) / (1 << 20));
  return d;
}

}  // namespace moe::model
