#!/usr/bin/env python3
"""Context-parallel training (issue 15 item 4) equals the single process, end to end through the CLI:
- layout parity: per-iteration loss and grad norm, and the final weights, of CP2 runs under mpirun
  equal the one-process run to 1e-5 relative (fp32): Qwen3-MoE one sequence per micro-batch (no
  packing); packed rows of several sequences of any length (the split pads each to a multiple of
  2 x CP and cuts the padding off) with the switch balancing loss and the z-loss (their statistics
  are the whole micro-batch's); with the replicated optimizer; CP2 x EP2 on 2 processes, CP2 x DP2
  and TP2 (sequence parallel) x CP2 on 4; CP2 x PP2 and CP2 x PP2 x VPP2 on 4 (each CP rank's rows
  through its own pipeline), evaluated through the pipelines; a dense Qwen2 with tied embeddings and q/k/v bias. The logged balancing losses, z-loss, expert
  load imbalance and evaluation loss equal the one-process run's too;
- checkpoints: CP does not split weights, so a CP2 save (torch_dist and legacy torch: one mp_rank_00),
  a legacy TP2 x CP2 save (mp_rank_00, mp_rank_01) and a CP2 x PP2 save resume in one process, and a
  one-process save resumes under CP2, with the losses of the run that never stopped;
- bad layouts (CP with seq_aux_loss, CP with MoE parallel folding) end every rank at start with
  exit 2 and one line naming the rule.
Usage: train_cp_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import json
import os
import re
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
from train_runs import check, run, run_dir, train_log, rel, same_run, stopped_at  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)
started = time.time()

# The logged numbers that must not depend on the layout (timings and memory do).
COMPARED = re.compile(r"^(loss|acc|grad_norm|(seq_)?load_balancing_loss|z_loss|expert_load_imbalance_layer_\d+|"
                      r"eval_loss|eval_acc)$")


# --- models
q3 = os.path.join(WORK, "q3")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])
cfg = json.load(open(os.path.join(SRC, "configs", "tiny", "qwen2", "config.json")))
cfg.update(bos_token_id=None, eos_token_id=None, vocab_size=1000)
os.makedirs(os.path.join(WORK, "densecfg"))
json.dump(cfg, open(os.path.join(WORK, "densecfg", "config.json"), "w"))
dense = os.path.join(WORK, "dense")
hf_model.write_random_model(os.path.join(WORK, "densecfg"), dense, dtype="float32", seed=5)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(q3, f), dense)

ITERS = 5
BASE = ["--dataset", "self-cognition#96", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
        "--train_iters", str(ITERS), "--global_batch_size", "8", "--log_interval", "1", "--lr", "1e-3",
        "--lr_warmup_iters", "1", "--save_safetensors", "false", "--eval_interval", "0"]
CP2 = ["--context_parallel_size", "2"]
TP2 = ["--tensor_model_parallel_size", "2"]
PP2 = ["--pipeline_model_parallel_size", "2"]
# Packed rows of up to 256 tokens: several self-cognition samples each, of lengths of every residue
# modulo 4 (2 x CP), so the split pads (and cuts) most of them.
PACKED = ["--micro_batch_size", "2", "--packing", "true", "--max_length", "256", "--moe_aux_loss_coeff", "0.02",
          "--moe_z_loss_coeff", "0.001"]
# A tenth of the rows held out: evaluated after the last iteration.
EVAL = ["--split_dataset_ratio", "0.1"]
CASES = [
    # name, model flags, [(processes, extra flags, layout name)]
    ("Qwen3-MoE, one sequence per micro-batch", ["--model", q3, "--micro_batch_size", "1"], [(2, [], "CP2")]),
    ("Qwen3-MoE, packed, aux and z losses", ["--model", q3] + PACKED,
     [(2, [], "CP2"), (2, ["--use_distributed_optimizer", "false"], "CP2 (replicated optimizer)"),
      (2, ["--expert_model_parallel_size", "2"], "CP2 x EP2"), (4, [], "CP2 x DP2"),
      (4, TP2 + ["--sequence_parallel", "true"], "TP2 SP x CP2")]),
    ("Qwen3-MoE, packed, evaluated", ["--model", q3] + PACKED + EVAL,
     [(4, PP2, "CP2 x PP2"), (4, PP2 + ["--virtual_pipeline_model_parallel_size", "2"], "CP2 x PP2 x VPP2")]),
    ("Qwen2 dense, tied embeddings, packed", ["--model", dense, "--micro_batch_size", "2", "--packing", "true",
                                              "--max_length", "256"], [(2, [], "CP2")]),
]
for i, (name, flags, layouts) in enumerate(CASES):
    ref = f"c{i}_np1"
    run(["sft"] + BASE + flags + ["--save", ref])
    for j, (np, extra, layout) in enumerate(layouts):
        got = f"c{i}_{j}"
        t = time.time()
        run(["sft"] + BASE + flags + CP2 + extra + ["--save", got], np=np)
        same_run(ref, got, f"{name}: {layout} vs one process ({time.time() - t:.1f} s)", weights_at=ITERS,
                 keys=COMPARED)
args = json.load(open(os.path.join(run_dir("c1_3"), "args.json")))
check(args.get("world_size") == 4 and args.get("context_parallel_size") == 2 and args.get("data_parallel_size") == 2,
      "args.json records world_size 4, CP 2, DP 2")


# --- checkpoints: CP2 saved at iteration 2 resumes in one process, one process saved at 2 under CP2
LAYOUTS = {"one process": (1, []), "CP2": (2, CP2), "TP2 x CP2": (4, TP2 + CP2), "CP2 x PP2": (4, CP2 + PP2)}
for fmt, src, dst, rank_dirs in (("torch_dist", "CP2", "one process", None), ("torch", "CP2", "one process", 1),
                                 ("torch_dist", "one process", "CP2", None), ("torch", "TP2 x CP2", "one process", 2),
                                 ("torch_dist", "CP2 x PP2", "one process", None)):
    save = f"res_{fmt}_{src.replace(' ', '')}"
    run(["sft"] + BASE + ["--model", q3] + PACKED + LAYOUTS[src][1] + ["--ckpt_format", fmt, "--save", save,
                                                                       "--save_interval", "2"], np=LAYOUTS[src][0])
    ck = stopped_at(save, 2, ITERS)
    if rank_dirs:
        want = [f"mp_rank_{t:02d}" for t in range(rank_dirs)]
        check(sorted(os.listdir(os.path.join(ck, "iter_0000002"))) == want,
              f"legacy torch {src}: rank dirs {', '.join(want)} (CP does not split weights)")
    out = f"{save}_to_{dst.replace(' ', '')}"
    run(["sft"] + BASE + PACKED + ["--load", ck, "--finetune", "false", "--ckpt_format", fmt, "--save", out] +
        LAYOUTS[dst][1], np=LAYOUTS[dst][0])
    full, resumed = train_log(save), train_log(out)
    worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
    check(len(resumed) == ITERS - 2 and worst <= 1e-6,
          f"{fmt}: {src} saved at 2 -> {dst}: losses of iterations 3..{ITERS} as uninterrupted (worst {worst:.1e})")

# --- bad layouts: one line, exit 2, on every rank, before any work
BAD = [
    (2, CP2 + ["--moe_router_load_balancing_type", "seq_aux_loss", "--moe_aux_loss_coeff", "0.01"],
     "--context_parallel_size 2 with --moe_router_load_balancing_type seq_aux_loss"),
    (4, CP2 + TP2 + ["--sequence_parallel", "true", "--expert_tensor_parallel_size", "1"],
     "--context_parallel_size 2 with --tensor_model_parallel_size 2 and --expert_tensor_parallel_size 1"),
]
for np, flags, msg in BAD:
    save = "bad_" + "_".join(f.strip("-") for f in flags)
    p = run(["sft"] + BASE + ["--model", q3] + flags + ["--save", save], np=np, expect=None)
    lines = {re.sub(r"^moectl: error \(rank \d+ of \d+\)", "moectl: error", l) for l in p.stderr.splitlines()
             if l.startswith("moectl: error")}
    check(p.returncode == 2 and msg in p.stderr and len(lines) == 1 and not os.path.exists(os.path.join(WORK, save)),
          f"{' '.join(flags)}: exit 2 with one line naming the rule (exit {p.returncode}): {sorted(lines)[:1]}")

print(f"{time.time() - started:.0f} s")
train_runs.finish("context-parallel")
