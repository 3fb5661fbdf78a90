#!/usr/bin/env python3
"""Data- and expert-parallel training (issue 13) equals the single process, end to end through the
CLI:
- layout parity: per-iteration loss and grad norm, and the final weights, of DP2, DP4, EP2, EP4
  and DP2 x EP2 runs under mpirun (with and without the distributed optimizer) equal the
  one-process run to 1e-5 relative (fp32): a Qwen3-MoE model (8 experts, GQA, 4 layers) plain,
  with the aux-loss-free expert bias and with capacity dropping, and a Qwen2-MoE model with a
  shared expert and a dense layer under seq_aux_loss; both token dispatchers (alltoall, allgather);
- resharding: DP2 x EP2 saved at iteration 2 resumes under EP4 and in one process with the losses
  of the run that never stopped; its checkpoint exports to the HF weights of the one-process run;
- --overlap_grad_reduce and --overlap_param_gather (DP2 with evaluation and saves, DP4, replicated,
  DP2 x EP2): every gradient bucket but the embedding's starts during the backward, and the
  results are the same;
- the launcher: NPROC_PER_NODE=2 moectl sft ... gives the losses of mpirun -np 2 (bitwise);
- resharding: a DP2 run saved at iteration 2 resumes in one process with the losses of the run
  that never stopped;
- files: only rank 0 writes, args.json records the parallel sizes;
- faults: a layout the world does not divide, and a missing dataset, end every rank with exit 2
  and the one-line message; a rank killed mid-run ends the job non-zero within seconds; a rank
  that hangs ends it after --distributed_timeout_minutes, naming the collective.
Usage: train_dp_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
import dcp_reader  # noqa: E402
from train_runs import check, mpirun, run, run_dir, train_log, rel, ENV  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)


def final_model(save, it):
    """The whole model of a run's checkpoint under per-layer names: torch_dist (every rank's chunks
    assembled by the independent reader, the layer and expert axes unstacked), mp_rank_00, or the
    EP ranks' files merged (experts renumbered from their EP-local indices)."""
    it_dir = os.path.join(run_dir(save), f"iter_{it:07d}")
    if os.path.exists(os.path.join(it_dir, "metadata.json")):
        out = {}
        for k, v in dcp_reader.read_checkpoint(it_dir)[0].items():
            if k.startswith("optimizer."):
                continue
            if not k.startswith("decoder.layers."):
                out[k] = v
                continue
            rest = k[len("decoder.layers."):]
            for i in range(v.shape[0]):
                if rest.startswith("mlp.experts.experts."):
                    for e in range(v.shape[1]):
                        out[f"decoder.layers.{i}.mlp.experts.{rest[len('mlp.experts.experts.'):]}{e}"] = v[i, e]
                else:
                    out[f"decoder.layers.{i}.{rest}"] = v[i]
        return out
    ranks = sorted(d for d in os.listdir(it_dir) if d.startswith("mp_rank_"))
    if ranks == ["mp_rank_00"]:
        return torch.load(os.path.join(it_dir, "mp_rank_00", "model_optim_rng.pt"))["model"]
    out = {}
    for q, r in enumerate(ranks):
        model = torch.load(os.path.join(it_dir, r, "model_optim_rng.pt"))["model"]
        nle = 8 // len(ranks)
        for k, v in model.items():
            m = re.match(r"(.*\.mlp\.experts\.linear_fc\d\.weight)(\d+)$", k)
            out[f"{m.group(1)}{int(m.group(2)) + q * nle}" if m else k] = v
    return out


def same_run(ref, got, what, tol=1e-5, weights_at=None):
    train_runs.same_run(ref, got, what, tol, weights_at, model=final_model)


