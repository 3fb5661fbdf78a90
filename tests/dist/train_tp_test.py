#!/usr/bin/env python3
"""Tensor-parallel training (issue 15, with and without sequence parallelism) equals the single
process, end to end through the CLI:
- layout parity: per-iteration loss and grad norm, and the final weights, of TP2 runs under mpirun
  equal the one-process run to 1e-5 relative (fp32): Qwen3-MoE (8 experts, GQA 4 heads / 2
  groups, q/k norm), Qwen2-MoE (shared expert with its gate, a dense layer, q/k/v bias) and a
  dense Qwen2 (tied embeddings, a vocabulary of 1000 padded to 1024 over TP2, so the last rank
  holds padding rows), with and without the distributed optimizer; TP2 x DP2 on 4 processes;
  --sequence_parallel true for each model (micro-batches of odd token counts: the last rank's rows
  padded), SP x DP2, SP x PP2, SP with selective and full recompute, TP4 SP (8 heads, 4 groups);
- the quick start: NPROC_PER_NODE=2 moectl sft --tensor_model_parallel_size 2
  --recompute_granularity selective equals the one-process run;
- checkpoints: --ckpt_format torch writes Megatron's rank files mp_rank_00 / mp_rank_01 with the
  names and per-rank shapes moectl export --tensor_model_parallel_size 2 writes, loadable with
  torch.load; torch_dist holds the global tensors (gathered over TP) of the one-process model;
- resharding: TP2 saved at iteration 2 resumes in one process, and a one-process save resumes
  under TP2, with the losses of the run that never stopped; a legacy --ckpt_format torch TP2 save
  (with and without the distributed optimizer) resumes under TP2, TP1 x DP2 and one process, the
  same (<= 1e-6: the fp32 masters and moments are merged exactly);
- bad layouts (heads or query groups not divisible, TP with EP or ETP 1 without sequence
  parallelism) end every rank at start with exit 2 and one line naming the rule and the numbers.
Usage: train_tp_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import json
import os
import re
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
from train_runs import check, run, run_dir, train_log, rel, same_run, dist_model, ENV, stopped_at  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)

# --- models
q3 = os.path.join(WORK, "q3")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])


def hf_dir(name, family, seed, **overrides):
    cfg = json.load(open(os.path.join(SRC, "configs", "tiny", family, "config.json")))
    cfg.update(bos_token_id=None, eos_token_id=None, **overrides)
    cdir = os.path.join(WORK, name + "cfg")
    os.makedirs(cdir)
    json.dump(cfg, open(os.path.join(cdir, "config.json"), "w"))
    out = os.path.join(WORK, name)
    hf_model.write_random_model(cdir, out, dtype="float32", seed=seed)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(q3, f), out)
    return out


# Train_dp_test.py's Qwen2-MoE (seed and losses): with other seeds a token's top-2 can tie to 1e-7 at
# some iteration, and then any layout (EP4 too) flips it and differs by ~1e-4 from there on.
q2moe = hf_dir("q2moe", "qwen2_moe", 3, num_hidden_layers=4, vocab_size=1024, mlp_only_layers=[1])
dense = hf_dir("dense", "qwen2", 5, vocab_size=1000)
# Four query groups of two heads: TP4 keeps one group per rank.
gqa4 = hf_dir("gqa4", "qwen3_moe", 9, num_attention_heads=8, num_key_value_heads=4, head_dim=16, vocab_size=1024)

ITERS = 5
BASE = ["--dataset", "self-cognition#96", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
        "--train_iters", str(ITERS), "--micro_batch_size", "2", "--global_batch_size", "8", "--log_interval", "1",
        "--lr", "1e-3", "--lr_warmup_iters", "1", "--save_safetensors", "false", "--eval_interval", "0"]
TP2 = ["--tensor_model_parallel_size", "2"]
SP = ["--sequence_parallel", "true"]
CASES = {
    "qwen3_moe": ["--model", q3],
    "qwen2_moe shared expert": ["--model", q2moe, "--moe_router_load_balancing_type", "seq_aux_loss",
                                "--moe_aux_loss_coeff", "0.02", "--moe_z_loss_coeff", "0.001"],
    "qwen2 dense, padded vocabulary": ["--model", dense],
}
for i, (name, extra) in enumerate(CASES.items()):
    ref = f"c{i}_np1"
    run(["sft"] + BASE + extra + ["--save", ref])
    for np, dopt in ((2, True), (2, False), (4, True)) if i == 0 else ((2, True),):
        got = f"c{i}_np{np}_tp2_{int(dopt)}"
        run(["sft"] + BASE + extra + TP2 + ["--use_distributed_optimizer", str(dopt).lower(), "--save", got], np=np)
        what = ("TP2" if np == 2 else "TP2 x DP2") + ("" if dopt else " (replicated optimizer)")
        same_run(ref, got, f"{name}: {what} vs one process", weights_at=ITERS)
    # Sequence parallelism: the same numbers with the norms on half the rows.
    for np, flags, what in [(2, [], "TP2 SP")] + ([(4, [], "TP2 SP x DP2"),
                                                  (4, ["--pipeline_model_parallel_size", "2"], "TP2 SP x PP2"),
                                                  # the norms' buckets wait for their sum over TP
                                                  (4, ["--overlap_grad_reduce", "true", "--overlap_param_gather", "true",
                                                       "--ddp_bucket_size", "20000"], "TP2 SP x DP2, both overlaps")]
                                                 if i == 0 else []):
        got = f"c{i}_np{np}_sp_{len(flags)}"
        run(["sft"] + BASE + extra + TP2 + SP + flags + ["--save", got], np=np)
        same_run(ref, got, f"{name}: {what} vs one process", weights_at=ITERS)
args = json.load(open(os.path.join(run_dir("c0_np4_tp2_1"), "args.json")))
check(args.get("world_size") == 4 and args.get("tensor_model_parallel_size") == 2
      and args.get("data_parallel_size") == 2, "args.json records world_size 4, TP 2, DP 2")

# --- TP4 with sequence parallelism (4 ranks, each a quarter of the rows and one query group)
run(["sft"] + BASE + ["--model", gqa4, "--save", "gqa4_np1"])
run(["sft"] + BASE + ["--model", gqa4, "--tensor_model_parallel_size", "4"] + SP + ["--save", "gqa4_tp4"], np=4)
same_run("gqa4_np1", "gqa4_tp4", "Qwen3-MoE 8 heads / 4 groups: TP4 SP vs one process", weights_at=ITERS)

# --- the quick start's layout through the launcher, with selective recompute
qs = ["--recompute_granularity", "selective"]
run(["sft"] + BASE + CASES["qwen3_moe"] + qs + ["--save", "qs_np1"])
run(["sft"] + BASE + CASES["qwen3_moe"] + TP2 + qs + ["--save", "qs_tp2"], env=dict(ENV, NPROC_PER_NODE="2"))
same_run("qs_np1", "qs_tp2", "NPROC_PER_NODE=2 --tensor_model_parallel_size 2 --recompute_granularity selective")
run(["sft"] + BASE + CASES["qwen3_moe"] + TP2 + SP + qs + ["--save", "qs_sp"], np=2)
same_run("qs_np1", "qs_sp", "TP2 SP --recompute_granularity selective")
check(json.load(open(os.path.join(run_dir("qs_sp"), "args.json"))).get("sequence_parallel") is True,
      "args.json records sequence_parallel true")
full = ["--recompute_granularity", "full", "--recompute_method", "uniform", "--recompute_num_layers", "1"]
run(["sft"] + BASE + CASES["qwen3_moe"] + full + ["--save", "full_np1"])
run(["sft"] + BASE + CASES["qwen3_moe"] + TP2 + SP + full + ["--save", "full_sp"], np=2)
same_run("full_np1", "full_sp", "TP2 SP --recompute_granularity full")

# --- the HF copy (--save_safetensors) of a TP2 run is the whole model, equal to the one-process copy
hf = [a if a != "false" or BASE[i - 1] != "--save_safetensors" else "true" for i, a in enumerate(BASE)]
run(["sft"] + hf + CASES["qwen3_moe"] + ["--save", "hf_np1"])
run(["sft"] + hf + CASES["qwen3_moe"] + TP2 + ["--save", "hf_tp2"], np=2)
a_hf = hf_model.load_safetensors_dir(os.path.join(run_dir("hf_np1"), f"checkpoint-{ITERS}"))
b_hf = hf_model.load_safetensors_dir(os.path.join(run_dir("hf_tp2"), f"checkpoint-{ITERS}"))
same = set(a_hf) == set(b_hf) and all(a_hf[k].shape == b_hf[k].shape for k in a_hf)
num = sum(((a_hf[k].double() - b_hf[k].double()) ** 2).sum().item() for k in a_hf) if same else 1.0
den = sum((a_hf[k].double() ** 2).sum().item() for k in a_hf)
check(same and (num / den) ** 0.5 <= 1e-5, f"TP2 HF copy: whole tensors equal to one process's (|dw|/|w| = "
      f"{(num / den) ** 0.5:.1e})")

# --- legacy rank files: Megatron's per-rank names and shapes for TP2
run(["sft"] + BASE + CASES["qwen3_moe"] + TP2 + ["--ckpt_format", "torch", "--save", "legacy_tp2"], np=2)
run(["export", "--model", q3, "--to_mcore", "true", "--ckpt_format", "torch", "--output_dir", "q3_tp2"] + TP2)
it_dir = os.path.join(run_dir("legacy_tp2"), f"iter_{ITERS:07d}")
check(sorted(os.listdir(it_dir)) == ["mp_rank_00", "mp_rank_01"], f"TP2 rank dirs: {sorted(os.listdir(it_dir))}")
whole = dist_model("c0_np1", ITERS)
for t in range(2):
    got = torch.load(os.path.join(it_dir, f"mp_rank_{t:02d}", "model_optim_rng.pt"))
    ref = torch.load(os.path.join(WORK, "q3_tp2", "iter_0000001", f"mp_rank_{t:02d}", "model_optim_rng.pt"))
    shapes = lambda d: {k: tuple(v.shape) for k, v in d["model"].items() if torch.is_tensor(v)}
    check(shapes(got) == shapes(ref), f"mp_rank_{t:02d}: names and shapes as moectl export --tensor_model_parallel_size 2")
    check(got["args"].tensor_model_parallel_size == 2 and "optimizer" in got, f"mp_rank_{t:02d}: args TP2, optimizer")
    # The column-parallel QKV holds this rank's query group: rows [t * rows/2, (t+1) * rows/2).
    q = got["model"]["decoder.layers.0.self_attention.linear_qkv.weight"].float()
    w = whole["decoder.layers.self_attention.linear_qkv.weight"][0].float()
    n = w.shape[0] // 2
    diff = (q - w[t * n:(t + 1) * n]).abs().max().item()
    check(diff < 1e-2, f"mp_rank_{t:02d}: QKV rows are its query group of the one-process model (max diff {diff:.1e})")

# --- resharding: TP2 saved at iteration 2 -> one process; one process saved at 2 -> TP2
for fmt, src_np, dst_np in (("torch_dist", 2, 1), ("torch_dist", 1, 2), ("torch", 1, 2)):
    if True:
        save = f"res_{fmt}_np{src_np}"
        src_tp = TP2 if src_np == 2 else []
        run(["sft"] + BASE + CASES["qwen3_moe"] + src_tp + ["--ckpt_format", fmt, "--save", save, "--save_interval",
                                                            "2"], np=src_np)
        ck = stopped_at(save, 2, ITERS)
        out = f"{save}_to_np{dst_np}"
        run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", out, "--ckpt_format", fmt] +
            (TP2 if dst_np == 2 else []), np=dst_np)
        full, resumed = train_log(save), train_log(out)
        worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
        check(len(resumed) == ITERS - 2 and worst <= 1e-6,
              f"{fmt}: TP{src_np} saved at 2 -> TP{dst_np}: losses of iterations 3..{ITERS} as uninterrupted "
              f"(worst {worst:.1e})")

# A legacy TP2 checkpoint (mp_rank_00, mp_rank_01) resumes under any layout: every rank file's
# fp32 masters and Adam moments (inline, or distrib_optim.pt's flattened buffers with the
# distributed optimizer) merged, then cut to the new layout. The masters are fp32, so the
# resumed losses equal the uninterrupted run's to 1e-6 (the model is fp32 too).
for dopt in (False, True):
    save = f"res_legacy_tp2_dopt{int(dopt)}"
    run(["sft"] + BASE + CASES["qwen3_moe"] + TP2 + ["--ckpt_format", "torch", "--save", save, "--save_interval", "2",
                                                     "--use_distributed_optimizer", str(dopt).lower()], np=2)
    ck = stopped_at(save, 2, ITERS)
    check(sorted(os.listdir(os.path.join(ck, "iter_0000002"))) == ["mp_rank_00", "mp_rank_01"] and
          os.path.exists(os.path.join(ck, "iter_0000002", "mp_rank_01", "distrib_optim.pt")) == dopt,
          f"legacy TP2 (distributed optimizer {dopt}): rank dirs mp_rank_00, mp_rank_01"
          + (" with distrib_optim.pt" if dopt else ""))
    for dst_np, dst_flags, dst_name in ((2, TP2, "TP2"), (2, [], "TP1 x DP2"), (1, [], "one process")):
        out = f"{save}_to_{dst_name.replace(' ', '_')}"
        run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", out, "--ckpt_format", "torch",
                              "--use_distributed_optimizer", str(dopt).lower()] + dst_flags, np=dst_np)
        full, resumed = train_log(save), train_log(out)
        worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
        check(len(resumed) == ITERS - 2 and worst <= 1e-6,
              f"legacy torch TP2 (distributed optimizer {dopt}) saved at 2 -> {dst_name}: losses of iterations "
              f"3..{ITERS} as uninterrupted (worst {worst:.1e})")
run(["sft"] + BASE + ["--load", run_dir("legacy_tp2"), "--finetune", "true", "--save", "legacy_finetune"])

# --- bad layouts: one line, exit 2, on every rank, before any work
BAD = [
    (4, TP2 + ["--expert_model_parallel_size", "2"], "needs --sequence_parallel true: each TP rank routes its own rows"),
    (2, TP2 + ["--expert_tensor_parallel_size", "1"], "needs --sequence_parallel true: each TP rank routes its own rows"),
    (4, ["--tensor_model_parallel_size", "4"], "--tensor_model_parallel_size 4 must divide num_key_value_heads 2"),
    (3, ["--tensor_model_parallel_size", "3", "--global_batch_size", "6"],
     "--tensor_model_parallel_size 3 must divide num_attention_heads 4"),
]
for np, flags, msg in BAD:
    save = "bad_" + "_".join(f.strip("-") for f in flags)
    p = run(["sft"] + BASE + CASES["qwen3_moe"] + flags + ["--save", save], np=np, expect=None)
    # Every rank prints the same one line (prefixed with its rank).
    lines = {re.sub(r"^moectl: error \(rank \d+ of \d+\)", "moectl: error", l) for l in p.stderr.splitlines()
             if l.startswith("moectl: error")}
    check(p.returncode == 2 and msg in p.stderr and len(lines) == 1 and not os.path.exists(os.path.join(WORK, save)),
          f"{' '.join(flags)}: exit 2 with one line naming the rule (exit {p.returncode}): {sorted(lines)[:1]}")

train_runs.finish("tensor-parallel")
