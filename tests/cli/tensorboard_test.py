#!/usr/bin/env python3
"""TensorBoard event files (issue 19): `moectl sft` writes <run>/runs/events.out.tfevents.* by
default (and to --tensorboard_dir when given); read back with an independent reader here (TFRecord
framing with every masked CRC-32C checked, the Event protobuf decoded by hand), every number of
every train and eval line of logging.jsonl is there as train/<key> or eval/<key> at its step.
Usage: tensorboard_test.py MOECTL SRC_DIR WORK_DIR"""
import glob
import json
import math
import os
import shutil
import struct
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


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def fields(b):
    """(field, wire, value) of a protobuf message: ints for varints, bytes for the rest."""
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i)
        f, w = key >> 3, key & 7
        if w == 0:
            v, i = varint(b, i)
        elif w == 1:
            v, i = b[i:i + 8], i + 8
        elif w == 5:
            v, i = b[i:i + 4], i + 4
        elif w == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"wire type {w}")
        out.append((f, w, v))
    return out


def read_events(path):
    data = open(path, "rb").read()
    i, events, bad = 0, [], 0
    while i < len(data):
        n = struct.unpack_from("<Q", data, i)[0]
        bad += struct.unpack_from("<I", data, i + 8)[0] != masked(crc32c(data[i:i + 8]))
        rec = data[i + 12:i + 12 + n]
        bad += struct.unpack_from("<I", data, i + 12 + n)[0] != masked(crc32c(rec))
        events.append(rec)
        i += 16 + n
    return events, bad, i == len(data)


def scalars(events):
    out, version = {}, None
    for rec in events:
        step, summary = 0, None
        for f, w, v in fields(rec):
            if f == 2:
                step = v
            elif f == 3:
                version = v.decode()
            elif f == 5:
                summary = v
        if summary is None:
            continue
        for f, w, v in fields(summary):
            if f != 1:
                continue
            tag = val = None
            for f2, w2, v2 in fields(v):
                if f2 == 1:
                    tag = v2.decode()
                elif f2 == 2 and w2 == 5:
                    val = struct.unpack("<f", v2)[0]
            out[(tag, step)] = val
    return out, version


subprocess.run([MOECTL, "init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", "m"],
               cwd=WORK, env=ENV, check=True, capture_output=True)
ARGS = ["sft", "--model", "m", "--dataset", "self-cognition#40", "--model_name", "A", "--model_author", "B",
        "--train_iters", "6", "--micro_batch_size", "2", "--global_batch_size", "4", "--log_interval", "2",
        "--eval_interval", "3", "--split_dataset_ratio", "0.2", "--save_safetensors", "false",
        "--moe_aux_loss_coeff", "0.01"]
for save, extra in (("default", []), ("given", ["--tensorboard_dir", "tb_here"])):
    p = subprocess.run([MOECTL] + ARGS + ["--save", save] + extra, cwd=WORK, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    run = glob.glob(os.path.join(WORK, save, "v*"))[0]
    tb_dir = os.path.join(run, "runs") if not extra else os.path.join(WORK, "tb_here")
    files = glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))
    check(len(files) == 1, f"{save}: one event file in {tb_dir}")
    if not files:
        continue
    events, bad, whole = read_events(files[0])
    check(bad == 0 and whole, f"{save}: {len(events)} records, every length and data CRC-32C right")
    got, version = scalars(events)
    check(version == "brain.Event:2", f"{save}: file_version {version}")
    lines = [json.loads(l) for l in open(os.path.join(run, "logging.jsonl"))]
    expected = {}
    for l in lines:
        if "iteration" not in l:
            continue
        step = int(str(l["iteration"]).split("/")[0])
        prefix = "eval" if any(k.startswith("eval_") for k in l) else "train"
        for k, v in l.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                expected[(prefix + "/" + (k[5:] if k.startswith("eval_") else k), step)] = float(v)
    missing = [k for k in expected if k not in got]
    worst = max((abs(got[k] - v) / max(abs(v), 1e-30) for k, v in expected.items() if k in got), default=0.0)
    check(not missing and worst < 1e-6 and len(expected) > 20,
          f"{save}: {len(expected)} scalars of logging.jsonl in the events (missing {missing[:3]}, worst {worst:.1e})")
    check(("train/loss", 2) in got and ("eval/loss", 3) in got and ("train/load_balancing_loss", 6) in got,
          f"{save}: train/loss, eval/loss and train/load_balancing_loss tags")
    # Per-layer expert load: every MoE layer's imbalance (busiest expert / mean tokens per expert, so in
    # [1, experts]) over each logged window, in logging.jsonl and so as train/<key> in the events.
    trains = [l for l in lines if "loss" in l and "iteration" in l]
    imb = [l.get(f"expert_load_imbalance_layer_{i}") for l in trains for i in range(4)]
    check(all(v is not None and 1.0 <= v <= 8.0 for v in imb) and max(imb) > 1.0
          and ("train/expert_load_imbalance_layer_3", 6) in got,
          f"{save}: expert_load_imbalance_layer_0..3 of every train line in [1, 8] and in the events "
          f"({min(imb):.3f} .. {max(imb):.3f})")
    if extra:
        check(json.load(open(os.path.join(run, "args.json")))["tensorboard_dir"] == "tb_here",
              "args.json records --tensorboard_dir")