# --- models: Qwen3-MoE from the tiny config, Qwen2-MoE with a shared expert and a dense layer
q3 = os.path.join(WORK, "q3")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])
cfg = json.load(open(os.path.join(SRC, "configs", "tiny", "qwen2_moe", "config.json")))
cfg.update(num_hidden_layers=4, vocab_size=1024, mlp_only_layers=[1], bos_token_id=None, eos_token_id=None)
q2cfg = os.path.join(WORK, "q2cfg")
os.makedirs(q2cfg)
json.dump(cfg, open(os.path.join(q2cfg, "config.json"), "w"))
q2 = os.path.join(WORK, "q2")
hf_model.write_random_model(q2cfg, q2, dtype="float32", seed=3)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(q3, f), q2)

ITERS = 5
BASE = ["--dataset", "self-cognition#96", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
        "--train_iters", str(ITERS), "--micro_batch_size", "2", "--global_batch_size", "8", "--log_interval", "1",
        "--lr", "1e-3", "--lr_warmup_iters", "1", "--save_safetensors", "false", "--eval_interval", "0"]
CASES = {
    "qwen3_moe": ["--model", q3],
    "qwen3_moe expert bias": ["--model", q3, "--moe_router_enable_expert_bias", "true", "--moe_aux_loss_coeff", "0"],
    # Dropping by position: with --moe_token_drop_policy probs two tokens whose probabilities tie
    # to 1e-7 can swap places when the weights differ in the last bit (the reduction order), a
    # discontinuity no layout can avoid.
    "qwen3_moe capacity 1.0": ["--model", q3, "--moe_expert_capacity_factor", "1.0", "--moe_token_drop_policy",
                               "position", "--moe_aux_loss_coeff", "0.01"],
    "qwen2_moe shared expert": ["--model", q2, "--moe_router_load_balancing_type", "seq_aux_loss",
                                "--moe_aux_loss_coeff", "0.02", "--moe_z_loss_coeff", "0.001"],
}
# (processes, EP, distributed optimizer, dispatcher): the distributed optimizer is Megatron-SWIFT's
# default, alltoall its default dispatcher.
LAYOUTS = [(2, 1, True, "alltoall"), (4, 1, True, "alltoall"), (2, 1, False, "alltoall"), (2, 2, True, "alltoall"),
           (4, 4, True, "alltoall"), (4, 2, True, "alltoall"), (4, 2, False, "alltoall"), (2, 2, True, "allgather"),
           (4, 2, True, "allgather")]
for i, (name, extra) in enumerate(CASES.items()):
    ref = f"c{i}_np1"
    run(["sft"] + BASE + extra + ["--save", ref])
    for np, ep, dopt, disp in LAYOUTS:
        got = f"c{i}_np{np}_ep{ep}_{int(dopt)}" + ("" if disp == "alltoall" else "_" + disp)
        flags = ["--expert_model_parallel_size", str(ep), "--use_distributed_optimizer", str(dopt).lower(),
                 "--moe_token_dispatcher_type", disp]
        run(["sft"] + BASE + extra + flags + ["--save", got], np=np)
        what = f"DP{np // ep} x EP{ep}" if ep > 1 and np > ep else (f"EP{ep}" if ep > 1 else f"DP{np}")
        how = ("" if dopt else " (replicated optimizer)") + ("" if disp == "alltoall" else f" ({disp})")
        same_run(ref, got, f"{name}: {what}{how} vs one process", weights_at=ITERS)

