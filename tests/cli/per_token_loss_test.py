#!/usr/bin/env python3
"""--calculate_per_token_loss (issue 19). true (swift's default): the gradient is that of the
global batch's summed token losses over its label tokens; false (Megatron's per-micro-batch
averaging): of each micro-batch's mean loss, averaged over the global batch's micro-batches (over
every DP rank). The logged loss is the global batch's token mean either way (Megatron's
loss_func reports the summed loss and the token count in both modes). Checked end to end:
- micro-batches of equal label-token counts: the two objectives are the same, so false logs
  true's losses and grad norms at every iteration (a wrong normalisation, e.g. without the
  1 / micro-batches, would differ);
- micro-batches of different counts: iteration 1 logs the same loss (same weights, token mean)
  but a different grad norm (another objective), and later losses differ;
- false under DP2, PP2 (1F1B) and PP2 x VPP2 (interleaved) equals one process to 1e-5 (each
  micro-batch keeps its own scale through the pipeline schedules; the average is over the global
  batch's micro-batches, not a rank's) -- when MPIEXEC is given;
- args.json records calculate_per_token_loss.
Usage: per_token_loss_test.py MOECTL SRC_DIR WORK_DIR [MPIEXEC]"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_runs import check, run, run_dir, train_log, rel, worst  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)


run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", "m", "--torch_dtype", "float32"])
# Every row the same answer: every micro-batch (no packing) the same number of label tokens.
with open(os.path.join(WORK, "even.jsonl"), "w") as f:
    for i in range(64):
        f.write(json.dumps({"query": f"question number {i} " + "word " * (i % 7), "response": "the same answer"}) + "\n")
ITERS = 5
BASE = ["--model", "m", "--train_iters", str(ITERS), "--micro_batch_size", "2", "--global_batch_size", "8",
        "--log_interval", "1", "--lr", "1e-3", "--lr_warmup_iters", "1", "--save_safetensors", "false",
        "--eval_interval", "0", "--no_save_optim", "true"]
SC = ["--dataset", "self-cognition#96", "--model_name", "A", "--model_author", "B"]

run(["sft"] + BASE + ["--dataset", "even.jsonl", "--save", "even_true"])
run(["sft"] + BASE + ["--dataset", "even.jsonl", "--calculate_per_token_loss", "false", "--save", "even_false"])
w = worst(train_log("even_true"), train_log("even_false"))
check(len(train_log("even_false")) == ITERS and w <= 1e-6,
      f"equal tokens per micro-batch: false logs true's loss and grad norm at every iteration (worst {w:.1e})")

run(["sft"] + BASE + SC + ["--save", "sc_true"])
run(["sft"] + BASE + SC + ["--calculate_per_token_loss", "false", "--save", "sc_false"])
t, f = train_log("sc_true"), train_log("sc_false")
print(f"     true:  {t}\n     false: {f}")
check(rel(t[0][0], f[0][0]) <= 1e-6, f"different tokens per micro-batch: iteration 1's logged loss (the token mean of "
      f"the same weights) is the same: {t[0][0]:.6f} vs {f[0][0]:.6f}")
check(rel(t[0][1], f[0][1]) > 1e-4, f"... its grad norm is not (another objective): {t[0][1]:.6f} vs {f[0][1]:.6f}")
check(max(rel(x[0], y[0]) for x, y in zip(t[1:], f[1:])) > 1e-4, "... and later losses differ")
a = json.load(open(os.path.join(run_dir("sc_false"), "args.json")))
b = json.load(open(os.path.join(run_dir("sc_true"), "args.json")))
check(a.get("calculate_per_token_loss") is False and b.get("calculate_per_token_loss") is True,
      "args.json records calculate_per_token_loss")

if MPIEXEC:
    for name, np, flags in (("DP2", 2, []), ("PP2", 2, ["--pipeline_model_parallel_size", "2"]),
                            ("PP2 x VPP2", 2, ["--pipeline_model_parallel_size", "2",
                                               "--virtual_pipeline_model_parallel_size", "2"]),
                            ("PP2 x DP2", 4, ["--pipeline_model_parallel_size", "2"])):
        save = "sc_false_" + name.replace(" ", "")
        run(["sft"] + BASE + SC + ["--calculate_per_token_loss", "false", "--save", save] + flags, np=np)
        got = train_log(save)
        w = worst(f, got)
        check(len(got) == ITERS and w <= 1e-5, f"false: {name} equals one process (worst {w:.1e})")
else:
    print("(no MPIEXEC: the DP and pipeline checks are skipped)")

train_runs.finish("--calculate_per_token_loss")
