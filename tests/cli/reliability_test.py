#!/usr/bin/env python3
"""Issue 11's output-path and training-flag defects, one case per QA row (shared/reference/
qa-2026-12.md numbering), each asserting the exit code, the one-line message and what is on disk
afterwards:
- QA01 an output dir that is '.', the source's parent, the source or inside it is refused and the
  source (and a sentinel in the cwd) survive; QA02 a trailing '/' works and --overwrite replaces;
- QA03/04/15 flags out of range exit 2 naming the flag, and leave no run dir;
- QA07 runs into one --save get their own dirs; an unversioned --save is locked and refused to a
  fresh run when it holds checkpoints; QA10 non-finite settings are refused and no saved tensor is
  ever NaN; QA17 a failing init/export leaves no temporary; QA20 the messages it lists.
Usage: reliability_test.py MOECTL SRC_DIR WORK_DIR"""
import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))
import hf_model  # noqa: E402

failures = []
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def moectl(args, cwd=WORK, **kw):
    return subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=cwd, env=ENV, **kw)


def run(args, cwd=WORK):
    p = moectl(args, cwd)
    assert p.returncode == 0, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return p


def refused(case, args, needle, cwd=WORK):
    """Exit 2 with exactly one stderr line that contains `needle`."""
    p = moectl(args, cwd)
    lines = p.stderr.strip().splitlines()
    ok = p.returncode == 2 and len(lines) == 1 and needle in lines[0]
    check(ok, f"{case}: moectl {' '.join(args)}: rc {p.returncode}, stderr {p.stderr.strip()[:400]!r}")
    return p


def leftovers(d):
    """Staging or set-aside dirs of moectl next to (or inside) d."""
    return [n for n in os.listdir(d) if n.endswith((".tmp", ".moectl-tmp", ".moectl-old"))]


def snapshot(d):
    return {os.path.relpath(os.path.join(r, f), d): os.path.getsize(os.path.join(r, f))
            for r, _, fs in os.walk(d) for f in fs}


hf = os.path.join(WORK, "models", "hf")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", hf])
hf_files = snapshot(hf)

# --- QA01: never write over the cwd, the input, or a dir holding the input
cwd = os.path.join(WORK, "cwd")
os.makedirs(cwd)
open(os.path.join(cwd, "sentinel"), "w").write("keep me")
shutil.copytree(hf, os.path.join(cwd, "hf"))
refused("QA01 cwd", ["export", "--model", "hf", "--to_mcore", "true", "--output_dir", ".", "--overwrite", "true"],
        "current directory", cwd=cwd)
refused("QA01 cwd/", ["export", "--model", "hf", "--to_mcore", "true", "--output_dir", "./", "--overwrite", "true"],
        "current directory", cwd=cwd)
check(os.path.exists(os.path.join(cwd, "sentinel")) and snapshot(os.path.join(cwd, "hf")) == hf_files,
      "QA01: files in the current directory were touched")
refused("QA01 parent", ["export", "--model", hf, "--to_mcore", "true", "--output_dir", os.path.dirname(hf),
                        "--overwrite", "true"], "contains the input")
refused("QA01 itself", ["export", "--model", hf, "--to_mcore", "true", "--output_dir", hf + "/", "--overwrite", "true"],
        "is the input")
refused("QA01 inside", ["export", "--model", hf, "--to_mcore", "true", "--output_dir", os.path.join(hf, "mc")],
        "inside the input")
refused("QA01 root", ["export", "--model", hf, "--to_mcore", "true", "--output_dir", "/", "--overwrite", "true"],
        "root")
refused("QA01 init over its config", ["init", "--config", hf, "--output_dir", os.path.dirname(hf), "--overwrite", "true"],
        "contains the input")
check(snapshot(hf) == hf_files, "QA01: the source model changed")

# --- QA02: a trailing slash is the same dir; the temporary is a sibling; --overwrite replaces
mc = os.path.join(WORK, "mc")
run(["export", "--model", hf, "--to_mcore", "true", "--output_dir", mc + "/"])
check(os.path.exists(os.path.join(mc, "latest_checkpointed_iteration.txt")), "QA02: export to out/ failed")
run(["export", "--model", hf, "--to_mcore", "true", "--output_dir", mc + "/", "--overwrite", "true",
     "--torch_dtype", "float32"])
check(json.load(open(os.path.join(mc, "config.json")))["torch_dtype"] == "float32", "QA02: --overwrite did not replace")
check(leftovers(WORK) == [] and leftovers(mc) == [], f"QA02: temporaries left: {leftovers(WORK)} {leftovers(mc)}")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", os.path.join(WORK, "init2") + "/"])
check(os.path.exists(os.path.join(WORK, "init2", "model.safetensors")), "QA02: init to out/ failed")
hf_back = os.path.join(WORK, "hf_back")
run(["export", "--mcore_model", mc, "--to_hf", "true", "--output_dir", hf_back])
refused("QA02 no overwrite", ["export", "--mcore_model", mc, "--to_hf", "true", "--output_dir", hf_back],
        "--overwrite true")

