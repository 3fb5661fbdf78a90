#!/usr/bin/env python3
"""Context-parallel training (issue 15 item 4) equals the single process, end to end through the CLI:
- layout parity: per-iteration loss and grad norm, and the final weights, of CP2 runs under mpirun
  equal the one-process run to 1e-5 relative (fp32): Qwen3-MoE one sequence per micro-batch (no
  packing); packed rows of several sequences of any length (the split pads each to a multiple of
  2 x CP and cuts the padding off) with the switch balancing loss and the z-loss (their statistics
  are the whole micro-batch's); with the replicated optimizer; CP2 x EP2 on 2 processes, CP2 x DP2
  and TP2 (sequence parallel) x CP2 on 4; a dense Qwen2 with tied embeddings and q/k/v bias. The
  logged balancing loss, z-loss and expert load imbalance equal the one-process run's too;
- checkpoints: CP does not split weights, so a CP2 save (torch_dist and legacy torch: one mp_rank_00)
  and a legacy TP2 x CP2 save (mp_rank_00, mp_rank_01) resume in one process, and a one-process save
  resumes under CP2, with the losses of the run that never stopped;
- bad layouts (CP with PP, CP with seq_aux_loss) end every rank at start with exit 2 and one line
  naming the rule and the numbers.
Usage: train_cp_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
MPIEXEC = sys.argv[4]
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(SRC, "tests", "cli"))
import dcp_reader  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
ENV.pop("NPROC_PER_NODE", None)
failures = []
started = time.time()


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(args, np=1, expect=0):
    cmd = ([MPIEXEC, "-np", str(np), "--oversubscribe"] if np > 1 else []) + [MOECTL] + args
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=WORK, env=ENV, timeout=300)
    if expect is not None:
        assert p.returncode == expect, f"np {np} moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return p


def run_dir(save):
    dirs = sorted(glob.glob(os.path.join(WORK, save, "v*")))
    assert len(dirs) == 1, f"{save}: run dirs {dirs}"
    return dirs[0]


def train_rows(save):
    rows = [json.loads(l) for l in open(os.path.join(run_dir(save), "logging.jsonl"))]
    return [r for r in rows if "grad_norm" in r]


def dist_model(save, it):
    """A torch_dist checkpoint's model tensors (global keys) read by the independent reader."""
    it_dir = os.path.join(run_dir(save), f"iter_{it:07d}")
    return {k: v for k, v in dcp_reader.read_checkpoint(it_dir)[0].items() if not k.startswith("optimizer.")}


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


# The logged numbers that must not depend on the layout (timings and memory do).
COMPARED = re.compile(r"^(loss|acc|grad_norm|load_balancing_loss|z_loss|expert_load_imbalance_layer_\d+)$")


def same_run(ref, got, what, tol=1e-5, weights_at=None):
    a, b = train_rows(ref), train_rows(got)
    check(len(a) == len(b) and len(a) > 0, f"{what}: {len(b)} logged iterations, expected {len(a)}")
    worst = max((max(rel(x[0], y[0]), rel(x[1], y[1])) for x, y in
                 zip([(r["loss"], r["grad_norm"]) for r in a], [(r["loss"], r["grad_norm"]) for r in b])), default=0.0)
    check(worst <= tol, f"{what}: loss and grad norm per iteration within {tol} (worst {worst:.2e})")
    keys = sorted(k for k in a[0] if COMPARED.match(k))
    worst_any = max((rel(x[k], y.get(k, float("inf"))) for x, y in zip(a, b) for k in keys), default=0.0)
    check(worst_any <= tol, f"{what}: {', '.join(k for k in keys if k not in ('loss', 'grad_norm'))} within {tol} "
          f"(worst {worst_any:.2e})")
    if weights_at:
        # Relative in L2 over the whole model (see train_dp_test.py: Adam turns gradients that are
        # zero in exact arithmetic into full steps of either sign, so elements compare rounding).
        wa, wb = dist_model(ref, weights_at), dist_model(got, weights_at)
        check(sorted(wa) == sorted(wb), f"{what}: the checkpoints hold the same tensors")
        num = den = 0.0
        for k, t in wa.items():
            if torch.is_tensor(t) and t.is_floating_point() and k in wb:
                num += ((t.double() - wb[k].double()) ** 2).sum().item()
                den += (t.double() ** 2).sum().item()
        d = (num / max(den, 1e-30)) ** 0.5
        check(d <= tol, f"{what}: final weights within {tol} (|dw|/|w| = {d:.2e})")


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
# Packed rows of up to 256 tokens: several self-cognition samples each, of lengths of every residue
# modulo 4 (2 x CP), so the split pads (and cuts) most of them.
PACKED = ["--micro_batch_size", "2", "--packing", "true", "--max_length", "256", "--moe_aux_loss_coeff", "0.02",
          "--moe_z_loss_coeff", "0.001"]
