// The model's forward on the GPU (issue 17's speed targets), each against a ceiling measured in
// the same run: decode at batch 1 on a Qwen3-30B-A3B-shaped bf16 model (hidden 2048, 32/4 heads
// of 128, 128 experts of ffn 768, top-8, vocab 151,936; --layers of its 48, default 12), as
// active-weight bytes per token x tokens/s against the device-to-device copy (bytes read +
// written per second, as bench_cuda_ops); and a 4096-token prefill's TFLOP/s against a bf16
// projection at 8192^3 through the same op (cuBLAS's GemmEx). Its answers are
// checked against the CPU by moe_test_infer's CudaForward rows. Exits 77 without a GPU.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "infer/generator.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "model/transformer.h"

using namespace moe;
using namespace moe::bench;

int main(int argc, char** argv) {
  int layers = 12, new_tokens = 64;
  int64_t prefill = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--layers") == 0) layers = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--prefill") == 0) prefill = std::atoll(argv[i + 1]);
    else if (std::strcmp(argv[i], "--new_tokens") == 0) new_tokens = std::atoi(argv[i + 1]);
  }
  std::string why;
  if (!kernels::cuda::device_available(&why)) {
    std::printf("skipped: %s\n", why.c_str());
    return 77;
  }
  const Backend gpu = cuda_backend(0);
  // Ceiling: the device-to-device copy of 2 GiB, best of 5.
  const size_t copy_bytes = size_t(2) << 30;
  DeviceArray src(gpu.memory, copy_bytes, "copy source"), dst(gpu.memory, copy_bytes, "copy destination");
  double copy_s = 1e30;
  for (int rep = 0; rep < 6; ++rep) {
    kernels::cuda::synchronize();
    const auto t0 = Clock::now();
    gpu.memory->on_device(dst.get(), src.get(), copy_bytes);
    kernels::cuda::synchronize();
    if (rep > 0) copy_s = std::min(copy_s, since(t0));
  }
  const double copy_bw = 2.0 * double(copy_bytes) / copy_s;
  std::printf("device-to-device copy: %.0f GB/s (read + written)\n", copy_bw / 1e9);
  src.reset(), dst.reset();

  model::ModelConfig c;
  c.model_type = "qwen3_moe";
  c.num_layers = layers, c.hidden_size = 2048, c.num_attention_heads = 32, c.num_query_groups = 4;
  c.kv_channels = 128, c.vocab_size = 151936, c.max_position_embeddings = 40960, c.qk_layernorm = true;
  c.num_experts = 128, c.moe_router_topk = 8, c.moe_ffn_hidden_size = 768;
  c.moe_layer_pattern.assign(size_t(layers), true);
  std::printf("model: Qwen3-30B-A3B shape, %d of 48 layers, bf16\n", layers);
  const auto t_init = Clock::now();
  model::Transformer dev(c, random_state(c, DType::BF16), gpu);
  std::printf("weights made and copied to the GPU in %.1f s\n", since(t_init));
  // Bytes a decode step reads: the active parameters, the embedding's one row aside.
  const double active_bytes = 2.0 * (double(c.num_active_parameters()) - double(c.vocab_size) * c.hidden_size);

  std::vector<int32_t> prompt(16);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 7919 + 13) % size_t(c.vocab_size));
  infer::GenerationConfig cfg;
  cfg.max_new_tokens = new_tokens, cfg.sampling.temperature = 0;
  infer::Generator warm(dev);
  warm.generate(prompt, cfg);  // first calls: cuBLAS handles, the pool, the caches grown
  infer::Generator g(dev);
  const auto r = g.generate(prompt, cfg);
  const double tok_s = double(r.ids.size()) / r.decode_seconds, bw = active_bytes * tok_s;
  std::printf(
      "decode (batch 1, %zu tokens): %.1f tokens/s x %.0f MB/token = %.0f GB/s = %.1f%% of the copy "
      "(target >= 70%%)\n",
      r.ids.size(), tok_s, active_bytes / 1e6, bw / 1e9, 100 * bw / copy_bw);

  // Prefill: one forward over `prefill` tokens, the logits of the last.
  std::vector<int32_t> ids(static_cast<size_t>(prefill));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 104729 + 7) % size_t(c.vocab_size));
  std::vector<float> logits(size_t(c.vocab_size));
  dev.forward(ids, logits.data());
  const auto t0 = Clock::now();
  dev.forward(ids, logits.data());
  const double pre_s = since(t0);
  const double flops = 2.0 * double(prefill) * (double(c.num_active_parameters()) - 2.0 * c.vocab_size * c.hidden_size);
  // Ceiling: a bf16 projection at 8192^3 through the same op (x rounded to bf16, then cuBLAS's
  // GemmEx with f32 accumulation), best of 5 after a warm-up.
  const int64_t n = 8192;
  DeviceArray gx(gpu.memory, size_t(n * n) * 4, "GEMM x"), gw(gpu.memory, size_t(n * n) * 2, "GEMM weights"),
      gy(gpu.memory, size_t(n * n) * 4, "GEMM y");
  const Tensor w = Tensor::borrow({n, n}, DType::BF16, gw.get(), nullptr);
  ops::fill(gpu, gx.as<float>(), 0.5f, n * n);  // the weights' bits are whatever the memory held: timing only
  double gemm_s = 1e30;
  for (int rep = 0; rep < 6; ++rep) {
    kernels::cuda::synchronize();
    const auto g0 = Clock::now();
    ops::linear(gpu, gx.as<float>(), n, w, nullptr, gy.as<float>());
    kernels::cuda::synchronize();
    if (rep > 0) gemm_s = std::min(gemm_s, since(g0));
  }
  const double gemm_rate = 2.0 * double(n) * n * n / gemm_s, pre_rate = flops / pre_s;
  std::printf("bf16 projection at 8192^3: %.1f TFLOP/s\n", gemm_rate / 1e12);
  std::printf(
      "prefill (%lld tokens): %.0f tokens/s, %.1f TFLOP/s in the layers' projections = %.1f%% of the "
      "8192^3 projection (target >= 50%%)\n",
      (long long)prefill, double(prefill) / pre_s, pre_rate / 1e12, 100 * pre_rate / gemm_rate);
  return 0;
}
