#!/usr/bin/env python3
"""Issue 12's defects, end to end:
- the aux-loss-free expert bias (--moe_router_enable_expert_bias) is saved under Megatron's key
  decoder.layers.N.mlp.router.expert_bias (fp32), in the HF copy as
  model.layers.N.mlp.gate.e_score_correction_bias, flagged in config.json, restored on resume
  (2 + 2 iterations end bit-identical to 4), and carried through export both ways unchanged;
- export keeps the source's dtype when --torch_dtype is not given (fp32 stays fp32 both ways);
- --lr 0 trains without changing the weights.
Usage: engine_defects_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))
import hf_model  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def run(args):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=WORK, env=ENV)
    assert p.returncode == 0, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return p


def model_of(d, it):
    """The legacy rank file's model dict (these checks write --ckpt_format torch; torch_dist is
    covered by export_test.py's and train_test.py's independent reader)."""
    return torch.load(os.path.join(d, f"iter_{it:07d}", "mp_rank_00", "model_optim_rng.pt"))["model"]


def safetensors_dtypes(d):
    out = {}
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            raw = open(os.path.join(d, fn), "rb").read()
            h = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
            out.update({k: v["dtype"] for k, v in h.items() if k != "__metadata__"})
    return out


# --- export keeps the source dtype
hf32 = os.path.join(WORK, "hf32")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", hf32, "--torch_dtype", "float32"])
run(["export", "--model", hf32, "--to_mcore", "true", "--output_dir", "mc32", "--ckpt_format", "torch"])
mc32 = os.path.join(WORK, "mc32")
check(json.load(open(os.path.join(mc32, "config.json")))["torch_dtype"] == "float32", "to_mcore: config.json dtype")
dts = {t.dtype for t in model_of(mc32, 1).values() if torch.is_tensor(t)}
check(dts == {torch.float32}, f"to_mcore from fp32 wrote {dts}")
run(["export", "--mcore_model", mc32, "--to_hf", "true", "--output_dir", "hf32_back"])
check(set(safetensors_dtypes(os.path.join(WORK, "hf32_back")).values()) == {"F32"}, "to_hf from fp32 changed dtype")
run(["export", "--model", hf32, "--to_mcore", "true", "--output_dir", "mc16", "--torch_dtype", "bfloat16",
     "--ckpt_format", "torch"])
dts = {t.dtype for t in model_of(os.path.join(WORK, "mc16"), 1).values() if torch.is_tensor(t)}
check(dts == {torch.bfloat16}, f"--torch_dtype bfloat16 wrote {dts}")

# --- the expert bias: saved, restored on resume, exported both ways, used by infer
hf = os.path.join(WORK, "hf")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", hf])
cfg = json.load(open(os.path.join(hf, "config.json")))
moe_layer = next(i for i in range(cfg["num_hidden_layers"]) if str(i) not in map(str, cfg.get("mlp_only_layers", [])))
common = ["--model", hf, "--dataset", "self-cognition#32", "--model_name", "x", "--model_author", "y",
          "--max_length", "96", "--micro_batch_size", "2", "--global_batch_size", "4", "--lr", "1e-3",
          "--lr_decay_iters", "4", "--moe_router_enable_expert_bias", "true", "--moe_router_bias_update_rate", "0.05",
          "--save_interval", "2", "--add_version", "false", "--ckpt_format", "torch"]
run(["sft", "--save", "straight", "--train_iters", "4"] + common)
straight = os.path.join(WORK, "straight")
key = f"decoder.layers.{moe_layer}.mlp.router.expert_bias"
m4 = model_of(straight, 4)
check(key in m4 and m4[key].dtype == torch.float32, f"checkpoint lacks fp32 {key}")
bias = m4[key]
check(bool((bias != 0).any()), "the expert bias never moved")
check(not torch.equal(model_of(straight, 2)[key], bias), "the bias did not change between iterations 2 and 4")
check(json.load(open(os.path.join(straight, "config.json"))).get("moe_router_enable_expert_bias") is True,
      "config.json lacks moe_router_enable_expert_bias")
hf_key = f"model.layers.{moe_layer}.mlp.gate.e_score_correction_bias"
hf_copy = hf_model.load_safetensors_dir(os.path.join(straight, "checkpoint-4"))
check(hf_key in hf_copy and torch.equal(hf_copy[hf_key], bias), f"HF copy lacks the same {hf_key}")
check(safetensors_dtypes(os.path.join(straight, "checkpoint-4")).get(hf_key) == "F32", "HF copy bias not F32")

# Resume 2 + 2 = 4 straight, bit for bit, the bias included (it was reset to zero before).
resume_common = common[2:]  # without --model: the weights come from --load
run(["sft", "--save", "first", "--train_iters", "2"] + common)
run(["sft", "--load", "first", "--finetune", "false", "--save", "second", "--train_iters", "4"] + resume_common)
r4 = model_of(os.path.join(WORK, "second"), 4)
check(torch.equal(r4[key], bias), "resumed run's expert bias differs from the straight run's")
diff = [k for k in m4 if torch.is_tensor(m4[k]) and not torch.equal(m4[k], r4[k])]
check(not diff, f"resumed run differs from the straight run in {diff[:3]}")

# Export both ways keeps it.
run(["export", "--mcore_model", straight, "--to_hf", "true", "--output_dir", "bias_hf"])
exported = hf_model.load_safetensors_dir(os.path.join(WORK, "bias_hf"))
check(torch.equal(exported[hf_key], bias), "export --to_hf lost or changed the bias")
run(["export", "--model", "bias_hf", "--to_mcore", "true", "--output_dir", "bias_mc", "--ckpt_format", "torch"])
check(torch.equal(model_of(os.path.join(WORK, "bias_mc"), 1)[key], bias), "export --to_mcore lost or changed the bias")
p = run(["infer", "--model", os.path.join(straight, "checkpoint-4"), "--max_new_tokens", "4", "--temperature", "0",
         "--stream", "false"])  # interactive on an empty stdin: loads the model with its bias
check(p.returncode == 0, "infer on a model with an expert bias failed")

# --- --lr 0: loss measured, weights unchanged
no_bias = [a for a in common if a not in ("--moe_router_enable_expert_bias", "true")]
run(["sft", "--save", "zero", "--train_iters", "2"] + no_bias + ["--lr", "0", "--min_lr", "0", "--torch_dtype", "float32"])
z = model_of(os.path.join(WORK, "zero"), 2)
src = hf_model.load_safetensors_dir(hf)
check(torch.equal(z["embedding.word_embeddings.weight"][:src["model.embed_tokens.weight"].shape[0]].float(),
                  src["model.embed_tokens.weight"].float()), "--lr 0 changed the weights")

print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
