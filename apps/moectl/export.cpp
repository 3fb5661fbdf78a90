// `moectl export`: HF <-> Megatron checkpoint conversion with swift's flags
// (--model HF --to_mcore true / --mcore_model DIR --to_hf true, --output_dir, --torch_dtype).
#include "commands.h"
#include "core/error.h"
#include "core/log.h"
#include "model/mcore_export.h"

namespace moectl {

void add_export_command(CLI::App& root) {
  struct Args {
    std::string model, mcore_model, output_dir, dtype = "bfloat16";
    bool to_mcore = false, to_hf = false, overwrite = false, verbose = false;
    int tp = 1, pp = 1, ep = 1;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = root.add_subcommand("export", "Convert between Hugging Face and Megatron checkpoint formats");
  c->add_option("--model", a->model, "Hugging Face model directory (with --to_mcore true)");
  c->add_option("--mcore_model", a->mcore_model, "Megatron checkpoint directory (with --to_hf true)");
  c->add_option("--to_mcore", a->to_mcore, "HF -> Megatron (true|false)");
  c->add_option("--to_hf", a->to_hf, "Megatron -> HF (true|false)");
  c->add_option("--output_dir", a->output_dir, "Where the converted model is written")->required();
  c->add_option("--torch_dtype", a->dtype, "bfloat16 | float16 | float32");
  c->add_option("--overwrite", a->overwrite, "Replace an existing non-empty output directory (true|false)");
  c->add_option("--tensor_model_parallel_size", a->tp, "Tensor-parallel ranks to shard for (--to_mcore)");
  c->add_option("--pipeline_model_parallel_size", a->pp, "Pipeline stages to shard for (--to_mcore)");
  c->add_option("--expert_model_parallel_size", a->ep, "Expert-parallel ranks to shard for (--to_mcore)");
  c->add_option("--verbose", a->verbose, "Progress logs (true|false)");
  c->callback([a] {
    if (a->verbose) moe::set_log_level(spdlog::level::info);
    if (a->to_mcore == a->to_hf) moe::throw_input("give exactly one of --to_mcore true or --to_hf true");
    moe::model::ExportOptions opt;
    if (!moe::parse_torch_dtype(a->dtype, &opt.dtype))
      moe::throw_input("--torch_dtype '{}': expected bfloat16, float16 or float32", a->dtype);
    opt.overwrite = a->overwrite;
    opt.layout = {a->tp, a->pp, a->ep};
    if (a->to_mcore) {
      if (a->model.empty()) moe::throw_input("--to_mcore true needs --model HF_DIR");
      moe::model::export_hf_to_mcore(a->model, a->output_dir, opt);
    } else {
      if (a->mcore_model.empty()) moe::throw_input("--to_hf true needs --mcore_model DIR");
      moe::model::export_mcore_to_hf(a->mcore_model, a->output_dir, opt);
    }
  });
}

}  // namespace moectl
