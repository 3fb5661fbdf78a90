#!/usr/bin/env python3
"""Pipeline-parallel training (issue 15, 1F1B) equals the single process, end to end through the CLI:
- layout parity: per-iteration loss and grad norm, and the final weights, under mpirun equal the
  one-process run to 1e-5 relative (fp32): PP2 (Qwen3-MoE, with and without the distributed
  optimizer), PP4 with an uneven first stage (6 layers as 3 + 1 + 1 + 1), PP2 with an uneven last
  stage, PP2 x DP2, PP2 x EP2, a dense Qwen2 with tied embeddings under PP2, PP2 x DP2 and PP2 x TP2
  (the embedding-group gradient all-reduce), selective and full (uniform, block) recompute under PP2
  and block under PP2 x VPP2; interleaved
  1F1B: PP2 x VPP2 (also given as layers per virtual stage), PP2 x VPP2 x DP2 (every micro-batch in
  the warm-up), PP3 x VPP2, tied embeddings under PP2 x VPP2; evaluation through both pipelines;
  the HF copy of a PP2 run is the whole model;
- checkpoints: --ckpt_format torch writes Megatron's per-stage rank dirs mp_rank_00_000 /
  mp_rank_00_001 with stage-local layer numbers, the names and shapes moectl export
  --pipeline_model_parallel_size 2 writes; torch_dist holds the global model (global layer indices);
  --finetune loads a legacy PP2 checkpoint, and the rank files of an uneven split export to the
  one-process model;
- resharding (torch_dist): PP2 saved at iteration 2 resumes in one process, and a one-process save
  resumes under PP2 (tied embeddings too), PP2 x VPP2 -> one process and one process -> PP2 x VPP2,
  TP2 x PP2 -> EP4, PP2 x EP2 and one process, with the losses of the run that never stopped;
  legacy --ckpt_format torch: PP2 and PP2 with a 1-layer first stage (with and without the
  distributed optimizer) saved at iteration 2 resume under PP2 and in one process, TP2 x PP2 under
  EP4 and in one process, PP2 x EP2 in one process, the same (<= 1e-6: the fp32 masters and
  moments are merged exactly);
- bad layouts (layers not divisible by the stages, an uneven split that does not divide, VPP without
  PP, micro-batches not a multiple of the stages under VPP, layers per virtual stage not dividing,
  VPP with uneven stages or legacy checkpoints: not yet) end every rank at start with exit 2 and
  one line naming the numbers;
- the pipeline bubble of PP2 with 8 micro-batches is printed beside the 1F1B and interleaved
  formulas (benchmark lines; no bound on a shared 2-core machine).
Usage: train_pp_test.py MOECTL SRC_DIR WORK_DIR MPIEXEC"""
import json
import os
import re
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import hf_model  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
from train_runs import check, run, run_dir, log_rows, train_log, rel, same_run, dist_model, stopped_at  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)

# --- models
q3 = os.path.join(WORK, "q3")  # 4 layers, 8 experts
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", q3, "--torch_dtype", "float32"])


def hf_dir(name, family, seed, **overrides):
    cfg = json.load(open(os.path.join(SRC, "configs", "tiny", family, "config.json")))
    cfg.update(bos_token_id=None, eos_token_id=None, **overrides)
    cdir = os.path.join(WORK, name + "cfg")
    os.makedirs(cdir)
    json.dump(cfg, open(os.path.join(cdir, "config.json"), "w"))
    out = os.path.join(WORK, name)
    hf_model.write_random_model(cdir, out, dtype="float32", seed=seed)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(q3, f), out)
    return out


q3x6 = hf_dir("q3x6", "qwen3_moe", 7, num_hidden_layers=6, vocab_size=1024)
tied = hf_dir("tied", "qwen2", 5, num_hidden_layers=4, vocab_size=1000, tie_word_embeddings=True)

