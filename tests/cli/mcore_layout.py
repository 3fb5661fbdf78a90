"""Megatron's sharded (torch_dist) layout of an HF model, computed in the tests from the HF
tensors independently of moectl (reference §2.3, §3, §4), and the raw tensors of a safetensors
directory for bit-exact comparisons. Shared by tests/cli/torch_dist_test.py and
tests/device/dcp_interop.py."""
import json
import os

import torch

import hf_model


def raw_tensors(d):
    """name -> (dtype, shape, bytes) of every tensor in an HF dir's safetensors files."""
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            raw = open(os.path.join(d, fn), "rb").read()
            n = int.from_bytes(raw[:8], "little")
            h = json.loads(raw[8:8 + n])
            for k, v in h.items():
                if k != "__metadata__":
                    b, e = v["data_offsets"]
                    out[k] = (v["dtype"], v["shape"], raw[8 + n + b:8 + n + e])
    return out


def expected(cfg, t, dtype):
    """fqn -> global tensor as Megatron's torch_dist stores this HF model (reference §2.3, §3, §4),
    computed from the HF tensors here, independently of moectl."""
    L, H, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    nh, ng, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], hf_model.head_dim(cfg)
    mix = cfg["model_type"] == "mixtral"
    Vp = -(-V // 128) * 128
    per_layer = []  # one dict per layer: suffix -> tensor (experts as [E, ...])
    for i in range(L):
        p = f"model.layers.{i}."
        m = {}
        q, k, v = (t[p + f"self_attn.{x}_proj.weight"] for x in "qkv")
        r = nh // ng
        m["self_attention.linear_qkv.weight"] = torch.cat(
            [q.view(ng, r * d, H), k.view(ng, d, H), v.view(ng, d, H)], 1).reshape(-1, H)
        if hf_model.qkv_bias(cfg):
            qb, kb, vb = (t[p + f"self_attn.{x}_proj.bias"] for x in "qkv")
            m["self_attention.linear_qkv.bias"] = torch.cat([qb.view(ng, r * d), kb.view(ng, d), vb.view(ng, d)],
                                                            1).reshape(-1)
        m["self_attention.linear_qkv.layer_norm_weight"] = t[p + "input_layernorm.weight"]
        m["self_attention.linear_proj.weight"] = t[p + "self_attn.o_proj.weight"]
        if p + "self_attn.q_norm.weight" in t:
            m["self_attention.q_layernorm.weight"] = t[p + "self_attn.q_norm.weight"]
            m["self_attention.k_layernorm.weight"] = t[p + "self_attn.k_norm.weight"]
        if hf_model.sparse_layer(cfg, i):
            blk = p + ("block_sparse_moe." if mix else "mlp.")
            names = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
            E = hf_model.n_experts(cfg)
            m["pre_mlp_layernorm.weight"] = t[p + "post_attention_layernorm.weight"]
            m["mlp.router.weight"] = t[blk + "gate.weight"]
            m["mlp.experts.experts.linear_fc1.weight"] = torch.stack(
                [torch.cat([t[blk + f"experts.{e}.{names[0]}.weight"], t[blk + f"experts.{e}.{names[1]}.weight"]])
                 for e in range(E)])
            m["mlp.experts.experts.linear_fc2.weight"] = torch.stack(
                [t[blk + f"experts.{e}.{names[2]}.weight"] for e in range(E)])
            if p + "mlp.shared_expert_gate.weight" in t:
                s = p + "mlp.shared_expert."
                m["mlp.shared_experts.linear_fc1.weight"] = torch.cat([t[s + "gate_proj.weight"],
                                                                      t[s + "up_proj.weight"]])
                m["mlp.shared_experts.linear_fc2.weight"] = t[s + "down_proj.weight"]
                m["mlp.shared_experts.gate_weight"] = t[p + "mlp.shared_expert_gate.weight"]
        else:
            m["mlp.linear_fc1.layer_norm_weight"] = t[p + "post_attention_layernorm.weight"]
            m["mlp.linear_fc1.weight"] = torch.cat([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]])
            m["mlp.linear_fc2.weight"] = t[p + "mlp.down_proj.weight"]
        per_layer.append(m)
    out = {}
    emb = torch.zeros(Vp, H)
    emb[:V] = t["model.embed_tokens.weight"]
    out["embedding.word_embeddings.weight"] = emb
    out["decoder.final_layernorm.weight"] = t["model.norm.weight"]
    if not cfg.get("tie_word_embeddings", False):
        head = torch.zeros(Vp, H)
        head[:V] = t["lm_head.weight"]
        out["output_layer.weight"] = head
    kinds = {hf_model.sparse_layer(cfg, i) for i in range(L)}
    if len(kinds) == 1:  # homogeneous: the layer axis stacked
        for key in per_layer[0]:
            out["decoder.layers." + key] = torch.stack([m[key] for m in per_layer])
    else:
        for i, m in enumerate(per_layer):
            for key, v in m.items():
                out[f"decoder.layers.{i}." + key] = v
    return {k: v.to(getattr(torch, dtype)) for k, v in out.items()}, len(kinds) == 1
