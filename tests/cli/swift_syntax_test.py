#!/usr/bin/env python3
"""Command lines as swift's parser reads them (issue 19): Megatron-LM's dashed spellings
(--micro-batch-size) are the underscored flags, a bare boolean flag means true (also last on the
line, and before another flag), --flag=value works, values are never respelled, and a flag given
twice keeps its last value; Megatron's GPU performance knobs are accepted, checked and recorded;
architecture flags are checked against config.json.
Usage: swift_syntax_test.py MOECTL SRC_DIR WORK_DIR"""
import glob
import json
import os
import shutil
import subprocess
import sys

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(args, expect=0):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=WORK, env=ENV)
    assert p.returncode == expect, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-2000:]}"
    return p


def args_of(save):
    return json.load(open(glob.glob(os.path.join(WORK, save, "v*", "args.json"))[0]))


run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", "m"])
BASE = ["sft", "--model", "m", "--dataset", "self-cognition#8", "--model_name", "a-b", "--model_author", "--c",
        "--train-iters", "1", "--global-batch-size", "2", "--micro_batch_size", "1", "--save_safetensors", "false"]
# --model_author's value "--c" would be a flag: swift reads it as one too, so give the author as --flag=value.
BASE[BASE.index("--c") - 1:BASE.index("--c") + 1] = ["--model_author=-c"]
run(BASE + ["--packing", "--save", "bare"])
a = args_of("bare")
check(a["packing"] is True and a["train_iters"] == 1 and a["global_batch_size"] == 2,
      "dashed spellings and a bare --packing before another flag")
run(BASE + ["--save", "last", "--packing"])
check(args_of("last")["packing"] is True, "a bare boolean flag last on the line")
run(BASE + ["--save", "eq", "--packing=false", "--seed=7"])
check(args_of("eq")["packing"] is False and args_of("eq")["seed"] == 7, "--flag=value")
run(BASE + ["--save", "twice", "--seed", "3", "--seed", "5"])
check(args_of("twice")["seed"] == 5, "a repeated flag keeps its last value")
p = run(BASE + ["--save", "bad", "--packing", "maybe"], expect=2)
check("--packing" in p.stderr and len(p.stderr.strip().splitlines()) == 1, "a bad boolean value: one line naming it")
p = run(BASE + ["--save", "unk", "--no-such-flag", "1"], expect=2)
check("--no_such_flag" in p.stderr, f"an unknown dashed flag is named (as respelled): {p.stderr.strip()}")

# Megatron's performance knobs: accepted, checked, recorded (the quick start passes three of them).
run(BASE + ["--save", "knobs", "--cross_entropy_loss_fusion", "true", "--num_workers", "4", "--dataset_num_proc", "4",
            "--attention_backend", "flash", "--moe_grouped_gemm"])
a = args_of("knobs")
check(a.get("cross_entropy_loss_fusion") is True and a.get("num_workers") == 4 and a.get("attention_backend") == "flash"
      and a.get("moe_grouped_gemm") is True and a.get("dataset_num_proc") == 4,
      "knobs and --dataset_num_proc (tokenisation threads) recorded in args.json")
p = run(BASE + ["--save", "badknob", "--attention_backend", "flsh"], expect=2)
check("--attention_backend" in p.stderr and "flash" in p.stderr, "a knob's bad value names the flag and the choices")
p = run(BASE + ["--save", "badcount", "--num_workers", "-1"], expect=2)
check("--num_workers" in p.stderr, "a negative worker count is refused")

# Architecture flags: equal to config.json is fine, a different value names both and the file.
run(BASE + ["--save", "arch", "--num_layers", "4", "--hidden_size", "128", "--num_experts", "8", "--group_query_attention"])
check(args_of("arch").get("num_layers") == 4, "architecture flags equal to config.json are accepted and recorded")
p = run(BASE + ["--save", "arch_bad", "--num_experts", "64"], expect=2)
check("--num_experts 64" in p.stderr and "config.json (8)" in p.stderr and not os.path.exists(os.path.join(WORK, "arch_bad")),
      f"a different architecture value is refused naming both and the file: {p.stderr.strip()[:150]}")

