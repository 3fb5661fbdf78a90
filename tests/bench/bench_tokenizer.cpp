// Tokenizer encode speed on one core: MB/s of mixed English/Chinese text (target >= 5 MB/s),
// cold (empty merge cache) and warm. Usage: moe_bench_tokenizer MODEL_DIR [MB]
// (the test command passes the real Qwen3 tokenizer from tests/text/npm).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/rng.h"
#include "text/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: moe_bench_tokenizer MODEL_DIR [MB]\n");
    return 2;
  }
  const double mb = argc > 2 ? std::atof(argv[2]) : 8.0;
  static const char* en[] = {"The mixture-of-experts layer routes each token to two experts. ",
                             "Training throughput depends on the all-to-all dispatch and the grouped GEMM. ",
                             "In 2026, 1,234 engineers ran 56 jobs on 7,890 GPUs; DON'T panic! ",
                             "def route(x):\n    return softmax(x @ W.T).topk(2)\n",
                             "Hello, world! How are you doing today? I'm fine, thanks. "};
  static const char* zh[] = {"混合专家模型把每个词元路由到两个专家。", "训练吞吐量取决于全对全通信和分组矩阵乘法。",
                             "今天天气很好，我们去公园散步吧！", "大语言模型的推理速度受内存带宽限制。"};
  moe::Rng rng(1);
  std::string text;
  while (text.size() < size_t(mb * 1e6)) text += rng.next() % 2 ? en[rng.next() % 5] : zh[rng.next() % 4];
  auto tok = moe::text::Tokenizer::load(argv[1]);
  double best_cold = 0, best_warm = 0;
  size_t ntok = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto fresh = moe::text::Tokenizer::load(argv[1]);
    auto t0 = std::chrono::steady_clock::now();
    ntok = fresh->encode(text).size();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best_cold = std::max(best_cold, double(text.size()) / s / 1e6);
    t0 = std::chrono::steady_clock::now();
    fresh->encode(text);
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best_warm = std::max(best_warm, double(text.size()) / s / 1e6);
  }
  std::printf("tokenizer %s: %.1f MB mixed English/Chinese -> %zu tokens\n", argv[1], double(text.size()) / 1e6, ntok);
  std::printf("encode, one core: %.2f MB/s cold cache, %.2f MB/s warm cache (target 5 MB/s)\n", best_cold, best_warm);
  return 0;
}
