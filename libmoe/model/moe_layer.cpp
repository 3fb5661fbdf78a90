#include "model/moe_layer.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/context_parallel.h"

namespace moe::model {

namespace {

bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }

// The EP group when the experts are spread over several ranks; else null.
dist::Communicator* expert_group(const Context& ctx) {
  return ctx.groups && ctx.groups->ep().size() > 1 ? &ctx.groups->ep() : nullptr;
}

int64_t max_rows(const MoeDims& m) { return TokenDispatcher::max_rows(m.Tr, m.K, m.E, m.capacity, m.pad_to); }

// Experts split over ETP = TP: each TP rank ran its slice of every expert (fc2 row-parallel) on
// the same rows, so their outputs are partial sums, added up before the routing weights apply
// (the router's gradient needs whole outputs), and their input gradients are partial too. With EP
// as well, the EP group holds one TP rank's slices, and the rows any TP rank sends, its TP peers
// send to their peers alike.
bool experts_partial(const MoeDims& m) { return m.tp_partial && !m.own_rows; }

// The rows this rank routes: [begin, begin + n) of the layer's T (all of them, or under folding
// its sequence-parallel share, the padding rows past T left out), where they start in the layer's
// input and output (`at`: begin, or 0 when those hold this rank's rows alone), and the router's
// view of them.
struct RoutedRows {
  int64_t begin = 0, n = 0, at = 0;
  RouterRows router;
};

RoutedRows routed_rows(const Context& ctx, const MoeDims& m, const Batch& b) {
  if (cp_split(ctx, b)) {  // this CP rank's rows of every sequence, all of them routed here
    MOE_ASSERT(!m.own_rows, "MoE parallel folding with context parallelism");
    return {0, m.T, 0, {&ctx.groups->cp(), 0, b.cp_cu_seqlens.back(), true}};
  }
  if (!m.own_rows) return {0, m.T, 0, {}};
  const int64_t begin = ctx.groups->tp().rank() * m.Tr, n = std::clamp<int64_t>(m.T - begin, 0, m.Tr);
  return {begin, n, m.rows_local ? 0 : begin, {&ctx.groups->tp(), begin, m.T}};
}

// The backward's own temporaries (the shared expert's come after them, in swiglu_mlp_backward).
struct MoeScratch {
  std::span<float> dy_perm, dweight_TK, dx_perm, dlogits_TE, dshared_TD, dgate_logit_T, dx_partial_TD;
};

MoeScratch carve_moe_backward_scratch(Arena& ws, const MoeDims& m) {
  const int64_t R = max_rows(m);
  MoeScratch s;
  s.dy_perm = ws.take<float>(size_t(R * m.D));
  s.dweight_TK = ws.take<float>(size_t(m.Tr * m.K));
  s.dx_perm = ws.take<float>(size_t(R * m.D));
  s.dlogits_TE = ws.take<float>(size_t(m.Tr * m.E));
  if (m.shared_F > 0) {
    s.dshared_TD = ws.take<float>(size_t(m.T * m.D));
    if (m.shared_gate) s.dgate_logit_T = ws.take<float>(size_t(m.T));
  }
  if (m.tp_partial) s.dx_partial_TD = ws.take<float>(size_t(m.T * m.D));
  return s;
}

// The shared expert (when the layer has one) added to y: every row of x, gated or not.
void add_shared_expert(const Context& ctx, const MoeDims& m, const MoeWeights& w, const float* x, bool recompute_act,
                       Arena& keep, MoeSaved& s, float* y) {
  if (m.shared_F == 0) return;
  const Backend& be = ctx.backend;
  const int64_t T = m.T, D = m.D;
  s.shared_out_TD = keep.take<float>(size_t(T * D));
  if (m.shared_gate) s.gate_logit_T = keep.take<float>(size_t(T)), s.gate_T = keep.take<float>(size_t(T));
  swiglu_mlp_forward(ctx, x, T, w.shared_fc1, w.shared_fc2, keep, s.shared, s.shared_out_TD.data(), false,
                     recompute_act);
  tp_all_reduce(ctx, s.shared_out_TD.data(), T * D);  // whole before the (replicated) gate scales it
  if (m.shared_gate) {
    ops::linear(be, x, T, w.shared_gate, nullptr, s.gate_logit_T.data());
    ops::shared_gate(be, s.gate_logit_T.data(), s.shared_out_TD.data(), T, D, s.gate_T.data(), y);
  } else {
    ops::add(be, y, s.shared_out_TD.data(), T * D);
  }
}

// Decode on a backend with its own memory (so inference: a device runs nothing else), one process,
// dropless, few pairs: the experts by id (ops::experts_by_id) rather than through a row map.
bool decodes_by_id(const Context& ctx, const MoeDims& m, const MoeTrainOptions& o, const Batch& b,
                   const dist::Communicator* ep) {
  return !ctx.backend.host_memory() && !ep && tp_size(ctx) == 1 && !cp_split(ctx, b) && o.capacity_factor <= 0 &&
         m.T * m.K <= kExpertsByIdMaxPairs;
}

}  // namespace

