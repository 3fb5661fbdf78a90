#!/usr/bin/env python3
"""--log_params_norm (issue 19): the parameters' L2 norm after each update, as Megatron's
calc_params_l2_norm counts it (every parameter once: TP-replicated ones once, experts once per EP
rank, a tied embedding's last-stage copy not at all), in logging.jsonl (params_norm) and TensorBoard
(params-norm):
- one process: the last iteration's value equals the norm of the torch_dist checkpoint's weights
  written at that iteration, computed here with PyTorch (fp32, 1e-6 relative);
- under TP2, PP2 x EP2 (Qwen3-MoE) and PP2 (dense Qwen2 with tied embeddings) every iteration's
  value equals the one-process run's (1e-5);
- given bare (--log_params_norm, swift's parser) it is recorded in args.json; without it the log
  has no params_norm.
Usage: params_norm_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
import dcp_reader  # noqa: E402
from train_runs import check, run, run_dir  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)


def norms(save):
    return [r.get("params_norm") for r in map(json.loads, open(os.path.join(run_dir(save), "logging.jsonl")))
            if "grad_norm" in r]


q3 = os.path.join(WORK, "q3")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])
cfg = json.load(open(os.path.join(SRC, "configs", "tiny", "qwen2", "config.json")))
cfg.update(bos_token_id=None, eos_token_id=None, num_hidden_layers=4, vocab_size=1000, tie_word_embeddings=True)
os.makedirs(os.path.join(WORK, "tiedcfg"))
json.dump(cfg, open(os.path.join(WORK, "tiedcfg", "config.json"), "w"))
tied = os.path.join(WORK, "tied")
hf_model.write_random_model(os.path.join(WORK, "tiedcfg"), tied, dtype="float32", seed=5)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(q3, f), tied)

ITERS = 4
BASE = ["--dataset", "self-cognition#64", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
        "--train_iters", str(ITERS), "--micro_batch_size", "2", "--global_batch_size", "8", "--log_interval", "1",
        "--lr", "1e-3", "--lr_warmup_iters", "1", "--save_safetensors", "false", "--eval_interval", "0",
        "--log_params_norm"]
PP2 = ["--pipeline_model_parallel_size", "2"]

for name, model, layouts in (("qwen3_moe", q3, [(2, ["--tensor_model_parallel_size", "2"], "TP2"),
                                               (4, PP2 + ["--expert_model_parallel_size", "2"], "PP2 x EP2")]),
                             ("qwen2 tied embeddings", tied, [(2, PP2, "PP2")])):
    ref = name.split()[0] + "_np1"
    run(["sft", "--model", model] + BASE + ["--save", ref])
    a = norms(ref)
    check(len(a) == ITERS and all(isinstance(x, float) and x > 0 for x in a), f"{name}: params_norm logged {a}")
    # The norm of what the checkpoint holds: every model tensor (no optimizer state, no buffers).
    it_dir = os.path.join(run_dir(ref), f"iter_{ITERS:07d}")
    tensors = dcp_reader.read_checkpoint(it_dir)[0]
    sq = sum((t.double() ** 2).sum().item() for k, t in tensors.items()
             if not k.startswith("optimizer.") and torch.is_tensor(t) and t.is_floating_point()
             and "expert_bias" not in k)
    want = sq ** 0.5
    check(abs(a[-1] - want) <= 1e-6 * want, f"{name}: last params_norm {a[-1]:.6f} = the checkpoint's weights' norm "
          f"{want:.6f}")
    for np, flags, what in layouts:
        got = f"{ref}_{what.replace(' ', '')}"
        run(["sft", "--model", model] + BASE + flags + ["--save", got], np=np)
        b = norms(got)
        worst = max((abs(x - y) / y for x, y in zip(b, a)), default=1.0) if len(a) == len(b) else 1.0
        check(worst <= 1e-5, f"{name}: {what} params_norm per iteration equals one process's (worst {worst:.1e})")

check(json.load(open(os.path.join(run_dir("qwen3_moe_np1"), "args.json"))).get("log_params_norm") is True,
      "args.json records log_params_norm true")
run(["sft", "--model", q3] + BASE[:-1] + ["--save", "off"])
check(all(x is None for x in norms("off")), "without --log_params_norm the log has no params_norm")

train_runs.finish("params-norm")