# Megatron's own tags (training_log): every --tensorboard_log_interval iterations, equal to the
# iteration's numbers (logging.jsonl with --log_interval 1 holds each), and each "vs samples".
MEG = list(ARGS)
MEG[MEG.index("--log_interval") + 1] = "1"
for save, extra, every in (("megatron", ["--log_timers_to_tensorboard", "--log_memory_to_tensorboard", "true",
                                         "--log_validation_ppl_to_tensorboard"], 1),
                           ("sparse", ["--tensorboard_log_interval", "2", "--no_log_learning_rate_to_tensorboard",
                                       "--log_throughput", "false"], 2)):
    p = subprocess.run([MOECTL] + MEG + ["--save", save] + extra, cwd=WORK, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    run = glob.glob(os.path.join(WORK, save, "v*"))[0]
    got, _ = scalars(read_events(glob.glob(os.path.join(run, "runs", "events.out.tfevents.*"))[0])[0])
    lines = [json.loads(l) for l in open(os.path.join(run, "logging.jsonl"))]
    train = {int(str(l["iteration"]).split("/")[0]): l for l in lines if "loss" in l and "iteration" in l}
    evals = {int(str(l["iteration"]).split("/")[0]): l for l in lines if "eval_loss" in l}
    want = {}
    for it, l in train.items():
        if it % every:
            continue
        samples = it * 4
        for tag, v in (("lm loss", l["loss"]), ("grad-norm", l["grad_norm"]), ("batch-size", 4),
                       ("load_balancing_loss", l["load_balancing_loss"]), ("z_loss", l["z_loss"])) + \
                      ((("learning-rate", l["learning_rate"]),) if save == "megatron" else ()):
            want[(tag, it)] = want[(tag + " vs samples", samples)] = float(v)
        for i in range(4):  # each iteration's expert load, under Megatron's per-layer tag pattern
            want[(f"moe/expert_load_imbalance_layer_{i}", it)] = l[f"expert_load_imbalance_layer_{i}"]
    for it, l in evals.items():
        want[("lm loss validation", it)] = l["eval_loss"]
        if save == "megatron":
            want[("lm loss validation ppl", it)] = math.exp(l["eval_loss"])
    missing = [k for k in want if k not in got]
    worst = max((abs(got[k] - v) / max(abs(v), 1e-30) for k, v in want.items() if k in got), default=0.0)
    check(not missing and worst < 1e-6 and len(want) > 20,
          f"{save}: Megatron's tags equal the iterations' numbers ({len(want)} scalars, missing {missing[:3]}, "
          f"worst {worst:.1e})")
    odd = [k for k in got if k[0] in ("lm loss", "moe/expert_load_imbalance_layer_0") and k[1] % every]
    check(not odd, f"{save}: Megatron's tags only every {every} iteration(s) ({odd[:3]})")
    if save == "megatron":
        check(all(("iteration-time", it) in got and got[("iteration-time", it)] > 0 for it in train)
              and all(got.get(("mem-max-allocated-bytes", it), 0) > 2 ** 20 for it in train)
              and all(got.get(("throughput", it), 0) > 0 for it in train),
              "--log_timers/--log_memory_to_tensorboard: iteration-time, mem-max-allocated-bytes; throughput")
    else:
        check(not any(k[0].startswith("learning-rate") or k[0] in ("throughput", "iteration-time") for k in got),
              "--no_log_learning_rate_to_tensorboard, --log_throughput false and no timers: those tags absent")
        a = json.load(open(os.path.join(run, "args.json")))
        check(a["tensorboard_log_interval"] == 2 and a["no_log_learning_rate_to_tensorboard"] is True,
              "args.json records the TensorBoard options")

# A dense layer (mlp_only_layers) has no expert load: its key and tag are absent, the MoE layers keep
# their global indices.
shutil.copytree(os.path.join(SRC, "configs", "tiny-moe"), os.path.join(WORK, "dense_cfg"))
cfg = json.load(open(os.path.join(WORK, "dense_cfg", "config.json")))
cfg["mlp_only_layers"] = [1]
json.dump(cfg, open(os.path.join(WORK, "dense_cfg", "config.json"), "w"))
subprocess.run([MOECTL, "init", "--config", "dense_cfg", "--output_dir", "md"], cwd=WORK, env=ENV, check=True,
               capture_output=True)
p = subprocess.run([MOECTL] + [a if a != "m" else "md" for a in MEG] + ["--save", "dense"], cwd=WORK, env=ENV,
                   capture_output=True, text=True)
assert p.returncode == 0, p.stderr[-2000:]
run = glob.glob(os.path.join(WORK, "dense", "v*"))[0]
got, _ = scalars(read_events(glob.glob(os.path.join(run, "runs", "events.out.tfevents.*"))[0])[0])
first = [json.loads(l) for l in open(os.path.join(run, "logging.jsonl"))][0]
layers = sorted(int(k.rsplit("_", 1)[1]) for k in first if k.startswith("expert_load_imbalance_layer_"))
tags = sorted({int(k[0].rsplit("_", 1)[1]) for k in got if k[0].startswith("moe/expert_load_imbalance_layer_")})
check(layers == [0, 2, 3] and tags == [0, 2, 3], f"mlp_only_layers [1]: expert load of layers {layers}, tags {tags}")

if failures:
    sys.exit(f"{len(failures)} failure(s)")
print("all TensorBoard checks passed")
