#!/usr/bin/env python3
"""Distributed training speed on this machine's cores (issues 13 and 15): the training
benchmark's model (bench_train.cpp: qwen3_moe, hidden 512, 4 layers, 64 experts top-8, vocab
32000, 4 x 512 tokens per global batch) trained by `moectl pt` as one process with every core,
and under mpirun (2 processes x 1 thread) as DP2 (also with --overlap_grad_reduce and
--overlap_param_gather), EP2, TP2, TP2 with sequence parallelism, CP2 (each 512-token sequence split
over the two ranks), PP2 and PP2 with 2 virtual stages (8 micro-batches of 512 tokens for the
pipelines), side by side in one
run. Prints tokens/s of each, the ratio, the fraction of step time spent in each collective type,
and the pipelines' measured bubble beside the 1F1B / interleaved formula.
Usage: bench_dist.py MOECTL SRC_DIR WORK_DIR [--iters N] [--mpiexec mpirun]"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("moectl")
ap.add_argument("src")
ap.add_argument("work")
ap.add_argument("--iters", type=int, default=6)
ap.add_argument("--mpiexec", default="mpirun")
a = ap.parse_args()
MOECTL, WORK = os.path.abspath(a.moectl), os.path.abspath(a.work)
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
cores = os.cpu_count() or 1
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
env.pop("NPROC_PER_NODE", None)

# The benchmark model, randomly initialised by pt (config + tokenizer only).
tiny = os.path.join(WORK, "tiny")
subprocess.run([MOECTL, "init", "--config", os.path.join(a.src, "configs", "tiny-moe"), "--output_dir", tiny],
               check=True, capture_output=True)
model = os.path.join(WORK, "model")
os.makedirs(model)
cfg = json.load(open(os.path.join(tiny, "config.json")))
cfg.update(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
           num_experts=64, num_experts_per_tok=8, moe_intermediate_size=256, intermediate_size=1024,
           vocab_size=32000, torch_dtype="float32")
json.dump(cfg, open(os.path.join(model, "config.json"), "w"))
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tiny, f), model)

ARGS = ["pt", "--model", model, "--dataset", "dummy#256", "--max_length", "512", "--micro_batch_size", "1",
        "--global_batch_size", "4", "--train_iters", str(a.iters), "--log_interval", "1", "--lr", "1e-4",
        "--save_safetensors", "false", "--no_save_optim", "true", "--eval_interval", "0"]


def run(name, prefix, threads, extra=(), gbs=4):
    e = dict(env, OMP_NUM_THREADS=str(threads))
    extra = list(extra) + ["--global_batch_size", str(gbs)]
    p = subprocess.run(prefix + [MOECTL] + ARGS + list(extra) + ["--save", os.path.join(WORK, name)], capture_output=True,
                       text=True, env=e)
    if p.returncode != 0:
        sys.exit(f"{name}: exit {p.returncode}\n{p.stderr[-2000:]}")
    run_dir = [os.path.join(WORK, name, d) for d in os.listdir(os.path.join(WORK, name)) if d.startswith("v")][0]
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "logging.jsonl"))]
    steps = [r["train_speed(s/it)"] for r in rows if "train_speed(s/it)" in r][1:]  # the first warms up
    s_per_it = sum(steps) / len(steps)
    comm = {}
    m = re.search(r"communication: ([0-9.]+) s in collectives: (.*)", p.stdout)
    if m:
        for k, v in re.findall(r"(\S+) ([0-9.]+) s \(", m.group(2)):
            comm[k] = float(v)
    total = sum(r["train_speed(s/it)"] for r in rows if "train_speed(s/it)" in r)
    bubble = re.search(r"pipeline bubble: ([0-9.]+) .*formula ([0-9.]+); ([0-9.]+) for the stages' measured compute "
                       r"([0-9. /]+) s", p.stdout)
    return {"s_per_it": s_per_it, "tokens_per_s": gbs * 512 / s_per_it, "comm": comm, "train_s": total,
            "bubble": bubble.groups() if bubble else None}


MPI2 = [a.mpiexec, "-np", "2", "--oversubscribe", "--bind-to", "none"]
one = run("one", [], cores)
half = max(1, cores // 2)
dp2 = run("dp2", MPI2, half)
# Megatron's default bucket size (40M elements): a few buckets of this model's 135M parameters.
dp2ov = run("dp2ov", MPI2, half, ["--overlap_grad_reduce", "true", "--overlap_param_gather", "true"])
ep2 = run("ep2", MPI2, half, ["--expert_model_parallel_size", "2"])
TP2 = ["--tensor_model_parallel_size", "2"]
PP2 = ["--pipeline_model_parallel_size", "2"]
more = [("TP2: 2 processes x %d" % half, run("tp2", MPI2, half, TP2)),
        ("TP2 + SP", run("tp2sp", MPI2, half, TP2 + ["--sequence_parallel", "true"])),
        ("CP2", run("cp2", MPI2, half, ["--context_parallel_size", "2"])),
        ("PP2, 8 micro-batches", run("pp2", MPI2, half, PP2, gbs=8)),
        ("PP2 x VPP2, 8 micro-batches", run("vpp2", MPI2, half, PP2 + ["--virtual_pipeline_model_parallel_size", "2"],
                                             gbs=8))]
print(f"model: qwen3_moe hidden 512, 4 layers, 64 experts top-8, vocab 32000; 4 x 512 tokens per step (pipelines: "
      f"8 x 512); {a.iters} steps, {cores} cores")
print(f"{'layout':<30}{'s/step':>9}{'tokens/s':>10}{'ratio':>8}  communication")
for name, r in [("1 process x %d threads" % cores, one), ("DP2: 2 processes x %d" % half, dp2),
                ("DP2, both overlaps", dp2ov), ("EP2: 2 processes x %d" % half, ep2)] + more:
    comm = sum(r["comm"].values())
    parts = ", ".join(f"{k} {100 * v / r['train_s']:.1f}%" for k, v in r["comm"].items() if v > 0.0005)
    print(f"{name:<30}{r['s_per_it']:>9.3f}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / one['tokens_per_s']:>8.2f}"
          f"  {100 * comm / r['train_s']:.1f}% of step time" + (f" ({parts})" if parts else ""))
for name, r in more:
    if r["bubble"]:
        got, formula, uneven, stages = r["bubble"]
        got, formula, uneven = float(got), float(formula), float(uneven)
        print(f"{name}: bubble {got:.3f} of stage 0's schedule time; formula {formula:.3f} for equal stages, "
              f"{uneven:.3f} for the stages' compute ({stages} s): "
              f"{'within' if abs(got - uneven) <= 0.2 * uneven else 'outside'} 20% of it")
print(f"DP2 / one process: {dp2['tokens_per_s'] / one['tokens_per_s']:.2f}x, with overlap "
      f"{dp2ov['tokens_per_s'] / one['tokens_per_s']:.2f}x (target >= 0.9x); "
      f"EP2 / one process: {ep2['tokens_per_s'] / one['tokens_per_s']:.2f}x (target >= 0.85x)")
