#!/usr/bin/env python3
"""--ckpt_format torch with --use_distributed_optimizer true (issue 13): Megatron's legacy
DistributedOptimizer checkpoint. Each rank dir holds model_optim_rng.pt with the model, the
optimizer's param groups and step only, and distrib_optim.pt with the parameter state as
get_parameter_state_dp_zero gathers it: {'buckets_coalesced': True, 0: {(param_dtype, grad_dtype):
{'param', 'exp_avg', 'exp_avg_sq': fp32[numel_unpadded], 'numel_unpadded'}}}, a list [dense, expert]
when the expert optimizer is chained (EP > 1; None where another rank's file holds it).
Checks, on the tiny Qwen3-MoE model:
- structure of both files, and the values: every parameter's slice, found by Megatron's grad
  buffer layout computed here independently (GPTModel's named_parameters order reversed, each
  parameter at a multiple of 64 elements), equals the fp32 master / exp_avg / exp_avg_sq the
  torch_dist checkpoint of the same run holds; the alignment gaps are zero;
- resuming at iteration 2 (--load DIR --finetune false) repeats the uninterrupted run's losses
  and grad norms (<= 1e-6 relative); without distrib_optim.pt the resume is refused naming it;
- a checkpoint written with --use_distributed_optimizer false has no distrib_optim.pt and resumes
  as before;
- with MPIEXEC: DP2 (dict) and EP2 (chained list) under mpirun, the same checks, and resuming
  under another layout (DP2 -> one process, EP2 -> one process).
Usage: distrib_optim_test.py MOECTL SRC_DIR WORK_DIR [MPIEXEC]"""
import json
import os
import re
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
import dcp_reader  # noqa: E402
from train_runs import check, run, rel  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)


def train_log(save):
    rows = [json.loads(l) for l in open(os.path.join(WORK, save, "logging.jsonl"))]
    return {r["iteration"]: (r["loss"], r["grad_norm"]) for r in rows if "grad_norm" in r}


q3 = os.path.join(WORK, "q3")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])
E = json.load(open(os.path.join(q3, "config.json")))["num_experts"]
BASE = ["--model", q3, "--dataset", "self-cognition#96", "--model_name", "x", "--model_author", "y",
        "--micro_batch_size", "2", "--global_batch_size", "8", "--log_interval", "1", "--lr", "1e-3",
        "--lr_warmup_iters", "1", "--lr_decay_iters", "4", "--save_safetensors", "false", "--eval_interval", "0",
        "--save_interval", "2", "--add_version", "false"]
TORCH = ["--ckpt_format", "torch"]

# --- Megatron's grad buffer layout, written from Megatron-Core's sources (not from moectl's):
# GPTModel.named_parameters() order: embedding, per layer self_attention.linear_proj, linear_qkv
# (layer_norm_weight, weight, bias), q_layernorm, k_layernorm, pre_mlp_layernorm, the dense MLP's
# linear_fc1 (layer_norm_weight, weight) and linear_fc2, the MoE router, experts (fc1 weight0..,
# fc2 weight0..), shared experts (gate_weight, linear_fc1, linear_fc2); final_layernorm, output.
WITHIN = ["self_attention.linear_proj.weight", "self_attention.linear_qkv.layer_norm_weight",
          "self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias", "self_attention.q_layernorm.weight",
          "self_attention.k_layernorm.weight", "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight",
          "mlp.linear_fc1.weight", "mlp.linear_fc2.weight", "mlp.router.weight", "mlp.experts.linear_fc1.weight",
          "mlp.experts.linear_fc2.weight", "mlp.shared_experts.gate_weight", "mlp.shared_experts.linear_fc1.weight",
          "mlp.shared_experts.linear_fc2.weight"]


def module_key(name):
    if name == "embedding.word_embeddings.weight":
        return (0,)
    if name == "decoder.final_layernorm.weight":
        return (2,)
    if name == "output_layer.weight":
        return (3,)
    m = re.match(r"decoder\.layers\.(\d+)\.(.*?)(\d*)$", name)
    return (1, int(m.group(1)), WITHIN.index(m.group(2)), int(m.group(3) or 0))