ITERS = 5
BASE = ["--dataset", "self-cognition#96", "--model_name", "小黄", "Xiao Huang", "--model_author", "魔搭", "ModelScope",
        "--train_iters", str(ITERS), "--micro_batch_size", "2", "--global_batch_size", "8", "--log_interval", "1",
        "--lr", "1e-3", "--lr_warmup_iters", "1", "--save_safetensors", "false", "--eval_interval", "0"]
PP2 = ["--pipeline_model_parallel_size", "2"]
VPP2 = PP2 + ["--virtual_pipeline_model_parallel_size", "2"]
# Each chunk's buckets start during its last backward (the tied embedding's after its sum) and its
# parameters arrive during its next forward.
OVERLAP = ["--overlap_grad_reduce", "true", "--overlap_param_gather", "true", "--ddp_bucket_size", "20000"]
# name: (model flags, [(np, layout flags, what)])
CASES = {
    "qwen3_moe": (["--model", q3], [
        (2, PP2, "PP2"),
        (2, PP2 + ["--use_distributed_optimizer", "false"], "PP2 (replicated optimizer)"),
        (4, PP2, "PP2 x DP2"),
        (4, PP2 + ["--expert_model_parallel_size", "2"], "PP2 x EP2"),
        (2, VPP2, "PP2 x VPP2 (interleaved 1F1B, one layer per chunk)"),
        (2, PP2 + ["--num_layers_per_virtual_pipeline_stage", "1"], "PP2, 1 layer per virtual stage"),
        (4, VPP2, "PP2 x VPP2 x DP2 (micro-batches = stages: all warm-up)"),
        (4, VPP2 + OVERLAP, "PP2 x VPP2 x DP2, both overlaps"),
    ]),
    "qwen3_moe 6 layers": (["--model", q3x6], [
        (4, ["--pipeline_model_parallel_size", "4", "--decoder_first_pipeline_num_layers", "3"],
         "PP4, first stage 3 layers"),
        (3, ["--pipeline_model_parallel_size", "3", "--virtual_pipeline_model_parallel_size", "2",
             "--global_batch_size", "12"], "PP3 x VPP2 (6 micro-batches)"),
        (2, PP2 + ["--decoder_last_pipeline_num_layers", "2"], "PP2, last stage 2 layers"),
    ]),
    "qwen2 dense, tied embeddings": (["--model", tied], [(2, PP2, "PP2"), (4, PP2, "PP2 x DP2"),
                                                         (4, PP2 + ["--tensor_model_parallel_size", "2"],
                                                          "PP2 x TP2"),
                                                         (2, VPP2, "PP2 x VPP2"),
                                                         (4, PP2 + OVERLAP, "PP2 x DP2, both overlaps")]),
    "recompute selective": (["--model", q3, "--recompute_granularity", "selective"], [(2, PP2, "PP2")]),
    "recompute full": (["--model", q3, "--recompute_granularity", "full", "--recompute_method", "uniform",
                        "--recompute_num_layers", "1"], [(2, PP2, "PP2")]),
    # block: the first layer of each stage (each virtual chunk) recomputed, as Megatron counts it
    "recompute full block": (["--model", q3, "--recompute_granularity", "full", "--recompute_method", "block",
                              "--recompute_num_layers", "1"], [(2, PP2, "PP2"), (2, VPP2, "PP2 x VPP2")]),
}
for i, (name, (model, layouts)) in enumerate(CASES.items()):
    for j, (np, flags, what) in enumerate(layouts):
        # The one-process reference with the same global batch (a layout may set its own).
        gbs = flags[flags.index("--global_batch_size") + 1] if "--global_batch_size" in flags else "8"
        ref = f"c{i}_np1" + ("" if gbs == "8" else f"_gbs{gbs}")
        if not os.path.exists(os.path.join(WORK, ref)):
            run(["sft"] + BASE + model + ["--global_batch_size", gbs, "--save", ref])
        got = f"c{i}_{j}"
        run(["sft"] + BASE + model + flags + ["--save", got], np=np)
        same_run(ref, got, f"{name}: {what} vs one process", weights_at=ITERS)
