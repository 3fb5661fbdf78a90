#include "megatron_knobs.h"

#include <cctype>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace moectl {

namespace {

struct Knob {
  const char* flag;
  const char* what;
};

// Boolean knobs (swift/Megatron names; 4.x positive spellings where they exist).
const std::vector<Knob> kBool = {
    {"cross_entropy_loss_fusion", "fused cross-entropy kernel"},
    {"moe_grouped_gemm", "grouped GEMM for the experts (the CPU engine always groups them)"},
    {"moe_permute_fusion", "fused token permutation"},
    {"moe_shared_expert_overlap", "shared expert overlapped with the dispatch"},
    {"use_cpu_initialization", "initialise weights on the CPU"},
    {"manual_gc", "Python garbage collection by hand"},
    {"no_gradient_accumulation_fusion", "gradient accumulation fusion off"},
    {"gradient_accumulation_fusion", "gradient accumulation fusion"},
    {"no_masked_softmax_fusion", "masked softmax fusion off"},
    {"masked_softmax_fusion", "masked softmax fusion"},
    {"no_bias_dropout_fusion", "bias-dropout fusion off"},
    {"bias_dropout_fusion", "bias-dropout fusion"},
    {"no_bias_swiglu_fusion", "bias-SwiGLU fusion off"},
    {"bias_swiglu_fusion", "bias-SwiGLU fusion"},
    {"no_rope_fusion", "RoPE fusion off"},
    {"apply_rope_fusion", "RoPE fusion"},
    {"tp_comm_overlap", "TP communication overlapped with GEMMs"},
    {"attention_softmax_in_fp32", "softmax in fp32 (the CPU engine always is)"},
    {"lazy_tokenize", "tokenise rows when first read"},
    {"bf16", "bf16 mixed-precision compute (the CPU engine computes in fp32 and saves --torch_dtype)"},
    {"apply_query_key_layer_scaling", "Q·Kᵀ scaled by 1/layer for fp16 (the CPU engine computes in fp32)"},
    {"deterministic_mode", "deterministic kernels (the CPU engine always is: same input, same bits)"},
    {"no_create_attention_mask_in_dataloader", "attention mask built by the data loader (moectl needs none)"},
    {"no_initialization", "no random initialisation before loading (moectl never initialises what it loads)"},
    {"auto_detect_ckpt_format", "checkpoint format detected from the directory (moectl always detects it)"},
};
// Integer knobs (>= 0): worker counts and intervals of the Python data pipeline.
const std::vector<Knob> kCount = {
    {"num_workers", "data loader worker processes"},
    {"dataloader_num_workers", "data loader worker processes"},
    {"manual_gc_interval", "steps between garbage collections"},
    {"logging_level", "Python logging level of Megatron's loggers (moectl's: --verbose)"},
    {"tensorboard_queue_size", "queued TensorBoard events (moectl writes each one directly)"},
};
// Enumerated knobs: flag, allowed values.
const std::vector<std::pair<Knob, std::vector<std::string>>> kEnum = {
    {{"attention_backend", "attention kernel"}, {"flash", "fused", "unfused", "local", "auto"}},
    {{"transformer_impl", "layer implementation"}, {"transformer_engine", "local"}},
    {{"distributed_backend", "process-group backend (CPU processes talk over MPI)"}, {"nccl", "gloo"}},
    // external is swift's with --streaming (checked in train.cpp: only with it).
    {{"dataloader_type", "Megatron's sampler (moectl reads the global batch in swift's order)"},
     {"single", "cyclic", "external"}},
};

// Flags of features moectl does not have yet: flag, the value that means "off" (what moectl does;
// "" = any value is the feature), what it is.
struct Later {
  const char* flag;
  const char* off;
  const char* what;
};
const std::vector<Later> kLater = {
    {"train_type", "full", "LoRA and other adapter training (--train_type full trains every weight)"},
    {"fp16", "false", "fp16 training with loss scaling (use --torch_dtype float16 to save fp16 weights)"},
    {"fp8_format", "", "FP8 training"},
    {"fp8_recipe", "", "FP8 training"},
    {"wandb_project", "", "Weights & Biases logging (use --tensorboard_dir)"},
    {"wandb_exp_name", "", "Weights & Biases logging (use --tensorboard_dir)"},
    {"wandb_save_dir", "", "Weights & Biases logging (use --tensorboard_dir)"},
};

// A boolean's spellings as one word, so --fp16 0 and --fp16 False both mean "false".
std::string canonical_bool(std::string v) {
  for (char& ch : v) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (v == "0" || v == "no" || v == "off" || v == "f") return "false";
  if (v == "1" || v == "yes" || v == "on" || v == "t") return "true";
  return v;
}

}  // namespace

