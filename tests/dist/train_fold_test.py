#!/usr/bin/env python3
"""MoE parallel folding (issue 15 item 2): tensor with expert parallelism, experts whole on their EP
rank (--expert_tensor_parallel_size 1), each TP rank routing its own sequence-parallel rows and the
tokens exchanged over the EP group folded over the TP ranks, equals the single process, end to end
through the CLI:
- layout parity: per-iteration loss, grad norm and auxiliary losses, and the final weights, of
  TP2 x EP2 ETP1 on 4 processes (DP 2 for attention; expert-DP world / (ETP x EP) = 2 for the
  experts) equal the one-process run to 1e-5 relative (fp32) on Qwen3-MoE (8 experts) with the
  alltoall and the allgather dispatcher, with and without the distributed optimizer; TP2 x EP4
  ETP1, TP2 ETP1 (EP 1, experts whole on both TP ranks) and TP2 x EP2 x PP2 on 8 processes;
  evaluation losses and the parameters' norm; selective recompute of the MoE layer; Qwen2-MoE (a
  shared expert with its gate, a dense layer) with seq_aux_loss, z-loss and the expert bias (the
  loads summed over the TP group, as Megatron's tp_cp all-reduce); and without folding, experts
  split over ETP = TP (Megatron's default) and over EP, TP2 x EP2 and TP2 x EP4;
- checkpoints: --ckpt_format torch writes Megatron's mp_rank_00_000 / mp_rank_01_001 (each
  process's dense TP slices and its EP rank's whole experts) with the names and shapes moectl
  export writes for TP2 EP2 ETP1; a TP2 x EP2 save at iteration 2 (torch_dist, and torch with and
  without the distributed optimizer) and a TP2 x EP2 ETP2 one resume under one process, EP4 and
  TP2 x EP2 with ETP 1 and 2, with the losses of the run that never stopped;
- bad layouts: TP with EP without --sequence_parallel, and ETP neither TP nor 1, end every rank at
  start with exit 2 and one line naming the rule.
- TP2 x PP2 x EP2 (ETP = TP, 8 processes): legacy rank files mp_rank_TT_PPP_EEE with moectl
  export's names and shapes, loading with torch.load; saved at iteration 2 (legacy and torch_dist)
  it resumes under EP4 and in one process with the losses of the run that never stopped.
Usage: train_fold_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import json
import os
import re
import shutil
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
from train_runs import check, run, run_dir, train_log, rel, dist_model, stopped_at  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)
START = time.time()
# What a layout must log as one process did: the losses, the auxiliary losses, the params norm and
# the evaluation loss.
COMPARED = re.compile(r"^(loss|grad_norm|(seq_)?load_balancing_loss|z_loss|params_norm|eval_loss)$")


def same_run(ref, got, what, tol=1e-5):
    return train_runs.same_run(ref, got, what, tol, weights_at=ITERS, keys=COMPARED)


# --- models
q3 = os.path.join(WORK, "q3")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])
cfg = json.load(open(os.path.join(SRC, "configs", "tiny", "qwen2_moe", "config.json")))
# train_dp_test.py's Qwen2-MoE (seed 3): no top-2 ties near 1e-7 that a layout's rounding flips.
cfg.update(bos_token_id=None, eos_token_id=None, num_hidden_layers=4, vocab_size=1024, mlp_only_layers=[1])
os.makedirs(os.path.join(WORK, "q2moecfg"))
json.dump(cfg, open(os.path.join(WORK, "q2moecfg", "config.json"), "w"))
q2moe = os.path.join(WORK, "q2moe")
hf_model.write_random_model(os.path.join(WORK, "q2moecfg"), q2moe, dtype="float32", seed=3)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(q3, f), q2moe)

ITERS = 5
BASE = ["--dataset", "self-cognition#96", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
        "--train_iters", str(ITERS), "--micro_batch_size", "2", "--global_batch_size", "8", "--log_interval", "1",
        "--lr", "1e-3", "--lr_warmup_iters", "1", "--save_safetensors", "false", "--eval_interval", "0"]
TP2, SP = ["--tensor_model_parallel_size", "2"], ["--sequence_parallel", "true"]
ETP1 = ["--expert_tensor_parallel_size", "1"]
EP = lambda n: ["--expert_model_parallel_size", str(n)]  # noqa: E731
FOLD = TP2 + EP(2) + ETP1 + SP
Q3 = ["--model", q3]
LOSSES = ["--moe_aux_loss_coeff", "0.02", "--moe_z_loss_coeff", "0.001"]
EVAL = ["--split_dataset_ratio", "0.1", "--eval_interval", "2", "--log_params_norm", "true"]
RECOMPUTE = ["--recompute_granularity", "selective", "--recompute_modules", "moe", "moe_act", "layernorm"]
Q2_LOSSES = ["--moe_router_load_balancing_type", "seq_aux_loss", "--moe_router_enable_expert_bias", "true",
             "--moe_router_bias_update_rate", "0.01"] + LOSSES
Q2 = ["--model", q2moe] + Q2_LOSSES

# --- layout parity
worst = [0.0, 0.0]
for ref, model, layouts in (
        ("q3ref", Q3, [(4, FOLD, "TP2 x EP2 ETP1 alltoall"),
                    (4, FOLD + ["--moe_token_dispatcher_type", "allgather"], "TP2 x EP2 ETP1 allgather"),
                    (4, FOLD + ["--use_distributed_optimizer", "false"], "TP2 x EP2 ETP1 (replicated optimizer)"),
                    (4, TP2 + EP(4) + ETP1 + SP, "TP2 x EP4 ETP1"),
                    (2, TP2 + ETP1 + SP, "TP2 ETP1 (EP 1)"),
                    (8, FOLD + ["--pipeline_model_parallel_size", "2"], "TP2 x EP2 ETP1 x PP2"),
                    (4, TP2 + EP(2) + SP, "TP2 x EP2 ETP2 (Megatron's default ETP = TP) alltoall"),
                    (4, TP2 + EP(2) + SP + ["--moe_token_dispatcher_type", "allgather"], "TP2 x EP2 ETP2 allgather"),
                    (8, TP2 + EP(4) + SP, "TP2 x EP4 ETP2 on 8 processes")]),
        ("q3evalref", Q3 + EVAL, [(4, FOLD, "evaluation, params norm: TP2 x EP2 ETP1"),
                                  (4, FOLD + RECOMPUTE, "selective recompute of the MoE layer: TP2 x EP2 ETP1")]),
        ("q3auxref", Q3 + LOSSES, [(4, FOLD, "aux_loss + z-loss: TP2 x EP2 ETP1")]),
        ("q2ref", Q2, [(4, FOLD, "TP2 x EP2 ETP1 alltoall"),
                    (4, FOLD + ["--moe_token_dispatcher_type", "allgather"], "TP2 x EP2 ETP1 allgather")])):
    run(["sft"] + BASE + model + ["--save", ref])
    for i, (np, flags, what) in enumerate(layouts):
        got = f"{ref}_fold{i}"
        run(["sft"] + BASE + model + flags + ["--save", got], np=np)
        w = same_run(ref, got, f"{'Qwen3-MoE' if ref != 'q2ref' else 'Qwen2-MoE seq_aux_loss + z + bias'}: {what} "
                     "vs one process")
        worst = [max(worst[0], w[0]), max(worst[1], w[1])]
print(f"worst relative difference: per-iteration numbers {worst[0]:.2e}, final weights {worst[1]:.2e}")
args = json.load(open(os.path.join(run_dir("q3ref_fold0"), "args.json")))
check((args.get("world_size"), args.get("tensor_model_parallel_size"), args.get("expert_model_parallel_size"),
       args.get("expert_tensor_parallel_size"), args.get("data_parallel_size")) == (4, 2, 2, 1, 2),
      "args.json records world 4, TP 2, EP 2, ETP 1, DP 2")

# --- legacy rank files: Megatron's per-rank names and shapes for TP2 EP2 ETP1
run(["sft"] + BASE + Q3 + FOLD + ["--ckpt_format", "torch", "--save", "legacy"], np=4)
run(["export", "--model", q3, "--to_mcore", "true", "--ckpt_format", "torch", "--output_dir", "q3_fold"] + FOLD[:-2])
it_dir = os.path.join(run_dir("legacy"), f"iter_{ITERS:07d}")
dirs = sorted(os.listdir(it_dir))
check(dirs == ["mp_rank_00_000", "mp_rank_01_001"], f"TP2 EP2 ETP1 rank dirs: {dirs}")
whole = dist_model("q3ref_fold0", ITERS)
for d in dirs:
    got = torch.load(os.path.join(it_dir, d, "model_optim_rng.pt"))
    ref = torch.load(os.path.join(WORK, "q3_fold", "iter_0000001", d, "model_optim_rng.pt"))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m["model"].items() if torch.is_tensor(v)}  # noqa: E731
    check(shapes(got) == shapes(ref), f"{d}: names and shapes as moectl export TP2 EP2 ETP1 writes")
    a = got["args"]
    check((a.tensor_model_parallel_size, a.expert_model_parallel_size, a.expert_tensor_parallel_size) == (2, 2, 1),
          f"{d}: args TP2 EP2 ETP1")
    # Local expert 0 of EP rank e is global expert 4 e, whole (ETP 1).
    e = int(d[-3:])
    w1 = got["model"]["decoder.layers.0.mlp.experts.linear_fc1.weight0"].float()
    diff = (w1 - whole["decoder.layers.mlp.experts.experts.linear_fc1.weight"][0, 4 * e].float()).abs().max().item()
    check(diff < 1e-5, f"{d}: expert 0 is global expert {4 * e} whole (max diff {diff:.1e})")


# --- resharding: TP2 x EP2 saved at iteration 2 resumes under one process, EP4 and TP2 x EP2
ETP2 = TP2 + EP(2) + SP
for fmt, dopt, src, src_name in (("torch_dist", "true", FOLD, "TP2 x EP2 ETP1"), ("torch", "true", FOLD, "TP2 x EP2 ETP1"),
                                 ("torch", "false", FOLD, "TP2 x EP2 ETP1"), ("torch", "true", ETP2, "TP2 x EP2 ETP2")):
    save = f"res_{fmt}_{dopt}_{src_name[-4:]}"
    opts = ["--ckpt_format", fmt, "--use_distributed_optimizer", dopt]
    run(["sft"] + BASE + Q2 + src + opts + ["--save", save, "--save_interval", "2"], np=4)
    ck = stopped_at(save, 2, ITERS)
    for np, flags, name in ((1, [], "one process"), (4, EP(4), "EP4"), (4, FOLD, "TP2 x EP2 ETP1"),
                            (4, ETP2, "TP2 x EP2 ETP2")):
        out = f"{save}_to_{name.replace(' ', '_')}"
        run(["sft"] + BASE + Q2_LOSSES + opts + ["--load", ck, "--finetune", "false", "--save", out] + flags, np=np)
        full, resumed = train_log(save), train_log(out)
        w = max((rel(u, v) for x, y in zip(full[2:], resumed) for u, v in zip(x[:1], y[:1])), default=1.0)
        check(len(resumed) == ITERS - 2 and w <= 1e-6,
              f"{fmt} (distributed optimizer {dopt}): {src_name} saved at 2 -> {name}: losses of iterations "
              f"3..{ITERS} as uninterrupted (worst {w:.1e})")

# --- TP2 x PP2 x EP2 (Megatron's default ETP = TP, 8 processes): its legacy rank files
# (mp_rank_TT_PPP_EEE) load with torch.load and hold the names and shapes moectl export writes for
# that layout; saved at iteration 2 in either format, it resumes under EP4 and in one process
TPE = TP2 + ["--pipeline_model_parallel_size", "2"] + EP(2) + SP
for fmt in ("torch", "torch_dist"):
    save = f"tpe_{fmt}"
    run(["sft"] + BASE + Q3 + TPE + ["--ckpt_format", fmt, "--save", save, "--save_interval", "2"], np=8)
    if fmt == "torch":
        run(["export", "--model", q3, "--to_mcore", "true", "--ckpt_format", "torch", "--output_dir", "q3_tpe"] +
            TPE[:-2])
        it_dir = os.path.join(run_dir(save), f"iter_{ITERS:07d}")
        dirs = sorted(os.listdir(it_dir))
        want = sorted(f"mp_rank_{t:02d}_{p:03d}_{e:03d}" for t in range(2) for p in range(2) for e in range(2))
        check(dirs == want, f"TP2 x PP2 x EP2 rank dirs: {dirs}")
        for d in dirs:
            got = torch.load(os.path.join(it_dir, d, "model_optim_rng.pt"))
            ref = torch.load(os.path.join(WORK, "q3_tpe", "iter_0000001", d, "model_optim_rng.pt"))
            shapes = lambda m: {k: tuple(v.shape) for k, v in m["model"].items() if torch.is_tensor(v)}  # noqa: E731
            check(shapes(got) == shapes(ref) and len(shapes(got)) > 0,
                  f"{d}: names and shapes as moectl export TP2 PP2 EP2 writes ({len(shapes(got))} tensors)")
    ck = stopped_at(save, 2, ITERS)
    for np, flags, name in ((1, [], "one process"), (4, EP(4), "EP4")):
        out = f"{save}_to_{name.replace(' ', '_')}"
        run(["sft"] + BASE + ["--ckpt_format", fmt, "--load", ck, "--finetune", "false", "--save", out] + flags, np=np)
        full, resumed = train_log(save), train_log(out)
        w = max((rel(u, v) for x, y in zip(full[2:], resumed) for u, v in zip(x[:1], y[:1])), default=1.0)
        check(len(resumed) == ITERS - 2 and w <= 1e-6,
              f"{fmt}: TP2 x PP2 x EP2 saved at 2 -> {name}: losses of iterations 3..{ITERS} as uninterrupted "
              f"(worst {w:.1e})")

# --- bad layouts: one line, exit 2, on every rank, before any work
BAD = [
    (4, TP2 + EP(2) + ETP1, "--tensor_model_parallel_size 2 with --expert_model_parallel_size 2 "
     "(--expert_tensor_parallel_size 1) needs --sequence_parallel true"),
    (2, ["--expert_tensor_parallel_size", "2"], "--expert_tensor_parallel_size 2 with --tensor_model_parallel_size 1: "
     "expert tensor parallelism is implemented as TP"),
]
for np, flags, msg in BAD:
    save = "bad_" + "_".join(f.strip("-") for f in flags)
    p = run(["sft"] + BASE + Q3 + flags + ["--save", save], np=np, expect=None)
    lines = {re.sub(r"^moectl: error \(rank \d+ of \d+\)", "moectl: error", l) for l in p.stderr.splitlines()
             if l.startswith("moectl: error")}
    check(p.returncode == 2 and msg in p.stderr and len(lines) == 1 and not os.path.exists(os.path.join(WORK, save)),
          f"{' '.join(flags)}: exit 2 with one line naming the rule (exit {p.returncode}): {sorted(lines)[:1]}")

print(f"run time {time.time() - START:.1f} s")
train_runs.finish("MoE parallel folding")