# What every family fixes, names, JSON values and the extra-kwargs object: equal is fine.
run(BASE + ["--save", "arch2", "--model_type", "qwen3_moe", "--normalization", "RMSNorm", "--swiglu",
            "--disable_bias_linear", "true", "--position_embedding_type", "rope", "--rotary_percent", "1.0",
            "--attention_dropout", "0.", "--padded_vocab_size", str(json.load(open(os.path.join(WORK, "m", "config.json")))["vocab_size"]),
            "--rope_scaling", "null", "--extra_megatron_kwargs", '{"num_layers": 4, "qk_layernorm": true}'])
a = args_of("arch2")
check(a.get("model_type") == "qwen3_moe" and a.get("swiglu") is True and a.get("extra_megatron_kwargs") == {"num_layers": 4, "qk_layernorm": True},
      "names, fixed-by-family flags and --extra_megatron_kwargs equal to config.json are accepted and recorded")
for flags, words in ((["--normalization", "LayerNorm"], ["--normalization LayerNorm", "RMSNorm"]),
                     (["--model_type", "mixtral"], ["--model_type mixtral", "qwen3_moe"]),
                     (["--hidden_dropout", "0.1"], ["--hidden_dropout 0.1", "(0)"]),
                     (["--rope_scaling", '{"rope_type": "yarn", "factor": 4.0}'], ["--rope_scaling", "null"]),
                     (["--rope_scaling", "yarn"], ["--rope_scaling yarn", "JSON"]),
                     (["--megatron_extra_kwargs", '{"num_experts": 64}'], ["--num_experts 64", "config.json (8)"]),
                     (["--extra_megatron_kwargs", '{"lr": 1}'], ["key lr", "--lr"]),
                     (["--extra_megatron_kwargs", "[1]"], ["--extra_megatron_kwargs", "JSON object"])):
    p = run(BASE + ["--save", "arch_bad2"] + flags, expect=2)
    check(all(w in p.stderr for w in words) and len(p.stderr.strip().splitlines()) == 1
          and not os.path.exists(os.path.join(WORK, "arch_bad2")), f"{' '.join(flags)}: {p.stderr.strip()[:160]}")

# The numeric and bookkeeping knobs of the parameter list: accepted, checked, recorded.
run(BASE + ["--save", "knobs2", "--bf16", "true", "--deterministic_mode", "--distributed_backend", "nccl",
            "--dataloader_type", "cyclic", "--logging_level", "20", "--no_initialization", "--auto_detect_ckpt_format",
            "--calculate_per_token_loss", "true", "--exit_on_missing_checkpoint", "--streaming", "false", "--fp16", "false"])
a = args_of("knobs2")
check(a.get("bf16") is True and a.get("distributed_backend") == "nccl" and a.get("logging_level") == 20,
      "bf16, distributed_backend, logging_level, ... recorded; the 'off' values of features moectl lacks accepted")
p = run(BASE + ["--save", "badknob2", "--dataloader_type", "external"], expect=2)
check("--dataloader_type" in p.stderr and "--streaming true" in p.stderr,
      "--dataloader_type external without --streaming is refused")

# --moe_aux_loss_coeff and --moe_router_load_balancing_type are Megatron-Core's lists, one coefficient per
# balancing type: a list of one each is the one type moectl's router computes (recorded, and its loss logged
# under swift's key); lengths that differ, or several types at once, are one line naming the flags.
run(BASE + ["--save", "lb1", "--moe_router_load_balancing_type", "seq_aux_loss", "--moe_aux_loss_coeff", "0.02"])
a = args_of("lb1")
lines = [json.loads(l) for l in open(glob.glob(os.path.join(WORK, "lb1", "v*", "logging.jsonl"))[0])]
check(a.get("moe_router_load_balancing_type") == "seq_aux_loss" and a.get("moe_aux_loss_coeff") == 0.02
      and any(l.get("seq_load_balancing_loss", 0) > 0 for l in lines),
      "--moe_router_load_balancing_type seq_aux_loss --moe_aux_loss_coeff 0.02: recorded, its loss logged")
