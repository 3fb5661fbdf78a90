#!/usr/bin/env python3
"""The planner's model of moectl's CPU engine as an mpirun job (issue 15, "plan meets practice"):
for DP2, EP2, TP2 with sequence parallelism, PP2, PP2 x VPP2 (and CP2 once training takes it),
`moectl plan --moectl_cpu_layout` predicts every rank's memory growth and the step time; the same
layout trains a small Qwen3-MoE (256 wide, 4 layers, 32 experts top-8, vocabulary 8000, fp32) for
a few iterations under mpirun, and the prediction must hold:
- memory, predicted from the shapes alone: each rank's peak resident memory minus its resident
  memory before the weights existed (the trainer's "[Rank r] ... memory (MiB) | at start: A |
  max rss: B" line) within 10%;
- step time (the median iteration of logging.jsonl's train_speed(s/it), the first left out)
  within 30%. What is calibrated, right before and right after each layout's run (the mean of the
  two, so that the machine's load is that of the run): the compute rate, from the step time of two
  one-process runs of the same model and batch side by side (as busy as the job's two ranks make
  the machine: --cpu_step_s), and the links, from `moectl plan --cpu_probe_links` under mpirun
  (--cpu_collective_latency_ms, --cpu_link_gbps).
  The split of the work over ranks, stages and chunks, the collectives' count and volume and the
  pipeline bubble are the model's own. A step outside the band is measured once more, with its
  own calibration (other jobs starting or ending change the load faster than the calibrations
  bracket it); a model that is wrong misses the band both times.
Prints the table (layout, rank, predicted, measured, ratio).
Usage: plan_practice_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
MPIEXEC = sys.argv[4]
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
ENV.pop("NPROC_PER_NODE", None)
MEMORY_TOL, TIME_TOL = 0.10, 0.30
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


# The model: the CPU memory check's scaled training-benchmark shape (tests/plan/cpu_memory_check.cpp).
MODEL = os.path.join(WORK, "model")
os.makedirs(MODEL)
cfg = json.load(open(os.path.join(SRC, "configs", "tiny-moe", "config.json")))
cfg.update(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
           num_experts=32, num_experts_per_tok=8, moe_intermediate_size=128, vocab_size=8000, torch_dtype="float32")
json.dump(cfg, open(os.path.join(MODEL, "config.json"), "w"))
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(SRC, "configs", "tiny-moe", f), MODEL)

SEQ, GBS, ITERS = 256, 4, 5
TRAIN = ["pt", "--model", MODEL, "--dataset", "dummy#64", "--max_length", str(SEQ), "--micro_batch_size", "1",
         "--global_batch_size", str(GBS), "--train_iters", str(ITERS), "--log_interval", "1", "--eval_interval", "0",
         "--save_interval", "0", "--save_safetensors", "false", "--recompute_granularity", "none",
         "--no_save_optim", "true", "--no_save_rng", "true"]
PLAN = ["plan", "--model", MODEL, "--seq_length", str(SEQ), "--global_batch_size", str(GBS), "--micro_batch_size", "1",
        "--recompute_granularity", "none"]
NP = 2
# (name, training flags, plan layout)
LAYOUTS = [
    ("DP2", [], "dp2"),
    ("EP2", ["--expert_model_parallel_size", "2"], "ep2,dp2"),
    ("TP2+SP", ["--tensor_model_parallel_size", "2", "--sequence_parallel", "true"], "tp2,dp1"),
    ("PP2", ["--pipeline_model_parallel_size", "2"], "pp2,dp1"),
    ("PP2xVPP2", ["--pipeline_model_parallel_size", "2", "--virtual_pipeline_model_parallel_size", "2"],
     "pp2,vpp2,dp1"),
    ("CP2", ["--context_parallel_size", "2"], "cp2,dp1"),
]
MEM_LINE = re.compile(r"\[Rank (\d+)\] \(after \d+ iterations\) memory \(MiB\) \| at start: ([\d.]+) \| max rss: ([\d.]+)")


def mpirun(np):
    return [MPIEXEC, "-np", str(np), "--oversubscribe"] if np > 1 else []


def start(args, np=1):
    return subprocess.Popen(mpirun(np) + [MOECTL] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=WORK, env=ENV)


def finish(p):
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def step_times(save):
    """Seconds of every iteration but the first (allocation, page faults) from logging.jsonl."""
    log = glob.glob(os.path.join(WORK, save, "v*", "logging.jsonl"))
    assert len(log) == 1, f"{save}: {log}"
    rows = [json.loads(line) for line in open(log[0])]
    return [r["train_speed(s/it)"] for r in rows if "train_speed(s/it)" in r][1:]


def memory_lines(out):
    """Each rank's growth of resident memory (MiB) from the trainer's per-rank lines."""
    return {int(r): float(peak) - float(at_start) for r, at_start, peak in MEM_LINE.findall(out)}


ONE_PROCESS_MEMORY = []  # every calibration run's, for the one-process row


def calibrate(tag):
    """The one-process step time with two processes busy, and the links between two ranks."""
    runs = [start(TRAIN + ["--save", f"{tag}_one{i}"]) for i in range(2)]
    for p in runs:
        rc, out, err = finish(p)
        assert rc == 0, f"one-process run: exit {rc}\n{err[-2000:]}"
        ONE_PROCESS_MEMORY.append(memory_lines(out)[0])
    one = statistics.median(step_times(f"{tag}_one0") + step_times(f"{tag}_one1"))
    rc, out, err = finish(start(PLAN[:1] + ["--cpu_probe_links"], NP))
    assert rc == 0, f"moectl plan --cpu_probe_links: exit {rc}\n{err[-2000:]}"
    links = json.loads(out.strip().splitlines()[-1])
    return {"step_s": one, **links}


def mean(a, b):
    return {k: (a[k] + b[k]) / 2 for k in a}


def predict(layout, links=None, np=NP):
    args = PLAN + ["--moectl_cpu_layout", layout, "--nproc_per_node", str(np)]
    if links:
        args += ["--cpu_step_s", str(links["step_s"]), "--cpu_collective_latency_ms",
                 str(links["collective_latency_ms"]), "--cpu_link_gbps", str(links["link_gbps"])]
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=WORK, env=ENV, timeout=60)
    assert p.returncode == 0, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr}"
    return json.loads(p.stdout)


rows = []
t_start = time.time()
def train(name, flags, attempt):
    save = f"run_{name}_{attempt}"
    rc, out, err = finish(start(TRAIN + flags + ["--save", save], NP))
    return rc, out, err, save


before = calibrate("first")
for name, flags, layout in LAYOUTS:
    rc, out, err, save = train(name, flags, 0)
    if rc == 2 and name == "CP2":  # refused as input (exit 2): context parallelism not trained yet
        reason = next((line for line in err.splitlines() if "moectl: error" in line), err.strip()[-300:])
        print(f"skip {name}: moectl refuses it: {reason}")
        continue
    assert rc == 0, f"{name}: exit {rc}\n{err[-3000:]}"
    measured_mem = memory_lines(out)
    check(sorted(measured_mem) == list(range(NP)), f"{name}: every rank reports its memory ({sorted(measured_mem)})")
    # The step time, within the band on the first try or, when the machine's load changed under
    # the run (other jobs starting or ending), on a second one with its own calibration.
    for attempt in range(2):
        if attempt:
            print(f"     {name}: step {pred / measured_step:.2f} x outside the band; measured again")
            rc, out, err, save = train(name, flags, attempt)
            assert rc == 0, f"{name}: exit {rc}\n{err[-3000:]}"
        measured_step = statistics.median(step_times(save))
        after = calibrate(f"{name}{attempt}")
        links, before = mean(before, after), after
        plan = predict(layout, links)
        pred = plan["step_s"]
        if abs(pred / measured_step - 1) <= TIME_TOL:
            break
    check(len(plan["ranks"]) == NP, f"{name}: the plan has {len(plan['ranks'])} ranks")
    for r in plan["ranks"]:
        pm, meas = r["memory_mib"]["peak"], measured_mem.get(r["rank"], float("nan"))
        rows.append((name, f"rank {r['rank']} memory MiB", pm, meas))
        check(abs(pm / meas - 1) <= MEMORY_TOL,
              f"{name} rank {r['rank']}: predicted memory {pm:.1f} MiB within {MEMORY_TOL:.0%} of measured {meas:.1f}")
    rows.append((name, "step s", pred, measured_step))
    t = plan["ranks"][0]["time_s"]
    print(f"     {name}: calibration one-process step {links['step_s']:.3f} s, links {links['collective_latency_ms']:.3f} ms "
          f"+ {links['link_gbps']:.2f} GB/s; rank 0 predicted compute {t['compute']:.3f} + optimizer "
          f"{t['optimizer']:.3f} + comm {t['comm']:.3f} ({plan['ranks'][0]['collectives']} collectives) + bubble "
          f"{t['bubble']:.3f} s")
    check(abs(pred / measured_step - 1) <= TIME_TOL,
          f"{name}: predicted step {pred:.3f} s within {TIME_TOL:.0%} of measured {measured_step:.3f} s")

# The calibration runs are one-process runs of the same model: their memory is a layout too.
pred = predict("dp1", np=1)["ranks"][0]["memory_mib"]["peak"]
check(all(abs(pred / meas - 1) <= MEMORY_TOL for meas in ONE_PROCESS_MEMORY),
      f"one process: predicted memory {pred:.1f} MiB within {MEMORY_TOL:.0%} of each of the "
      f"{len(ONE_PROCESS_MEMORY)} calibration runs' ({min(ONE_PROCESS_MEMORY):.1f} to {max(ONE_PROCESS_MEMORY):.1f})")
rows.insert(0, ("1 process", "memory MiB (median)", pred, statistics.median(ONE_PROCESS_MEMORY)))

print(f"\n{'layout':<10} {'what':<20} {'predicted':>10} {'measured':>10} {'ratio':>7}")
for name, what, pred, meas in rows:
    print(f"{name:<10} {what:<20} {pred:>10.3f} {meas:>10.3f} {pred / meas:>7.3f}")
print(f"({time.time() - t_start:.0f} s)")
if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