CASES = [
    # name, model flags, [(processes, extra flags, layout name)]
    ("Qwen3-MoE, one sequence per micro-batch", ["--model", q3, "--micro_batch_size", "1"], [(2, [], "CP2")]),
    ("Qwen3-MoE, packed, aux and z losses", ["--model", q3] + PACKED,
     [(2, [], "CP2"), (2, ["--use_distributed_optimizer", "false"], "CP2 (replicated optimizer)"),
      (2, ["--expert_model_parallel_size", "2"], "CP2 x EP2"), (4, [], "CP2 x DP2"),
      (4, TP2 + ["--sequence_parallel", "true"], "TP2 SP x CP2")]),
    ("Qwen2 dense, tied embeddings, packed", ["--model", dense, "--micro_batch_size", "2", "--packing", "true",
                                              "--max_length", "256"], [(2, [], "CP2")]),
]
for i, (name, flags, layouts) in enumerate(CASES):
    ref = f"c{i}_np1"
    run(["sft"] + BASE + flags + ["--save", ref])
    for j, (np, extra, layout) in enumerate(layouts):
        got = f"c{i}_{j}"
        run(["sft"] + BASE + flags + CP2 + extra + ["--save", got], np=np)
        same_run(ref, got, f"{name}: {layout} vs one process", weights_at=ITERS)
args = json.load(open(os.path.join(run_dir("c1_3"), "args.json")))
check(args.get("world_size") == 4 and args.get("context_parallel_size") == 2 and args.get("data_parallel_size") == 2,
      "args.json records world_size 4, CP 2, DP 2")


# --- checkpoints: CP2 saved at iteration 2 resumes in one process, one process saved at 2 under CP2
def stopped_at_2(save):
    dst = os.path.join(WORK, save + "_half", "v0-saved")
    shutil.copytree(run_dir(save), dst)
    open(os.path.join(dst, "latest_checkpointed_iteration.txt"), "w").write("2")
    shutil.rmtree(os.path.join(dst, f"iter_{ITERS:07d}"))
    return dst


LAYOUTS = {"one process": (1, []), "CP2": (2, CP2), "TP2 x CP2": (4, TP2 + CP2)}
for fmt, src, dst, rank_dirs in (("torch_dist", "CP2", "one process", None), ("torch", "CP2", "one process", 1),
                                 ("torch_dist", "one process", "CP2", None), ("torch", "TP2 x CP2", "one process", 2)):
    save = f"res_{fmt}_{src.replace(' ', '')}"
    run(["sft"] + BASE + ["--model", q3] + PACKED + LAYOUTS[src][1] + ["--ckpt_format", fmt, "--save", save,
                                                                       "--save_interval", "2"], np=LAYOUTS[src][0])
    ck = stopped_at_2(save)
    if rank_dirs:
        want = [f"mp_rank_{t:02d}" for t in range(rank_dirs)]
        check(sorted(os.listdir(os.path.join(ck, "iter_0000002"))) == want,
              f"legacy torch {src}: rank dirs {', '.join(want)} (CP does not split weights)")
    out = f"{save}_to_{dst.replace(' ', '')}"
    run(["sft"] + BASE + PACKED + ["--load", ck, "--finetune", "false", "--ckpt_format", fmt, "--save", out] +
        LAYOUTS[dst][1], np=LAYOUTS[dst][0])
    full, resumed = train_rows(save), train_rows(out)
    worst = max((rel(a["loss"], b["loss"]) for a, b in zip(full[2:], resumed)), default=1.0)
    check(len(resumed) == ITERS - 2 and worst <= 1e-6,
          f"{fmt}: {src} saved at 2 -> {dst}: losses of iterations 3..{ITERS} as uninterrupted (worst {worst:.1e})")

# --- bad layouts: one line, exit 2, on every rank, before any work
BAD = [
    (4, CP2 + ["--pipeline_model_parallel_size", "2"],
     "--context_parallel_size 2 with --pipeline_model_parallel_size 2: context and pipeline parallelism together"),
    (2, CP2 + ["--moe_router_load_balancing_type", "seq_aux_loss", "--moe_aux_loss_coeff", "0.01"],
     "--context_parallel_size 2 with --moe_router_load_balancing_type seq_aux_loss"),
]
for np, flags, msg in BAD:
    save = "bad_" + "_".join(f.strip("-") for f in flags)
    p = run(["sft"] + BASE + ["--model", q3] + flags + ["--save", save], np=np, expect=None)
    lines = {re.sub(r"^moectl: error \(rank \d+ of \d+\)", "moectl: error", l) for l in p.stderr.splitlines()
             if l.startswith("moectl: error")}
    check(p.returncode == 2 and msg in p.stderr and len(lines) == 1 and not os.path.exists(os.path.join(WORK, save)),
          f"{' '.join(flags)}: exit 2 with one line naming the rule (exit {p.returncode}): {sorted(lines)[:1]}")

print(f"{time.time() - started:.0f} s")
if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("all context-parallel checks passed")