MoeDims moe_dims(int64_t T, int64_t D, int64_t E, int64_t K, int64_t F, int64_t shared_F, bool shared_gate,
                 const MoeTrainOptions& o) {
  MoeDims m;
  m.T = T, m.Tr = T, m.D = D, m.E = E, m.K = K, m.F = F;
  m.shared_F = shared_F, m.shared_gate = shared_F > 0 && shared_gate;
  m.capacity = router_capacity(o, T, E, K);
  m.pad_to = o.pad_expert_input_to_capacity ? m.capacity : 0;
  return m;
}

void set_tensor_parallel(MoeDims& m, int tp, int64_t own_rows, const MoeTrainOptions& o) {
  if (tp <= 1) return;
  m.own_rows = own_rows > 0;
  if (m.own_rows) {  // the capacity of the rows routed here (Megatron's per rank)
    m.Tr = own_rows, m.capacity = router_capacity(o, m.Tr, m.E, m.K);
    m.pad_to = o.pad_expert_input_to_capacity ? m.capacity : 0;
  }
  m.tp_partial = !m.own_rows || m.shared_F > 0;
  m.rows_local = m.own_rows && m.shared_F == 0;
}

MoeDims moe_dims(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, int64_t T) {
  // Routing is over every expert; under EP only the grouped experts are local, under TP each
  // expert's and the shared expert's width is the rank's slice (ShardSpec's local shapes).
  const bool tp = tp_size(ctx) > 1;
  MoeDims m =
      moe_dims(T, c.hidden_size, c.num_experts, c.moe_router_topk, tp ? ctx.local.moe_ffn : c.moe_ffn_hidden_size,
               tp ? ctx.local.shared_ffn : c.moe_shared_expert_intermediate_size, c.moe_shared_expert_gate, o);
  set_tensor_parallel(m, tp_size(ctx), moe_routes_own_rows(ctx) ? seq_rows(ctx, T) : 0, o);
  return m;
}

void carve_moe_saved(Arena& keep, const MoeDims& m, bool recompute_act) {
  const int64_t T = m.T, R = max_rows(m);
  keep.take<float>(size_t(m.Tr * m.E));  // logits_TE
  carve_router_saved(keep, m.Tr, m.E, m.K);
  TokenDispatcher::carve(keep, m.E, R);
  keep.take<float>(size_t(R * m.D));  // x_perm
  keep.take<float>(size_t(R * m.D));  // y_perm
  keep.take<float>(size_t(R * 2 * m.F));
  if (!recompute_act) keep.take<float>(size_t(R * m.F));
  if (m.shared_F > 0) {
    keep.take<float>(size_t(T * m.D));  // shared_out_TD
    if (m.shared_gate) keep.take<float>(size_t(T)), keep.take<float>(size_t(T));
    carve_swiglu_saved(keep, T, m.shared_F, recompute_act);
  }
}

size_t moe_forward_scratch_bytes(const MoeDims& m, bool recompute_act) {
  Arena a = Arena::measuring();
  if (m.shared_F > 0) carve_swiglu_forward_scratch(a, m.T, m.shared_F, recompute_act);
  return a.high_water();
}

size_t moe_backward_scratch_bytes(const MoeDims& m, bool recompute_act) {
  Arena a = Arena::measuring();
  carve_moe_backward_scratch(a, m);
  if (m.shared_F > 0) carve_swiglu_backward_scratch(a, m.T, m.shared_F, recompute_act);
  return a.high_water();
}