# --- --overlap_grad_reduce / --overlap_param_gather: buckets (small ones here, so the tiny model has
# many) start reducing during the last backward (onto their owners with the distributed optimizer),
# and the updated parameters travel during the next forward, evaluation and checkpoints waiting for
# them; the results are the same
GRAD = ["--overlap_grad_reduce", "true", "--ddp_bucket_size", "20000"]
PARAM = ["--overlap_param_gather", "true", "--ddp_bucket_size", "20000"]
for np, ep, dopt, flags in ((2, 1, True, GRAD + PARAM + ["--eval_interval", "2", "--save_interval", "2"]),
                            (4, 1, True, GRAD + PARAM), (2, 1, False, GRAD), (4, 2, True, GRAD + PARAM),
                            (2, 1, True, PARAM)):
    got = f"c0_overlap_np{np}_ep{ep}_{int(dopt)}_{len(flags)}"
    p = run(["sft"] + BASE + CASES["qwen3_moe"] + flags + ["--save", got, "--expert_model_parallel_size", str(ep),
                                                           "--use_distributed_optimizer", str(dopt).lower()], np=np)
    what = (f"DP{np // ep}" + (f" x EP{ep}" if ep > 1 else "") + ("" if dopt else " (replicated optimizer)") +
            "".join(f" {f}" for f in flags if f.startswith("--overlap") or f == "--eval_interval"))
    if "--overlap_grad_reduce" in flags:
        m = re.search(r"overlap: (\d+) of (\d+) gradient buckets started reducing during the backward", p.stdout)
        check(m is not None and int(m.group(2)) > 2 and int(m.group(1)) >= int(m.group(2)) - 1,
              f"{what}: the buckets start during the backward ({m and m.group(0)})")
    same_run("c0_np1", got, f"{what} vs one process", weights_at=ITERS)

# --- files: rank 0 alone writes, args.json has the parallel sizes
args = json.load(open(os.path.join(run_dir("c0_np4_ep2_1"), "args.json")))
check(args.get("world_size") == 4 and args.get("data_parallel_size") == 4
      and args.get("expert_model_parallel_size") == 2, "args.json records world_size 4, DP 4, EP 2")
check(len(glob.glob(os.path.join(WORK, "c0_np2_ep1_1", "*"))) == 1, "DP2 made one run dir")

# --- interop: a DP2 x EP2 run saving --ckpt_format torch writes Megatron's rank files for EP2 (the
# names and shapes moectl export writes for that layout, which the export tests hold to
# Megatron-Core's), each loading with torch.load, holding its EP rank's experts under local
# indices; the same run saving torch_dist (the default: each EP rank its own chunks, rank 0 the
# .metadata) holds the same model
run(["sft"] + BASE + CASES["qwen3_moe"] + ["--expert_model_parallel_size", "2", "--ckpt_format", "torch", "--save",
                                           "c0_np4_ep2_legacy"], np=4)
legacy = {k: v for k, v in final_model("c0_np4_ep2_legacy", ITERS).items() if torch.is_tensor(v)}  # no _extra_state
dist_ = final_model("c0_np4_ep2_1", ITERS)
check(sorted(legacy) == sorted(dist_) and all(torch.equal(legacy[k], dist_[k]) for k in legacy),
      "DP2 x EP2: the torch_dist checkpoint holds the legacy rank files' model exactly")
it_td = os.path.join(run_dir("c0_np4_ep2_1"), f"iter_{ITERS:07d}")
distcp = sorted(f for f in os.listdir(it_td) if f.endswith(".distcp"))
check(len(distcp) == 4 and len({f.split("_")[2] for f in distcp}) == 2 and "__0_0.distcp" in distcp,
      f"DP2 x EP2 torch_dist: two writing ranks, two files each: {distcp}")
run(["export", "--model", q3, "--to_mcore", "true", "--ckpt_format", "torch", "--output_dir", "q3_ep2",
     "--expert_model_parallel_size", "2"])
