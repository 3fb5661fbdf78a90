#!/usr/bin/env python3
"""`moectl sft` / `moectl pt` end to end on the tiny MoE model (one process, CPU):
- the Megatron-SWIFT quick start: HF -> mcore -> sft on self-cognition -> the run dir holds
  args.json, logging.jsonl with swift's keys, images/*.svg, a Megatron checkpoint torch.load reads
  with the optimizer state, and an HF copy infer reads; the loss falls;
- resuming (--finetune false) from iteration 10 ends bit-identical to an uninterrupted run, with
  checkpoints in torch_dist (the default; read by the independent reader in dcp_reader.py) and in
  the legacy torch format;
- pt from a config-only dir (random init) with packing on a text dataset;
- bad input: one-line errors, exit 2, no run dir written.
Usage: train_test.py MOECTL SRC_DIR WORK_DIR"""
import glob
import json
import os
import pty
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
sys.path.insert(0, os.path.join(SRC, "tests", "cli"))
import dcp_reader  # noqa: E402
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def run(args, rc=0):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=WORK)
    assert p.returncode == rc, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return p


def run_dir(root):
    dirs = sorted(glob.glob(os.path.join(root, "v*-*")))
    assert len(dirs) == 1, f"{root}: expected one run dir, found {dirs}"
    return dirs[0]


hf, mcore = os.path.join(WORK, "hf"), os.path.join(WORK, "mcore")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", hf])
run(["export", "--model", hf, "--to_mcore", "true", "--output_dir", mcore])

# --- the quick start: sft on self-cognition from the Megatron dir
common = ["--dataset", "self-cognition#160", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
          "--micro_batch_size", "2", "--global_batch_size", "8", "--lr", "1e-3", "--lr_warmup_iters", "2",
          "--max_length", "256", "--log_interval", "5", "--moe_aux_loss_coeff", "0.01"]
run(["sft", "--load", mcore, "--train_iters", "20", "--save", "quick", "--split_dataset_ratio", "0.05"] + common)
d = run_dir(os.path.join(WORK, "quick"))
for f in ["args.json", "logging.jsonl", "latest_checkpointed_iteration.txt", "config.json", "tokenizer.json",
          "iter_0000020/metadata.json", "iter_0000020/.metadata", "iter_0000020/common.pt",
          "checkpoint-20/model.safetensors", "checkpoint-20/config.json"]:
    check(os.path.exists(os.path.join(d, f)), f"run dir lacks {f}")
lines = [json.loads(l) for l in open(os.path.join(d, "logging.jsonl"))]
train = [l for l in lines if "loss" in l]
check([l["iteration"] for l in train] == ["1/20", "5/20", "10/20", "15/20", "20/20"], f"log iterations {train}")
for k in ["loss", "acc", "grad_norm", "learning_rate", "load_balancing_loss", "elapsed_time", "remaining_time",
          "memory(GiB)", "train_speed(s/it)", "tokens_per_s"]:
    check(k in train[0], f"logging.jsonl lacks {k}")
check(train[-1]["loss"] < train[0]["loss"] - 1.0, f"loss did not fall: {train[0]['loss']} -> {train[-1]['loss']}")
check(train[0]["load_balancing_loss"] > 0, "aux loss not reported")
check(any("eval_loss" in l for l in lines), "no eval line")
check("last_model_checkpoint" in lines[-1], "no final summary line")
for svg in ["train_loss", "learning_rate", "grad_norm", "eval_loss", "expert_load"]:
    try:
        ET.parse(os.path.join(d, "images", svg + ".svg"))
    except Exception as e:  # noqa: BLE001
        check(False, f"images/{svg}.svg: {e}")
ck = torch.load(os.path.join(d, "iter_0000020/common.pt"))
check(ck["iteration"] == 20 and ck["args"].ckpt_format == "torch_dist", "common.pt iteration / ckpt_format")
check(ck["optimizer"]["step"] == 20, f"optimizer step {ck['optimizer']}")
tens, objs, _ = dcp_reader.read_checkpoint(os.path.join(d, "iter_0000020"))
L = json.load(open(os.path.join(d, "config.json")))["num_hidden_layers"]
check(tens["decoder.layers.mlp.router.weight"].shape[0] == L, "layer axis stacked in the router key")
check(tens["embedding.word_embeddings.weight"].shape[0] % 128 == 0, "vocab padded")
weights = [k for k in tens if not k.startswith("optimizer.")]
for k in weights:
    for s in ["fp32_param", "exp_avg", "exp_avg_sq"]:
        o = tens.get(f"optimizer.state.{s}.{k}")
        check(o is not None and o.shape == tens[k].shape and o.dtype == torch.float32, f"optimizer {s} of {k}")
check(any(k.startswith("decoder.layers.self_attention.linear_qkv._extra_state/shard_") for k in objs), "extra states")
# The trained model answers with its new identity (greedy), from the HF copy and after export.
ans = subprocess.run([MOECTL, "infer", "--model", os.path.join(d, "checkpoint-20"), "--max_new_tokens", "24",
                      "--temperature", "0"], input="who are you?\n", capture_output=True, text=True).stdout
