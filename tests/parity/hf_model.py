"""Random Hugging Face model directories and an independent PyTorch reference of the HF
modeling code (Llama, Qwen2, Qwen3, Qwen2-MoE, Qwen3-MoE, Mixtral), written from transformers'
modeling_*.py semantics with torch only (no transformers, no safetensors package)."""
import json
import math
import os
import shutil
import struct

import torch

# ---------------------------------------------------------------------------------------------
# safetensors, by hand

def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        if t.dtype == torch.bfloat16:
            raw, dt = t.contiguous().view(torch.int16).numpy().tobytes(), "BF16"
        else:
            raw, dt = t.contiguous().to(torch.float32).numpy().tobytes(), "F32"
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def load_safetensors_file(path):
    out = {}
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = bytearray(raw[8 + n + b:8 + n + e])
        if info["dtype"] == "BF16":
            t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16).float()
        elif info["dtype"] == "F32":
            t = torch.frombuffer(buf, dtype=torch.float32).clone()
        else:
            raise ValueError(f"{name}: unsupported dtype {info['dtype']}")
        out[name] = t.reshape(info["shape"])
    return out


def load_safetensors_dir(d):
    """All tensors of a model dir as float32 (bf16 upcast). With an index, follows its weight_map
    (and checks every tensor is where the index says)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(idx):
        return load_safetensors_file(os.path.join(d, "model.safetensors"))
    wm = json.load(open(idx))["weight_map"]
    out = {}
    for fn in sorted(set(wm.values())):
        part = load_safetensors_file(os.path.join(d, fn))
        for k in part:
            assert wm.get(k) == fn, f"{k} in {fn} but index says {wm.get(k)}"
        out.update(part)
    missing = set(wm) - set(out)
    assert not missing, f"index names missing tensors: {sorted(missing)[:5]}"
    return out

# ---------------------------------------------------------------------------------------------
# config helpers

def is_moe(cfg):
    return cfg["model_type"] in ("qwen2_moe", "qwen3_moe", "mixtral")


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def n_experts(cfg):
    return cfg.get("num_local_experts") if cfg["model_type"] == "mixtral" else cfg.get("num_experts", 0)


def sparse_layer(cfg, i):
    if cfg["model_type"] == "mixtral":
        return True
    if not is_moe(cfg):
        return False
    return (i not in cfg.get("mlp_only_layers", [])) and n_experts(cfg) > 0 and \
        (i + 1) % cfg.get("decoder_sparse_step", 1) == 0


def qkv_bias(cfg):
    return cfg["model_type"] in ("qwen2", "qwen2_moe") or cfg.get("attention_bias", False)

# ---------------------------------------------------------------------------------------------
# random models

def write_random_model(config_dir, out_dir, dtype="float32", seed=0, shards=1):
    """Writes config.json (torch_dtype set to dtype), generation_config.json and random weights in
    HF names to out_dir (replaced if present): model.safetensors, or `shards` files
    model-0000N-of-0000M.safetensors with model.safetensors.index.json. Returns the config dict."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    cfg = json.load(open(os.path.join(config_dir, "config.json")))
    cfg["torch_dtype"] = dtype
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = os.path.join(config_dir, "generation_config.json")
    if os.path.exists(gen):
        shutil.copy(gen, out_dir)
    t = random_tensors(cfg, seed)
    if dtype == "bfloat16":
        t = {k: v.to(torch.bfloat16) for k, v in t.items()}
    save_model_tensors(out_dir, t, shards)
    return cfg


