#!/usr/bin/env python3
"""Megatron's torch_dist format (issue 14), checked by an independent reader (dcp_reader.py:
stand-in classes for PyTorch's checkpoint metadata, torch.load of each item's bytes):
- HF -> torch_dist for qwen3_moe, qwen2_moe, mixtral and dense qwen2, bf16 and fp32: sharded keys,
  global shapes (layer axis, expert axis, padded vocabulary), chunk coverage and every value
  against the HF weights (fused QKV per group, fc1 = [gate; up]); _extra_state objects; common.pt;
  and back to HF bit-identical;
- torch_dist -> torch (TP2 x EP2 layout too) -> torch_dist equal tensor by tensor;
- a checkpoint whose tensors are cut into uneven chunks over 4 files (as a multi-rank save writes
  it) reads back exactly (export --to_hf, --test_convert_precision, infer);
- bad input: a missing .distcp, a range past the end of a file, chunks with a gap or an overlap,
  a pickle reaching for os.system, an unknown backend in metadata.json: exit 2, one line.
Usage: torch_dist_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import pickle
import shutil
import subprocess
import sys

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))
sys.path.insert(0, os.path.join(SRC, "tests", "cli"))
import dcp_reader  # noqa: E402
import hf_model  # noqa: E402
from mcore_layout import expected, raw_tensors  # noqa: E402

shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
failures = []


def run(args, rc=0):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True)
    assert p.returncode == rc, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-2000:]}"
    return p


def check_torch_dist(mc, hf, dtype):
    cfg = json.load(open(os.path.join(hf, "config.json")))
    t = hf_model.load_safetensors_dir(hf)
    it = os.path.join(mc, "iter_0000001")
    assert json.load(open(os.path.join(it, "metadata.json"))) == {"sharded_backend": "torch_dist",
                                                                 "sharded_backend_version": 1}
    assert not [n for n in os.listdir(it) if n.startswith("mp_rank")], os.listdir(it)
    tens, objs, md = dcp_reader.read_checkpoint(it)
    want, homog = expected(cfg, t, dtype)
    assert sorted(tens) == sorted(want), f"keys differ: {sorted(set(tens) ^ set(want))[:6]}"
    for k in want:
        assert tens[k].shape == want[k].shape, (k, tens[k].shape, want[k].shape)
        assert tens[k].dtype == want[k].dtype, (k, tens[k].dtype)
        assert torch.equal(tens[k], want[k]), f"{k}: values differ from the HF weights"
    L = cfg["num_hidden_layers"]
    E = hf_model.n_experts(cfg) if any(hf_model.sparse_layer(cfg, i) for i in range(L)) else 0
    if homog:
        qkv_extra = [k for k in objs if k.startswith("decoder.layers.self_attention.linear_qkv._extra_state/")]
        assert sorted(qkv_extra) == sorted(f"decoder.layers.self_attention.linear_qkv._extra_state/shard_{i}_{L}"
                                           for i in range(L)), qkv_extra
        if E:
            fc1 = [k for k in objs if k.startswith("decoder.layers.mlp.experts.experts.linear_fc1._extra_state/")]
            assert len(fc1) == L * E and f"decoder.layers.mlp.experts.experts.linear_fc1._extra_state/shard_{L - 1}." \
                f"{E - 1}_{L}.{E}" in fc1, fc1[:3]
        # TENorm modules: q/k layernorm when the family has them, the MoE layer's pre-MLP norm.
        qk = cfg["model_type"] in ("qwen3", "qwen3_moe")
        for mod, want_it in (("self_attention.q_layernorm", qk), ("self_attention.k_layernorm", qk),
                             ("pre_mlp_layernorm", bool(E))):
            have = sorted(k for k in objs if k.startswith(f"decoder.layers.{mod}._extra_state/"))
            assert have == (sorted(f"decoder.layers.{mod}._extra_state/shard_{i}_{L}" for i in range(L))
                            if want_it else []), (mod, have)
    else:
        assert "decoder.layers.0.self_attention.linear_qkv._extra_state/shard_0_1" in objs, sorted(objs)[:4]
    assert "decoder.final_layernorm._extra_state/shard_0_1" in objs, sorted(objs)[-4:]
    for k, v in objs.items():
        assert isinstance(v, list) and len(v) == 1 and v[0].dtype == torch.uint8 and v[0].numel() == 0, (k, v)
    common = torch.load(os.path.join(it, "common.pt"))
    a = common["args"]
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 1
    assert a.num_layers == L and a.hidden_size == cfg["hidden_size"] and a.ckpt_format == "torch_dist"
    assert a.tensor_model_parallel_size == 1 and a.pipeline_model_parallel_size == 1 and a.no_save_optim
    assert a.padded_vocab_size == want["embedding.word_embeddings.weight"].shape[0]
    assert open(os.path.join(mc, "latest_checkpointed_iteration.txt")).read() == "1"
    return len(tens), len(objs)


# --- every family, bf16 and fp32: independent read, values, round trip
for fam, dtype in [("qwen3_moe", "bfloat16"), ("qwen3_moe", "float32"), ("qwen2_moe", "bfloat16"),
                   ("qwen2_moe", "float32"), ("mixtral", "bfloat16"), ("mixtral", "float32"), ("qwen2", "bfloat16"),
                   ("qwen2", "float32")]:
    name = f"{fam}_{dtype}"
    try:
        base = os.path.join(WORK, name)
        hf_model.write_random_model(os.path.join(SRC, "configs", "tiny", fam), base + "_hf", dtype, seed=7)
        threads = ["--thread_count", "3"] if dtype == "float32" else []
        run(["export", "--model", base + "_hf", "--to_mcore", "true", "--output_dir", base + "_td"] + threads)
        files = [f for f in os.listdir(os.path.join(base + "_td", "iter_0000001")) if f.endswith(".distcp")]
        assert len(files) == (3 if threads else 2), files
        n, o = check_torch_dist(base + "_td", base + "_hf", dtype)
        run(["export", "--mcore_model", base + "_td", "--to_hf", "true", "--output_dir", base + "_back"])
        a, b = raw_tensors(base + "_hf"), raw_tensors(base + "_back")
        assert a == b, f"round trip differs in {[k for k in a if a.get(k) != b.get(k)][:3]}"
        print(f"ok   {name}: {n} sharded tensors and {o} objects match the HF weights; HF round trip bit-identical")
    except AssertionError as e:
        failures.append(name)
        print(f"FAIL {name}: {e}")

# --- torch_dist -> torch (one rank, and TP2 x EP2) -> torch_dist, tensor by tensor
for fam in ["qwen3_moe", "mixtral"]:
    name = f"{fam}_formats"
    try:
        base = os.path.join(WORK, f"{fam}_bfloat16")
        td = dcp_reader.read_checkpoint(os.path.join(base + "_td", "iter_0000001"))[0]
        for lay in [[], ["--tensor_model_parallel_size", "2", "--expert_model_parallel_size", "2"]]:
            tag = "tp2ep2" if lay else "single"
            lg, td2 = base + "_lg_" + tag, base + "_td2_" + tag
            run(["export", "--mcore_model", base + "_td", "--to_mcore", "true", "--ckpt_format", "torch",
                 "--output_dir", lg] + lay)
            ranks = sorted(os.listdir(os.path.join(lg, "iter_0000001")))
            assert ranks == (["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"] if lay
                             else ["mp_rank_00"]), ranks
            run(["export", "--mcore_model", lg, "--to_mcore", "true", "--ckpt_format", "torch_dist", "--output_dir",
                 td2])
            back = dcp_reader.read_checkpoint(os.path.join(td2, "iter_0000001"))[0]
            assert sorted(back) == sorted(td), sorted(set(back) ^ set(td))[:4]
            diff = [k for k in td if not torch.equal(td[k], back[k])]
            assert not diff, f"{tag}: {diff[:3]} differ after torch_dist -> torch -> torch_dist"
        print(f"ok   {name}: torch_dist -> torch (1 rank, TP2xEP2) -> torch_dist equal tensor by tensor")
    except AssertionError as e:
        failures.append(name)
        print(f"FAIL {name}: {e}")

# --- a multi-chunk, multi-file checkpoint written by the test (as a 4-rank save would)
multi = os.path.join(WORK, "multi")
try:
    base = os.path.join(WORK, "qwen3_moe_bfloat16")
    src_it = os.path.join(base + "_td", "iter_0000001")
    tens, objs, _ = dcp_reader.read_checkpoint(src_it)

    def split(fqn, shape):
        """Uneven cuts: axis 0 in 3 parts (a layer axis across ranks), the experts' axis 1 in 2
        more; 1-D tensors in 2; so every stacked tensor spans several files."""
        def cuts(n, k):
            b = sorted({0, n} | {max(1, n * j // k - (j % 2)) for j in range(1, k)})
            return [(b[i], b[i + 1] - b[i]) for i in range(len(b) - 1) if b[i + 1] > b[i]]
        out = []
        for o0, s0 in cuts(shape[0], 3 if len(shape) > 1 else 2):
            if len(shape) >= 3 and "experts" in fqn:
                for o1, s1 in cuts(shape[1], 2):
                    out.append(([o0, o1] + [0] * (len(shape) - 2), [s0, s1] + shape[2:]))
            else:
                out.append(([o0] + [0] * (len(shape) - 1), [s0] + shape[1:]))
        return out

    shutil.copytree(base + "_td", multi, ignore=shutil.ignore_patterns("iter_*"))
    it = os.path.join(multi, "iter_0000001")
    dcp_reader.write_checkpoint(it, tens, objs, split, files=4)
    shutil.copy(os.path.join(src_it, "common.pt"), it)
    shutil.copy(os.path.join(src_it, "metadata.json"), it)
    md = dcp_reader.load_metadata(it)
    n_chunks = sum(len(m.chunks) for m in md.state_dict_metadata.values() if hasattr(m, "chunks"))
    assert n_chunks > 2 * len(tens), n_chunks
    run(["export", "--mcore_model", multi, "--to_hf", "true", "--output_dir", multi + "_hf"])
    assert raw_tensors(multi + "_hf") == raw_tensors(base + "_hf"), "multi-chunk checkpoint read back differently"
    p = run(["export", "--mcore_model", multi, "--to_mcore", "true", "--output_dir", multi + "_td",
             "--test_convert_precision", "true"])
    assert "argmax mismatches 0" in p.stdout, p.stdout
    back = dcp_reader.read_checkpoint(os.path.join(multi + "_td", "iter_0000001"))[0]
    assert all(torch.equal(back[k], tens[k]) for k in tens) and sorted(back) == sorted(tens)
    # The engine (infer's loader) reads it directly: the HF dir's logits and greedy tokens.
    tool = os.path.join(os.path.dirname(MOECTL), "..", "..", "tests", "parity", "moe_forward_dump")
    outs = [json.loads(subprocess.run([tool, "--model", d, "--ids", "1,5,9,33,2", "--greedy", "4"], capture_output=True,
                                      text=True, check=True).stdout) for d in (base + "_hf", multi)]
    assert outs[0] == outs[1], "logits from the multi-chunk torch_dist dir differ from the HF dir"
    print(f"ok   {n_chunks} chunks over 4 files: to_hf bit-identical, re-export equal, engine logits identical")
except (AssertionError, subprocess.CalledProcessError) as e:
    failures.append("multi-chunk")
    print(f"FAIL multi-chunk: {e}")

# --- bad input: one line, exit 2, nothing written
try:
    it = lambda d: os.path.join(d, "iter_0000001")

    def broken(tag, mutate, needle):
        d = os.path.join(WORK, "broken_" + tag)
        shutil.copytree(multi, d)
        mutate(d)
        for args in (["export", "--mcore_model", d, "--to_hf", "true", "--output_dir", d + "_out"],
                     ["export", "--mcore_model", d, "--to_mcore", "true", "--output_dir", d + "_out"]):
            p = run(args, rc=2)
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0], (tag, args[0], p.stderr)
        assert not os.path.exists(d + "_out"), f"{tag}: output left behind"

    def edit_metadata(d, fn):
        md = dcp_reader.load_metadata(it(d))
        fn(md)
        with open(os.path.join(it(d), ".metadata"), "wb") as f:
            pickle.dump(md, f)

    broken("missing_file", lambda d: os.remove(os.path.join(it(d), "__2_0.distcp")), "__2_0.distcp")
    broken("truncated", lambda d: open(os.path.join(it(d), "__1_0.distcp"), "r+b").truncate(
        os.path.getsize(os.path.join(it(d), "__1_0.distcp")) // 2), "__1_0.distcp")
    key = "decoder.layers.mlp.experts.experts.linear_fc1.weight"

    def gap(md):
        md.state_dict_metadata[key].chunks.pop(1)

    def overlap(md):  # a chunk moved one layer down: it overlaps its neighbour and leaves a gap
        chunks = md.state_dict_metadata[key].chunks
        j = next(i for i, c in enumerate(chunks) if c.offsets[0] > 0)
        c = chunks[j]
        o = list(c.offsets)
        o[0] -= 1
        chunks[j] = dcp_reader.ChunkStorageMetadata(torch.Size(o), c.sizes)
        info = [v for k, v in md.storage_data.items() if k.fqn == key and tuple(k.offset) == tuple(c.offsets)][0]
        md.storage_data[dcp_reader.MetadataIndex(key, torch.Size(o), j)] = info

    broken("gap", lambda d: edit_metadata(d, gap), "gap")
    broken("overlap", lambda d: edit_metadata(d, overlap), "overlap")
    broken("evil", lambda d: open(os.path.join(it(d), ".metadata"), "wb").write(
        b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touchR."), "os.system")
    broken("backend", lambda d: open(os.path.join(it(d), "metadata.json"), "w").write(
        '{"sharded_backend": "zarr", "sharded_backend_version": 1}'), "zarr")
    p = run(["export", "--model", os.path.join(WORK, "qwen2_bfloat16_hf"), "--to_mcore", "true", "--ckpt_format",
             "zarr", "--output_dir", os.path.join(WORK, "fmt")], rc=2)
    assert "--ckpt_format" in p.stderr and not os.path.exists(os.path.join(WORK, "fmt")), p.stderr
    print("ok   bad input: missing/truncated .distcp, gap, overlap, evil pickle, unknown backend: exit 2, one line")
except AssertionError as e:
    failures.append("bad input")
    print(f"FAIL bad input: {e}")

print("PASS" if not failures else f"{len(failures)} failed")
sys.exit(1 if failures else 0)
