#include "train/pipeline_schedule.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace moe::train {

namespace {

constexpr int kActivationTag = 1, kGradientTag = 2;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// This rank's point-to-point steps with its neighbours (none on the first / last stage). Every
// message is one micro-batch's [T, D] floats; T is known on both sides.
struct Neighbours {
  dist::Communicator& pp;
  int64_t D;
  bool first, last;
  std::vector<float> input, grad_output, grad_input;  // one micro-batch each, reused

  int64_t n(const model::MicroBatchView& mb) const { return int64_t(mb.tokens.size()) * D; }
  float* in(const model::MicroBatchView& mb) {
    input.resize(size_t(n(mb)));
    return first ? nullptr : input.data();
  }
  float* gin(const model::MicroBatchView& mb) {
    grad_input.resize(size_t(n(mb)));
    return first ? nullptr : grad_input.data();
  }
  float* gout(const model::MicroBatchView& mb) {
    grad_output.resize(size_t(n(mb)));
    return last ? nullptr : grad_output.data();
  }
  void recv_forward(const model::MicroBatchView& mb) {
    if (!first) pp.recv(in(mb), n(mb), dist::DataType::kF32, pp.rank() - 1, kActivationTag);
  }
  void send_forward(const model::MicroBatchView& mb, const float* out) {
    if (!last) pp.send(out, n(mb), dist::DataType::kF32, pp.rank() + 1, kActivationTag);
  }
  void recv_backward(const model::MicroBatchView& mb) {
    if (!last) pp.recv(gout(mb), n(mb), dist::DataType::kF32, pp.rank() + 1, kGradientTag);
  }
  void send_backward(const model::MicroBatchView& mb) {
    if (!first) pp.send(grad_input.data(), n(mb), dist::DataType::kF32, pp.rank() - 1, kGradientTag);
  }
  // With the next stage (this one the earlier: it sends first).
  void send_forward_recv_backward(const model::MicroBatchView& fwd, const float* out,
                                  const model::MicroBatchView& bwd) {
    send_forward(fwd, out);
    recv_backward(bwd);
  }
  // With the previous stage (this one the later: it receives first).
  void send_backward_recv_forward(const model::MicroBatchView& bwd, const model::MicroBatchView& fwd) {
    recv_forward(fwd);
    send_backward(bwd);
  }
};

}  // namespace

model::StepStats run_1f1b(model::TrainModel& m, dist::Communicator& pp, std::span<const model::MicroBatchView> mbs,
                          float loss_scale, float aux_scale, PipelineTimes* times) {
  const auto t_start = Clock::now();
  double compute = 0;
  Neighbours nb{pp, m.config().hidden_size, m.first_stage(), m.last_stage(), {}, {}, {}};
  const int M = int(mbs.size()), P = pp.size(), rank = pp.rank();
  const int warmup = warmup_forwards(P, rank, M), steady = M - warmup;
  const int slots = std::max(1, std::min(P - rank, M));  // micro-batches in flight on this stage
  model::StepStats st;
  st.tokens_per_expert.assign(size_t(m.config().num_layers) * size_t(std::max(m.config().num_experts, 0)), 0);
  auto forward = [&](int i) {
    const auto t = Clock::now();
    st.add(m.forward_stage(mbs[size_t(i)], i % slots, true, loss_scale, nb.first ? nullptr : nb.input.data()));
    compute += seconds_since(t);
    return m.stage_output(i % slots);
  };
  auto backward = [&](int i) {
    const auto t = Clock::now();
    const model::MicroBatchView& mb = mbs[size_t(i)];
    m.backward_stage(mb, i % slots, aux_scale, nb.last ? nullptr : nb.grad_output.data(), nb.gin(mb));
    compute += seconds_since(t);
  };
  for (int i = 0; i < warmup; ++i) {
    nb.recv_forward(mbs[size_t(i)]);
    nb.send_forward(mbs[size_t(i)], forward(i));
  }
  if (steady > 0) nb.recv_forward(mbs[size_t(warmup)]);
  for (int k = 0; k < steady; ++k) {
    const int f = warmup + k, b = k;  // forward of micro-batch f, then backward of the oldest in flight
    const float* out = forward(f);
    nb.send_forward_recv_backward(mbs[size_t(f)], out, mbs[size_t(b)]);
    backward(b);
    if (k + 1 == steady) nb.send_backward(mbs[size_t(b)]);
    else nb.send_backward_recv_forward(mbs[size_t(b)], mbs[size_t(f + 1)]);
  }
  for (int b = steady; b < M; ++b) {  // cool-down: the warm-up's backwards
    nb.recv_backward(mbs[size_t(b)]);
    backward(b);
    nb.send_backward(mbs[size_t(b)]);
  }
  if (times) times->compute_s += compute, times->total_s += seconds_since(t_start);
  return st;
}

std::vector<model::StepStats> run_forward(model::TrainModel& m, dist::Communicator& pp,
                                          std::span<const model::MicroBatchView> mbs) {
  Neighbours nb{pp, m.config().hidden_size, m.first_stage(), m.last_stage(), {}, {}, {}};
  std::vector<model::StepStats> out;
  out.reserve(mbs.size());
  for (const auto& mb : mbs) {
    nb.recv_forward(mb);
    nb.in(mb);
    out.push_back(m.forward_stage(mb, 0, false, 0.0f, nb.first ? nullptr : nb.input.data()));
    nb.send_forward(mb, m.stage_output(0));
  }
  return out;
}

}  // namespace moe::train
