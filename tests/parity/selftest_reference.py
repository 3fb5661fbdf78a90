#!/usr/bin/python3
"""Self-consistency of the PyTorch reference in hf_model.py, so that the parity tests compare the
engine against something that is right on its own: hand-computed RoPE frequencies, MoE blocks
against their dense equivalents and against a second formulation, attention against a per-query
loop, causality, the safetensors files we write, the HF tensor names of each family, and that the
1e-4 parity tolerance separates plausible engine bugs from rounding. Exit code 0/1.

  selftest_reference.py
"""
import copy
import json
import math
import os
import struct
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_model as hm  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "qwen2", "qwen3", "llama"]
PROMPT = [5, 17, 3, 42, 99, 260, 7, 311, 128, 64, 450, 23]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def config(family):
    return json.load(open(os.path.join(ROOT, "configs", "tiny", family, "config.json")))


def model(family, seed=1):
    cfg = config(family)
    return hm.Reference(cfg=cfg, tensors=hm.random_tensors(cfg, seed))

# ---------------------------------------------------------------------------------------------


def test_configs():
    for f in FAMILIES:
        c = config(f)
        need = ["architectures", "model_type", "torch_dtype", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta",
                "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id"]
        check(all(k in c for k in need) and c["model_type"] == f and c["hidden_size"] == 64 and
              c["num_attention_heads"] == 4 and c["num_key_value_heads"] == 2 and c["vocab_size"] == 512,
              f"{f}: config.json has the HF fields and the tiny shape")
        g = json.load(open(os.path.join(ROOT, "configs", "tiny", f, "generation_config.json")))
        check(0 <= g["bos_token_id"] < c["vocab_size"] and 0 <= g["eos_token_id"] < c["vocab_size"],
              f"{f}: generation_config.json bos/eos within vocab")
    check(hm.head_dim(config("qwen3")) == 32 != 64 // 4 and hm.head_dim(config("qwen3_moe")) == 32,
          "qwen3/qwen3_moe use an explicit head_dim != hidden/heads")
    q2m = config("qwen2_moe")
    check([hm.sparse_layer(q2m, i) for i in range(3)] == [True, False, True], "qwen2_moe: layer 1 is dense (mlp_only_layers)")
    c = dict(q2m, mlp_only_layers=[], decoder_sparse_step=2)
    check([hm.sparse_layer(c, i) for i in range(4)] == [False, True, False, True], "decoder_sparse_step 2: layers 1, 3 sparse")
    yarn = config("qwen3")["rope_scaling"]
    check(config("qwen3")["max_position_embeddings"] == yarn["factor"] * yarn["original_max_position_embeddings"],
          "qwen3 yarn: max_position_embeddings = factor * original (both transformers conventions agree)")


