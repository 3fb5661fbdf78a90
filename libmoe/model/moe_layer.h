// The MoE layer, one forward for inference and training: router -> token dispatcher -> grouped
// experts -> combine, plus the (optionally gated) shared expert. The forward carves from `keep`
// what the backward needs (training keeps them per layer; inference carves them from the
// workspace and lets them go after the layer); the routed rows are data-dependent, so they are
// carved for the worst case (TokenDispatcher::max_rows) and the size is known before the step.
// The backward accumulates every weight gradient and the auxiliary losses' gradients. Options
// carry the training-only behaviour (capacity, losses); inference passes the defaults.
#pragma once
#include <memory>
#include <optional>
#include <span>

#include "core/arena.h"
#include "model/allgather_exchange.h"
#include "model/batch.h"
#include "model/context.h"
#include "model/expert_exchange.h"
#include "model/layer_weights.h"
#include "model/mlp.h"
#include "model/router_train.h"
#include "model/token_dispatcher.h"

namespace moe::model {

// Under expert parallelism: the exchange of this micro-batch's rows with the EP group and what the
// local experts computed on the rows they received. How many rows arrive depends on every rank's
// routing, so these are the one activation not carved from the arenas: they are sized when the
// counts are known, and freed with the micro-batch's activations.
struct ExpertParallelRows {
  std::optional<ExpertExchange> exchange;                  // alltoall: this rank's rows to the experts' owners
  std::optional<AllGatherExchange> gather;                 // allgather: the group's tokens on every rank,
  std::optional<TokenDispatcher> gather_disp;              // and the pairs routed to this rank's experts
  std::vector<float> x_local, gu_local, h_local, y_local;  // the local experts' rows [R, D | 2F | F | D]
};

// Up to this many (token, slot) pairs a device decodes a MoE layer by expert id (no row map, no
// copy to the host); more go through the row map, whose per-expert GEMMs serve a prefill.
inline constexpr int64_t kExpertsByIdMaxPairs = 64;

struct MoeSaved {
  std::span<float> logits_TE;
  RouterSaved router;
  std::optional<TokenDispatcher> disp;
  std::span<float> x_perm, y_perm;  // expert inputs and outputs, rows grouped by expert
  std::span<float> gu_R2F, h_RF;    // the experts' fc1 outputs and activations (h empty: recomputed)
  SwigluSaved shared;
  std::span<float> shared_out_TD, gate_logit_T, gate_T;
  std::shared_ptr<ExpertParallelRows> ep;  // null without expert parallelism
  std::shared_ptr<Arena> own;              // the standalone forward's arena (null in the engine)
};

// The sizes a MoE layer's arenas are planned from.
struct MoeDims {
  int64_t T = 0, D = 0, E = 0, K = 0, F = 0;
  int64_t Tr = 0;        // the rows routed to the experts: T, or this rank's share when own_rows
  int64_t shared_F = 0;  // 0: no shared expert
  bool shared_gate = false;
  int64_t capacity = 0, pad_to = 0;  // router capacity (0: dropless), padded rows per expert
  // Tensor parallel (experts split over ETP = TP, the shared expert over TP): their outputs are
  // partial sums, all-reduced before the routing weights and the gate apply; the backward sums
  // their input gradients in a buffer of its own (T x D) before adding the router's.
  bool tp_partial = false;
  // MoE parallel folding (moe_routes_own_rows): the layer routes only this rank's Tr rows to
  // whole experts; only the shared expert is partial. With a shared expert it reads the T gathered
  // rows (the shared expert runs on all of them); without one, nothing needs them: its input and
  // output (and their gradients) are this rank's Tr rows alone (rows_local), as Megatron's.
  bool own_rows = false, rows_local = false;
  // The rows the layer's input and output hold.
  int64_t io_rows() const { return rows_local ? Tr : T; }
};
MoeDims moe_dims(int64_t T, int64_t D, int64_t E, int64_t K, int64_t F, int64_t shared_F, bool shared_gate,
                 const MoeTrainOptions& o);
// Under tensor parallelism (tp > 1): the experts split over ETP = TP, or with folding (own_rows >
// 0: the rows this rank routes) whole; the shared expert splits over TP either way.
void set_tensor_parallel(MoeDims& m, int tp, int64_t own_rows, const MoeTrainOptions& o);
MoeDims moe_dims(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, int64_t T);
// What the forward keeps, carved in its order (also run on a measuring arena to size it).
void carve_moe_saved(Arena& keep, const MoeDims& m, bool recompute_act);
// The forward's and the backward's workspace high-water marks.
size_t moe_forward_scratch_bytes(const MoeDims& m, bool recompute_act);
size_t moe_backward_scratch_bytes(const MoeDims& m, bool recompute_act);

// x_TD: normalised input, y_TD overwritten, MoeDims::io_rows() rows each. The router routes with
// w.expert_bias when the model has one. With folding and a shared expert x_TD is the TP group's
// gathered rows and only this rank's rows of y_TD hold the routed experts' output (the others: the
// shared expert's alone), and in the backward likewise for dx_TD's routed part.
void moe_layer_forward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                       const float* x_TD, const Batch& b, bool recompute_act, Arena& keep, MoeSaved& acts, float* y_TD);
// Standalone (tests, tools): the kept activations in an arena of `acts`' own, the temporaries in
// ctx's workspace or, without one, an arena of its own.
void moe_layer_forward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                       const float* x_TD, const Batch& b, bool recompute_act, MoeSaved& acts, float* y_TD);

// dx_TD overwritten. aux_scale weights this micro-batch's auxiliary losses in the objective.
void moe_layer_backward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                        MoeWeights& g, const float* x_TD, const Batch& b, const MoeSaved& acts, const float* dy_TD,
                        float aux_scale, float* dx_TD);

}  // namespace moe::model
