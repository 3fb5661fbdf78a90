#!/usr/bin/python3
"""Training parity: one forward/backward of moectl's engine against PyTorch autograd on the
independent reference (hf_model.py), for a family, on a packed micro-batch of several
sequences (attention within each, positions restarting; the router sees the whole
micro-batch, as Megatron's does), with some labels ignored. Checks the LM loss, the auxiliary losses and every parameter's gradient (relative L2
error below 1e-4 in fp32; tensors whose reference gradient is exactly zero must be zero).

  train_parity.py --tool PATH --family NAME --workdir DIR [--aux_loss_coeff X]
                  [--z_loss_coeff X] [--load_balancing_type aux_loss|seq_aux_loss]
                  [--capacity_factor X] [--recompute none|selective|full]
"""
import argparse
import json
import math
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_model  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
REL_TOL = 1e-4


class Recording(hf_model.Reference):
    """The reference with its router exposed: records each MoE layer's full softmax, top-k
    choice and logits, and applies expert-capacity dropping (Megatron's "probs" policy) when asked."""

    def __init__(self, model_dir, capacity_factor=0.0):
        super().__init__(model_dir)
        self.capacity_factor = capacity_factor
        self.records = {}  # layer prefix -> (probs [T, E], sel [T, K] with -1 = dropped, logits [T, E])

    def forward_packed(self, ids, cu):
        """Logits [T, V] of packed sequences: attention within each sequence (positions
        restarting), everything else, the router included, over the whole micro-batch."""
        c, t = self.cfg, self.t
        eps = c["rms_norm_eps"]
        x = t["model.embed_tokens.weight"][torch.tensor(ids)]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = hf_model.rms(x, t[p + "input_layernorm.weight"], eps)
            parts = []
            for s in range(len(cu) - 1):
                cos, sin = self.rope(cu[s + 1] - cu[s])
                parts.append(self.attention(h[cu[s]:cu[s + 1]], p, cos, sin))
            x = x + torch.cat(parts)
            h = hf_model.rms(x, t[p + "post_attention_layernorm.weight"], eps)
            x = x + (self.moe(h, p) if hf_model.sparse_layer(c, i) else
                     hf_model.mlp(h, t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"],
                                  t[p + "mlp.down_proj.weight"]))
        x = hf_model.rms(x, t["model.norm.weight"], eps)
        head = t["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else t["lm_head.weight"]
        return x @ head.T

    def route(self, h, p):
        c, t = self.cfg, self.t
        mix = c["model_type"] == "mixtral"
        blk = p + ("block_sparse_moe." if mix else "mlp.")
        logits = h @ t[blk + "gate.weight"].T
        probs = torch.softmax(logits, -1)
        K = c["num_experts_per_tok"]
        wts, sel = torch.topk(probs, K, -1)
        if mix or c.get("norm_topk_prob", False):
            wts = wts / wts.sum(-1, keepdim=True)
        kept = torch.ones_like(wts, dtype=torch.bool)
        if self.capacity_factor > 0:
            E = probs.shape[1]
            cap = math.ceil(h.shape[0] * K / E * self.capacity_factor)
            for e in range(E):
                idx = [(i, j) for i in range(sel.shape[0]) for j in range(K) if int(sel[i, j]) == e]
                idx.sort(key=lambda ij: -float(wts[ij]))  # stable: ties keep token order
                for ij in idx[cap:]:
                    kept[ij] = False
            wts = torch.where(kept, wts, torch.zeros_like(wts))
        self.records[p] = (probs, torch.where(kept, sel, torch.full_like(sel, -1)), logits)
        return wts, sel


def aux_losses(ref, kind, coeff, K, E, cu):
    """Megatron's switch aux loss over the micro-batch, or its per-sequence variant averaged over
    sequences; summed over layers."""
    aux = torch.zeros(())
    for probs, sel, _ in ref.records.values():
        spans = [(0, probs.shape[0])] if kind == "aux_loss" else list(zip(cu[:-1], cu[1:]))
        for b, e in spans:
            L = e - b
            load = torch.stack([(sel[b:e] == x).sum() for x in range(E)]).float()
            if kind == "aux_loss":
                aux = aux + coeff * E / (K * L * L) * (probs[b:e].sum(0) * load).sum()
            else:
                aux = aux + coeff * (load * E / (L * K) * probs[b:e].sum(0) / L).sum() / len(spans)
    return aux


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--family", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--aux_loss_coeff", type=float, default=0.0)
    ap.add_argument("--z_loss_coeff", type=float, default=0.0)
    ap.add_argument("--load_balancing_type", default="aux_loss")
    ap.add_argument("--capacity_factor", type=float, default=0.0)
    ap.add_argument("--recompute", default="selective")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    model_dir = os.path.join(a.workdir, "model")
    cfg = hf_model.write_random_model(os.path.join(ROOT, "configs", "tiny", a.family), model_dir, "float32",
                                      seed=a.seed)
    V = cfg["vocab_size"]
    g = torch.Generator().manual_seed(a.seed)
    lens = [9, 14, 5]
    tokens = torch.randint(0, V, (sum(lens),), generator=g).tolist()
    labels = torch.randint(0, V, (sum(lens),), generator=g).tolist()
    for i in range(0, len(labels), 3):
        labels[i] = -100  # ignored positions (prompt tokens in sft)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)

    out_dir = os.path.join(a.workdir, "grads")
    cmd = [a.tool, "--model", model_dir, "--tokens", ",".join(map(str, tokens)), "--labels",
           ",".join(map(str, labels)), "--cu", ",".join(map(str, cu)), "--out", out_dir,
           "--aux_loss_coeff", str(a.aux_loss_coeff), "--z_loss_coeff", str(a.z_loss_coeff),
           "--load_balancing_type", a.load_balancing_type, "--capacity_factor", str(a.capacity_factor),
           "--recompute", a.recompute]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr)
        sys.exit(f"tool failed with exit {res.returncode}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    grads = hf_model.load_safetensors_dir(out_dir)

    ref = Recording(model_dir, a.capacity_factor)
    for v in ref.t.values():
        v.requires_grad_(True)
    lab = torch.tensor(labels)
    lm = torch.nn.functional.cross_entropy(ref.forward_packed(tokens, cu), lab, ignore_index=-100)
    moe = hf_model.is_moe(cfg)
    E, K = (hf_model.n_experts(cfg), cfg["num_experts_per_tok"]) if moe else (0, 0)
    aux = torch.zeros(())
    z = torch.zeros(())
    if moe and a.aux_loss_coeff > 0:
        aux = aux_losses(ref, a.load_balancing_type, a.aux_loss_coeff, K, E, cu)
    if moe and a.z_loss_coeff > 0:  # coeff · mean over the micro-batch of logsumexp(logits)², per layer
        for _, _, logits in ref.records.values():
            z = z + a.z_loss_coeff * logits.logsumexp(-1).pow(2).mean()
    objective = lm + aux + z
    objective.backward()

    failures = []
    def close(name, x, y, tol):
        if abs(x - y) > tol * max(1.0, abs(y)):
            failures.append(f"{name}: moectl {x:.8g} vs reference {y:.8g}")
    close("lm_loss", got["lm_loss"], float(lm), 1e-5)
    close("aux_loss", got["aux_loss"], float(aux), 1e-5)
    close("z_loss", got["z_loss"], float(z), 1e-5)

    worst = 0.0
    for name, t in ref.t.items():
        want = t.grad if t.grad is not None else torch.zeros_like(t)
        if name not in grads:
            failures.append(f"{name}: no gradient from moectl")
            continue
        have = grads[name]
        if have.shape != want.shape:
            failures.append(f"{name}: shape {list(have.shape)} vs {list(want.shape)}")
            continue
        denom = float(want.norm())
        err = float((have - want).norm()) / denom if denom > 0 else float(have.norm())
        worst = max(worst, err)
        if err > REL_TOL:
            failures.append(f"{name}: relative L2 error {err:.3g} (|ref| {denom:.3g})")
    print(f"{a.family}: lm_loss {got['lm_loss']:.6f} (ref {float(lm):.6f}), aux {got['aux_loss']:.6g}, "
          f"z {got['z_loss']:.6g}, {len(ref.t)} gradients, worst relative L2 error {worst:.3g}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