def test_rope_inv_freq():
    # llama3, head_dim 16, theta 1e4, factor 8, low 1, high 4, original 64: wavelengths below 16 are
    # kept, above 64 divided by 8, in between interpolated with s = (64 / wavelength - 1) / 3.
    c = config("llama")
    inv, scale = hm.rope_inv_freq(c)
    exp = []
    for i in range(8):
        f = 10000.0 ** (-2 * i / 16)
        wl = 2 * math.pi / f
        if wl < 16:
            exp.append(f)
        elif wl > 64:
            exp.append(f / 8)
        else:
            s = (64 / wl - 1) / 3
            exp.append((1 - s) * f / 8 + s * f)
    check(scale == 1.0 and torch.allclose(inv.double(), torch.tensor(exp, dtype=torch.float64), rtol=1e-6, atol=0),
          f"llama3 inv_freq matches hand computation (i=1: {inv[1]:.6f} vs {exp[1]:.6f}, medium band)")
    check(abs(float(inv[0]) - 1.0) < 1e-7 and abs(float(inv[7]) - 10000.0 ** (-14 / 16) / 8) < 1e-9,
          "llama3: i=0 unchanged (high frequency), i=7 divided by 8 (low frequency)")
    # yarn, head_dim 32, theta 1e6, factor 4, original 64: correction dims
    #   low  = floor(32 ln(64 / (32 * 2pi)) / (2 ln 1e6)) = floor(-1.33) -> clamped to 0
    #   high = ceil (32 ln(64 / ( 1 * 2pi)) / (2 ln 1e6)) = ceil(2.69)  = 3
    # ramp(i) = clamp(i / 3, 0, 1); inv = extrapolation * (1 - ramp) + interpolation * ramp.
    inv, scale = hm.rope_inv_freq(config("qwen3"))
    exp = []
    for i in range(16):
        base = 1e6 ** (-2 * i / 32)
        r = min(max(i / 3, 0.0), 1.0)
        exp.append(base * (1 - r) + base / 4 * r)
    check(abs(scale - (0.1 * math.log(4) + 1)) < 1e-12, f"yarn attention factor 0.1 ln 4 + 1 = {scale:.6f}")
    check(torch.allclose(inv.double(), torch.tensor(exp, dtype=torch.float64), rtol=1e-6, atol=0),
          f"yarn inv_freq matches hand computation (i=1: {inv[1]:.6e} = 2/3 extrapolated + 1/3 interpolated)")
    inv, scale = hm.rope_inv_freq(config("mixtral"))
    exp = torch.tensor([1e6 ** (-2 * i / 16) / 2 for i in range(8)], dtype=torch.float64)
    check(scale == 1.0 and torch.allclose(inv.double(), exp, rtol=1e-6, atol=0), "linear inv_freq = default / 2")
    inv, _ = hm.rope_inv_freq(config("qwen2"))
    exp = torch.tensor([1e4 ** (-2 * i / 16) for i in range(8)], dtype=torch.float64)
    check(torch.allclose(inv.double(), exp, rtol=1e-6, atol=0), "default inv_freq = theta^(-2i/d)")


