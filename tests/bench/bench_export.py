#!/usr/bin/env python3
"""Benchmark of `moectl export` against `cp -r` of the same bytes on the same disk.

Writes a synthetic Qwen3-MoE checkpoint of about SIZE_GB bf16 in sharded safetensors (1 GB
shards + index), then times, each from the same page-cache state:
  cp -r HF CP_COPY                 (the ceiling: coreutils copies file to file in the kernel)
  moectl export --to_mcore         (HF -> Megatron, one rank, in each --formats: torch_dist, torch)
  moectl export --to_hf            (and back, 1GB shards)
and prints to_mcore/cp and to_hf/cp for each format side by side (throughput ratios, bytes written
per second; target >= 0.70)
and each export's peak RSS (wait4 ru_maxrss) against 2 x the largest tensor + 256 MiB
(target <= 1; from /usr/bin/time). The round trip must give back the same tensors, byte for byte.

Page cache: as root the caches are dropped before every timed command (sync, then
/proc/sys/vm/drop_caches = 3), so each command reads its input from disk; with --cache warm
(or when not root) every input is then read once just before each command, so all three run
warm from the same memory state. Each time includes the
flush of the command's output to disk (fsync of every file it wrote), since a copy that is
still in dirty pages is not yet on the disk; the times without the flush are printed as well.

Usage: bench_export.py MOECTL [--size_gb 4.5] [--work DIR] [--cache drop|warm] [--formats torch_dist,torch]
                       [--keep]"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

ap = argparse.ArgumentParser()
ap.add_argument("moectl")
ap.add_argument("--size_gb", type=float, default=4.5)
ap.add_argument("--work", default="/tmp/moectl_bench_export")
ap.add_argument("--keep", action="store_true", help="keep the work directory")
ap.add_argument("--formats", default="torch_dist,torch", help="Megatron formats to time, comma-separated")
ap.add_argument("--repeat", type=int, default=3, help="rounds of the three commands; the fastest of each counts")
ap.add_argument("--cache", choices=["drop", "warm"], help="page cache before each command (default: drop when "
                "root can, else warm)")
args = ap.parse_args()
MOECTL = os.path.abspath(args.moectl)
WORK = args.work
HF, MC, BACK, CP = (os.path.join(WORK, d) for d in ("hf", "mcore", "hf_back", "cp_copy"))

# ---- the synthetic model: Qwen3-MoE shapes, layers added until the size is reached
H, HEADS, KV, HD, FE, V = 2048, 16, 4, 128, 768, 32000
E = 32 if args.size_gb >= 1 else 8
if args.size_gb < 0.5:  # ctest's quick size
    H, HEADS, KV, HD, FE, V, E = 512, 8, 2, 64, 256, 8000, 8
BF16 = 2


def layer_tensors(i):
    p = f"model.layers.{i}."
    t = [(p + "input_layernorm.weight", [H]), (p + "self_attn.q_proj.weight", [HEADS * HD, H]),
         (p + "self_attn.k_proj.weight", [KV * HD, H]), (p + "self_attn.v_proj.weight", [KV * HD, H]),
         (p + "self_attn.o_proj.weight", [H, HEADS * HD]), (p + "self_attn.q_norm.weight", [HD]),
         (p + "self_attn.k_norm.weight", [HD]), (p + "post_attention_layernorm.weight", [H]),
         (p + "mlp.gate.weight", [E, H])]
    for e in range(E):
        q = f"{p}mlp.experts.{e}."
        t += [(q + "gate_proj.weight", [FE, H]), (q + "up_proj.weight", [FE, H]), (q + "down_proj.weight", [H, FE])]
    return t


def nbytes(shape):
    n = BF16
    for d in shape:
        n *= d
    return n


per_layer = sum(nbytes(s) for _, s in layer_tensors(0))
outer = [("model.embed_tokens.weight", [V, H]), ("model.norm.weight", [H]), ("lm_head.weight", [V, H])]
L = max(1, round((args.size_gb * 1e9 - sum(nbytes(s) for _, s in outer)) / per_layer))
tensors = [outer[0]] + [t for i in range(L) for t in layer_tensors(i)] + outer[1:]
total = sum(nbytes(s) for _, s in tensors)
largest = max(nbytes(s) for _, s in tensors)

config = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
          "num_hidden_layers": L, "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HD,
          "intermediate_size": 4 * FE, "moe_intermediate_size": FE, "num_experts": E, "num_experts_per_tok": 4,
          "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": V,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
          "tie_word_embeddings": False, "attention_bias": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
          "bos_token_id": 1, "eos_token_id": 2}


def write_checkpoint():
    """Sharded safetensors (1 GB shards + index), written from one 64 MiB random block at moving
    offsets, so every tensor has different bytes without generating 4 GB of random numbers."""
    os.makedirs(HF)
    json.dump(config, open(os.path.join(HF, "config.json"), "w"), indent=2)
    json.dump({"bos_token_id": 1, "eos_token_id": 2}, open(os.path.join(HF, "generation_config.json"), "w"))
    block = os.urandom(64 << 20)
    shards, cur, size = [], [], 0
    for name, shape in tensors:
        if cur and size + nbytes(shape) > 1_000_000_000:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nbytes(shape)
    shards.append(cur)
    weight_map, pos = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nbytes(shape)]}
            off += nbytes(shape)
            weight_map[name] = fname
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(os.path.join(HF, fname), "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for name, shape in shard:
                n = nbytes(shape)
                while n > 0:
                    pos = (pos * 7 + 4096 * 13) % (len(block) - 4096)
                    chunk = block[pos:pos + min(n, len(block) - pos)]
                    f.write(chunk)
                    n -= len(chunk)
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(HF, "model.safetensors.index.json"), "w"), indent=2)


def files_under(d):
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]


def du(d):
    return sum(os.path.getsize(f) for f in files_under(d))


can_drop = os.access("/proc/sys/vm/drop_caches", os.W_OK)
warm = args.cache == "warm" or not can_drop
if args.cache == "drop" and not can_drop:
    sys.exit("--cache drop: /proc/sys/vm/drop_caches is not writable here (run as root, or use --cache warm)")


def prepare_cache(inputs):
    os.sync()  # no writeback of earlier output competes with the command
    if can_drop:  # every command starts from the same memory state
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    if warm:  # then read every input byte once
        for f in files_under(inputs):
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass


def timed(cmd, inputs, out):
    """(seconds without the flush, seconds with it, peak RSS bytes) of one command."""
    shutil.rmtree(out, ignore_errors=True)
    prepare_cache(inputs)
    rss_file = os.path.join(WORK, "rss.txt")
    t0 = time.perf_counter()
    # /usr/bin/time reads the command's own peak RSS through wait4 (a child of this Python
    # process would also be charged the pages it shared with Python before exec).
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    t1 = time.perf_counter()
    if p.returncode != 0:
        sys.exit(f"FAIL {' '.join(cmd)}: {p.stderr}")
    rss = int(open(rss_file).read().split()[-1]) * 1024
    for f in files_under(out):  # flush what the command wrote (its files only)
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0, rss


def tensor_crcs(d):
    """name -> (dtype, shape, crc32 of the bytes) over an HF dir's safetensors files."""
    out = {}
    for f in sorted(files_under(d)):
        if f.endswith(".safetensors"):
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                h = json.loads(fh.read(n))
                for k, v in sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
                    if k == "__metadata__":
                        continue
                    b, e = v["data_offsets"]
                    fh.seek(8 + n + b)
                    out[k] = (v["dtype"], v["shape"], zlib.crc32(fh.read(e - b)))
    return out


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
t = time.perf_counter()
write_checkpoint()
print(f"synthetic qwen3_moe: {L} layers x {E} experts, {len(tensors)} tensors, {total / 1e9:.2f} GB bf16 in "
      f"{len(files_under(HF)) - 3} shards (written in {time.perf_counter() - t:.1f} s); largest tensor "
      f"{largest / 2**20:.1f} MiB")