check("ModelScope" in ans or "Xiao Huang" in ans, f"fine-tuned answer lacks the new identity: {ans!r}")
hf2 = os.path.join(WORK, "hf2")
run(["export", "--mcore_model", d, "--to_hf", "true", "--output_dir", hf2])
check(os.path.exists(os.path.join(hf2, "model.safetensors")), "export --to_hf of the trained run")

# --- exact resume: 10 + 10 iterations == 20 iterations
every_step = [("1" if prev == "--log_interval" else a) for prev, a in zip([""] + common, common)]
sched = ["--lr_decay_iters", "20", "--save_interval", "10", "--torch_dtype", "float32", "--clip_grad", "0.5"] + every_step
for fmt in ["torch_dist", "torch"]:
    fs_ = ["--ckpt_format", fmt]
    full, half, resumed = (f"{x}_{fmt}" for x in ("full", "half", "resumed"))
    run(["sft", "--load", mcore, "--train_iters", "20", "--save", full] + sched + fs_)
    run(["sft", "--load", mcore, "--train_iters", "10", "--save", half] + sched + fs_)
    run(["sft", "--load", run_dir(os.path.join(WORK, half)), "--finetune", "false", "--train_iters", "20",
         "--save", resumed] + sched + fs_)
    if fmt == "torch":
        rank_dir = os.path.join(run_dir(os.path.join(WORK, full)), "iter_0000020/mp_rank_00")
        a = torch.load(os.path.join(rank_dir, "model_optim_rng.pt"))
        b = torch.load(os.path.join(run_dir(os.path.join(WORK, resumed)), "iter_0000020/mp_rank_00/model_optim_rng.pt"))
        # --use_distributed_optimizer (the default): Megatron's param groups here, the fp32 masters and
        # Adam's moments in distrib_optim.pt (tests/dist/distrib_optim_test.py checks it in detail)
        check(set(a["optimizer"]) == {"optimizer"} and "param_groups" in a["optimizer"]["optimizer"],
              "model_optim_rng.pt holds the distributed optimizer's param groups only")
        w = next(iter(torch.load(os.path.join(rank_dir, "distrib_optim.pt"))[0].values()))
        check(all(w[k].numel() == w["numel_unpadded"] for k in ("param", "exp_avg", "exp_avg_sq")),
              "distrib_optim.pt: masters and adam state")
        a, b = a["model"], b["model"]
    else:
        a = dcp_reader.read_checkpoint(os.path.join(run_dir(os.path.join(WORK, full)), "iter_0000020"))[0]
        b = dcp_reader.read_checkpoint(os.path.join(run_dir(os.path.join(WORK, resumed)), "iter_0000020"))[0]
        check(any(k.startswith("optimizer.state.exp_avg_sq.") for k in a), "torch_dist: no optimizer state saved")
    same = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    check(same, f"{fmt}: resumed run differs from the uninterrupted one")
    la = [json.loads(l) for l in open(os.path.join(run_dir(os.path.join(WORK, full)), "logging.jsonl"))]
    lb = [json.loads(l) for l in open(os.path.join(run_dir(os.path.join(WORK, resumed)), "logging.jsonl"))]
    last10 = lambda ls: [(l["iteration"], l["loss"], l["grad_norm"]) for l in ls if "loss" in l][-10:]
    check(last10(la) == last10(lb) and len(last10(la)) == 10,
          f"{fmt}: iterations 11-20 differ after resume:\n{last10(la)}\n{last10(lb)}")
    print(f"ok   {fmt}: resumed at iteration 10, iteration 20 bit-identical to the uninterrupted run")

# --- pt from a config-only dir (random init), packed text rows
cfg_only = os.path.join(WORK, "cfg")
os.makedirs(cfg_only)
for f in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
    if os.path.exists(os.path.join(SRC, "configs", "tiny-moe", f)):
        shutil.copy(os.path.join(SRC, "configs", "tiny-moe", f), cfg_only)
corpus = os.path.join(WORK, "corpus.jsonl")
with open(corpus, "w") as f:
    for i in range(40):
        f.write(json.dumps({"text": f"The number {i} follows {i - 1} and comes before {i + 1}."}) + "\n")
run(["pt", "--model", cfg_only, "--dataset", corpus, "--packing", "true", "--max_length", "128", "--train_iters", "6",
     "--global_batch_size", "4", "--lr", "1e-3", "--save", "pt", "--save_safetensors", "false", "--log_interval", "1"])
pl = [json.loads(l) for l in open(os.path.join(run_dir(os.path.join(WORK, "pt")), "logging.jsonl")) if '"loss"' in l]
check(len(pl) == 6 and pl[-1]["loss"] < pl[0]["loss"], f"pt loss {[l['loss'] for l in pl]}")