def test_rope_rotation():
    # rotate_half RoPE = rotating the pairs (x_i, x_{i+d/2}) by pos * inv_freq_i (complex product),
    # and <rope(q, m), rope(k, n)> depends on m - n only (times scale^2 for yarn).
    for f in ("llama", "qwen3"):
        r = model(f)
        d = hm.head_dim(r.cfg)
        cos, sin = r.rope(20)
        inv, scale = hm.rope_inv_freq(r.cfg)
        g = torch.Generator().manual_seed(5)
        q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)

        def rot(x, m):
            return x * cos[m] + hm.rotate_half(x) * sin[m]
        z = torch.complex(q[:d // 2].double(), q[d // 2:].double()) * torch.polar(
            torch.full((d // 2,), scale, dtype=torch.float64), 7 * inv.double())
        check(torch.allclose(rot(q, 7).double(), torch.cat((z.real, z.imag)), atol=1e-5),
              f"{f}: rotate_half RoPE equals complex rotation of (x_i, x_i+d/2)")
        a, b = float(rot(q, 9) @ rot(k, 4)), float(rot(q, 15) @ rot(k, 10))
        check(abs(a - b) < 1e-4 * max(1.0, abs(a)), f"{f}: RoPE scores depend on relative position only")


def test_attention_loop():
    # the batched attention against a per-query, per-head loop with explicit GQA head mapping
    for f in ("qwen2", "qwen3", "llama"):
        r = model(f)
        c, t = r.cfg, r.t
        T, H, d = 9, c["hidden_size"], hm.head_dim(c)
        nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
        g = torch.Generator().manual_seed(11)
        h = torch.randn(T, H, generator=g)
        p = "model.layers.1."
        cos, sin = r.rope(T)
        got = r.attention(h, p, cos, sin)
        heads = []
        for j in range(nh):
            kvh = j // (nh // nkv)
            wq = t[p + "self_attn.q_proj.weight"][j * d:(j + 1) * d]
            wk = t[p + "self_attn.k_proj.weight"][kvh * d:(kvh + 1) * d]
            wv = t[p + "self_attn.v_proj.weight"][kvh * d:(kvh + 1) * d]
            bq = t[p + "self_attn.q_proj.bias"][j * d:(j + 1) * d] if hm.qkv_bias(c) else 0
            bk = t[p + "self_attn.k_proj.bias"][kvh * d:(kvh + 1) * d] if hm.qkv_bias(c) else 0
            bv = t[p + "self_attn.v_proj.bias"][kvh * d:(kvh + 1) * d] if hm.qkv_bias(c) else 0
            rows = []
            for s in range(T):
                def prep(x, norm_name, pos):
                    if c["model_type"] == "qwen3":
                        x = x / torch.sqrt((x * x).mean() + c["rms_norm_eps"]) * t[p + norm_name]
                    return x * cos[pos] + hm.rotate_half(x) * sin[pos]
                qs = prep(wq @ h[s] + bq, "self_attn.q_norm.weight", s)
                ks = torch.stack([prep(wk @ h[u] + bk, "self_attn.k_norm.weight", u) for u in range(s + 1)])
                vs = torch.stack([wv @ h[u] + bv for u in range(s + 1)])
                w = torch.softmax(ks @ qs / math.sqrt(d), 0)
                rows.append(w @ vs)
            heads.append(torch.stack(rows))
        ref = torch.cat(heads, 1) @ t[p + "self_attn.o_proj.weight"].T
        e = rel(got, ref)
        check(e < 1e-5, f"{f}: attention equals a per-query loop with GQA head j -> kv head j // {nh // nkv} (rel {e:.1e})")


def test_causality():
    for f in FAMILIES:
        r = model(f)
        full = r.forward(PROMPT)
        e1 = rel(r.forward(PROMPT[:5])[-1], full[4])
        changed = PROMPT[:6] + [(x + 1) % 512 for x in PROMPT[6:]]
        e2 = rel(r.forward(changed)[:6], full[:6])
        check(e1 < 1e-5 and e2 < 1e-5, f"{f}: causal (prefix logits {e1:.1e}, future change {e2:.1e})")


def test_moe_two_formulations():
    # the per-token loop against all experts on all tokens, masked by the routing
    for f in ("qwen3_moe", "qwen2_moe", "mixtral"):
        r = model(f)
        c, t = r.cfg, r.t
        mix = f == "mixtral"
        blk = "model.layers.0." + ("block_sparse_moe." if mix else "mlp.")
        g = torch.Generator().manual_seed(3)
        h = torch.randn(10, c["hidden_size"], generator=g)
        E, K = hm.n_experts(c), c["num_experts_per_tok"]
        logits = h @ t[blk + "gate.weight"].T
        dense_w = torch.zeros(10, E)
        topv, topi = torch.softmax(logits, -1).topk(K, -1)
        if mix or c["norm_topk_prob"]:
            topv = topv / topv.sum(-1, keepdim=True)
        dense_w.scatter_(1, topi, topv)
        names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
        outs = torch.stack([hm.mlp(h, *(t[blk + f"experts.{e}.{n}.weight"] for n in names)) for e in range(E)], 1)
        ref = (dense_w[:, :, None] * outs).sum(1)
        if f == "qwen2_moe":
            s = blk + "shared_expert."
            ref = ref + torch.sigmoid(h @ t[blk + "shared_expert_gate.weight"].T) * hm.mlp(
                h, t[s + "gate_proj.weight"], t[s + "up_proj.weight"], t[s + "down_proj.weight"])
        e = rel(r.moe(h, "model.layers.0."), ref)
        check(e < 1e-6, f"{f}: MoE block equals masked all-experts formulation (rel {e:.1e})")
        wsum = r.route(h, "model.layers.0.")[0].sum(-1)
        if mix or c["norm_topk_prob"]:
            check(torch.allclose(wsum, torch.ones(10), atol=1e-6), f"{f}: top-k weights renormalised to 1")
        else:
            check(float(wsum.max()) <= 1 + 1e-6 and float(wsum.mean()) < 0.95,
                  f"{f}: top-k weights not renormalised (norm_topk_prob false; mean sum {float(wsum.mean()):.2f})")


def identical_experts(r, dense_cfg):
    """r's MoE model with every expert equal to one dense MLP, and the equivalent dense model."""
    c, t = r.cfg, dict(r.t)
    mix = c["model_type"] == "mixtral"
    names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
    dense_t = {}
    for k, v in t.items():
        if ".experts." not in k and ".gate.weight" not in k and "shared_expert" not in k:
            dense_t[k] = v
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        blk = p + ("block_sparse_moe." if mix else "mlp.")
        if not hm.sparse_layer(c, i):
            continue
        proto = [t[blk + f"experts.0.{n}.weight"] for n in names]
        for e in range(hm.n_experts(c)):
            for n, w in zip(names, proto):
                t[blk + f"experts.{e}.{n}.weight"] = w.clone()
        for n, w in zip(("gate_proj", "up_proj", "down_proj"), proto):
            dense_t[p + f"mlp.{n}.weight"] = w
    return hm.Reference(cfg=c, tensors=t), hm.Reference(cfg=dense_cfg, tensors=dense_t)


def test_moe_identical_experts():
    # norm_topk_prob true / Mixtral: a MoE model whose experts are all one MLP is the dense model
    c = config("qwen3_moe")
    dense = dict(config("qwen3"), rope_scaling=None, tie_word_embeddings=False, intermediate_size=c["moe_intermediate_size"],
                 rope_theta=c["rope_theta"], num_hidden_layers=c["num_hidden_layers"])
    moe, ref = identical_experts(model("qwen3_moe"), dense)
    e = rel(moe.forward(PROMPT), ref.forward(PROMPT))
    check(e < 1e-5, f"qwen3_moe with identical experts == qwen3 dense (rel {e:.1e})")
    c = config("mixtral")
    dense = dict(config("llama"), rope_scaling=c["rope_scaling"], rope_theta=c["rope_theta"],
                 intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"])
    moe, ref = identical_experts(model("mixtral"), dense)
    e = rel(moe.forward(PROMPT), ref.forward(PROMPT))
    check(e < 1e-5, f"mixtral with identical experts == llama dense (rel {e:.1e})")
    # qwen2_moe (norm_topk_prob false): block = (sum of top-k probs) * MLP + sigmoid(gate) * shared
    r = model("qwen2_moe")
    moe, _ = identical_experts(r, dict(config("qwen2")))
    t, blk = moe.t, "model.layers.2.mlp."
    h = torch.randn(10, 64, generator=torch.Generator().manual_seed(4))
    s = moe.route(h, "model.layers.2.")[0].sum(-1, keepdim=True)
    sh = blk + "shared_expert."
    ref = s * hm.mlp(h, *(t[blk + f"experts.5.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj"))) + \
        torch.sigmoid(h @ t[blk + "shared_expert_gate.weight"].T) * hm.mlp(
            h, t[sh + "gate_proj.weight"], t[sh + "up_proj.weight"], t[sh + "down_proj.weight"])
    e = rel(moe.moe(h, "model.layers.2."), ref)
    check(e < 1e-6, f"qwen2_moe identical experts: (sum top-k p) * MLP + sigmoid gate * shared (rel {e:.1e})")


def test_routing_diversity():
    for f in ("qwen3_moe", "qwen2_moe", "mixtral"):
        r = model(f)
        h = hm.rms(r.t["model.embed_tokens.weight"][torch.tensor(PROMPT)], r.t["model.layers.0.post_attention_layernorm.weight"], 1e-6)
        sel = r.route(h, "model.layers.0.")[1]
        sets = {tuple(sorted(x.tolist())) for x in sel}
        used = set(sel.flatten().tolist())
        check(len(sets) >= 4 and len(used) >= 6, f"{f}: routing varies ({len(sets)} expert pairs, {len(used)}/8 experts used)")


def expected_names(c):
    mt, L = c["model_type"], c["num_hidden_layers"]
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if c["tie_word_embeddings"] else ["lm_head.weight"])
    for i in range(L):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        if mt in ("qwen2", "qwen2_moe"):
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        if mt in ("qwen3", "qwen3_moe"):
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        if mt == "mixtral":
            names += [p + "block_sparse_moe.gate.weight"]
            names += [p + f"block_sparse_moe.experts.{e}.{w}.weight" for e in range(8) for w in ("w1", "w2", "w3")]
        elif mt in ("qwen2_moe", "qwen3_moe") and i not in c["mlp_only_layers"]:
            names += [p + "mlp.gate.weight"]
            names += [p + f"mlp.experts.{e}.{w}_proj.weight" for e in range(8) for w in ("gate", "up", "down")]
            if mt == "qwen2_moe":
                names += [p + f"mlp.shared_expert.{w}_proj.weight" for w in ("gate", "up", "down")]
                names += [p + "mlp.shared_expert_gate.weight"]
        else:
            names += [p + f"mlp.{w}_proj.weight" for w in ("gate", "up", "down")]
    return names


def test_tensor_names():
    for f in FAMILIES:
        c = config(f)
        t = hm.random_tensors(c, 0)
        check(sorted(t) == sorted(expected_names(c)), f"{f}: HF tensor names ({len(t)} tensors)")
    t = hm.random_tensors(config("qwen2_moe"), 0)
    check(list(t["model.layers.0.mlp.gate.weight"].shape) == [8, 64] and
          list(t["model.layers.0.mlp.shared_expert_gate.weight"].shape) == [1, 64] and
          list(t["model.layers.0.mlp.shared_expert.down_proj.weight"].shape) == [64, 96] and
          list(t["model.layers.0.mlp.experts.3.gate_proj.weight"].shape) == [32, 64] and
          list(t["model.layers.1.mlp.up_proj.weight"].shape) == [128, 64] and
          list(t["model.layers.0.self_attn.k_proj.bias"].shape) == [32], "qwen2_moe shapes")
    t = hm.random_tensors(config("qwen3_moe"), 0)
    check(list(t["model.layers.0.self_attn.q_proj.weight"].shape) == [128, 64] and
          list(t["model.layers.0.self_attn.o_proj.weight"].shape) == [64, 128] and
          list(t["model.layers.0.self_attn.k_norm.weight"].shape) == [32], "qwen3_moe shapes (head_dim 32)")
    t = hm.random_tensors(config("mixtral"), 0)
    check(list(t["model.layers.2.block_sparse_moe.experts.7.w1.weight"].shape) == [32, 64] and
          list(t["model.layers.2.block_sparse_moe.experts.7.w2.weight"].shape) == [64, 32], "mixtral w1/w2 shapes")


def test_safetensors():
    with tempfile.TemporaryDirectory() as d:
        for dtype in ("float32", "bfloat16"):
            out = os.path.join(d, dtype)
            cfg = hm.write_random_model(os.path.join(ROOT, "configs", "tiny", "qwen2_moe"), out, dtype, seed=9)
            raw = open(os.path.join(out, "model.safetensors"), "rb").read()
            n = struct.unpack("<Q", raw[:8])[0]
            header = json.loads(raw[8:8 + n])
            ends = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
            contiguous = ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:])) and \
                ends[-1][1] == len(raw) - 8 - n
            want = "BF16" if dtype == "bfloat16" else "F32"
            check(n % 8 == 0 and header["__metadata__"] == {"format": "pt"} and contiguous and
                  all(v["dtype"] == want for k, v in header.items() if k != "__metadata__"),
                  f"safetensors {dtype}: 8-byte header, {want}, contiguous offsets, metadata")
            src = hm.random_tensors(cfg, 9)
            back = hm.load_safetensors_dir(out)
            conv = (lambda x: x.to(torch.bfloat16).float()) if dtype == "bfloat16" else (lambda x: x)
            check(set(back) == set(src) and all(torch.equal(back[k], conv(src[k])) for k in src),
                  f"safetensors {dtype}: round trip exact (bf16 upcast exactly)")
            check(json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == dtype, f"config torch_dtype {dtype}")
        sh = os.path.join(d, "sharded")
        hm.write_random_model(os.path.join(ROOT, "configs", "tiny", "qwen2_moe"), sh, "bfloat16", seed=9, shards=2)
        idx = json.load(open(os.path.join(sh, "model.safetensors.index.json")))
        files = sorted(set(idx["weight_map"].values()))
        back = hm.load_safetensors_dir(sh)
        one = hm.load_safetensors_dir(os.path.join(d, "bfloat16"))
        check(files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] and
              not os.path.exists(os.path.join(sh, "model.safetensors")) and
              idx["metadata"]["total_size"] == sum(v.numel() * 2 for v in one.values()) and
              set(back) == set(one) and all(torch.equal(back[k], one[k]) for k in one),
              "2 shards + index hold the same tensors as one file")


