#!/usr/bin/python3
"""Writes a random Hugging Face model directory from a config directory (for tests that need a
checkpoint but no trained weights): config.json with torch_dtype set, generation_config.json, and
random weights under the tensor names transformers saves for the family, as model.safetensors or
as N shards with model.safetensors.index.json. Needs only torch (no transformers, no safetensors).

  make_model.py --config configs/tiny/qwen3_moe --dtype bfloat16 --out /tmp/m [--shards 2] [--seed N]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="directory holding config.json (and generation_config.json)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    ap.add_argument("--shards", type=int, default=1, help="number of safetensors files (>1 writes an index)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.config, "config.json")):
        ap.error(f"--config {a.config}: no config.json there")
    if a.shards < 1:
        ap.error("--shards must be >= 1")
    cfg = hf_model.write_random_model(a.config, a.out, a.dtype, seed=a.seed, shards=a.shards)
    print(f"wrote {a.out}: {cfg['model_type']} {a.dtype}, {a.shards} shard(s), seed {a.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