void add_megatron_knobs(CLI::App* c, MegatronKnobs& k) {
  for (const Later& l : kLater) {
    CLI::Option* o =
        c->add_option(std::string("--") + l.flag, k.later[l.flag], std::string("Not yet in moectl: ") + l.what);
    const std::string off = l.off;
    if (off == "true" || off == "false")  // a boolean: bare --flag means true, as swift's parser
      // (a validator without a description keeps the type name swift_syntax looks for)
      o->type_name("BOOLEAN")->check(CLI::Validator(
          [](std::string& v) {
            const std::string b = canonical_bool(v);
            return b == "true" || b == "false" ? std::string() : "not a boolean (true|false)";
          },
          "", "boolean"));
  }
  c->add_option("--report_to", k.report_to, "tensorboard (written by default; others are not in moectl yet)");
  c->add_option("--verbose", k.verbose, "Log the performance knobs given and what they tune");
  for (const Knob& b : kBool)
    c->add_option(std::string("--") + b.flag, k.flags[b.flag],
                  std::string("GPU knob: ") + b.what + " (accepted; no effect on the CPU)");
  for (const Knob& n : kCount)
    c->add_option(std::string("--") + n.flag, k.counts[n.flag],
                  std::string("Knob: ") + n.what + " (accepted; moectl reads data in-process)")
        ->check(CLI::NonNegativeNumber);
  for (const auto& [e, values] : kEnum)
    c->add_option(std::string("--") + e.flag, k.names[e.flag],
                  std::string("GPU knob: ") + e.what + " (accepted; no effect on the CPU)")
        ->check(CLI::IsMember(values));
}

nlohmann::json given_knobs(const CLI::App& c, const MegatronKnobs& k) {
  nlohmann::json out = nlohmann::json::object();
  auto given = [&](const char* flag) { return c.count(std::string("--") + flag) > 0; };
  if (given("train_type")) out["train_type"] = k.later.at("train_type");
  auto note = [&](const char* flag, const char* what, const nlohmann::json& v) {
    out[flag] = v;
    if (k.verbose) moe::log().warn("--{} {}: {}; no effect on the CPU engine", flag, v.dump(), what);
  };
  for (const Knob& b : kBool)
    if (given(b.flag)) note(b.flag, b.what, k.flags.at(b.flag));
  for (const Knob& n : kCount)
    if (given(n.flag)) note(n.flag, n.what, k.counts.at(n.flag));
  for (const auto& [e, values] : kEnum)
    if (given(e.flag)) note(e.flag, e.what, k.names.at(e.flag));
  return out;
}

void refuse_missing_features(const CLI::App& c, const MegatronKnobs& k) {
  auto given = [&](const char* flag) { return c.count(std::string("--") + flag) > 0; };
  for (const Later& l : kLater)
    if (given(l.flag) && (l.off[0] == '\0' || canonical_bool(k.later.at(l.flag)) != l.off))
      moe::throw_input("--{} {}: {} is not in moectl yet", l.flag, k.later.at(l.flag), l.what);
  for (const auto& r : k.report_to)
    if (r != "tensorboard" && r != "none")
      moe::throw_input("--report_to {}: only tensorboard is written (to --tensorboard_dir, default <run>/runs)", r);
}

}  // namespace moectl