def layout(params):
    """{name: (offset, shape)} and numel_unpadded for `params` {name: shape} in one bucket:
    reversed module order, each start padded to 64 elements."""
    out, pos = {}, 0
    for name in sorted(params, key=module_key, reverse=True):
        pos = (pos + 63) // 64 * 64
        out[name] = (pos, params[name])
        pos += params[name].numel()
    return out, pos


def dist_state(save, it):
    """The torch_dist checkpoint's optimizer state under per-layer (global) names:
    {('param'|'exp_avg'|'exp_avg_sq', name): tensor}."""
    sd = dcp_reader.read_checkpoint(os.path.join(WORK, save, f"iter_{it:07d}"))[0]
    out = {}
    for k, v in sd.items():
        m = re.match(r"optimizer\.state\.(fp32_param|exp_avg|exp_avg_sq)\.(.*)$", k)
        if not m:
            continue
        key, fqn = ("param" if m.group(1) == "fp32_param" else m.group(1)), m.group(2)
        if not fqn.startswith("decoder.layers."):
            out[(key, fqn)] = v
            continue
        rest = fqn[len("decoder.layers."):]
        for i in range(v.shape[0]):
            if rest.startswith("mlp.experts.experts."):
                for e in range(v.shape[1]):
                    out[(key, f"decoder.layers.{i}.mlp.experts.{rest[len('mlp.experts.experts.'):]}{e}")] = v[i, e]
            else:
                out[(key, f"decoder.layers.{i}.{rest}")] = v[i]
    return out


def check_rank_dir(d, what, expect, ep_rank=0, ep=1, steps=2, dtype=torch.float32):
    """Structure of `d`'s two files; every slice against `expect` (dist_state of the same run)."""
    ck = torch.load(os.path.join(d, "model_optim_rng.pt"))
    check(ck["args"].use_distributed_optimizer is True, f"{what}: args.use_distributed_optimizer")
    chained = ep > 1
    od = ck["optimizer"]
    sds = od if chained else [od]
    check(isinstance(od, list) == chained and all(set(s) == {"optimizer"} and set(s["optimizer"]) == {"param_groups"}
                                                  for s in sds),
          f"{what}: model_optim_rng.pt 'optimizer' is DistributedOptimizer.state_dict (param groups only)"
          + (", one per chained optimizer" if chained else ""))
    groups = [g for s in sds for g in s["optimizer"]["param_groups"]]
    check(all(g["step"] == steps and "params" not in g for g in groups), f"{what}: every param group has step {steps}")
    if chained:
        check([g["is_expert_parallel"] for g in sds[1]["optimizer"]["param_groups"]] == [True]
              and not any(g["is_expert_parallel"] for g in sds[0]["optimizer"]["param_groups"]),
              f"{what}: the second optimizer is the expert one")
    dist = torch.load(os.path.join(d, "distrib_optim.pt"))
    states = dist if chained else [dist]
    check(isinstance(dist, list) == chained and len(states) == (2 if chained else 1),
          f"{what}: distrib_optim.pt is a {'list of 2' if chained else 'dict'}")
    params = {k: v.shape for k, v in ck["model"].items() if torch.is_tensor(v) and not k.endswith("expert_bias")}
    nle = E // ep
    for i, st in enumerate(states):
        if chained and i == 0 and ep_rank != 0:
            check(st is None, f"{what}: the dense state is None (EP rank 0's file holds it)")
            continue
        mine = {k: s for k, s in params.items() if not chained or (i == 1) == (".mlp.experts." in k)}
        lay, numel = layout(mine)
        check(st["buckets_coalesced"] is True and [k for k in st if k != "buckets_coalesced"] == [0],
              f"{what}[{i}]: buckets_coalesced and one grad buffer")
        check(list(st[0]) == [(dtype, torch.float32)], f"{what}[{i}]: dtype key {list(st[0])}")
        w = st[0][(dtype, torch.float32)]
        check(list(w) == ["param", "exp_avg", "exp_avg_sq", "numel_unpadded"] and w["numel_unpadded"] == numel
              and all(w[k].dtype == torch.float32 and w[k].shape == (numel,) for k in ("param", "exp_avg", "exp_avg_sq")),
              f"{what}[{i}]: param/exp_avg/exp_avg_sq fp32[{numel}] and numel_unpadded (got {w['numel_unpadded']})")
        covered = torch.zeros(numel, dtype=torch.bool)
        worst, missing = 0.0, []
        for name, (off, shape) in lay.items():
            n = shape.numel()
            covered[off:off + n] = True
            g = re.sub(r"(\.mlp\.experts\.linear_fc\d\.weight)(\d+)$",
                       lambda m: m.group(1) + str(int(m.group(2)) + ep_rank * nle), name)
            for k in ("param", "exp_avg", "exp_avg_sq"):
                ref = expect.get((k, g))
                if ref is None:
                    missing.append((k, g))
                    continue
                got = w[k][off:off + n].view(shape)
                worst = max(worst, (got - ref.reshape(shape)).abs().max().item() / max(ref.abs().max().item(), 1e-30))
        check(not missing and worst == 0.0,
              f"{what}[{i}]: every parameter's slice equals the torch_dist checkpoint's state (worst {worst:.1e}, "
              f"missing {missing[:3]})")
        gaps = int((~covered).sum())
        check(all(bool((w[k][~covered] == 0).all()) for k in ("param", "exp_avg", "exp_avg_sq"))
              and (gaps > 0 or i == 1), f"{what}[{i}]: the 64-element alignment gaps ({gaps} values) are zero")
        check(bool((w["exp_avg_sq"] != 0).any()), f"{what}[{i}]: Adam's moments are saved")