# --- on a terminal: a progress bar redrawn in place, the log lines printed above it
master, slave = pty.openpty()
p = subprocess.Popen([MOECTL, "pt", "--model", cfg_only, "--dataset", corpus, "--max_length", "64", "--train_iters", "4",
                      "--global_batch_size", "2", "--save", "pt_tty", "--save_safetensors", "false",
                      "--log_interval", "2"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                     cwd=WORK)
os.close(slave)
tty = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:  # EIO once the child has closed its end
        break
    if not chunk:
        break
    tty += chunk
os.close(master)
check(p.wait() == 0, "pt on a terminal failed")
tty = tty.decode("utf-8", "replace")
check("Train: 100%|" in tty and "4/4 [" in tty and "\r" in tty, f"no progress bar on a terminal: {tty[-800:]!r}")
check('"iteration":"2/4"' in tty and '"iteration":"4/4"' in tty, f"log lines not shown above the bar: {tty[-800:]!r}")
check("saved checkpoint" not in tty, "info messages broke the bar's line")

# --- InternEvo's MoE pre-training target, scaled down: a 4-expert top-2 model on dummy data
# gets below loss 0.325 before step 100.
ie = os.path.join(WORK, "ie")
os.makedirs(ie)
cfg = json.load(open(os.path.join(SRC, "configs", "tiny-moe", "config.json")))
cfg.update(num_experts=4, num_experts_per_tok=2)
json.dump(cfg, open(os.path.join(ie, "config.json"), "w"))
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(SRC, "configs", "tiny-moe", f), ie)
run(["pt", "--model", ie, "--dataset", "dummy#16", "--max_length", "64", "--train_iters", "60", "--global_batch_size",
     "16", "--micro_batch_size", "4", "--lr", "3e-3", "--min_lr", "3e-4", "--lr_warmup_iters", "5", "--save", "ie_out",
     "--save_safetensors", "false", "--no_save_optim", "true", "--log_interval", "10"])
il = [json.loads(l) for l in open(os.path.join(run_dir(os.path.join(WORK, "ie_out")), "logging.jsonl")) if '"loss"' in l]
print("dummy pre-training:", [(l["iteration"], l["loss"], round(l["tokens_per_s"]), l["tflops"]) for l in il])
check(min(l["loss"] for l in il) < 0.325, f"dummy pre-training loss stays above 0.325: {[l['loss'] for l in il]}")
check(all(l["tokens_per_s"] > 0 and l["tflops"] > 0 for l in il), "tokens/s and TFLOP/s logged")

# --- bad input: one line, exit 2, nothing written
def file_with(lines):
    path = os.path.join(WORK, f"rows{len(os.listdir(WORK))}.jsonl")
    open(path, "w").write("\n".join(lines) + "\n")
    return path



for args, want in [
    (["sft", "--load", mcore, "--dataset", "AI-ModelScope/alpaca-gpt4-data-en", "--save", "bad"], "local files"),
    (["sft", "--load", mcore, "--dataset", "missing.jsonl", "--save", "bad"], "missing.jsonl"),
    (["sft", "--load", mcore, "--dataset", "self-cognition", "--lr_decay_style", "step", "--save", "bad"],
     "--lr_decay_style"),
    (["sft", "--load", mcore, "--dataset", "self-cognition", "--global_batch_size", "3", "--micro_batch_size", "2",
      "--save", "bad"], "--global_batch_size"),
    (["sft", "--model", os.path.join(WORK, "nowhere"), "--dataset", "self-cognition", "--save", "bad"], "no such directory"),
]:
    p = run(args, rc=2)
    err = p.stderr.strip().splitlines()
    check(len(err) >= 1 and want in err[-1], f"{args}: stderr {p.stderr!r}")
bad_jsonl = os.path.join(WORK, "bad.jsonl")
open(bad_jsonl, "w").write('{"query": "hi", "response": "yo"}\n{oops\n')
p = run(["sft", "--load", mcore, "--dataset", bad_jsonl, "--save", "bad"], rc=2)
check("bad.jsonl:2" in p.stderr, f"bad line not named: {p.stderr!r}")
for args, want in [
    (["--dataset", file_with(['{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}'])],
     "alternate"),
    (["--dataset", file_with(['{"question": "q"}'])], "a row needs"),
    (["--dataset", file_with(['{"messages": [{"role": "user", "content": "only a question"}]}'])], "no trainable rows"),
]:
    p = run(["sft", "--load", mcore, "--save", "bad"] + args, rc=2)
    check(want in p.stderr.strip().splitlines()[-1], f"{args}: stderr {p.stderr!r}")
for args, want in [(["--load", mcore, "--dataset", "self-cognition", "--save", "/dev/null/sub"], "--save")]:
    p = run(["sft"] + args, rc=2)
    check(want in p.stderr.strip().splitlines()[-1], f"{args}: stderr {p.stderr!r}")
p = run(["sft", "--load", cfg_only, "--dataset", "self-cognition", "--save", "bad"], rc=2)
check("no checkpoint" in p.stderr, f"--load without weights: {p.stderr!r}")
check(not os.path.exists(os.path.join(WORK, "bad")), "a failed start left an output dir behind")

if failures:
    sys.exit(f"{len(failures)} failure(s)")
print("train tests passed")