args = json.load(open(os.path.join(run_dir("c0_2"), "args.json")))
check(args.get("world_size") == 4 and args.get("pipeline_model_parallel_size") == 2
      and args.get("data_parallel_size") == 2, "args.json records world_size 4, PP 2, DP 2")
args = json.load(open(os.path.join(run_dir("c1_0"), "args.json")))
check(args.get("decoder_first_pipeline_num_layers") == 3, "args.json records decoder_first_pipeline_num_layers 3")
args = json.load(open(os.path.join(run_dir("c0_5"), "args.json")))
check(args.get("virtual_pipeline_model_parallel_size") == 2, "--num_layers_per_virtual_pipeline_stage 1 on 2 "
      "layers per stage: args.json records virtual_pipeline_model_parallel_size 2")
# A tied checkpoint holds no output_layer (the last stage's copy is the embedding's).
check(not any(k.startswith("output_layer") for k in dist_model("c2_0", ITERS)),
      "tied embeddings under PP2: the torch_dist checkpoint has no output_layer")

# --- the HF copy (--save_safetensors) of a PP2 run is the whole model, equal to the one-process copy
hf = [a if a != "false" or BASE[i - 1] != "--save_safetensors" else "true" for i, a in enumerate(BASE)]
run(["sft"] + hf + CASES["qwen3_moe"][0] + ["--save", "hf_np1"])
run(["sft"] + hf + CASES["qwen3_moe"][0] + PP2 + ["--save", "hf_pp2"], np=2)
a_hf = hf_model.load_safetensors_dir(os.path.join(run_dir("hf_np1"), f"checkpoint-{ITERS}"))
b_hf = hf_model.load_safetensors_dir(os.path.join(run_dir("hf_pp2"), f"checkpoint-{ITERS}"))
same = set(a_hf) == set(b_hf) and all(a_hf[k].shape == b_hf[k].shape for k in a_hf)
num = sum(((a_hf[k].double() - b_hf[k].double()) ** 2).sum().item() for k in a_hf) if same else 1.0
den = sum((a_hf[k].double() ** 2).sum().item() for k in a_hf)
check(same and (num / den) ** 0.5 <= 1e-5, f"PP2 HF copy: whole tensors equal to one process's (|dw|/|w| = "
      f"{(num / den) ** 0.5:.1e})")

# --- evaluation through the pipeline: the eval lines equal the one process's
ev = ["--eval_interval", "2", "--split_dataset_ratio", "0.1"]
run(["sft"] + BASE + CASES["qwen3_moe"][0] + ev + ["--save", "ev_np1"])
run(["sft"] + BASE + CASES["qwen3_moe"][0] + ev + PP2 + ["--save", "ev_pp2"], np=2)
ea = [r["eval_loss"] for r in log_rows("ev_np1") if "eval_loss" in r]
eb = [r["eval_loss"] for r in log_rows("ev_pp2") if "eval_loss" in r]
check(len(ea) >= 2 and len(ea) == len(eb) and all(rel(a, b) <= 1e-5 for a, b in zip(ea, eb)),
      f"PP2 evaluation losses {eb} equal one process's {ea}")
run(["sft"] + BASE + CASES["qwen3_moe"][0] + ev + VPP2 + ["--save", "ev_vpp2"], np=2)
ec = [r["eval_loss"] for r in log_rows("ev_vpp2") if "eval_loss" in r]
check(len(ea) == len(ec) and all(rel(a, b) <= 1e-5 for a, b in zip(ea, ec)),
      f"PP2 x VPP2 evaluation losses {ec} equal one process's {ea}")