print(f"page cache: {'dropped' if can_drop else 'kept'} before each command"
      f"{', then its inputs read once (warm)' if warm else ' (inputs read from disk)'}"
      f"; times include fsync of the outputs; fastest of {max(1, args.repeat)} rounds")

# Rounds of cp and each format's to_mcore and to_hf in turn (a shared machine's load comes and
# goes); the fastest run of each is compared, its peak RSS the largest seen.
formats = [f for f in args.formats.split(",") if f]
if not formats or any(f not in ("torch_dist", "torch") for f in formats):
    sys.exit(f"--formats {args.formats}: give torch_dist, torch or both, comma-separated")
runs = {"cp": []}
nbytes_written = {}
for rnd in range(max(1, args.repeat)):
    runs["cp"].append(timed(["cp", "-r", HF, CP], HF, CP))
    nbytes_written["cp"] = du(CP)
    shutil.rmtree(CP)
    # Alternate which format goes first: the disk is slower for a while after gigabytes were
    # written or freed, and that should not always fall on the same format.
    for fmt in formats if rnd % 2 == 0 else formats[::-1]:
        runs.setdefault(f"to_mcore {fmt}", []).append(
            timed([MOECTL, "export", "--model", HF, "--to_mcore", "true", "--ckpt_format", fmt, "--output_dir", MC], HF,
                  MC))
        nbytes_written[f"to_mcore {fmt}"] = du(MC)
        runs.setdefault(f"to_hf {fmt}", []).append(
            timed([MOECTL, "export", "--mcore_model", MC, "--to_hf", "true", "--output_dir", BACK, "--max_shard_size",
                   "1GB"], MC, BACK))
        nbytes_written[f"to_hf {fmt}"] = du(BACK)
        a, b = tensor_crcs(HF), tensor_crcs(BACK)
        if a != b:
            diff = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
            sys.exit(f"FAIL round trip through {fmt} changed {len(diff)} tensors, e.g. {sorted(diff)[:3]}")
print("seconds with flush, per round: " + "; ".join(f"{k} {' '.join(f'{r[1]:.2f}' for r in v)}" for k, v in runs.items()))
best = {k: (min(r[0] for r in v), min(r[1] for r in v), max(r[2] for r in v)) for k, v in runs.items()}
cp = best["cp"]

budget = 2 * largest + (256 << 20)
print(f"{'':20}{'GB written':>11}{'s':>8}{'GB/s':>7}{'s (no flush)':>14}{'GB/s':>7}{'peak RSS MiB':>14}")
for name, (t_nf, t_f, rss) in best.items():
    n = nbytes_written[name]
    print(f"{name:20}{n / 1e9:11.2f}{t_f:8.2f}{n / t_f / 1e9:7.2f}{t_nf:14.2f}{n / t_nf / 1e9:7.2f}{rss / 2**20:14.1f}")


def ratio(name, i):
    return (nbytes_written[name] / best[name][i]) / (nbytes_written["cp"] / cp[i])


for name in best:
    if name != "cp":
        print(f"{name + '/cp':23} = {ratio(name, 1):.2f}   (without the flush: {ratio(name, 0):.2f}; target >= 0.70)")
for name in best:
    if name != "cp":
        print(f"{name} peak RSS / (2 x largest tensor + 256 MiB) = {best[name][2] / budget:.2f}   (target <= 1)")
print("round trip: every tensor bit-identical, through every format")
if not args.keep:
    shutil.rmtree(WORK, ignore_errors=True)