void moe_layer_forward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                       const float* x, const Batch& b, bool recompute_act, Arena& keep, MoeSaved& s, float* y) {
  const Backend& be = ctx.backend;
  const MoeDims m = moe_dims(ctx, c, o, b.size());
  const int64_t D = m.D, E = m.E, K = m.K, F = m.F, Rmax = max_rows(m);
  MOE_ASSERT(has(w.shared_fc1) == (m.shared_F > 0) && has(w.shared_gate) == m.shared_gate,
             "shared expert weights disagree with the config");
  // Carved in carve_moe_saved's order. The routed rows are xr, their outputs go to yr.
  const RoutedRows rr = routed_rows(ctx, m, b);
  const int64_t n = rr.n;
  const float* xr = x + rr.at * D;
  float* yr = y + rr.at * D;
  s.logits_TE = keep.take<float>(size_t(m.Tr * E)).first(size_t(n * E));
  ops::linear(be, xr, n, w.router, nullptr, s.logits_TE.data());
  const float* bias = has(w.expert_bias) ? w.expert_bias.f32() : nullptr;
  dist::Communicator* ep = expert_group(ctx);
  if (decodes_by_id(ctx, m, o, b, ep)) {
    // Decode on a device: the experts read their ids where the router wrote them, so nothing
    // crosses to the host (the row map below is sized there). Carves less than the row-map path.
    router_infer_topk(be, o, s.logits_TE.data(), n, E, K, c.moe_router_pre_softmax, bias, keep, s.router);
    const size_t P = size_t(n * K);
    s.gu_R2F = keep.take<float>(P * size_t(2 * F)), s.h_RF = keep.take<float>(P * size_t(F));
    const std::span<float> y_pairs = keep.take<float>(P * size_t(D));
    ops::fill(be, y, 0.0f, m.io_rows() * D);
    ops::experts_by_id(be, xr, n, K, D, F, s.router.expert_TK.data(), s.router.weight_TK.data(), w.fc1_E, w.fc2_E,
                       s.gu_R2F.data(), s.h_RF.data(), y_pairs.data(), yr);
    add_shared_expert(ctx, m, w, x, recompute_act, keep, s, y);
    return;
  }
  router_train_forward(be, o, s.logits_TE.data(), n, E, K, c.moe_router_pre_softmax, b.cu_seqlens, bias, rr.router,
                       keep, s.router);
  const int64_t pad_to = o.pad_expert_input_to_capacity ? s.router.capacity : 0;
  s.disp.emplace(be, s.router.expert_TK, s.router.weight_TK, n, K, E, s.router.capacity, pad_to, keep);
  const TokenDispatcher& disp = *s.disp;
  const size_t R = size_t(disp.rows());
  s.x_perm = keep.take<float>(size_t(Rmax * D)).first(R * size_t(D));
  s.y_perm = keep.take<float>(size_t(Rmax * D)).first(R * size_t(D));
  s.gu_R2F = keep.take<float>(size_t(Rmax * 2 * F)).first(R * size_t(2 * F));
  s.h_RF = recompute_act ? std::span<float>() : keep.take<float>(size_t(Rmax * F)).first(R * size_t(F));
  ops::fill(be, y, 0.0f, m.io_rows() * D);  // under folding other ranks' rows get the shared expert's only
  if (ep && o.token_dispatcher == "allgather") {
    // Every rank's tokens here; the local experts' outputs, weighted, summed back to their owners.
    s.ep = std::make_shared<ExpertParallelRows>();
    ExpertParallelRows& r = *s.ep;
    const int64_t El = int64_t(w.fc1_E.size());
    const AllGatherExchange& ag = r.gather.emplace(be, *ep, n, K, s.router.expert_TK, s.router.weight_TK, El);
    const TokenDispatcher& ld = r.gather_disp.emplace(be, ag.local_routing(), El);
    const size_t Ta = size_t(ag.total_tokens()), RL = size_t(ld.rows());
    std::vector<float> x_all(Ta * size_t(D)), y_all(Ta * size_t(D), 0.0f);
    ag.gather(xr, D, x_all.data());
    r.x_local.resize(RL * size_t(D)), r.gu_local.resize(RL * size_t(2 * F)), r.y_local.resize(RL * size_t(D));
    if (!recompute_act) r.h_local.resize(RL * size_t(F));
    ld.permute(x_all.data(), D, r.x_local.data());
    ops::grouped_swiglu(be, r.x_local.data(), D, F, ld.offsets(), ld.blocks(), w.fc1_E, w.fc2_E, r.gu_local.data(),
                        recompute_act ? nullptr : r.h_local.data(), r.y_local.data());
    ld.unpermute_add(r.y_local.data(), D, y_all.data());
    ag.reduce_scatter(y_all.data(), D, yr);
    if (experts_partial(m)) tp_all_reduce(ctx, yr, n * D);
  } else {
    disp.permute(xr, D, s.x_perm.data());
    if (ep) {
      // Rows travel to their experts' owners, which run their local experts, and come back.
      s.ep = std::make_shared<ExpertParallelRows>();
      ExpertParallelRows& r = *s.ep;
      const ExpertExchange& xc = r.exchange.emplace(be, disp, *ep, int64_t(w.fc1_E.size()));
      const size_t RL = size_t(xc.local_rows());
      r.x_local.resize(RL * size_t(D)), r.gu_local.resize(RL * size_t(2 * F)), r.y_local.resize(RL * size_t(D));
      if (!recompute_act) r.h_local.resize(RL * size_t(F));
      xc.dispatch(s.x_perm.data(), D, r.x_local.data());
      ops::grouped_swiglu(be, r.x_local.data(), D, F, xc.local_offsets(), xc.local_blocks(), w.fc1_E, w.fc2_E,
                          r.gu_local.data(), recompute_act ? nullptr : r.h_local.data(), r.y_local.data());
      xc.combine(r.y_local.data(), D, s.y_perm.data());
    } else {
      ops::grouped_swiglu(be, s.x_perm.data(), D, F, disp.offsets(), disp.blocks(), w.fc1_E, w.fc2_E, s.gu_R2F.data(),
                          recompute_act ? nullptr : s.h_RF.data(), s.y_perm.data());
    }
    if (experts_partial(m)) tp_all_reduce(ctx, s.y_perm.data(), int64_t(R) * D);
    disp.unpermute_add(s.y_perm.data(), D, yr);
  }

  add_shared_expert(ctx, m, w, x, recompute_act, keep, s, y);
}