# --- QA17: a command failing while it writes leaves the old output and no temporary
def no_big_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


before = snapshot(hf_back)
p = subprocess.run([MOECTL, "export", "--mcore_model", mc, "--to_hf", "true", "--output_dir", hf_back, "--overwrite",
                    "true"], capture_output=True, text=True, cwd=WORK, env=ENV, preexec_fn=no_big_files)
check(p.returncode in (1, 2) and len(p.stderr.strip().splitlines()) == 1,
      f"QA17 export: rc {p.returncode} {p.stderr[-300:]!r}")
check(snapshot(hf_back) == before and leftovers(WORK) == [], f"QA17 export: old output changed or {leftovers(WORK)}")
p = subprocess.run([MOECTL, "init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir",
                    os.path.join(WORK, "init3")], capture_output=True, text=True, cwd=WORK, env=ENV,
                   preexec_fn=no_big_files)
check(p.returncode in (1, 2) and not os.path.exists(os.path.join(WORK, "init3")) and leftovers(WORK) == [],
      f"QA17 init: rc {p.returncode}, left {leftovers(WORK)}")

# --- QA03, QA04, QA15, QA10: training flags checked up front, no run dir left behind
tiny = ["--dataset", "self-cognition#16", "--model_name", "x", "--model_author", "y", "--max_length", "128",
        "--micro_batch_size", "2", "--global_batch_size", "4", "--train_iters", "2", "--save", "bad"]
flag_cases = [
    ("QA03", ["--global_batch_size", "0"], "--global_batch_size"),
    ("QA04", ["--log_interval", "0"], "--log_interval"),
    ("QA10 eps", ["--adam_eps", "0"], "--adam_eps"),
    ("QA10 lr inf", ["--lr", "inf"], "--lr"),
    ("QA10 lr nan", ["--lr", "nan"], "--lr"),
    ("QA15 iters 0", ["--train_iters", "0"], "--train_iters"),
    ("QA15 iters -3", ["--train_iters", "-3"], "--train_iters"),
    ("QA15 std", ["--init_method_std", "-1"], "--init_method_std"),
    ("QA15 std nan", ["--init_method_std", "nan"], "--init_method_std"),
    ("QA15 clip", ["--clip_grad", "-1"], "--clip_grad"),
    ("QA15 capacity -1", ["--moe_expert_capacity_factor", "-1"], "--moe_expert_capacity_factor"),
    ("QA15 capacity 0", ["--moe_expert_capacity_factor", "0"], "--moe_expert_capacity_factor"),
    ("QA15 seed", ["--seed", "-1"], "--seed"),
    ("QA15 finetune", ["--finetune", "false"], "--load"),
    ("QA15 model+load", ["--load", mc], "--load"),
    ("QA20 micro", ["--micro_batch_size", "0"], "--micro_batch_size"),
]
for case, extra, flag in flag_cases:
    refused(case, ["sft", "--model", hf] + tiny + extra, flag)
check(not os.path.exists(os.path.join(WORK, "bad")) or os.listdir(os.path.join(WORK, "bad")) == [],
      f"QA03: bad flags left run dirs {os.listdir(os.path.join(WORK, 'bad')) if os.path.exists(os.path.join(WORK, 'bad')) else ''}")

# --lr 1e30 is finite: the steps that would overflow are skipped and counted; nothing saved is NaN.
p = run(["sft", "--model", hf] + tiny + ["--lr", "1e30", "--save", "huge", "--torch_dtype", "float32",
                                        "--ckpt_format", "torch"])
rd = glob.glob(os.path.join(WORK, "huge", "v*"))[0]
ck = torch.load(os.path.join(rd, "iter_0000002", "mp_rank_00", "model_optim_rng.pt"))
tensors = list(ck["model"].values())
# the fp32 masters and Adam's moments: in distrib_optim.pt (--use_distributed_optimizer, the default)
for w in torch.load(os.path.join(rd, "iter_0000002", "mp_rank_00", "distrib_optim.pt"))[0].values():
    tensors += [t for t in w.values() if torch.is_tensor(t)]
check(len(tensors) > len(ck["model"]), "QA10: the checkpoint holds the optimizer state")
bad = sum(int((~torch.isfinite(t.float())).sum()) for t in tensors if torch.is_tensor(t))
check(bad == 0, f"QA10: {bad} non-finite values in the --lr 1e30 checkpoint")
for f in glob.glob(os.path.join(rd, "checkpoint-*", "*.safetensors")):
    st = hf_model.load_safetensors_dir(os.path.dirname(f))
    check(all(bool(torch.isfinite(t.float()).all()) for t in st.values()), f"QA10: non-finite values in {f}")