def random_tensors(cfg, seed=0):
    """Random float32 weights for cfg, keyed by the names transformers saves for its family."""
    g = torch.Generator().manual_seed(seed)
    H, V, d = cfg["hidden_size"], cfg["vocab_size"], head_dim(cfg)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    # Projections use std 0.15 (not 0.05): at 0.05 attention is near-uniform and the dense models'
    # greedy continuations collapse to 2 repeated tokens, which would barely exercise the KV cache.
    def w(*shape, std=0.15):
        return torch.randn(*shape, generator=g) * std

    def norm(n):
        return 1 + 0.1 * torch.randn(n, generator=g)

    t = {"model.embed_tokens.weight": w(V, H, std=0.05)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(H)
        t[p + "self_attn.q_proj.weight"] = w(nh * d, H)
        t[p + "self_attn.k_proj.weight"] = w(nkv * d, H)
        t[p + "self_attn.v_proj.weight"] = w(nkv * d, H)
        t[p + "self_attn.o_proj.weight"] = w(H, nh * d)
        if qkv_bias(cfg):
            for x, n in (("q", nh), ("k", nkv), ("v", nkv)):
                t[p + f"self_attn.{x}_proj.bias"] = 0.1 * torch.randn(n * d, generator=g)
        if cfg["model_type"] in ("qwen3", "qwen3_moe"):
            t[p + "self_attn.q_norm.weight"] = norm(d)
            t[p + "self_attn.k_norm.weight"] = norm(d)
        t[p + "post_attention_layernorm.weight"] = norm(H)
        if sparse_layer(cfg, i):
            E = n_experts(cfg)
            if cfg["model_type"] == "mixtral":
                F = cfg["intermediate_size"]
                t[p + "block_sparse_moe.gate.weight"] = w(E, H, std=0.5)
                for e in range(E):
                    q = p + f"block_sparse_moe.experts.{e}."
                    t[q + "w1.weight"], t[q + "w3.weight"], t[q + "w2.weight"] = w(F, H), w(F, H), w(H, F)
            else:
                F = cfg["moe_intermediate_size"]
                t[p + "mlp.gate.weight"] = w(E, H, std=0.5)
                for e in range(E):
                    q = p + f"mlp.experts.{e}."
                    t[q + "gate_proj.weight"], t[q + "up_proj.weight"], t[q + "down_proj.weight"] = \
                        w(F, H), w(F, H), w(H, F)
                Fs = cfg.get("shared_expert_intermediate_size", 0)
                if cfg["model_type"] == "qwen2_moe" and Fs:
                    q = p + "mlp.shared_expert."
                    t[q + "gate_proj.weight"], t[q + "up_proj.weight"], t[q + "down_proj.weight"] = \
                        w(Fs, H), w(Fs, H), w(H, Fs)
                    t[p + "mlp.shared_expert_gate.weight"] = w(1, H, std=0.5)
        else:
            F = cfg["intermediate_size"]
            t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"], t[p + "mlp.down_proj.weight"] = \
                w(F, H), w(F, H), w(H, F)
    t["model.norm.weight"] = norm(H)
    if not cfg.get("tie_word_embeddings", False):
        t["lm_head.weight"] = w(V, H)
    return t


def save_model_tensors(out_dir, t, shards=1):
    names = list(t)
    if shards <= 1:
        save_safetensors(os.path.join(out_dir, "model.safetensors"), t)
    else:
        per = (len(names) + shards - 1) // shards
        wm, total = {}, 0
        for s in range(shards):
            fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: t[k] for k in names[s * per:(s + 1) * per]}
            save_safetensors(os.path.join(out_dir, fn), part)
            for k, v in part.items():
                wm[k] = fn
                total += v.numel() * v.element_size()
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)

# ---------------------------------------------------------------------------------------------
# reference forward (float32)

def rope_inv_freq(cfg):
    d, base = head_dim(cfg), float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    scale = 1.0
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < hi_wl) * ~(wl > lo_wl)
        inv = torch.where(medium, smoothed, out)
    elif kind == "yarn":
        factor = rs["factor"]
        orig = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        scale = rs.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
        beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

        def corr_dim(rot):
            return (d * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))
        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), d - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** (torch.arange(0, d, 2).float() / d)
        extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
        ef = 1 - ramp
        inv = inter * (1 - ef) + extra * ef
    elif kind != "default":
        raise ValueError(kind)
    return inv, scale


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def mlp(x, g, u, dn):
    return torch.nn.functional.silu(x @ g.T) * (x @ u.T) @ dn.T


