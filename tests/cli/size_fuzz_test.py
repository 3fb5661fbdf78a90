#!/usr/bin/env python3
"""Size fuzz (QA #5, #13, #15): 200 copies of the tiny MoE model, each with one to three integer
fields of config.json replaced by a value no model can have (huge, negative, past int64, a
fraction, a string), run through `infer`, `export --to_mcore`, `plan` and `init` under a 2 GB
address-space limit and a timeout. Every run must exit 2 with exactly one stderr line: never a
signal, a timeout or an "internal error" (a bad_alloc, a wrapped size).
Usage: size_fuzz_test.py MOECTL SRC_DIR WORK_DIR [SEED]"""
import concurrent.futures
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
SEED = int(sys.argv[4]) if len(sys.argv) > 4 else 20261201
CASES = 200
ADDRESS_SPACE = 2 << 30
TIMEOUT_S = 30

# The integer fields the qwen3_moe ingester reads; a bad value in any of them must be refused.
FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
          "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok", "decoder_sparse_step",
          "vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "mlp_only_layers"]


def bad_value(rng):
    """A value outside every field's range: >= 2^31 (above every bound), < 0, past int64, not whole, not a number."""
    kind = rng.choice(["huge", "negative", "overflow", "float", "string"])
    if kind == "huge":
        return rng.choice([2**31, 2**32 + 128, 2**32 + rng.randint(1, 4096), 10**9 * rng.randint(3, 1000),
                           rng.randint(2**31, 2**63 - 1), 2**63 - 1, 10**12])
    if kind == "negative":
        return rng.choice([-1, -8, -(2**31), -(2**32) + 128, rng.randint(-(2**63), -1), -(2**63)])
    if kind == "overflow":
        return rng.choice([2**63, 2**64 - 1, 2**64 + 128, 10**20, 10**30, -(2**63) - 1, -(10**25)])
    if kind == "float":
        return rng.choice([128.5, 0.5, -3.25, 1e300, -1e300, 4294967424.5, 1e19, 2.0**70])
    return rng.choice(["128", "", "1e9", "4294967424", "-8", "NaN"])


def limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(args, stdin=""):
    try:
        p = subprocess.run([MOECTL] + args, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S,
                           preexec_fn=limit_address_space, cwd=WORK)
        return p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        return "timeout", (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")


def main():
    if os.path.exists(WORK):
        shutil.rmtree(WORK)
    os.makedirs(WORK)
    base = os.path.join(WORK, "base")
    p = subprocess.run([MOECTL, "init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", base],
                       capture_output=True, text=True)
    if p.returncode != 0:
        print("moectl init of the tiny model failed:", p.stderr)
        sys.exit(1)
    good = json.load(open(os.path.join(base, "config.json")))

    rng = random.Random(SEED)
    jobs = []  # (case, command name, args, stdin)
    for i in range(CASES):
        cfg = dict(good)
        fields = rng.sample(FIELDS, rng.choice([1, 1, 1, 2, 3]))
        for f in fields:
            v = bad_value(rng)
            cfg[f] = [v] if f == "mlp_only_layers" or (f == "eos_token_id" and rng.random() < 0.5) else v
        d = os.path.join(WORK, f"case{i:03d}")
        os.makedirs(d)
        for name in os.listdir(base):  # weights and tokenizer shared by hard links: nothing writes them
            if name != "config.json":
                os.link(os.path.join(base, name), os.path.join(d, name))
        with open(os.path.join(d, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
        what = ", ".join(f"{f}={json.dumps(cfg[f])}" for f in fields)
        jobs.append((what, "infer", ["infer", "--model", d, "--max_new_tokens", "4"], "hi\n"))
        jobs.append((what, "export", ["export", "--model", d, "--to_mcore", "true", "--output_dir", d + "_mcore"], ""))
        jobs.append((what, "plan", ["plan", "--model", d], ""))
        jobs.append((what, "init", ["init", "--config", d, "--output_dir", d + "_init"], ""))

    t0 = time.monotonic()
    counts = {"exit 2, one line": 0, "other": 0}
    by_command = {}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda j: (j, run(j[2], j[3])), jobs)
        for (what, name, args, _), (rc, err) in results:
            lines = err.strip().splitlines()
            ok = rc == 2 and len(lines) == 1 and lines[0].startswith("moectl: error:") and "internal error" not in err
            counts["exit 2, one line" if ok else "other"] += 1
            by_command.setdefault(name, [0, 0])[0 if ok else 1] += 1
            if not ok:
                failures.append(f"{name} with {what}: rc {rc}, stderr {err.strip()[-600:]!r}")
    secs = time.monotonic() - t0
    print(f"size fuzz: {CASES} configs x 4 commands = {len(jobs)} runs in {secs:.1f} s (seed {SEED}): "
          f"{counts['exit 2, one line']} exited 2 with one line, {counts['other']} did not")
    for name, (good_runs, bad_runs) in sorted(by_command.items()):
        print(f"  {name}: {good_runs} ok, {bad_runs} failed")
    if failures:
        print("\n".join(failures[:40]))
        sys.exit(1)
    shutil.rmtree(WORK, ignore_errors=True)
    print("size fuzz: all runs refused the config in one line")


main()
