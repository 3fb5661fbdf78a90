#!/usr/bin/env python3
"""`moectl export` round trips in the legacy `torch` format (--ckpt_format torch; torch_dist, the
default, is torch_dist_test.py's): HF -> Megatron (single rank or sharded) -> HF is
bit-identical (same tensor names, dtypes and bytes) for every family, tied and untied, bf16 and
fp32, and across a bf16 -> fp32 -> bf16 dtype change; torch.load reads the Megatron file with
Megatron's keys, padded vocabulary and per-group fused QKV; bad input exits 2 with one line.
Usage: export_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import math
import os
import shutil
import subprocess
import sys

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))
import hf_model  # noqa: E402

sys.path.insert(0, os.path.join(SRC, "tests", "cli"))
from mcore_layout import raw_tensors  # noqa: E402

shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
failures = []


def run(args, rc=0):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True)
    assert p.returncode == rc, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr}"
    return p


def check_rank_contents(base, tp, pp, ep):
    """Rank (tp 1, pp 2, ep 1) holds what Megatron expects: stage-local layer numbers, expert-local
    indices (global expert = ep_rank * local_experts + j), [gate_t; up_t] fc1 slices, proj columns."""
    cfg = json.load(open(os.path.join(base + "_hf", "config.json")))
    t = hf_model.load_safetensors_dir(base + "_hf")
    m = torch.load(os.path.join(base + "_mc", "iter_0000001", "mp_rank_01_002_001", "model_optim_rng.pt"))["model"]
    per_stage = cfg["num_hidden_layers"] // pp
    layers = {int(k.split(".")[2]) for k in m if k.startswith("decoder.layers.")}
    assert layers == set(range(per_stage)), layers
    g = 2 * per_stage  # global layer of local layer 0 on stage 2 (layer 1 of qwen2_moe is dense)
    nle = cfg["num_experts"] // ep
    F = cfg["moe_intermediate_size"] // tp
    for j in range(nle):
        e = 1 * nle + j
        hp = f"model.layers.{g}.mlp.experts.{e}."
        gate, up = t[hp + "gate_proj.weight"], t[hp + "up_proj.weight"]
        want = torch.cat([gate[F:2 * F], up[F:2 * F]]).to(torch.bfloat16)
        got = m[f"decoder.layers.0.mlp.experts.linear_fc1.weight{j}"]
        assert torch.equal(got, want), f"expert {e} fc1 slice"
        assert torch.equal(m[f"decoder.layers.0.mlp.experts.linear_fc2.weight{j}"],
                           t[hp + "down_proj.weight"][:, F:2 * F].to(torch.bfloat16)), f"expert {e} fc2 slice"
    assert f"decoder.layers.0.mlp.experts.linear_fc1.weight{nle}" not in m
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    nh, ng = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    q, k, v = (t[f"model.layers.{g}.self_attn.{x}_proj.weight"] for x in "qkv")
    fused = torch.cat([q.view(ng, nh // ng * hd, -1), k.view(ng, hd, -1), v.view(ng, hd, -1)], 1).reshape(-1, q.shape[1])
    half = fused.shape[0] // tp  # TP rank 1 holds the second half of the query groups, whole
    assert torch.equal(m["decoder.layers.0.self_attention.linear_qkv.weight"], fused[half:].to(torch.bfloat16))
    o = t[f"model.layers.{g}.self_attn.o_proj.weight"]
    cols = o.shape[1] // tp
    assert torch.equal(m["decoder.layers.0.self_attention.linear_proj.weight"], o[:, cols:].to(torch.bfloat16))
    assert "embedding.word_embeddings.weight" not in m and "decoder.final_layernorm.weight" in m  # last stage


def expected_rank_files(tp, pp, ep, etp):
    """Megatron's legacy save (RankGenerator order tp-cp-ep-dp-pp): process i of a stage has TP
    rank i % TP and EP rank (i // ETP) % EP; one file per distinct (tp, ep), over one period."""
    period = tp * etp * ep // math.gcd(tp, etp * ep)
    pairs = sorted({(i % tp, (i // etp) % ep) for i in range(period)})
    out = {}
    for p in range(pp):
        for t, e in pairs:
            out["mp_rank_%02d" % t + ("_%03d" % p if pp > 1 else "") + ("_%03d" % e if ep > 1 else "")] = (t, p, e)
    return out


def check_etp_rank_keys(base, tp, ep, etp):
    """Per rank file, the key set and every shape are Megatron-Core's for qwen2_moe with expert
    weights split over ETP (not TP), dense and shared-expert weights over TP; the expert slices
    are the HF tensors cut by ETP rank tp % ETP."""
    cfg = json.load(open(os.path.join(base + "_hf", "config.json")))
    t = hf_model.load_safetensors_dir(base + "_hf")
    H, F, Fs, E = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"], cfg["num_experts"]
    nh, ng = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    Vp = -(-cfg["vocab_size"] // (128 * tp)) * (128 * tp)
    nle, f = E // ep, F // etp
    files = expected_rank_files(tp, 1, ep, etp)
    got_files = sorted(os.listdir(os.path.join(base + "_mc", "iter_0000001")))
    assert got_files == sorted(files), (got_files, sorted(files))
    for rd, (r, _, e) in files.items():
        m = torch.load(os.path.join(base + "_mc", "iter_0000001", rd, "model_optim_rng.pt"))
        assert m["args"].expert_tensor_parallel_size == etp and m["args"].tensor_model_parallel_size == tp
        shapes = {k: list(v.shape) for k, v in m["model"].items() if isinstance(v, torch.Tensor)}
        want = {"embedding.word_embeddings.weight": [Vp // tp, H], "decoder.final_layernorm.weight": [H]}
        if not cfg.get("tie_word_embeddings", False):
            want["output_layer.weight"] = [Vp // tp, H]
        for l in range(cfg["num_hidden_layers"]):
            p = f"decoder.layers.{l}."
            want[p + "self_attention.linear_qkv.layer_norm_weight"] = [H]
            want[p + "self_attention.linear_qkv.weight"] = [(nh + 2 * ng) * hd // tp, H]
            want[p + "self_attention.linear_qkv.bias"] = [(nh + 2 * ng) * hd // tp]
            want[p + "self_attention.linear_proj.weight"] = [H, nh * hd // tp]
            if l in cfg["mlp_only_layers"]:
                want[p + "mlp.linear_fc1.layer_norm_weight"] = [H]
                want[p + "mlp.linear_fc1.weight"] = [2 * cfg["intermediate_size"] // tp, H]
                want[p + "mlp.linear_fc2.weight"] = [H, cfg["intermediate_size"] // tp]
                continue
            want[p + "pre_mlp_layernorm.weight"] = [H]
            want[p + "mlp.router.weight"] = [E, H]
            want[p + "mlp.shared_experts.linear_fc1.weight"] = [2 * Fs // tp, H]
            want[p + "mlp.shared_experts.linear_fc2.weight"] = [H, Fs // tp]
            want[p + "mlp.shared_experts.gate_weight"] = [1, H]
            for j in range(nle):
                want[p + f"mlp.experts.linear_fc1.weight{j}"] = [2 * f, H]
                want[p + f"mlp.experts.linear_fc2.weight{j}"] = [H, f]
                s = r % etp  # this file's expert tensor-parallel rank
                hp = f"model.layers.{l}.mlp.experts.{e * nle + j}."
                gate, up = t[hp + "gate_proj.weight"], t[hp + "up_proj.weight"]
                assert torch.equal(m["model"][p + f"mlp.experts.linear_fc1.weight{j}"],
                                   torch.cat([gate[s * f:(s + 1) * f], up[s * f:(s + 1) * f]]).to(torch.bfloat16)), rd
                assert torch.equal(m["model"][p + f"mlp.experts.linear_fc2.weight{j}"],
                                   t[hp + "down_proj.weight"][:, s * f:(s + 1) * f].to(torch.bfloat16)), rd
        diff = sorted(set(shapes) ^ set(want)) or [(k, shapes[k], want[k]) for k in want if shapes[k] != want[k]]
        assert not diff, (rd, diff[:4])


def case(family, dtype, via=None, layout=(1, 1, 1), config_dir=None, etp=None):
    tp, pp, ep = layout
    name = f"{family}_{dtype}" + (f"_via_{via}" if via else "") + (f"_tp{tp}pp{pp}ep{ep}" if layout != (1, 1, 1) else "")
    name += f"etp{etp}" if etp else ""
    try:
        base = os.path.join(WORK, name)
        hf_model.write_random_model(config_dir or os.path.join(SRC, "configs", "tiny", family), base + "_hf", dtype, seed=5)
        mid = via or dtype
        run(["export", "--model", base + "_hf", "--to_mcore", "true", "--ckpt_format", "torch", "--torch_dtype", mid,
             "--output_dir", base + "_mc",
             "--tensor_model_parallel_size", str(tp), "--pipeline_model_parallel_size", str(pp),
             "--expert_model_parallel_size", str(ep)] + (["--expert_tensor_parallel_size", str(etp)] if etp else []))
        run(["export", "--mcore_model", base + "_mc", "--to_hf", "true", "--torch_dtype", dtype, "--output_dir",
             base + "_back"])
        a, b = raw_tensors(base + "_hf"), raw_tensors(base + "_back")
        assert sorted(a) == sorted(b), f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"
        diff = [k for k in a if a[k] != b[k]]
        assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
        # What Megatron sees.
        cfg = json.load(open(os.path.join(base + "_hf", "config.json")))
        rank0 = "mp_rank_00" + ("_000" if pp > 1 else "") + ("_000" if ep > 1 else "")
        ck = torch.load(os.path.join(base + "_mc", "iter_0000001", rank0, "model_optim_rng.pt"))
        ranks = sorted(os.listdir(os.path.join(base + "_mc", "iter_0000001")))
        assert ranks == sorted(expected_rank_files(tp, pp, ep, etp or tp)), ranks
        assert json.load(open(os.path.join(base + "_mc", "args.json")))["expert_tensor_parallel_size"] == (etp or tp)
        if layout != (1, 1, 1):
            if layout == (2, 3, 2) and family == "qwen2_moe" and not etp:
                check_rank_contents(base, tp, pp, ep)
            if etp and family == "qwen2_moe" and pp == 1:
                check_etp_rank_keys(base, tp, ep, etp)
            print(f"ok   {name}: {len(a)} HF tensors bit-identical after the round trip through ranks {ranks}")
            return
        assert open(os.path.join(base + "_mc", "latest_checkpointed_iteration.txt")).read() == "1"
        assert ck["iteration"] == 1 and ck["checkpoint_version"] == 3.0
        args, m = ck["args"], ck["model"]
        assert args.tensor_model_parallel_size == tp and args.padded_vocab_size % (128 * tp) == 0
        emb = m["embedding.word_embeddings.weight"]
        assert emb.shape[0] == args.padded_vocab_size and emb.dtype == getattr(torch, mid)
        assert float(emb[cfg["vocab_size"]:].abs().sum()) == 0.0, "padding rows must be zero"
        assert ("output_layer.weight" in m) == (not cfg.get("tie_word_embeddings", False))
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        nh, ng = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        qkv = m["decoder.layers.0.self_attention.linear_qkv.weight"].float()
        t = hf_model.load_safetensors_dir(base + "_hf")
        q, k, v = (t[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
        r = nh // ng
        want = torch.cat([q.view(ng, r * hd, -1), k.view(ng, hd, -1), v.view(ng, hd, -1)], 1).reshape(-1, q.shape[1])
        assert torch.equal(qkv, want.to(getattr(torch, mid)).float()), "QKV not fused per query group"
        assert "decoder.layers.0.self_attention.linear_qkv._extra_state" in m
        print(f"ok   {name}: {len(a)} HF tensors bit-identical after the round trip; {len(m)} Megatron keys")
    except AssertionError as e:
        failures.append(name)
        print(f"FAIL {name}: {e}")


for fam in ["qwen3_moe", "qwen2_moe", "mixtral", "qwen2", "qwen3", "llama"]:
    case(fam, "bfloat16")
case("qwen3_moe", "float32")
case("qwen2_moe", "bfloat16", via="float32")
# Sharded layouts (rank files split by ShardSpec, merged back).
for lay in [(2, 1, 1), (1, 3, 1), (1, 1, 2), (2, 3, 2)]:
    case("qwen2_moe", "bfloat16", layout=lay)
    case("mixtral", "bfloat16", layout=lay)
case("qwen3", "bfloat16", layout=(2, 3, 1))  # tied embeddings across stages
# Expert tensor parallelism other than TP: experts whole (ETP1) while attention splits over TP2.
case("qwen2_moe", "bfloat16", layout=(2, 1, 2), etp=1)
case("mixtral", "bfloat16", layout=(2, 1, 2), etp=1)
case("qwen2_moe", "bfloat16", layout=(2, 1, 4), etp=1)  # files (0,0) (1,1) (0,2) (1,3)
case("qwen2_moe", "bfloat16", layout=(2, 3, 1), etp=1)
# PP2 and TP2xEP2xPP2 literally, on a 4-layer variant of the tiny qwen2_moe config.
four = os.path.join(WORK, "configs", "qwen2_moe4")
os.makedirs(four)
cfg4 = json.load(open(os.path.join(SRC, "configs", "tiny", "qwen2_moe", "config.json")))
cfg4["num_hidden_layers"] = 4
json.dump(cfg4, open(os.path.join(four, "config.json"), "w"))
shutil.copy(os.path.join(SRC, "configs", "tiny", "qwen2_moe", "generation_config.json"), four)
for lay in [(1, 2, 1), (2, 2, 2)]:
    case("qwen2_moe4", "bfloat16", layout=lay, config_dir=four)
case("llama", "float32", layout=(2, 3, 1))

# --test_convert_precision and --max_shard_size.
try:
    src = os.path.join(WORK, "qwen2_moe_bfloat16_tp2pp3ep2")
    p = run(["export", "--model", src + "_hf", "--to_mcore", "true", "--output_dir", os.path.join(WORK, "prec_mc"),
             "--expert_model_parallel_size", "2", "--test_convert_precision", "true"])
    line = [l for l in p.stdout.splitlines() if l.startswith("test_convert_precision")][0]
    assert "argmax mismatches 0" in line and float(line.split("mean_abs_diff ")[1].split(",")[0]) < 1e-4, line
    p = run(["export", "--mcore_model", os.path.join(WORK, "prec_mc"), "--to_hf", "true", "--output_dir",
             os.path.join(WORK, "prec_hf"), "--max_shard_size", "100KB", "--test_convert_precision", "true"])
    back = [l for l in p.stdout.splitlines() if l.startswith("test_convert_precision")][0]
    assert "argmax mismatches 0" in back and float(back.split("mean_abs_diff ")[1].split(",")[0]) < 1e-4, back
    shards = [f for f in os.listdir(os.path.join(WORK, "prec_hf")) if f.endswith(".safetensors")]
    idx = json.load(open(os.path.join(WORK, "prec_hf", "model.safetensors.index.json")))
    assert len(shards) > 1 and set(idx["weight_map"].values()) == set(shards), shards
    assert raw_tensors(os.path.join(WORK, "prec_hf")) == raw_tensors(src + "_hf")
    print(f"ok   --test_convert_precision ({line.split(': ', 1)[1]}); --max_shard_size 100KB -> {len(shards)} shards")
except AssertionError as e:
    failures.append("precision/shards")
    print(f"FAIL precision/shards: {e}")

# A Megatron checkpoint written by torch.save itself, with _extra_state entries as
# TransformerEngine writes them (empty uint8 tensors, BytesIO, None), loads and converts back.
try:
    import io as _io
    src = os.path.join(WORK, "mixtral_bfloat16_tp2pp3ep2")
    tw = os.path.join(WORK, "torch_written_mc")
    shutil.copytree(src + "_mc", tw)
    n_extra = 0
    for root_dir, _, files in os.walk(os.path.join(tw, "iter_0000001")):
        for fn in files:
            path = os.path.join(root_dir, fn)
            ck = torch.load(path)
            for i, k in enumerate([k for k in ck["model"] if k.endswith("_extra_state")]):
                ck["model"][k] = [torch.empty(0, dtype=torch.uint8), _io.BytesIO(b""), None][i % 3]
                n_extra += 1
            torch.save(ck, path)
    run(["export", "--mcore_model", tw, "--to_hf", "true", "--output_dir", tw + "_hf"])
    assert raw_tensors(tw + "_hf") == raw_tensors(src + "_hf"), "torch-written checkpoint converted differently"
    print(f"ok   torch.save-written Megatron checkpoint ({n_extra} _extra_state entries of TE's kinds) converts back exactly")
    # Forward parity: the engine loads the Megatron dir directly and gives the HF dir's logits.
    tool = os.path.join(os.path.dirname(MOECTL), "..", "..", "tests", "parity", "moe_forward_dump")
    assert os.path.exists(tool), f"{tool} not built"
    outs = [json.loads(subprocess.run([tool, "--model", d, "--ids", "1,5,9,33,2", "--greedy", "4"], capture_output=True,
                                      text=True, check=True).stdout) for d in (src + "_hf", src + "_mc")]
    assert outs[0] == outs[1], "logits from the Megatron dir differ from the HF dir"
    print("ok   forward parity: identical logits and greedy tokens from the Megatron dir and the HF dir")
except (AssertionError, subprocess.CalledProcessError) as e:
    failures.append("torch-written / forward parity")
    print(f"FAIL torch-written / forward parity: {e}")

def evil(path):
    """Replace a rank file by a pickle that would run os.system if anything executed it."""
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touchR.")
        z.writestr("archive/version", "3\n")


# Bad input.
try:
    p = run(["export", "--mcore_model", os.path.join(WORK, "nope"), "--to_hf", "true", "--output_dir",
             os.path.join(WORK, "x")], rc=2)
    assert len(p.stderr.strip().splitlines()) == 1 and "latest_checkpointed_iteration.txt" in p.stderr, p.stderr
    p = run(["export", "--model", os.path.join(WORK, "qwen2_bfloat16_hf"), "--to_mcore", "true", "--output_dir",
             os.path.join(WORK, "qwen2_bfloat16_mc")], rc=2)
    assert "--overwrite" in p.stderr, p.stderr
    # swift's --exist_ok (a bare boolean, too) replaces a non-empty directory whole, as --overwrite
    ex = os.path.join(WORK, "exist_ok_mc")
    os.makedirs(ex)
    open(os.path.join(ex, "stale.txt"), "w").write("from an earlier export")
    run(["export", "--model", os.path.join(WORK, "qwen2_bfloat16_hf"), "--to_mcore", "true", "--output_dir", ex,
         "--ckpt_format", "torch", "--exist_ok"])
    assert os.path.isdir(os.path.join(ex, "iter_0000001")) and not os.path.exists(os.path.join(ex, "stale.txt")), \
        os.listdir(ex)
    p = run(["export", "--model", os.path.join(WORK, "qwen2_bfloat16_hf"), "--to_mcore", "true",
             "--tensor_model_parallel_size", "3", "--output_dir", os.path.join(WORK, "tp2")], rc=2)
    assert "--tensor_model_parallel_size 3" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(WORK, "tp2")), "a refused export left a directory"
    p = run(["export", "--model", os.path.join(WORK, "qwen2_moe_bfloat16_hf"), "--to_mcore", "true",
             "--tensor_model_parallel_size", "1", "--expert_tensor_parallel_size", "2", "--output_dir",
             os.path.join(WORK, "etp2")], rc=2)
    assert len(p.stderr.strip().splitlines()) == 1 and "--expert_tensor_parallel_size 2" in p.stderr, p.stderr
    good = os.path.join(WORK, "qwen2_moe_bfloat16_tp2pp1ep1_mc")

    def broken(tag, mutate, needle):
        d = os.path.join(WORK, "broken_" + tag)
        shutil.copytree(good, d)
        mutate(d)
        p = run(["export", "--mcore_model", d, "--to_hf", "true", "--output_dir", d + "_out"], rc=2)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (tag, p.stderr)
        assert not os.path.exists(d + "_out"), f"{tag}: output left behind"

    rank = lambda d: os.path.join(d, "iter_0000001", "mp_rank_01", "model_optim_rng.pt")
    broken("truncated", lambda d: open(rank(d), "r+b").truncate(os.path.getsize(rank(d)) // 2), "mp_rank_01")
    broken("iteration", lambda d: open(os.path.join(d, "latest_checkpointed_iteration.txt"), "w").write("7"),
           "iter_0000007")
    broken("tracker_text", lambda d: open(os.path.join(d, "latest_checkpointed_iteration.txt"), "w").write("soon"),
           "expected an iteration number")
    broken("missing_rank", lambda d: os.remove(rank(d)), "mp_rank_01")

    def wrong_shape(d):
        ck = torch.load(rank(d))
        k = "decoder.layers.0.self_attention.linear_proj.weight"
        ck["model"][k] = ck["model"][k][:, :-1].clone()
        torch.save(ck, rank(d))
    broken("shape", wrong_shape, "linear_proj.weight")

    broken("evil_pickle", lambda d: evil(rank(d)), "os.system")
    print("ok   bad input: one-line errors, exit 2, nothing written")
    # Killed at random points, an export leaves its output either absent or complete.
    import random
    import signal
    import time
    rnd = random.Random(3)
    src = os.path.join(WORK, "mixtral_bfloat16_tp2pp3ep2_hf")
    outcomes = {"absent": 0, "complete": 0}
    for i in range(12):
        out = os.path.join(WORK, f"killed_{i}")
        proc = subprocess.Popen([MOECTL, "export", "--model", src, "--to_mcore", "true", "--output_dir", out,
                                 "--tensor_model_parallel_size", "2", "--expert_model_parallel_size", "2"])
        time.sleep(rnd.uniform(0.0, 0.06))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if os.path.exists(out):
            assert open(os.path.join(out, "latest_checkpointed_iteration.txt")).read() == "1", out
            run(["export", "--mcore_model", out, "--to_hf", "true", "--output_dir", out + "_hf"])
            assert raw_tensors(out + "_hf") == raw_tensors(src), f"{out} looks complete but is not"
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
    print(f"ok   export killed at 12 random points: {outcomes} (never a partial directory under the final name)")
except AssertionError as e:
    failures.append("bad input")
    print(f"FAIL bad input: {e}")
print("PASS" if not failures else f"{len(failures)} failed")
sys.exit(1 if failures else 0)
