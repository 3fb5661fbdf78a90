#!/usr/bin/python3
"""The PyTorch-eager peer of bench_train: the same MoE model written the way HF's modeling code
does it (attention with an explicit causal mask, a Python loop over experts with index_add_),
fp32 on the CPU, AdamW(foreach=True). Prints one line: `torch_tokens_per_s X`.

  bench_train_torch.py --hidden 512 --layers 4 --heads 8 --groups 4 --head_dim 64 --experts 64
                       --topk 8 --moe_ffn 256 --vocab 32000 --seq 512 --mbs 4 --steps 3 --threads 2"""
import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(hidden=512, layers=4, heads=8, groups=4, head_dim=64, experts=64, topk=8, moe_ffn=256,
                     vocab=32000, seq=512, mbs=4, steps=3, threads=2).items():
        ap.add_argument("--" + k, type=int, default=v)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    h, nh, ng, d, E, K, F = a.hidden, a.heads, a.groups, a.head_dim, a.experts, a.topk, a.moe_ffn

    def w(*shape):
        return torch.nn.Parameter(torch.randn(*shape) * 0.02)

    P = {"emb": w(a.vocab, h), "head": w(a.vocab, h), "norm": torch.nn.Parameter(torch.ones(h))}
    for l in range(a.layers):
        P.update({f"{l}.in": torch.nn.Parameter(torch.ones(h)), f"{l}.post": torch.nn.Parameter(torch.ones(h)),
                  f"{l}.q": w(nh * d, h), f"{l}.k": w(ng * d, h), f"{l}.v": w(ng * d, h), f"{l}.o": w(h, nh * d),
                  f"{l}.router": w(E, h)})
        for e in range(E):
            P.update({f"{l}.{e}.g": w(F, h), f"{l}.{e}.u": w(F, h), f"{l}.{e}.d": w(h, F)})
    opt = torch.optim.AdamW(P.values(), lr=1e-4, foreach=True)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    ang = torch.arange(a.seq).float()[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    mask = torch.full((a.seq, a.seq), float("-inf")).triu(1)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g

    def rot(x):
        return torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1)

    def step(ids, labels):
        B, S = ids.shape
        x = P["emb"][ids]
        for l in range(a.layers):
            t = rms(x, P[f"{l}.in"])
            q = (t @ P[f"{l}.q"].T).view(B, S, nh, d).transpose(1, 2)
            k = (t @ P[f"{l}.k"].T).view(B, S, ng, d).transpose(1, 2)
            v = (t @ P[f"{l}.v"].T).view(B, S, ng, d).transpose(1, 2)
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
            k, v = k.repeat_interleave(nh // ng, 1), v.repeat_interleave(nh // ng, 1)
            att = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5 + mask, -1) @ v
            x = x + att.transpose(1, 2).reshape(B, S, nh * d) @ P[f"{l}.o"].T
            t = rms(x, P[f"{l}.post"]).view(B * S, h)
            probs = torch.softmax(t @ P[f"{l}.router"].T, -1)
            wts, sel = torch.topk(probs, K, -1)
            wts = wts / wts.sum(-1, keepdim=True)
            out = torch.zeros_like(t)
            for e in range(E):  # HF's loop over experts
                tok, slot = torch.where(sel == e)
                if tok.numel() == 0:
                    continue
                xe = t[tok]
                ye = (torch.nn.functional.silu(xe @ P[f"{l}.{e}.g"].T) * (xe @ P[f"{l}.{e}.u"].T)) @ P[f"{l}.{e}.d"].T
                out.index_add_(0, tok, ye * wts[tok, slot, None])
            x = x + out.view(B, S, h)
        logits = rms(x, P["norm"]) @ P["head"].T
        loss = torch.nn.functional.cross_entropy(logits.view(-1, a.vocab), labels.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(P.values(), 1.0)
        opt.step()
        return float(loss)

    ids = torch.randint(0, a.vocab, (a.mbs, a.seq))
    labels = torch.roll(ids, -1, 1)
    step(ids, labels)  # warm-up, as moectl's: two steps
    step(ids, labels)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step(ids, labels)
    dt = (time.perf_counter() - t0) / a.steps
    print(f"torch_tokens_per_s {a.mbs * a.seq / dt:.1f}")


if __name__ == "__main__":
    main()