# --- legacy rank files: Megatron's per-stage dirs, layers numbered within the stage
run(["sft"] + BASE + CASES["qwen3_moe"][0] + PP2 + ["--ckpt_format", "torch", "--save", "legacy_pp2"], np=2)
run(["export", "--model", q3, "--to_mcore", "true", "--ckpt_format", "torch", "--output_dir", "q3_pp2"] + PP2)
it_dir = os.path.join(run_dir("legacy_pp2"), f"iter_{ITERS:07d}")
check(sorted(os.listdir(it_dir)) == ["mp_rank_00_000", "mp_rank_00_001"], f"PP2 rank dirs: {sorted(os.listdir(it_dir))}")
whole = dist_model("c0_np1", ITERS)
for s in range(2):
    got = torch.load(os.path.join(it_dir, f"mp_rank_00_{s:03d}", "model_optim_rng.pt"))
    ref = torch.load(os.path.join(WORK, "q3_pp2", "iter_0000001", f"mp_rank_00_{s:03d}", "model_optim_rng.pt"))
    shapes = lambda d: {k: tuple(v.shape) for k, v in d["model"].items() if torch.is_tensor(v)}
    check(shapes(got) == shapes(ref), f"mp_rank_00_{s:03d}: names and shapes as moectl export "
          f"--pipeline_model_parallel_size 2 ({sorted(set(shapes(got)) ^ set(shapes(ref)))[:3]})")
    check(got["args"].pipeline_model_parallel_size == 2 and "optimizer" in got, f"mp_rank_00_{s:03d}: args PP2, optimizer")
    # Stage s's local layer 0 is global layer 2s.
    q = got["model"]["decoder.layers.0.self_attention.linear_qkv.weight"].float()
    w = whole["decoder.layers.self_attention.linear_qkv.weight"][2 * s].float()
    diff = (q - w).abs().max().item()
    check(diff < 1e-2, f"mp_rank_00_{s:03d}: local layer 0 is global layer {2 * s} of the one-process model "
          f"(max diff {diff:.1e})")


# --- resharding (torch_dist): PP2 saved at iteration 2 -> one process; one process saved at 2 -> PP2
for model_name, src_np, dst_np, layout in (("qwen3_moe", 2, 1, PP2), ("qwen3_moe", 1, 2, PP2),
                                           ("qwen2 dense, tied embeddings", 2, 1, PP2),
                                           ("qwen2 dense, tied embeddings", 1, 2, PP2), ("qwen3_moe", 2, 1, VPP2),
                                           ("qwen2 dense, tied embeddings", 1, 2, VPP2)):
    model = CASES[model_name][0]
    save = f"res_{model_name.split()[0]}_np{src_np}_{len(layout)}"
    run(["sft"] + BASE + model + (layout if src_np == 2 else []) + ["--save", save, "--save_interval", "2"],
        np=src_np)
    ck = stopped_at(save, 2, ITERS)
    out = f"{save}_to_np{dst_np}"
    run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", out] + (layout if dst_np == 2 else []),
        np=dst_np)
    full, resumed = train_log(save), train_log(out)
    worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
    check(len(resumed) == ITERS - 2 and worst <= 1e-6,
          f"{model_name}: {'PP2' if src_np == 2 else 'one process'} saved at 2 -> {'PP2' if dst_np == 2 else 'one process'}"
          f"{' (VPP2)' if layout == VPP2 else ''}: losses of iterations 3..{ITERS} as uninterrupted "
          f"(worst {worst:.1e})")

# Across dimensions: TP2 x PP2 saved at iteration 2 resumes under EP4, PP2 x EP2 and in one process.
save = "res_tp2pp2"
run(["sft"] + BASE + CASES["qwen3_moe"][0] + PP2 + ["--tensor_model_parallel_size", "2", "--save", save,
                                                     "--save_interval", "2"], np=4)
ck = stopped_at(save, 2, ITERS)
for np, flags, what in ((4, ["--expert_model_parallel_size", "4"], "EP4"),
                        (4, ["--expert_model_parallel_size", "2", "--pipeline_model_parallel_size", "2"], "PP2 x EP2"),
                        (1, [], "one process")):
    out = f"{save}_to_{what.replace(' ', '')}"
    run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", out] + flags, np=np)
    full, resumed = train_log(save), train_log(out)
    worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
    check(len(resumed) == ITERS - 2 and worst <= 1e-6,
          f"TP2 x PP2 saved at 2 -> {what}: losses of iterations 3..{ITERS} as uninterrupted (worst {worst:.1e})")