class Reference:
    """The HF forward in float32: Reference(model_dir), or Reference(cfg=dict, tensors={HF name: tensor})."""

    def __init__(self, model_dir=None, cfg=None, tensors=None):
        if model_dir is not None:
            cfg = json.load(open(os.path.join(model_dir, "config.json")))
            tensors = load_safetensors_dir(model_dir)
        self.cfg = cfg
        self.t = {k: v.float() for k, v in tensors.items()}

    def rope(self, T):
        """cos, sin [T, head_dim] for positions 0..T-1, attention scaling (yarn mscale) folded in."""
        inv, scale = rope_inv_freq(self.cfg)
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), -1)
        return emb.cos() * scale, emb.sin() * scale

    def attention(self, h, p, cos, sin):
        """Self-attention of layer prefix p on normed input h [T, H] -> [T, H] (o_proj applied)."""
        c, t = self.cfg, self.t
        T, d = h.shape[0], head_dim(c)
        nh, nkv, eps = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
        q, k, v = (h @ t[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
        if qkv_bias(c):
            q, k, v = q + t[p + "self_attn.q_proj.bias"], k + t[p + "self_attn.k_proj.bias"], v + t[p + "self_attn.v_proj.bias"]
        q, k, v = q.view(T, nh, d).transpose(0, 1), k.view(T, nkv, d).transpose(0, 1), v.view(T, nkv, d).transpose(0, 1)
        if c["model_type"] in ("qwen3", "qwen3_moe"):  # per-head RMSNorm before RoPE
            q, k = rms(q, t[p + "self_attn.q_norm.weight"], eps), rms(k, t[p + "self_attn.k_norm.weight"], eps)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        # repeat_kv: query head j reads kv head j // (nh // nkv)
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        mask = torch.full((T, T), float("-inf")).triu(1)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + mask, -1) @ v
        return a.transpose(0, 1).reshape(T, nh * d) @ t[p + "self_attn.o_proj.weight"].T

    def forward(self, ids):
        """Logits [T, V] (float32) for a list of token ids."""
        c, t = self.cfg, self.t
        eps = c["rms_norm_eps"]
        x = t["model.embed_tokens.weight"][torch.tensor(ids)]
        cos, sin = self.rope(len(ids))
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = x + self.attention(rms(x, t[p + "input_layernorm.weight"], eps), p, cos, sin)
            h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
            x = x + (self.moe(h, p) if sparse_layer(c, i) else
                     mlp(h, t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"], t[p + "mlp.down_proj.weight"]))
        x = rms(x, t["model.norm.weight"], eps)
        head = t["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else t["lm_head.weight"]
        return x @ head.T

    def route(self, h, p):
        """Router of layer prefix p: softmax over all experts (fp32), top-k, renormalised when
        norm_topk_prob (always for Mixtral). Returns weights [T, K] and expert ids [T, K]."""
        c, t = self.cfg, self.t
        mix = c["model_type"] == "mixtral"
        blk = p + ("block_sparse_moe." if mix else "mlp.")
        probs = torch.softmax((h @ t[blk + "gate.weight"].T).float(), -1)
        wts, sel = torch.topk(probs, c["num_experts_per_tok"], -1)
        if mix or c.get("norm_topk_prob", False):
            wts = wts / wts.sum(-1, keepdim=True)
        return wts, sel

    def moe(self, h, p):
        """Sparse MoE block of layer prefix p on normed input h [T, H]: routed experts, token by
        token, plus Qwen2-MoE's sigmoid-gated shared expert."""
        c, t = self.cfg, self.t
        mix = c["model_type"] == "mixtral"
        blk = p + ("block_sparse_moe." if mix else "mlp.")
        wts, sel = self.route(h, p)
        out = torch.zeros_like(h)
        for tok in range(h.shape[0]):
            for j in range(sel.shape[1]):
                e = int(sel[tok, j])
                q = blk + f"experts.{e}."
                names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
                out[tok] += wts[tok, j] * mlp(h[tok:tok + 1], *(t[q + n + ".weight"] for n in names))[0]
        if c["model_type"] == "qwen2_moe" and c.get("shared_expert_intermediate_size"):
            s = blk + "shared_expert."
            sh = mlp(h, t[s + "gate_proj.weight"], t[s + "up_proj.weight"], t[s + "down_proj.weight"])
            out = out + torch.sigmoid(h @ t[blk + "shared_expert_gate.weight"].T) * sh
        return out

    def greedy(self, ids, n):
        """n greedy tokens after ids, recomputing the whole sequence each step (no cache).
        Returns (tokens, top-2 logit gap at each step)."""
        ids, out, gaps = list(ids), [], []
        for _ in range(n):
            logits = self.forward(ids)[-1]
            top2 = torch.topk(logits, 2).values
            gaps.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            ids.append(nxt)
        return out, gaps