void moe_layer_forward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                       const float* x, const Batch& b, bool recompute_act, MoeSaved& s, float* y) {
  const MoeDims m = moe_dims(ctx, c, o, b.size());
  Context own = ctx;
  if (!own.workspace) own.workspace = std::make_shared<Arena>();
  own.workspace->reserve(moe_forward_scratch_bytes(m, recompute_act));
  Arena measure = Arena::measuring();
  carve_moe_saved(measure, m, recompute_act);
  s.own = std::make_shared<Arena>();
  s.own->reserve(measure.high_water());
  moe_layer_forward(own, c, o, w, x, b, recompute_act, *s.own, s, y);
}

void moe_layer_backward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                        MoeWeights& g, const float* x, const Batch& b, const MoeSaved& s, const float* dy,
                        float aux_scale, float* dx) {
  const Backend& be = ctx.backend;
  const MoeDims m = moe_dims(ctx, c, o, b.size());
  const int64_t T = m.T, D = m.D, E = m.E, K = m.K, F = m.F;
  const RoutedRows rr = routed_rows(ctx, m, b);
  const int64_t n = rr.n;
  const float* xr = x + rr.at * D;
  const float* dyr = dy + rr.at * D;
  const TokenDispatcher& disp = *s.disp;
  ArenaScope scope(*ctx.workspace);
  const MoeScratch t = carve_moe_backward_scratch(*ctx.workspace, m);
  // Combine backward: each row's output gradient is its weight times the token's gradient, and
  // each weight's gradient is the token's gradient dotted with the row's output.
  std::vector<float> dx_experts;  // allgather: the experts' input gradients for this rank's tokens
  if (s.ep && s.ep->gather) {
    // The group's output gradients here; the routing weights' and inputs' gradients summed back.
    const ExpertParallelRows& r = *s.ep;
    const AllGatherExchange& ag = *r.gather;
    const TokenDispatcher& ld = *r.gather_disp;
    const size_t Ta = size_t(ag.total_tokens());
    std::vector<float> dy_all(Ta * size_t(D)), dx_all(Ta * size_t(D), 0.0f), dweight_all(Ta * size_t(K));
    std::vector<float> dy_local(r.x_local.size()), dx_local(r.x_local.size());
    ag.gather(dyr, D, dy_all.data());
    ld.unpermute_add_backward(dy_all.data(), r.y_local.data(), D, dy_local.data(), dweight_all.data());
    ops::grouped_swiglu_backward(be, r.x_local.data(), D, F, ld.offsets(), ld.blocks(), w.fc1_E, w.fc2_E,
                                 r.gu_local.data(), r.h_local.empty() ? nullptr : r.h_local.data(), dy_local.data(),
                                 dx_local.data(), g.fc1_E, g.fc2_E);
    ld.permute_backward_add(dx_local.data(), D, dx_all.data());
    ag.reduce_scatter(dweight_all.data(), K, t.dweight_TK.data());
    // Under ETP = TP the weights' gradients came from partial outputs: summed over TP they are whole.
    if (experts_partial(m)) tp_all_reduce(ctx, t.dweight_TK.data(), n * K);
    dx_experts.resize(size_t(n * D));
    ag.reduce_scatter(dx_all.data(), D, dx_experts.data());
  } else {
    disp.unpermute_add_backward(dyr, s.y_perm.data(), D, t.dy_perm.data(), t.dweight_TK.data());
    if (s.ep) {  // the rows' gradients go to the experts' owners and the inputs' gradients come back
      const ExpertParallelRows& r = *s.ep;
      const ExpertExchange& xc = *r.exchange;
      std::vector<float> dy_local(r.x_local.size()), dx_local(r.x_local.size());
      xc.dispatch(t.dy_perm.data(), D, dy_local.data());
      ops::grouped_swiglu_backward(be, r.x_local.data(), D, F, xc.local_offsets(), xc.local_blocks(), w.fc1_E, w.fc2_E,
                                   r.gu_local.data(), r.h_local.empty() ? nullptr : r.h_local.data(), dy_local.data(),
                                   dx_local.data(), g.fc1_E, g.fc2_E);
      xc.combine(dx_local.data(), D, t.dx_perm.data());
    } else {
      ops::grouped_swiglu_backward(be, s.x_perm.data(), D, F, disp.offsets(), disp.blocks(), w.fc1_E, w.fc2_E,
                                   s.gu_R2F.data(), s.h_RF.empty() ? nullptr : s.h_RF.data(), t.dy_perm.data(),
                                   t.dx_perm.data(), g.fc1_E, g.fc2_E);
    }
  }

  // Router: d(logits) from the weights and the auxiliary losses, then its linear layer. Under
  // folding its weight's gradient is this rank's rows' part (summed over TP by the optimizer).
  router_train_backward(be, o, s.logits_TE.data(), n, E, K, c.moe_router_pre_softmax, b.cu_seqlens, rr.router, s.router,
                        t.dweight_TK.data(), aux_scale, t.dlogits_TE.data());
  ops::linear_backward_weight(be, t.dlogits_TE.data(), xr, n, E, D, g.router.f32());
  if (m.own_rows) ops::fill(be, dx, 0.0f, m.io_rows() * D);  // other ranks' rows: the shared expert's part only
  ops::linear_backward_input(be, t.dlogits_TE.data(), n, w.router.f32(), E, D, dx + rr.at * D, false);
  // Under TP the experts' (split over ETP = TP) and the shared expert's input gradients are partial
  // sums: they gather in their own buffer, summed over TP once, then join the router's and the
  // gate's (whole already). Whole experts (folding) add theirs to this rank's rows directly.
  float* dxp = m.tp_partial ? t.dx_partial_TD.data() : dx;
  if (m.tp_partial) ops::fill(be, dxp, 0.0f, T * D);
  float* dxe = (experts_partial(m) ? dxp : dx) + rr.at * D;
  if (dx_experts.empty()) disp.permute_backward_add(t.dx_perm.data(), D, dxe);
  else ops::add(be, dxe, dx_experts.data(), n * D);

  if (m.shared_F > 0) {
    if (m.shared_gate)
      ops::shared_gate_backward(be, dy, s.shared_out_TD.data(), s.gate_T.data(), T, D, t.dshared_TD.data(),
                                t.dgate_logit_T.data());
    else ops::copy(be, t.dshared_TD.data(), dy, T * D);
    swiglu_mlp_backward(ctx, x, T, w.shared_fc1, w.shared_fc2, s.shared, t.dshared_TD.data(), dxp, true, g.shared_fc1,
                        g.shared_fc2);
  }
  if (m.tp_partial) {
    tp_all_reduce(ctx, dxp, T * D);
    ops::add(be, dx, dxp, T * D);
  }
  if (m.shared_F > 0) {
    if (m.shared_gate) {
      ops::linear_backward_weight(be, t.dgate_logit_T.data(), x, T, 1, D, g.shared_gate.f32());
      ops::linear_backward_input(be, t.dgate_logit_T.data(), T, w.shared_gate.f32(), 1, D, dx, true);
    }
  }
}

}  // namespace moe::model