def test_tolerance_discriminates():
    # bugs an engine could plausibly have move the last-position logits far beyond 1e-4
    def variant(f, cfg_change=None, tensor_change=None):
        r = model(f)
        cfg, t = copy.deepcopy(r.cfg), dict(r.t)
        if cfg_change:
            cfg_change(cfg)
        if tensor_change:
            tensor_change(t)
        return rel(hm.Reference(cfg=cfg, tensors=t).forward(PROMPT)[-1], r.forward(PROMPT)[-1])

    def zero_bias(t):
        for k in list(t):
            if k.endswith("_proj.bias"):
                t[k] = torch.zeros_like(t[k])

    def ungated_shared(t):  # sigmoid(0) = 1/2, doubled down_proj: the shared expert without its gate
        for k in list(t):
            if k.endswith("shared_expert_gate.weight"):
                t[k] = torch.zeros_like(t[k])
            if k.endswith("shared_expert.down_proj.weight"):
                t[k] = 2 * t[k]

    cases = [
        ("llama", "llama3 rope scaling ignored", lambda c: c.update(rope_scaling=None), None),
        ("qwen3", "yarn scaling ignored", lambda c: c.update(rope_scaling=None), None),
        ("qwen3", "yarn attention factor ignored", lambda c: c["rope_scaling"].update(attention_factor=1.0), None),
        ("mixtral", "linear rope scaling ignored", lambda c: c.update(rope_scaling=None), None),
        ("qwen2", "rope_theta 1e6 instead of 1e4", lambda c: c.update(rope_theta=1e6), None),
        ("qwen3_moe", "norm_topk_prob ignored", lambda c: c.update(norm_topk_prob=False), None),
        ("qwen2_moe", "top-k weights renormalised", lambda c: c.update(norm_topk_prob=True), None),
        ("qwen2", "q/k/v bias dropped", None, zero_bias),
        ("qwen2_moe", "shared expert gate dropped", None, ungated_shared),
        ("llama", "rms_norm_eps 1e-5 instead of 1e-6", lambda c: c.update(rms_norm_eps=1e-5), None),
    ]
    for f, what, cc, tc in cases:
        e = variant(f, cc, tc)
        check(e > 1e-3, f"{f}: '{what}' changes last logits by rel {e:.1e} (> 10x the 1e-4 tolerance)")


def test_greedy():
    r = model("qwen3_moe")
    out, gaps = r.greedy(PROMPT, 3)
    check(out[0] == int(r.forward(PROMPT)[-1].argmax()) and out[1] == int(r.forward(PROMPT + out[:1])[-1].argmax())
          and all(g >= 0 for g in gaps), "greedy = argmax of the recomputed sequence, gaps >= 0")


def main():
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with torch.no_grad():
        for fn in (test_configs, test_rope_inv_freq, test_rope_rotation, test_attention_loop, test_causality,
                   test_moe_two_formulations, test_moe_identical_experts, test_routing_diversity,
                   test_tensor_names, test_safetensors, test_tolerance_discriminates, test_greedy):
            fn()
    print(f"{len(failures)} failure(s)" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
