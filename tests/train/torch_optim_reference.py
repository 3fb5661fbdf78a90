#!/usr/bin/python3
"""Reference for tests/train/optimizer_test.cpp: runs torch.optim.AdamW or torch.optim.SGD with
torch.nn.utils.clip_grad_norm_ on the parameters, gradients and learning rates given as JSON on
stdin, and prints JSON {"params": [[...] per parameter], "grad_norms": [per step]}.

Input: {"optimizer": "adam"|"sgd", "betas": [b1, b2], "eps": e, "momentum": m, "clip": c (<= 0 off),
        "params": [{"data": [...], "weight_decay": wd}], "grads": [[[...] per parameter] per step],
        "lrs": [per step]}
Run by the test with /usr/bin/python3 (Debian's python3-torch)."""
import json
import sys

import torch


def main():
    spec = json.load(sys.stdin)
    params = [torch.nn.Parameter(torch.tensor(p["data"], dtype=torch.float32)) for p in spec["params"]]
    groups = [{"params": [p], "weight_decay": s["weight_decay"]} for p, s in zip(params, spec["params"])]
    lr0 = spec["lrs"][0]
    if spec["optimizer"] == "adam":
        opt = torch.optim.AdamW(groups, lr=lr0, betas=tuple(spec["betas"]), eps=spec["eps"], foreach=False)
    else:
        opt = torch.optim.SGD(groups, lr=lr0, momentum=spec["momentum"], foreach=False)
    norms = []
    for step_grads, lr in zip(spec["grads"], spec["lrs"]):
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=torch.float32)
        if spec["clip"] > 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, spec["clip"])))
        else:
            norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in params]))))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    print(json.dumps({"params": [p.detach().tolist() for p in params], "grad_norms": norms}))


if __name__ == "__main__":
    main()