run(BASE + ["--save", "lb0"])
check(args_of("lb0").get("moe_router_load_balancing_type") == "aux_loss" and args_of("lb0").get("moe_aux_loss_coeff") == 0,
      "no balancing flags: aux_loss with coefficient 0 (swift's defaults) recorded")
for flags, words in (
        (["--moe_aux_loss_coeff", "0.01", "0.02"],
         ["--moe_aux_loss_coeff has 2", "(0.01 0.02)", "--moe_router_load_balancing_type has 1", "(aux_loss)"]),
        (["--moe_router_load_balancing_type", "aux_loss", "seq_aux_loss", "--moe_aux_loss_coeff", "0.01"],
         ["--moe_aux_loss_coeff has 1", "--moe_router_load_balancing_type has 2", "(aux_loss seq_aux_loss)"]),
        (["--moe_router_load_balancing_type", "aux_loss", "seq_aux_loss", "--moe_aux_loss_coeff", "0.01", "0.001"],
         ["--moe_router_load_balancing_type aux_loss seq_aux_loss", "several balancing types", "not in moectl yet"])):
    p = run(BASE + ["--save", "lb_bad"] + flags, expect=2)
    check(all(w in p.stderr for w in words) and len(p.stderr.strip().splitlines()) == 1
          and not os.path.exists(os.path.join(WORK, "lb_bad")), f"{' '.join(flags)}: {p.stderr.strip()}")

# --seq_length: alone it is the sample limit (swift sets max_length from it); below --max_length it is refused.
run(BASE + ["--save", "seq", "--seq_length", "96"])
check(args_of("seq")["max_length"] == 96 and args_of("seq")["seq_length"] == 96, "--seq_length alone sets max_length")
p = run(BASE + ["--save", "seq_bad", "--seq_length", "32", "--max_length", "64"], expect=2)
check("--seq_length 32" in p.stderr and "--max_length 64" in p.stderr, f"--seq_length below --max_length: {p.stderr.strip()}")

# Features moectl does not have yet: one line, exit 2, no run dir.
for flags, word in ((["--train_type", "lora"], "LoRA"), (["--report_to", "wandb"], "tensorboard"),
                    (["--fp8_format", "hybrid"], "FP8"), (["--fp16", "true"], "loss scaling"),
                    (["--decoder_first_pipeline_num_layers", "2"], "pipeline")):
    p = run(BASE + ["--save", "later"] + flags, expect=2)
    check(word in p.stderr and not os.path.exists(os.path.join(WORK, "later")), f"{' '.join(flags)}: {p.stderr.strip()}")
# --load naming a dir without a checkpoint: exit 2 (swift's default), or with
# --exit_on_missing_checkpoint false random weights from its config.json, as Megatron starts.
os.makedirs(os.path.join(WORK, "empty_ckpt"))
for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(WORK, "m", f), os.path.join(WORK, "empty_ckpt"))
no_model = [x for x in BASE if x not in ("--model", "m")]
p = run(no_model + ["--load", "empty_ckpt", "--save", "missing"], expect=2)
check("no checkpoint there" in p.stderr and "--exit_on_missing_checkpoint false" in p.stderr
      and not os.path.exists(os.path.join(WORK, "missing")), f"--load without a checkpoint: {p.stderr.strip()[:200]}")
p = run(no_model + ["--load", "empty_ckpt", "--exit_on_missing_checkpoint", "false", "--finetune", "false", "--save",
                    "missing_ok"])
check("starting from random weights" in p.stderr and args_of("missing_ok").get("exit_on_missing_checkpoint") is False,
      "--exit_on_missing_checkpoint false: trains from random weights, recorded in args.json")
run(BASE + ["--save", "full", "--train_type", "full", "--report_to", "tensorboard"])
check(args_of("full").get("train_type") == "full", "--train_type full and --report_to tensorboard are accepted")

if failures:
    sys.exit(f"{len(failures)} failure(s)")
print("all swift-syntax checks passed")