def same_losses(ref, got, what, iters=(3, 4), tol=1e-6):
    a, b = train_log(ref), train_log(got)
    keys = [k for k in a if int(k.split("/")[0]) in iters]
    ok = len(keys) == len(iters) and all(k in b for k in keys)
    worst = max((max(rel(a[k][0], b[k][0]), rel(a[k][1], b[k][1])) for k in keys if k in b), default=1.0)
    check(ok and worst <= tol, f"{what}: iterations {iters} repeat the uninterrupted run (worst {worst:.1e} <= {tol})")


# --- one process
run(["sft"] + BASE + TORCH + ["--train_iters", "4", "--save", "full"])
run(["sft"] + BASE + ["--train_iters", "4", "--save", "full_td"])
for it in (2, 4):
    check_rank_dir(os.path.join(WORK, "full", f"iter_{it:07d}", "mp_rank_00"), f"one process, iteration {it}",
                   dist_state("full_td", it), steps=it)
run(["sft"] + BASE + TORCH + ["--train_iters", "2", "--save", "half"])
run(["sft"] + BASE[2:] + TORCH + ["--load", "half", "--finetune", "false", "--train_iters", "4", "--save", "resumed"])
same_losses("full", "resumed", "one process resumed from distrib_optim.pt at iteration 2")
fresh = run(["sft"] + BASE[2:] + TORCH + ["--load", "half", "--finetune", "false", "--train_iters", "4",
                                          "--save", "fresh", "--no_load_optim", "true"])
check(train_log("fresh")["4/4"] != train_log("full")["4/4"], "without the optimizer state iteration 4 differs")
# bfloat16 weights: the dtype key is (torch.bfloat16, torch.float32); the fp32 masters resume exactly
run(["sft"] + BASE + TORCH + ["--train_iters", "2", "--save", "bf16", "--torch_dtype", "bfloat16"])
d = torch.load(os.path.join(WORK, "bf16", "iter_0000002", "mp_rank_00", "distrib_optim.pt"))
check(list(d[0]) == [(torch.bfloat16, torch.float32)], f"bfloat16 run: dtype key {list(d[0])}")
# distrib_optim.pt missing: refused, naming it
shutil.copytree(os.path.join(WORK, "half"), os.path.join(WORK, "half_broken"))
os.remove(os.path.join(WORK, "half_broken", "iter_0000002", "mp_rank_00", "distrib_optim.pt"))
p = run(["sft"] + BASE[2:] + TORCH + ["--load", "half_broken", "--finetune", "false", "--train_iters", "4",
                                      "--save", "broken"], expect=None)
