#!/usr/bin/env python3
"""`moectl plan` end to end: every example config plans; --json has exactly the issue's shape,
ranked best first, every layout valid under the printed sizes; with every parallel size fixed it
is exactly that layout; --explain / --why_not; the Mixtral-8x22B PP4 TP1 EP2 DP2 rejection on
8 x 80 GB; bad input exits 2 with one line; a full Qwen3-235B-A22B search on 1024 GPUs takes < 2 s.
Usage: plan_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import subprocess
import sys
import time

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
os.makedirs(WORK, exist_ok=True)
CFG = os.path.join(SRC, "configs")
failures = []


def run(args, rc=0):
    p = subprocess.run([MOECTL, "plan"] + args, capture_output=True, text=True, cwd=WORK)
    if p.returncode != rc:
        failures.append(f"moectl plan {' '.join(args)}: exit {p.returncode}, wanted {rc}\n{p.stdout[-2000:]}{p.stderr}")
    return p


def check(cond, what):
    if not cond:
        failures.append(what)


LAYOUT_KEYS = {"tp", "pp", "vpp", "ep", "etp", "cp", "dp", "micro_batch_size", "recompute", "fits", "memory_gib",
               "step_time_s", "tokens_per_s_per_gpu", "mfu", "excluded_by"}
MEMORY_KEYS = {"total", "weights", "gradients", "optimizer", "activations", "other"}

# Every example config plans on one node, and --json has the documented shape.
for name in ["Mixtral-8x7B", "Mixtral-8x22B", "Qwen1.5-MoE-A2.7B", "Qwen2-57B-A14B", "Qwen3-30B-A3B",
             "Qwen3-235B-A22B", "DeepSeek-style-MoE"]:
    p = run(["--model", os.path.join(CFG, name), "--nnodes", "4", "--json", "--top", "5"])
    if p.returncode:
        continue
    j = json.loads(p.stdout)
    check(set(j) == {"layouts", "best"}, f"{name}: top-level keys {set(j)}")
    check(len(j["layouts"]) > 0, f"{name}: no layouts")
    for lay in j["layouts"]:
        check(set(lay) == LAYOUT_KEYS, f"{name}: layout keys {set(lay) ^ LAYOUT_KEYS}")
        check(set(lay["memory_gib"]) == MEMORY_KEYS, f"{name}: memory keys {set(lay['memory_gib'])}")
        check(lay["tp"] * lay["pp"] * lay["cp"] * lay["dp"] == 32, f"{name}: sizes do not multiply to 32: {lay}")
        check((lay["excluded_by"] is None) == lay["fits"], f"{name}: excluded_by vs fits: {lay}")
        parts = sum(lay["memory_gib"][k] for k in MEMORY_KEYS - {"total"})
        check(abs(parts - lay["memory_gib"]["total"]) < 1e-6 * max(1, parts), f"{name}: components do not add up")
        if lay["fits"]:
            check(lay["memory_gib"]["total"] <= 79.6, f"{name}: fits but over 79.6 GiB: {lay}")
    fitting = [lay for lay in j["layouts"] if lay["fits"]]
    times = [lay["step_time_s"] for lay in fitting]
    check(all(a <= b * 1.02 for a, b in zip(times, times[1:])), f"{name}: not ranked by step time: {times}")
    check(j["best"] == (0 if fitting else None), f"{name}: best {j['best']}")

# All parallel sizes fixed: exactly that layout.
p = run(["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--nnodes", "2", "--json", "--tensor_model_parallel_size", "1",
         "--pipeline_model_parallel_size", "2", "--expert_model_parallel_size", "8", "--context_parallel_size", "1",
         "--global_batch_size", "256"])
if p.returncode == 0:
    j = json.loads(p.stdout)
    check(len(j["layouts"]) == 1, f"fixed sizes: {len(j['layouts'])} layouts")
    lay = j["layouts"][0]
    check((lay["tp"], lay["pp"], lay["ep"], lay["cp"], lay["dp"]) == (1, 2, 8, 1, 8), f"fixed sizes: {lay}")
    check(lay["fits"] and j["best"] == 0, f"fixed sizes: {lay}")

# Table output: the best layout's flags.
p = run(["--model", os.path.join(CFG, "Mixtral-8x7B"), "--nnodes", "8", "--global_batch_size", "256"])
check("best: tp" in p.stdout and "--expert_model_parallel_size" in p.stdout, "table: no best flags\n" + p.stdout)

# --explain prints memory and time breakdowns.
p = run(["--model", os.path.join(CFG, "Mixtral-8x7B"), "--nnodes", "8", "--global_batch_size", "256", "--explain",
         "tp1,pp4,vpp8,ep8,etp1,mbs1"])
for word in ["memory per GPU", "first stage", "last stage", "optimizer", "activations", "EP all-to-all", "bubble",
             "MFU", "flags: --tensor_model_parallel_size 1 --pipeline_model_parallel_size 4"]:
    check(word in p.stdout, f"--explain lacks '{word}'")

# The known-bad layout: Mixtral-8x22B, bf16 + Adam, 8 x 80 GB, PP4 TP1 EP2 DP2.
p = run(["--model", os.path.join(CFG, "Mixtral-8x22B"), "--nproc_per_node", "8", "--gpu_memory_gib", "80",
         "--use_distributed_optimizer", "false", "--why_not", "tp1,pp4,ep2,etp1,dp2"])
for word in ["does not fit", "GiB over", "optimizer dominates", "--use_distributed_optimizer true",
             "--recompute_granularity full", "more GPUs: with --nnodes", "CPU offload", "not available"]:
    check(word in p.stdout, f"--why_not Mixtral-8x22B lacks '{word}':\n{p.stdout}")
p = run(["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--why_not", "tp8"])
check("not a valid layout" in p.stdout and "query groups" in p.stdout, "--why_not tp8: " + p.stdout)

# Bad input: one line on stderr, exit 2.
bad = [
    ["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--nproc_per_node", "0"],
    ["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--nnodes", "0"],
    ["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--tensor_model_parallel_size", "3"],
    ["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--expert_model_parallel_size", "3"],
    ["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--gpu", "B300-999G"],
    ["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--explain", "tp2,zz4"],
    ["--model", os.path.join(WORK, "missing.json")],
    ["--hidden_size", "4096"],
]
with open(os.path.join(WORK, "partial.json"), "w") as f:
    json.dump({"model_type": "qwen3_moe", "hidden_size": 128}, f)
bad.append(["--model", os.path.join(WORK, "partial.json")])
for args in bad:
    p = run(args, rc=2)
    lines = p.stderr.strip().splitlines()
    check(len(lines) == 1 and lines[0].startswith("moectl: error:"), f"{args}: stderr {p.stderr!r}")
p = run(["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--gpu", "B300-999G"], rc=2)
check("H100-SXM-80G" in p.stderr, "unknown --gpu does not list the presets: " + p.stderr)
p = run(["--model", os.path.join(WORK, "partial.json")], rc=2)
check("num_hidden_layers" in p.stderr, "missing field not named: " + p.stderr)

# Speed: a full search for Qwen3-235B-A22B on 1024 GPUs.
t0 = time.monotonic()
p = run(["--model", os.path.join(CFG, "Qwen3-235B-A22B"), "--nnodes", "128", "--top", "3"])
secs = time.monotonic() - t0
print(f"full search Qwen3-235B-A22B on 1024 GPUs: {secs:.2f} s wall, {p.stdout.splitlines()[1] if p.stdout else ''}")
check(secs < 2.0, f"full search took {secs:.2f} s (limit 2 s)")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("plan CLI: all checks passed")