for q in range(2):
    rank = f"mp_rank_00_{q:03d}"
    got = torch.load(os.path.join(run_dir("c0_np4_ep2_legacy"), f"iter_{ITERS:07d}", rank, "model_optim_rng.pt"))
    ref = torch.load(os.path.join(WORK, "q3_ep2", "iter_0000001", rank, "model_optim_rng.pt"))
    shapes = lambda d: {k: tuple(v.shape) for k, v in d["model"].items() if torch.is_tensor(v)}
    check(shapes(got) == shapes(ref), f"{rank}: tensor names and shapes as moectl export --expert_model_parallel_size 2")
    check(got["args"].expert_model_parallel_size == 2 and "optimizer" in got, f"{rank}: args say EP2; optimizer state")
    w_whole = final_model("c0_np1", ITERS)
    w_rank = got["model"]["decoder.layers.0.mlp.experts.linear_fc1.weight1"].float()
    diff = (w_rank - w_whole[f"decoder.layers.0.mlp.experts.linear_fc1.weight{4 * q + 1}"].float()).abs().max().item()
    check(diff < 1e-2, f"{rank}: local expert 1 is global expert {4 * q + 1} (max diff {diff:.1e})")

# --- the launcher: NPROC_PER_NODE=2 as with swift
run(["sft"] + BASE + CASES["qwen3_moe"] + ["--save", "nproc2"], env=dict(ENV, NPROC_PER_NODE="2"))
same_run("c0_np2_ep1_1", "nproc2", "NPROC_PER_NODE=2 vs mpirun -np 2", tol=0.0)
check(json.load(open(os.path.join(run_dir("nproc2"), "args.json")))["world_size"] == 2, "NPROC_PER_NODE=2: 2 ranks")

# --- resharding: DP2 x EP2 saved at iteration 2 resumes under EP4, DP4 and in one process
EP2 = ["--expert_model_parallel_size", "2"]
run(["sft"] + BASE + CASES["qwen3_moe"] + EP2 + ["--save", "res_dp2", "--save_interval", "2"], np=4)
half = run_dir("res_dp2")
os.makedirs(os.path.join(WORK, "res_half"))
shutil.copytree(half, os.path.join(WORK, "res_half", "v0-saved"))
ck = os.path.join(WORK, "res_half", "v0-saved")
# Keep iteration 2 as the latest, as if the run had stopped there.
open(os.path.join(ck, "latest_checkpointed_iteration.txt"), "w").write("2")
shutil.rmtree(os.path.join(ck, f"iter_{ITERS:07d}"))
full = train_log("res_dp2")
for np, ep in ((1, 1), (4, 1), (4, 4)):
    save = f"res_np{np}_ep{ep}"
    run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", save, "--expert_model_parallel_size",
                          str(ep)], np=np)
    resumed = train_log(save)
    check(len(resumed) == ITERS - 2, f"resume from iteration 2 logs {len(resumed)} iterations")
    worst = max(rel(a[0], b[0]) for a, b in zip(full[2:], resumed))
    check(worst <= 1e-6, f"DP2 x EP2 saved at 2 -> {np} process(es), EP{ep}: losses of iterations 3..{ITERS} as "
          f"uninterrupted (worst {worst:.1e})")
# The DP2 x EP2 run's checkpoint exports to the one-process run's HF weights.
for d in ("c0_np1", "c0_np4_ep2_1"):
    run(["export", "--mcore_model", run_dir(d), "--to_hf", "true", "--output_dir", d + "_hf"])
a_hf = hf_model.load_safetensors_dir(os.path.join(WORK, "c0_np1_hf"))
b_hf = hf_model.load_safetensors_dir(os.path.join(WORK, "c0_np4_ep2_1_hf"))
num = sum(((a_hf[k].double() - b_hf[k].double()) ** 2).sum().item() for k in a_hf)
den = sum((a_hf[k].double() ** 2).sum().item() for k in a_hf)
check(set(a_hf) == set(b_hf) and (num / den) ** 0.5 <= 1e-5,
      f"export --to_hf of DP2 x EP2 equals the one-process export (|dw|/|w| = {(num / den) ** 0.5:.1e})")

# --- faults
p = run(["sft"] + BASE + CASES["qwen3_moe"] + ["--save", "bad_gbs", "--global_batch_size", "6"], np=2, expect=None)
check(p.returncode == 2 and "--global_batch_size 6 must be a multiple of --micro_batch_size 2 x the data-parallel size 2"
      in p.stderr, f"gbs not divisible by mbs x DP: exit 2 with the rule (exit {p.returncode})")
