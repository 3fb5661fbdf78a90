// The model's forward on a backend with its own memory (issue 17): the weights copied there, the
// arenas, KV caches, rotary tables and batch index arrays in that memory, the router's choices
// and the dispatcher's row map crossing to the host and back for a prompt, decode's experts by id
// with nothing crossing. Run on the checked host backend
// (CPU kernels over memory only ops may touch, so model code that reads device memory itself
// faults here) and, when a GPU is usable, on CUDA; each against the CPU on the same weights:
// prompt logits, greedy generation with logprobs across a growing cache, and batched decode.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "infer/generator.h"
#include "kernels/device.h"
#include "model/init_weights.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

using namespace moe;
using namespace moe::infer;

namespace {

model::ModelConfig family(const std::string& type) {
  model::ModelConfig c;
  c.model_type = type;
  c.num_layers = 2, c.hidden_size = 32, c.num_attention_heads = 4, c.num_query_groups = 2, c.kv_channels = 8;
  c.vocab_size = 67, c.max_position_embeddings = 512;
  if (type == "llama") {  // dense, tied head
    c.ffn_hidden_size = 40, c.untie_embeddings_and_output_weights = false;
    c.moe_layer_pattern = {false, false};
  } else {
    c.num_experts = 6, c.moe_router_topk = 2, c.moe_ffn_hidden_size = 12;
    c.moe_layer_pattern = {true, true};
  }
  if (type == "qwen3_moe") c.qk_layernorm = true;
  if (type == "qwen2_moe") {  // qkv bias, shared expert with its gate
    c.add_qkv_bias = true, c.moe_shared_expert_intermediate_size = 20, c.moe_shared_expert_gate = true;
  }
  model::validate_config(c, "test");
  return c;
}

std::vector<int32_t> prompt(size_t n, int salt) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t((i * 7 + size_t(salt) * 13 + 1) % 60);
  return v;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
  return std::sqrt(num / std::max(den, 1e-30));
}

// Logits within `tol` relative L2, top logprobs within `lp_tol`; greedy ids agree when `same_ids`
// (else only the first token's alternatives are compared: the paths may part after it).
void expect_device_matches_cpu(const Backend& device, DType dt, double tol, double lp_tol, bool same_ids) {
  for (const std::string type : {"qwen3_moe", "qwen2_moe", "mixtral", "llama"}) {
    SCOPED_TRACE(type + " " + std::string(dtype_name(dt)));
    const model::ModelConfig c = family(type);
    const model::StateDict state = model::init_random_state(c, 11, dt, 0.2);
    model::Transformer cpu(c, state), dev(c, state, device);
    const int64_t V = c.vocab_size;
    // Every position's logits of a prompt without a cache (the packed-sequence attention), long
    // enough for the experts' row map (more than kExpertsByIdMaxPairs pairs); decode below goes
    // by expert id.
    const std::vector<int32_t> p = prompt(40, 0);
    std::vector<float> a(p.size() * size_t(V)), b(a.size());
    cpu.forward(p, a.data(), true);
    dev.forward(p, b.data(), true);
    EXPECT_LE(rel_l2(b, a), tol);
    // Generation: a prefill joining the cache, then decode steps that grow it, twice (the second
    // prompt extends the first conversation, so the cache is reused).
    GenerationConfig cfg;
    cfg.max_new_tokens = 24, cfg.sampling.temperature = 0, cfg.logprobs = true, cfg.top_logprobs = 5;
    Generator gc(cpu), gd(dev);
    std::vector<int32_t> ctx = prompt(9, 1);
    for (int turn = 0; turn < 2; ++turn) {
      const auto rc = gc.generate(ctx, cfg), rd = gd.generate(ctx, cfg);
      if (same_ids) {
        EXPECT_EQ(rd.ids, rc.ids) << "turn " << turn;
      }
      const size_t n = std::min(rc.logprobs.size(), rd.logprobs.size());
      for (size_t t = 0; t < n && (same_ids || t == 0); ++t)
        for (size_t j = 0; j < rc.logprobs[t].top.size(); ++j)
          EXPECT_NEAR(rd.logprobs[t].top[j].second, rc.logprobs[t].top[j].second, lp_tol) << "token " << t;
      ctx.insert(ctx.end(), rc.ids.begin(), rc.ids.end());
      for (int32_t id : prompt(5, 2 + turn)) ctx.push_back(id);
    }
    // Batched decode over rows of different lengths, each against its own cache.
    if (!same_ids) continue;
    const std::vector<std::vector<int32_t>> rows = {prompt(3, 4), prompt(11, 5), prompt(1, 6), prompt(7, 7)};
    std::vector<std::string> ec, ed;
    const auto bc = generate_batch(cpu, rows, cfg, &ec), bd = generate_batch(dev, rows, cfg, &ed);
    for (size_t r = 0; r < rows.size(); ++r) {
      EXPECT_TRUE(ed[r].empty()) << ed[r];
      EXPECT_EQ(bd[r].ids, bc[r].ids) << "row " << r;
    }
  }
}

}  // namespace

TEST(CheckedHost, ModelCodeTouchingDeviceMemoryFaults) {
  // The check the tests below rely on: outside an op the memory is not accessible.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        const Backend b = checked_host_backend();
        DeviceArray a(b.memory, 64, "a test block");
        a.as<volatile float>()[0] = 1.0f;
      },
      "");
  const Backend b = checked_host_backend();
  DeviceArray a(b.memory, 64, "a test block");
  const float one = 1.0f;
  float back = 0;
  b.memory->to_device(a.get(), &one, sizeof one);
  b.memory->to_host(&back, a.get(), sizeof back);
  EXPECT_EQ(back, 1.0f);
}

TEST(CheckedHost, ForwardEqualsTheCpu) {
  expect_device_matches_cpu(checked_host_backend(), DType::F32, 1e-5, 1e-4, true);
  expect_device_matches_cpu(checked_host_backend(), DType::BF16, 1e-5, 1e-4, true);
}

TEST(DeviceFlag, ParsesAndRefusesWithTheFlagsName) {
  EXPECT_TRUE(backend_for_device("cpu").host_memory());
  EXPECT_EQ(backend_name(backend_for_device("cpu")), "cpu");
  const Backend a = backend_for_device("auto");  // the CPU here unless a GPU is usable
  EXPECT_TRUE(a.kind == Backend::Kind::kCpu || a.kind == Backend::Kind::kCuda);
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1"}) {
    try {
      backend_for_device(bad);
      FAIL() << bad << " was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("--device"), std::string::npos) << e.what();
    }
  }
}

TEST(CudaForward, EqualsTheCpu) {
#ifdef MOE_HAVE_CUDA
  std::string why;
  if (!kernels::cuda::device_available(&why)) GTEST_SKIP() << why;
  // fp32: cuBLAS without TF32, so greedy tokens agree; bf16: the 2e-2 on logprobs.
  expect_device_matches_cpu(cuda_backend(0), DType::F32, 1e-4, 1e-3, true);
  expect_device_matches_cpu(cuda_backend(0), DType::BF16, 1e-2, 2e-2, false);
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}
