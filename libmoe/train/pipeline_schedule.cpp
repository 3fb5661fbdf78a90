#include "train/pipeline_schedule.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <vector>

#include "core/error.h"

namespace moe::train {

namespace {

constexpr int kActivationTag = 1, kGradientTag = 2;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// This rank's point-to-point steps with its neighbours (none on the first / last stage). Every
// message is one micro-batch's activation rows (T, or its TP rank's rows under sequence
// parallelism) x D floats; both sides know them.
struct Neighbours {
  dist::Communicator& pp;
  const model::TrainModel& m;
  int64_t D;
  bool first, last;
  std::vector<float> input, grad_output, grad_input;  // one micro-batch each, reused

  int64_t n(const model::MicroBatchView& mb) const { return m.activation_rows(int64_t(mb.tokens.size())) * D; }
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
                          std::span<const float> loss_scales, float aux_scale, PipelineTimes* times) {
  MOE_ASSERT(loss_scales.size() == mbs.size(), "1F1B: {} loss scales for {} micro-batches", loss_scales.size(),
             mbs.size());
  const auto t_start = Clock::now();
  double compute = 0;
  Neighbours nb{pp, m, m.config().hidden_size, m.first_stage(), m.last_stage(), {}, {}, {}};
  const int M = int(mbs.size()), P = pp.size(), rank = pp.rank();
  const int warmup = warmup_forwards(P, rank, M), steady = M - warmup;
  const int slots = std::max(1, std::min(P - rank, M));  // micro-batches in flight on this stage
  model::StepStats st;
  st.tokens_per_expert.assign(size_t(m.config().num_layers) * size_t(std::max(m.config().num_experts, 0)), 0);
  auto forward = [&](int i) {
    const auto t = Clock::now();
    st.add(
        m.forward_stage(mbs[size_t(i)], i % slots, true, loss_scales[size_t(i)], nb.first ? nullptr : nb.input.data()));
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
    else nb.send_backward_recv_forward(mbs[size_t(b)], mbs[size_t(f) + 1]);
  }
  for (int b = steady; b < M; ++b) {  // cool-down: the warm-up's backwards
    nb.recv_backward(mbs[size_t(b)]);
    backward(b);
    nb.send_backward(mbs[size_t(b)]);
  }
  if (times) times->compute_s += compute, times->total_s += seconds_since(t_start);
  return st;
}

model::StepStats run_interleaved(model::TrainModel& m, dist::Communicator& pp,
                                 std::span<const model::MicroBatchView> mbs, std::span<const float> loss_scales,
                                 float aux_scale, PipelineTimes* times) {
  const auto t_start = Clock::now();
  double compute = 0;
  const int P = pp.size(), r = pp.rank(), V = m.chunks(), M = int(mbs.size());
  MOE_ASSERT(P > 1 && V > 1 && M % P == 0, "interleaved schedule: {} micro-batches over {} stages x {} chunks", M, P,
             V);
  MOE_ASSERT(loss_scales.size() == mbs.size(), "interleaved schedule: {} loss scales for {} micro-batches",
             loss_scales.size(), mbs.size());
  const int total = M * V;
  const int64_t D = m.config().hidden_size;
  int64_t max_t = 0;
  for (const auto& mb : mbs) max_t = std::max<int64_t>(max_t, m.activation_rows(int64_t(mb.tokens.size())));
  const int64_t n = max_t * D;  // every message: the longest micro-batch's activation rows
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  // Megatron's get_model_chunk_id; k may be negative (the last stage looks P - 1 steps back), so
  // the modulo is taken as Python's.
  auto chunk_of = [&](int k, bool forward) {
    const int c = ((k % (P * V) + P * V) % (P * V)) / P;
    return forward ? c : V - 1 - c;
  };
  auto mb_of = [&](int k) { return (k / (P * V)) * P + k % P; };
  auto first_chunk = [&](int c) { return r == 0 && c == 0; };         // holds the embedding
  auto last_chunk = [&](int c) { return r == P - 1 && c == V - 1; };  // holds the head
  const auto Vs = static_cast<size_t>(V), ns = static_cast<size_t>(n);
  std::vector<std::deque<std::vector<float>>> inputs(Vs), grads(Vs);
  std::vector<std::vector<int>> slot_of(Vs, std::vector<int>(static_cast<size_t>(M), -1));
  std::vector<std::vector<int>> free_slots(Vs);
  std::vector<int> slots_made(Vs, 0);
  std::vector<float> out_buf(ns), gin_buf(ns);
  model::StepStats st;
  st.tokens_per_expert.assign(size_t(m.config().num_layers) * size_t(std::max(m.config().num_experts, 0)), 0);

  // One batch of this step's transfers: the forward output to the next stage, the input gradient
  // to the previous one, and what comes back from each.
  auto exchange = [&](const float* send_fwd, bool recv_prev, const float* send_bwd, bool recv_next,
                      std::vector<float>* got_fwd, std::vector<float>* got_bwd) {
    std::vector<dist::Communicator::P2p> ops;
    if (send_fwd) ops.push_back({true, const_cast<float*>(send_fwd), n, dist::DataType::kF32, next, kActivationTag});
    if (recv_prev) {
      got_fwd->assign(size_t(n), 0.0f);
      ops.push_back({false, got_fwd->data(), n, dist::DataType::kF32, prev, kActivationTag});
    }
    if (send_bwd) ops.push_back({true, const_cast<float*>(send_bwd), n, dist::DataType::kF32, prev, kGradientTag});
    if (recv_next) {
      got_bwd->assign(size_t(n), 0.0f);
      ops.push_back({false, got_bwd->data(), n, dist::DataType::kF32, next, kGradientTag});
    }
    pp.exchange(ops);
  };
  // Forward of virtual step k: its output copied for sending (null on the model's last chunk).
  auto forward = [&](int k) -> const float* {
    const int c = chunk_of(k, true), j = mb_of(k);
    const model::MicroBatchView& mb = mbs[size_t(j)];
    std::vector<float> input;
    if (!first_chunk(c)) {
      MOE_ASSERT(!inputs[size_t(c)].empty(), "stage {} chunk {}: no input for micro-batch {}", r, c, j);
      input = std::move(inputs[size_t(c)].front());
      inputs[size_t(c)].pop_front();
    }
    int slot = 0;
    if (!free_slots[size_t(c)].empty()) slot = free_slots[size_t(c)].back(), free_slots[size_t(c)].pop_back();
    else slot = slots_made[size_t(c)]++;
    const auto t = Clock::now();
    const model::StepStats s =
        m.forward_stage(mb, slot, true, loss_scales[size_t(j)], input.empty() ? nullptr : input.data(), c);
    compute += seconds_since(t);
    st.add(s);
    const int64_t tn = m.activation_rows(int64_t(mb.tokens.size())) * D;
    if (!last_chunk(c)) std::copy_n(m.stage_output(slot, c), tn, out_buf.begin());
    slot_of[size_t(c)][size_t(j)] = slot;
    return last_chunk(c) ? nullptr : out_buf.data();
  };
  // Backward of virtual step k: its input gradient for sending (null on the model's first chunk).
  auto backward = [&](int k) -> const float* {
    const int c = chunk_of(k, false), j = mb_of(k);
    std::vector<float> gout;
    if (!last_chunk(c)) {
      MOE_ASSERT(!grads[size_t(c)].empty(), "stage {} chunk {}: no output gradient for micro-batch {}", r, c, j);
      gout = std::move(grads[size_t(c)].front());
      grads[size_t(c)].pop_front();
    }
    const int slot = slot_of[size_t(c)][size_t(j)];
    const auto t = Clock::now();
    m.backward_stage(mbs[size_t(j)], slot, aux_scale, gout.empty() ? nullptr : gout.data(),
                     first_chunk(c) ? nullptr : gin_buf.data(), c);
    compute += seconds_since(t);
    free_slots[size_t(c)].push_back(slot);
    return first_chunk(c) ? nullptr : gin_buf.data();
  };

  // Megatron's warm-up: forwards before the first backward (all of them when M == P).
  const bool all_warmup = M == P;
  const int warmup = all_warmup ? total : std::min(total, (P - r - 1) * 2 + (V - 1) * P);
  const int remaining = total - warmup;
  std::vector<float> got_fwd, got_bwd;
  if (r != 0) {  // the first chunk's first input
    exchange(nullptr, true, nullptr, false, &got_fwd, nullptr);
    inputs[0].push_back(std::move(got_fwd));
  }
  for (int k = 0; k < warmup; ++k) {
    const float* out = forward(k);
    const int next_c = chunk_of(k + 1, true);
    bool recv_prev = !(r == 0 && next_c == 0) && k != total - 1;
    if (k == warmup - 1 && !all_warmup) {
      const bool recv_next = r != P - 1;
      exchange(out, recv_prev, nullptr, recv_next, &got_fwd, &got_bwd);
      if (recv_next) grads[size_t(V - 1)].push_back(std::move(got_bwd));
    } else {
      exchange(out, recv_prev, nullptr, false, &got_fwd, nullptr);
    }
    if (recv_prev) inputs[size_t(next_c)].push_back(std::move(got_fwd));
  }
  for (int k = 0; k < remaining; ++k) {
    const int fk = k + warmup, bk = k;
    const float* out = forward(fk);
    const float* gin = backward(bk);
    bool recv_prev = true, recv_next = true;
    int next_fc = 0, next_bc = 0;
    if (r == 0) {
      next_fc = chunk_of(fk - (P - 1), true);
      if (next_fc == V - 1) recv_prev = false;
      next_fc += 1;
    } else {
      next_fc = chunk_of(fk + 1, true);
    }
    if (r == P - 1) {
      next_bc = chunk_of(bk - (P - 1), false);
      if (next_bc == 0) recv_next = false;
      next_bc -= 1;
    } else {
      next_bc = chunk_of(bk + 1, false);
    }
    if (k == remaining - 1) recv_prev = false;
    exchange(out, recv_prev, gin, recv_next, &got_fwd, &got_bwd);
    if (recv_prev) inputs[size_t(next_fc)].push_back(std::move(got_fwd));
    if (recv_next) grads[size_t(next_bc)].push_back(std::move(got_bwd));
  }
  if (all_warmup && r != P - 1) {
    exchange(nullptr, false, nullptr, true, nullptr, &got_bwd);
    grads[size_t(V - 1)].push_back(std::move(got_bwd));
  }
  for (int k = remaining; k < total; ++k) {  // cool-down: the warm-up's backwards
    const float* gin = backward(k);
    const int next_bc = chunk_of(k + 1, false);
    const bool recv_next = !(r == P - 1 && next_bc == V - 1) && k != total - 1;
    exchange(nullptr, false, gin, recv_next, nullptr, &got_bwd);
    if (recv_next) grads[size_t(next_bc)].push_back(std::move(got_bwd));
  }
  if (times) times->compute_s += compute, times->total_s += seconds_since(t_start);
  return st;
}

std::vector<model::StepStats> run_forward(model::TrainModel& m, dist::Communicator& pp,
                                          std::span<const model::MicroBatchView> mbs) {
  // One micro-batch through the model's chunks at a time: stage r's chunk v takes its input from
  // the previous stage (from the last stage's chunk v - 1 on the first stage) and hands its output
  // on, so every transfer has its receiver waiting and any number of micro-batches runs.
  const int P = pp.size(), r = pp.rank(), V = m.chunks();
  const int64_t D = m.config().hidden_size;
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  std::vector<float> input;
  std::vector<model::StepStats> out(mbs.size());
  for (size_t j = 0; j < mbs.size(); ++j) {
    const model::MicroBatchView& mb = mbs[j];
    const int64_t n = m.activation_rows(int64_t(mb.tokens.size())) * D;
    for (int c = 0; c < V; ++c) {
      const bool first = r == 0 && c == 0, last = r == P - 1 && c == V - 1;
      if (!first) {
        input.resize(size_t(n));
        pp.recv(input.data(), n, dist::DataType::kF32, prev, kActivationTag);
      }
      const model::StepStats s = m.forward_stage(mb, 0, false, 0.0f, first ? nullptr : input.data(), c);
      if (c == 0) out[j] = s;
      else out[j].add(s);
      if (!last) pp.send(m.stage_output(0, c), n, dist::DataType::kF32, next, kActivationTag);
    }
  }
  return out;
}

}  // namespace moe::train