check(not os.path.exists(os.path.join(WORK, "bad_gbs")), "refused layout leaves no output dir")
p = run(["sft"] + BASE + ["--model", q3, "--dataset", "missing.jsonl", "--save", "bad_data"], np=2, expect=None)
check(p.returncode == 2 and "missing.jsonl" in p.stderr, f"missing dataset: exit 2 naming it (exit {p.returncode})")
p = run(["sft"] + BASE + CASES["qwen3_moe"] + ["--save", "bad_cp", "--context_parallel_size", "3"], np=2,
        expect=None)
check(p.returncode == 2 and "--context_parallel_size 3" in p.stderr, "a size the world does not divide is refused by name")
p = run(["sft"] + BASE + CASES["qwen3_moe"] + ["--save", "bad_ep", "--expert_model_parallel_size", "3",
                                                "--global_batch_size", "12"], np=3, expect=None)
check(p.returncode == 2 and "expert" in p.stderr, f"8 experts over EP3 refused: {p.stderr.strip()[:160]}")

# A rank killed mid-run: the job ends non-zero, promptly, and the previous checkpoint still loads.
long = BASE[:BASE.index("--train_iters") + 1] + ["100000"] + BASE[BASE.index("--train_iters") + 2:]
proc = subprocess.Popen(mpirun(2) + [MOECTL, "sft"] + long + CASES["qwen3_moe"] + ["--save", "killed",
                                                                                    "--save_interval", "3"],
                        cwd=WORK, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
deadline = time.time() + 120
while time.time() < deadline and not glob.glob(os.path.join(WORK, "killed", "v*", "iter_0000003")):
    time.sleep(0.2)
children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
check(len(children) == 2, f"mpirun runs 2 ranks ({children})")
if children:
    os.kill(int(children[-1]), signal.SIGKILL)
t0 = time.time()
try:
    proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    proc.kill()
check(proc.returncode not in (0, None), f"a killed rank ends the job non-zero (exit {proc.returncode})")
check(time.time() - t0 < 30, f"the job ended {time.time() - t0:.1f} s after the kill")
latest = open(os.path.join(run_dir("killed"), "latest_checkpointed_iteration.txt")).read().strip()
p = run(["export", "--mcore_model", run_dir("killed"), "--to_hf", "true", "--output_dir", "killed_hf"], expect=None)
check(p.returncode == 0, f"the last complete checkpoint (iteration {latest}) still exports")

# A rank that hangs (stopped): the others give up after --distributed_timeout_minutes, naming the
# collective, and the job ends non-zero.
proc = subprocess.Popen(mpirun(2) + [MOECTL, "sft"] + long + CASES["qwen3_moe"] + [
    "--save", "hung", "--distributed_timeout_minutes", "0.05"], cwd=WORK, env=ENV, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True)
deadline = time.time() + 120
while time.time() < deadline and not glob.glob(os.path.join(WORK, "hung", "v*", "logging.jsonl")):
    time.sleep(0.2)
children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
if children:
    os.kill(int(children[-1]), signal.SIGSTOP)
t0 = time.time()
try:
    _, err = proc.communicate(timeout=60)
except subprocess.TimeoutExpired:
    proc.kill()
    _, err = proc.communicate()
check(proc.returncode not in (0, None) and "did not complete in 3 s (--distributed_timeout_minutes)" in err,
      f"a hung rank: the job ends non-zero naming the collective (exit {proc.returncode}): {err.strip()[:200]}")
check(time.time() - t0 < 30, f"the hung job ended {time.time() - t0:.1f} s after the stop (timeout 3 s)")
for c in children:
    subprocess.run(["kill", "-KILL", c], capture_output=True)

train_runs.finish("data- and expert-parallel")