# float16 cannot hold those weights: the save is refused, not written with infinities.
p = moectl(["sft", "--model", hf] + tiny + ["--lr", "1e30", "--save", "huge16", "--torch_dtype", "float16"])
check(p.returncode == 2 and "float16" in p.stderr and not glob.glob(os.path.join(WORK, "huge16", "v*", "iter_*")),
      f"QA10 float16: rc {p.returncode} {p.stderr[-300:]!r}")
# --lr 0 is Megatron's way to measure loss without updates (issue 12): accepted.
run(["sft", "--model", hf] + tiny + ["--lr", "0", "--min_lr", "0", "--save", "zero"])

# --- QA07: concurrent runs into one --save; an unversioned --save locked and guarded
def short_args(iters=2, save_interval=1):
    return ["--dataset", "self-cognition#8", "--model_name", "x", "--model_author", "y", "--max_length", "96",
            "--micro_batch_size", "2", "--global_batch_size", "2", "--train_iters", str(iters), "--save_interval",
            str(save_interval), "--save_safetensors", "false"]


short = short_args()
procs = [subprocess.Popen([MOECTL, "sft", "--model", hf, "--save", "shared", "--seed", str(i)] + short, cwd=WORK,
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(4)]
rcs = [p.wait() for p in procs]
check(rcs == [0] * 4, f"QA07: concurrent runs exited {rcs}: {[p.stderr.read()[-300:] for p in procs]}")
dirs = sorted(glob.glob(os.path.join(WORK, "shared", "v*")))
check(len({os.path.basename(d).split("-")[0] for d in dirs}) == 4, f"QA07: run dirs {dirs}")
for d in dirs:
    lines = [json.loads(l) for l in open(os.path.join(d, "logging.jsonl"))]
    check([l["iteration"] for l in lines if "loss" in l] == ["1/2", "2/2"] and "last_model_checkpoint" in lines[-1],
          f"QA07: {d} log {lines}")
    check(open(os.path.join(d, "latest_checkpointed_iteration.txt")).read().strip() == "2" and
          os.path.exists(os.path.join(d, "iter_0000001")), f"QA07: {d} checkpoints")
flat = os.path.join(WORK, "flat")
run(["sft", "--model", hf, "--save", flat, "--add_version", "false"] + short)
refused("QA07 fresh run into old", ["sft", "--model", hf, "--save", flat, "--add_version", "false"] + short,
        "--finetune false")
run(["sft", "--model", hf, "--save", flat, "--add_version", "false", "--overwrite_output_dir", "true"] + short)
run(["sft", "--load", flat, "--finetune", "false", "--save", flat, "--add_version", "false"] + short_args(3))
check(open(os.path.join(flat, "latest_checkpointed_iteration.txt")).read().strip() == "3", "QA07: resume in place")
refused("QA07 save is the load dir", ["sft", "--load", mc, "--save", mc, "--add_version", "false"] + short,
        "already holds")
refused("QA07 save is the model", ["sft", "--model", hf, "--save", hf, "--add_version", "false"] + short, "input")
held = subprocess.Popen([MOECTL, "sft", "--model", hf, "--save", os.path.join(WORK, "held"), "--add_version", "false"]
                        + short_args(40, 1000), cwd=WORK, env=ENV,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(200):  # until the first run holds the dir
    if os.path.exists(os.path.join(WORK, "held", "logging.jsonl")):
        break
    subprocess.run(["sleep", "0.05"])
refused("QA07 locked", ["sft", "--model", hf, "--save", os.path.join(WORK, "held"), "--add_version", "false"] + short,
        "another moectl run")
held.kill()
held.wait()

# --- QA20: messages
refused("QA20 init --config", ["init", "--config", os.path.join(WORK, "nx"), "--output_dir", os.path.join(WORK, "nx_out")],
        "--config")
runs_root = os.path.join(WORK, "shared")
refused("QA20 --load ROOT", ["sft", "--load", runs_root] + tiny, "holds runs")
bad_tracker = os.path.join(WORK, "bad_tracker")
shutil.copytree(mc, bad_tracker)
open(os.path.join(bad_tracker, "latest_checkpointed_iteration.txt"), "w").write("1/../x")
refused("QA20 tracker", ["export", "--mcore_model", bad_tracker, "--to_hf", "true", "--output_dir",
                         os.path.join(WORK, "never")], "expected an iteration number")
one = os.path.join(WORK, "one.json")
json.dump({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, open(one, "w"))
run(["sft", "--model", hf, "--dataset", one, "--max_length", "64", "--micro_batch_size", "1", "--global_batch_size",
     "1", "--train_iters", "1", "--save", "one", "--save_safetensors", "false"])
p = run(["sft", "--model", hf, "--dataset", "self-cognition#4", "--max_length", "96", "--micro_batch_size", "1",
         "--global_batch_size", "1", "--train_iters", "1", "--save", "sc", "--save_safetensors", "false"])
check("{{NAME}}" in p.stderr and "{{{{" not in p.stderr, f"QA20 self-cognition warning: {p.stderr[:300]!r}")

print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