check(p.returncode == 2 and "distrib_optim.pt" in p.stderr, f"missing distrib_optim.pt refused: rc {p.returncode} "
      f"{p.stderr.strip().splitlines()[-1:] if p.stderr.strip() else ''}")
# --use_distributed_optimizer false: the state stays in model_optim_rng.pt, resumes as before
NODIST = ["--use_distributed_optimizer", "false"]
run(["sft"] + BASE + TORCH + NODIST + ["--train_iters", "4", "--save", "rep_full"])
run(["sft"] + BASE + TORCH + NODIST + ["--train_iters", "2", "--save", "rep_half"])
r = os.path.join(WORK, "rep_half", "iter_0000002", "mp_rank_00")
ck = torch.load(os.path.join(r, "model_optim_rng.pt"))
check(not os.path.exists(os.path.join(r, "distrib_optim.pt")) and "param_names" in ck["optimizer"]
      and ck["args"].use_distributed_optimizer is False, "replicated optimizer: no distrib_optim.pt, state inline")
run(["sft"] + BASE[2:] + TORCH + NODIST + ["--load", "rep_half", "--finetune", "false", "--train_iters", "4",
                                           "--save", "rep_resumed"])
same_losses("rep_full", "rep_resumed", "replicated optimizer checkpoint resumed")

# --- under mpirun: DP2 (one optimizer, a dict) and EP2 (chained dense + expert optimizers, a list)
if MPIEXEC:
    for name, flags in (("dp2", []), ("ep2", ["--expert_model_parallel_size", "2"])):
        ep = 2 if flags else 1
        run(["sft"] + BASE + TORCH + flags + ["--train_iters", "4", "--save", f"{name}_full"], np=2)
        run(["sft"] + BASE + flags + ["--train_iters", "4", "--save", f"{name}_td"], np=2)
        dirs = sorted(os.listdir(os.path.join(WORK, f"{name}_full", "iter_0000002")))
        check(dirs == (["mp_rank_00_000", "mp_rank_00_001"] if ep > 1 else ["mp_rank_00"]), f"{name}: rank dirs {dirs}")
        expect = dist_state(f"{name}_td", 2)
        for q, r in enumerate(dirs):
            check_rank_dir(os.path.join(WORK, f"{name}_full", "iter_0000002", r), f"{name} {r}", expect,
                           ep_rank=q, ep=ep)
        run(["sft"] + BASE + TORCH + flags + ["--train_iters", "2", "--save", f"{name}_half"], np=2)
        run(["sft"] + BASE[2:] + TORCH + flags + ["--load", f"{name}_half", "--finetune", "false", "--train_iters",
                                                  "4", "--save", f"{name}_resumed"], np=2)
        same_losses(f"{name}_full", f"{name}_resumed", f"{name.upper()} resumed under {name.upper()}")
        run(["sft"] + BASE[2:] + TORCH + ["--load", f"{name}_half", "--finetune", "false", "--train_iters", "4",
                                          "--save", f"{name}_to_np1"])
        same_losses(f"{name}_full", f"{name}_to_np1", f"{name.upper()} resumed in one process", tol=1e-5)
    # one process's checkpoint resumed under DP2
    run(["sft"] + BASE[2:] + TORCH + ["--load", "half", "--finetune", "false", "--train_iters", "4",
                                      "--save", "np1_to_dp2"], np=2)
    same_losses("full", "np1_to_dp2", "one process's checkpoint resumed under DP2", tol=1e-5)
else:
    print("skip DP2/EP2: no MPIEXEC given")

train_runs.finish("distrib_optim")
