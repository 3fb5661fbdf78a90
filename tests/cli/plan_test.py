#!/usr/bin/env python3
"""`moectl plan` end to end: every example config plans; --json has exactly the issue's shape,
ranked best first, every layout valid under the printed sizes; with every parallel size fixed it
is exactly that layout; --explain / --why_not; the Mixtral-8x22B PP4 TP1 EP2 DP2 rejection on
8 x 80 GB; bad input exits 2 with one line; a full Qwen3-235B-A22B search on 1024 GPUs takes < 2 s;
sizes that cannot exist (QA #5, #12, #13, #15) exit 2 with one line and the largest clusters plan in < 2 s.
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

# QA #5, #12, #13, #15: sizes that cannot exist are refused in one line, fast; huge clusters are
# either refused or searched in bounded time (divisors only, a cap on the GPU count).
def one_line_error(args, must_have, within=2.0):
    t0 = time.monotonic()
    p = run(args, rc=2)
    secs = time.monotonic() - t0
    lines = p.stderr.strip().splitlines()
    check(len(lines) == 1 and lines[0].startswith("moectl: error:") and must_have in p.stderr,
          f"{args}: stderr {p.stderr!r} (wanted one line with {must_have!r})")
    check(secs < within, f"{args}: took {secs:.2f} s (limit {within} s)")
    return p


QWEN30 = os.path.join(CFG, "Qwen3-30B-A3B")
one_line_error(["--model", QWEN30, "--nproc_per_node", "1000000000"], "--nproc_per_node 1000000000")  # QA12
one_line_error(["--model", QWEN30, "--nproc_per_node", "10000000"], "at most 1024 GPUs per node")  # QA12
p = one_line_error(["--model", QWEN30, "--nnodes", "1000000000"], "at most 131072 GPUs")  # QA13
check("-589934592" not in p.stderr, "QA13: the GPU count wrapped: " + p.stderr)
p = one_line_error(["--model", QWEN30, "--nnodes", "65536", "--nproc_per_node", "65536"], "--nproc_per_node 65536")
check(" 0 GPUs" not in p.stderr, "QA13: 65536 x 65536 wrapped to 0: " + p.stderr)
one_line_error(["--model", QWEN30, "--nnodes", "17000", "--nproc_per_node", "8"], "at most 131072 GPUs")
one_line_error(["--model", QWEN30, "--nnodes", "99999999999999999999"], "--nnodes")  # past int64: CLI11 refuses
one_line_error(["--model", QWEN30, "--seq_length", "4611686018427387904"], "--seq_length")
one_line_error(["--model", QWEN30, "--global_batch_size", "4611686018427387904"], "--global_batch_size")
one_line_error(["--num_layers", "4", "--hidden_size", "4294967424", "--num_attention_heads", "4", "--vocab_size", "64",
                "--ffn_hidden_size", "64"], "--hidden_size")
# The largest clusters accepted, at highly composite and power-of-two GPU counts, plan in < 2 s.
for nnodes, per_node, gbs in [(13860, 8, 887040), (128, 1024, 1048576), (1, 1024, 1024), (5040, 1, 5040)]:
    t0 = time.monotonic()
    p = subprocess.run([MOECTL, "plan", "--model", os.path.join(CFG, "Qwen3-235B-A22B"), "--nnodes", str(nnodes),
                        "--nproc_per_node", str(per_node), "--global_batch_size", str(gbs), "--top", "3"],
                       capture_output=True, text=True, cwd=WORK)
    secs = time.monotonic() - t0
    print(f"QA12: {nnodes} x {per_node} GPUs: rc {p.returncode}, {secs:.2f} s")
    check(p.returncode in (0, 2) and len(p.stderr.strip().splitlines()) <= 1, f"{nnodes}x{per_node}: {p.stderr!r}")
    check(secs < 2.0, f"QA12: plan on {nnodes} x {per_node} GPUs took {secs:.2f} s (limit 2 s)")
# Config sizes (QA #5 a billion layers, QA #13 2^32 + 128 hidden, QA #15 -8 experts).
base = json.load(open(os.path.join(QWEN30, "config.json")))
for field, value, want in [("num_hidden_layers", 1000000000, "from 1 to 16384, got 1000000000"),
                           ("hidden_size", 4294967424, "from 1 to 1048576, got 4294967424"),
                           ("num_experts", -8, "from 0 to 65536, got -8")]:
    bad_cfg = dict(base, **{field: value})
    path = os.path.join(WORK, f"bad_{field}.json")
    json.dump(bad_cfg, open(path, "w"))
    one_line_error(["--model", path], f"'{field}' must be an integer {want}")

# Speed: a full search for Qwen3-235B-A22B on 1024 GPUs.
t0 = time.monotonic()
p = run(["--model", os.path.join(CFG, "Qwen3-235B-A22B"), "--nnodes", "128", "--top", "3"])
secs = time.monotonic() - t0
print(f"full search Qwen3-235B-A22B on 1024 GPUs: {secs:.2f} s wall, {p.stdout.splitlines()[1] if p.stdout else ''}")
check(secs < 2.0, f"full search took {secs:.2f} s (limit 2 s)")

# The default cluster is said, not assumed silently (QA pass: "plan quietly assumes 1x8 H100").
p = run(["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--top", "1"])
check("cluster: the default (1 node x 8" in p.stdout, "the default cluster is not named")
p = run(["--model", os.path.join(CFG, "Qwen3-30B-A3B"), "--top", "1", "--nnodes", "2"])
check("cluster: the default" not in p.stdout, "a given cluster is called the default")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("plan CLI: all checks passed")