# A legacy PP2 checkpoint (per-stage dirs, stage-local layer numbers) resumes under any layout:
# every stage's fp32 masters and Adam moments (inline, or distrib_optim.pt's flattened buffers,
# the embedding and output in buckets of their own) merged by the split args.json records, even or
# uneven, then cut to the new layout. The masters are fp32 (the weights are saved in bf16), so the
# resumed losses equal the uninterrupted run's to 1e-6.
uneven = ["--pipeline_model_parallel_size", "2", "--decoder_first_pipeline_num_layers", "1"]
for src_flags, src_name in ((PP2, "PP2"), (uneven, "PP2 with a 1-layer first stage")):
    for dopt in (False, True):
        save = f"res_legacy_{len(src_flags)}_dopt{int(dopt)}"
        dopt_flags = ["--use_distributed_optimizer", str(dopt).lower()]
        run(["sft"] + BASE + CASES["qwen3_moe"][0] + src_flags + dopt_flags +
            ["--ckpt_format", "torch", "--save", save, "--save_interval", "2"], np=2)
        ck = stopped_at(save, 2, ITERS)
        check(os.path.exists(os.path.join(ck, "iter_0000002", "mp_rank_00_001", "distrib_optim.pt")) == dopt,
              f"legacy {src_name}: distrib_optim.pt {'beside' if dopt else 'not beside'} each stage's file")
        for dst_np, dst_flags, dst_name in ((2, PP2, "PP2"), (1, [], "one process")):
            out = f"{save}_to_np{dst_np}"
            run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", out, "--ckpt_format", "torch"] +
                dopt_flags + dst_flags, np=dst_np)
            full, resumed = train_log(save), train_log(out)
            worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
            check(len(resumed) == ITERS - 2 and worst <= 1e-6,
                  f"legacy torch {src_name} (distributed optimizer {dopt}) saved at 2 -> {dst_name}: losses of "
                  f"iterations 3..{ITERS} as uninterrupted (worst {worst:.1e})")

# Across dimensions, with the distributed optimizer (distrib_optim.pt per rank; under EP2 the dense
# state only in the EP-rank-0 dirs): legacy TP2 x PP2 -> one process and EP4, PP2 x EP2 -> one process.
for src_np, src_flags, src_name, dsts in (
        (4, PP2 + ["--tensor_model_parallel_size", "2"], "TP2 x PP2",
         ((1, [], "one process"), (4, ["--expert_model_parallel_size", "4"], "EP4"))),
        (4, PP2 + ["--expert_model_parallel_size", "2"], "PP2 x EP2", ((1, [], "one process"),))):
    save = f"res_legacy_{src_name.replace(' ', '')}"
    run(["sft"] + BASE + CASES["qwen3_moe"][0] + src_flags + ["--use_distributed_optimizer", "true", "--ckpt_format",
                                                              "torch", "--save", save, "--save_interval", "2"],
        np=src_np)
    ck = stopped_at(save, 2, ITERS)
    for dst_np, dst_flags, dst_name in dsts:
        out = f"{save}_to_{dst_name.replace(' ', '')}"
        run(["sft"] + BASE + ["--load", ck, "--finetune", "false", "--save", out] + dst_flags, np=dst_np)
        full, resumed = train_log(save), train_log(out)
        worst = max((rel(a[0], b[0]) for a, b in zip(full[2:], resumed)), default=1.0)
        check(len(resumed) == ITERS - 2 and worst <= 1e-6,
              f"legacy torch {src_name} (distributed optimizer) saved at 2 -> {dst_name}: losses of iterations "
              f"3..{ITERS} as uninterrupted (worst {worst:.1e})")

# A legacy PP2 checkpoint's weights load with --finetune, and so do an uneven split's (the reader
# takes the stages from args.json).
run(["sft"] + BASE + ["--load", run_dir("legacy_pp2"), "--finetune", "true", "--save", "legacy_ft", "--train_iters",
                      "2"])
