#!/usr/bin/env python3
"""Megatron-SWIFT's quick start (seed 003: export to mcore -> `NPROC_PER_NODE=2 megatron sft` with
TP2 -> export to HF -> infer) with moectl in place of swift/megatron and every flag as the seed
writes it (issue 19). Only the model path and the two alpaca hub datasets are replaced by local
files in the same format, and --train_iters, --lr_warmup_iters and --save_interval are scaled down
to keep CI short. All four commands must succeed, the run dir is vN-YYYYMMDD-HHMMSS under --save,
and infer answers. Usage: seed_quickstart_test.py MOECTL SRC_DIR WORK_DIR"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(os.path.join(WORK, "data"))
# moectl on PATH as the commands' program; mpirun may need root allowed in CI containers.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(cmd, env_extra, stdin=None):
    p = subprocess.run([MOECTL] + cmd, cwd=WORK, env=dict(ENV, **env_extra), input=stdin, capture_output=True,
                       text=True, timeout=900)
    if p.returncode != 0:
        sys.exit(f"moectl {' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


# The model the seed downloads (Qwen/Qwen2.5-7B-Instruct), here the embedded tiny one.
subprocess.run([MOECTL, "init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir",
                "Qwen2.5-7B-Instruct"], cwd=WORK, check=True, capture_output=True)
# The two alpaca-gpt4 sets in their own format (instruction / input / output).
for lang, rows in (("zh", [{"instruction": f"把{i}翻译成英文。", "input": "", "output": f"{i} in English."}
                            for i in range(40)]),
                   ("en", [{"instruction": f"Give {i} synonyms of happy.", "input": "Be short.",
                            "output": "glad, joyful, content"} for i in range(40)])):
    with open(os.path.join(WORK, "data", f"alpaca-gpt4-data-{lang}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

# 1. CUDA_VISIBLE_DEVICES=0 swift export ...
run(["export", "--model", "Qwen2.5-7B-Instruct", "--to_mcore", "true", "--torch_dtype", "bfloat16",
     "--output_dir", "Qwen2.5-7B-Instruct-mcore"], {"CUDA_VISIBLE_DEVICES": "0"})
print("ok   export --to_mcore")

# 2. NPROC_PER_NODE=2 CUDA_VISIBLE_DEVICES=0,1 megatron sft ... (every flag as written)
p = run(["sft",
         "--load", "Qwen2.5-7B-Instruct-mcore",
         "--dataset", "data/alpaca-gpt4-data-zh.jsonl#500",
         "data/alpaca-gpt4-data-en.jsonl#500",
         "swift/self-cognition#500",
         "--tensor_model_parallel_size", "2",
         "--micro_batch_size", "4",
         "--global_batch_size", "16",
         "--recompute_granularity", "selective",
         "--train_iters", "3",
         "--eval_iters", "5",
         "--finetune", "true",
         "--cross_entropy_loss_fusion", "true",
         "--lr", "1e-5",
         "--lr_warmup_iters", "1",
         "--min_lr", "1e-6",
         "--save", "megatron_output/Qwen2.5-7B-Instruct",
         "--save_interval", "3",
         "--max_length", "2048",
         "--system", "You are a helpful assistant.",
         "--num_workers", "4",
         "--no_save_optim", "true",
         "--no_save_rng", "true",
         "--dataset_num_proc", "4",
         "--model_author", "swift",
         "--model_name", "swift-robot"], {"NPROC_PER_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1"})
runs = glob.glob(os.path.join(WORK, "megatron_output", "Qwen2.5-7B-Instruct", "v*"))
if len(runs) != 1 or not re.fullmatch(r"v\d+-\d{8}-\d{6}", os.path.basename(runs[0])):
    sys.exit(f"want one run dir vN-YYYYMMDD-HHMMSS under --save, got {runs}")
args = json.load(open(os.path.join(runs[0], "args.json")))
if args.get("tensor_model_parallel_size") != 2 or args.get("world_size") != 2:
    sys.exit(f"the run was not TP2 over 2 processes: {args.get('tensor_model_parallel_size')}, {args.get('world_size')}")
if "run sh:" not in p.stdout + p.stderr:
    sys.exit("NPROC_PER_NODE=2: the launch command is not shown as swift shows it")
vx = os.path.relpath(runs[0], WORK)
print(f"ok   sft under NPROC_PER_NODE=2 with TP2 -> {vx}")

# 3. CUDA_VISIBLE_DEVICES=0 swift export --mcore_model .../vx-xxx --to_hf true ...
run(["export", "--mcore_model", vx, "--to_hf", "true", "--torch_dtype", "bfloat16", "--output_dir", vx + "-hf"],
    {"CUDA_VISIBLE_DEVICES": "0"})
if not os.path.exists(os.path.join(WORK, vx + "-hf", "config.json")):
    sys.exit("export --to_hf wrote no config.json")
print("ok   export --to_hf")

# 4. CUDA_VISIBLE_DEVICES=0 swift infer --model .../vx-xxx-hf --stream true --temperature 0 --max_new_tokens 2048
p = run(["infer", "--model", vx + "-hf", "--stream", "true", "--temperature", "0", "--max_new_tokens", "2048"],
        {"CUDA_VISIBLE_DEVICES": "0"}, stdin="who are you?\n")
answer = p.stdout.split("<<<")[1] if p.stdout.count("<<<") >= 2 else ""
if not answer.strip():
    sys.exit(f"infer gave no answer: {p.stdout[-500:]!r}")
print(f"ok   infer answers: {answer.strip()[:80]!r}")
print("the seed's quick start runs verbatim")