run(["sft"] + BASE + CASES["qwen3_moe"][0] + uneven + ["--ckpt_format", "torch", "--save", "legacy_uneven"], np=2)
run(["export", "--mcore_model", run_dir("legacy_uneven"), "--to_hf", "true", "--output_dir", "uneven_hf"])
run(["export", "--mcore_model", run_dir("c0_np1"), "--to_hf", "true", "--output_dir", "np1_hf"])
a_hf = hf_model.load_safetensors_dir(os.path.join(WORK, "np1_hf"))
b_hf = hf_model.load_safetensors_dir(os.path.join(WORK, "uneven_hf"))
same = set(a_hf) == set(b_hf)
num = sum(((a_hf[k].double() - b_hf[k].double()) ** 2).sum().item() for k in a_hf) if same else 1.0
den = sum((a_hf[k].double() ** 2).sum().item() for k in a_hf)
check(same and (num / den) ** 0.5 <= 1e-2, f"legacy rank files of PP2 with a 1-layer first stage export to the "
      f"one-process model (bf16 saves, |dw|/|w| = {(num / den) ** 0.5:.1e})")

# --- bad layouts: one line, exit 2, on every rank, before any work
BAD = [
    (3, ["--pipeline_model_parallel_size", "3", "--global_batch_size", "6"],
     "--pipeline_model_parallel_size 3 must divide num_hidden_layers 4"),
    (2, PP2 + ["--decoder_first_pipeline_num_layers", "4"],
     "--decoder_first_pipeline_num_layers 4 and --decoder_last_pipeline_num_layers 0 leave 0 of num_hidden_layers 4"),
    (1, ["--virtual_pipeline_model_parallel_size", "2"],
     "--virtual_pipeline_model_parallel_size 2 needs --pipeline_model_parallel_size > 1"),
    (1, ["--num_layers_per_virtual_pipeline_stage", "1"],
     "--num_layers_per_virtual_pipeline_stage 1 needs --pipeline_model_parallel_size > 1"),
    (2, VPP2 + ["--global_batch_size", "6"],
     "the interleaved schedule needs the 3 micro-batches of a global batch per pipeline"),
    (2, VPP2 + ["--ckpt_format", "torch"],
     "--ckpt_format torch with --virtual_pipeline_model_parallel_size 2: Megatron's per-chunk model0/model1"),
    (2, PP2 + ["--num_layers_per_virtual_pipeline_stage", "3"],
     "--num_layers_per_virtual_pipeline_stage 3 must divide the 2 layers of each of --pipeline_model_parallel_size"),
    (2, VPP2 + ["--decoder_first_pipeline_num_layers", "1"], "uneven virtual pipeline stages are not supported yet"),
]
for np, flags, msg in BAD:
    save = "bad_" + "_".join(f.strip("-") for f in flags)
    p = run(["sft"] + BASE + CASES["qwen3_moe"][0] + flags + ["--save", save], np=np, expect=None)
    lines = {re.sub(r"^moectl: error \(rank \d+ of \d+\)", "moectl: error", l) for l in p.stderr.splitlines()
             if l.startswith("moectl: error")}
    check(p.returncode == 2 and msg in p.stderr and len(lines) == 1 and not os.path.exists(os.path.join(WORK, save)),
          f"{' '.join(flags)}: exit 2 with one line naming the rule (exit {p.returncode}): {sorted(lines)[:1]}")

# --- the bubble of PP2 over 8 micro-batches, 1F1B and interleaved (printed; benchmark lines, not bounds)
for flags, formula in ((PP2, "1 virtual; 1F1B formula 0.111"), (VPP2, "2 virtual; interleaved 1F1B formula 0.059")):
    p = run(["sft"] + BASE + CASES["qwen3_moe"][0] + flags + ["--global_batch_size", "16", "--save",
                                                               f"bubble{len(flags)}"], np=2)
    line = [l for l in p.stdout.splitlines() if l.startswith("pipeline bubble:")]
    print("     " + (line[0] if line else "no bubble line"))
    check(len(line) == 1 and "8 micro-batches" in line[0] and formula in line[0], f"{flags[-1]} bubble line: {line}")

train_runs.finish("pipeline-parallel")
