#!/usr/bin/env python3
"""Issue 14 against the real PyTorch: torch.distributed.checkpoint (PyTorch >= 2.2, which the GPU
machine's image has and Debian's 1.13 lacks) reads what moectl writes, and moectl reads what it
writes.

For qwen3_moe and mixtral, bf16 and fp32 (random HF models written by tests/parity/hf_model.py):
1. moectl export --to_mcore (torch_dist); PyTorch's FileSystemReader reads its .metadata, and
   torch.distributed.checkpoint.load fills tensors of the global shapes it names; every tensor
   equals Megatron's layout of the HF weights (tests/cli/mcore_layout.py) and every _extra_state
   object loads.
2. torch.distributed.checkpoint.save writes those tensors and objects again, once with one file
   and once with a file per item; beside them the common.pt, metadata.json and tracker that
   Megatron writes around a DCP save. moectl export --to_hf of that directory gives the HF
   weights back bit-identical, and moectl export --test_convert_precision passes on it.
3. The PyTorch-written checkpoints are kept under OUT/fixtures (a few hundred KB each) for the
   CPU tests.
Prints one line per check; exits 1 when any fails, 77 (skip) without torch.distributed.checkpoint.
Usage: dcp_interop.py MOECTL SRC_DIR WORK_DIR [OUT_DIR]"""
import json
import os
import shutil
import subprocess
import sys

import torch

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
OUT = os.path.abspath(sys.argv[4]) if len(sys.argv) > 4 else None
try:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemReader, FileSystemWriter
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
except ImportError as e:
    print(f"SKIP: torch {torch.__version__} has no usable torch.distributed.checkpoint ({e})")
    sys.exit(77)
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))
sys.path.insert(0, os.path.join(SRC, "tests", "cli"))
import hf_model  # noqa: E402
from mcore_layout import expected, raw_tensors  # noqa: E402

print(f"torch {torch.__version__}")
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
failures = []


def moectl(args):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True)
    assert p.returncode == 0, f"moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-2000:]}"
    return p


def read_with_pytorch(it):
    """Every tensor and object of a torch_dist iteration directory, read by PyTorch's own DCP."""
    md = FileSystemReader(it).read_metadata()
    tensors = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()
               if isinstance(m, TensorStorageMetadata)}
    dcp.load(tensors, storage_reader=FileSystemReader(it))
    objects = {k: None for k, m in md.state_dict_metadata.items() if isinstance(m, BytesStorageMetadata)}
    if objects:
        dcp.load(objects, storage_reader=FileSystemReader(it))  # the planner puts torch.load's result in place
    return tensors, objects


for fam, dtype in [("qwen3_moe", "bfloat16"), ("qwen3_moe", "float32"), ("mixtral", "bfloat16"),
                   ("mixtral", "float32")]:
    name = f"{fam}_{dtype}"
    base = os.path.join(WORK, name)
    try:
        cfg = hf_model.write_random_model(os.path.join(SRC, "configs", "tiny", fam), base + "_hf", dtype, seed=7)
        moectl(["export", "--model", base + "_hf", "--to_mcore", "true", "--output_dir", base + "_moectl"])
        it = os.path.join(base + "_moectl", "iter_0000001")
        tensors, objects = read_with_pytorch(it)
        want, _ = expected(cfg, hf_model.load_safetensors_dir(base + "_hf"), dtype)
        assert sorted(tensors) == sorted(want), f"keys differ: {sorted(set(tensors) ^ set(want))[:6]}"
        for k, v in want.items():
            assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v), f"{k} differs from the HF weights"
        assert objects and all(v is not None for v in objects.values()), "an _extra_state object did not load"
        print(f"ok   {name}: PyTorch's DCP reads moectl's checkpoint: {len(tensors)} tensors equal the HF "
              f"weights, {len(objects)} objects load")
        for per_item in (False, True):
            tag = "file_per_item" if per_item else "one_file"
            out = base + "_pytorch_" + tag
            shutil.rmtree(out, ignore_errors=True)
            it2 = os.path.join(out, "iter_0000001")
            # Not flattened: an object (a list holding a tensor) stays one item under its own key, as
            # Megatron saves its sharded objects.
            dcp.save({**tensors, **objects}, storage_writer=FileSystemWriter(it2, single_file_per_rank=not per_item),
                     planner=DefaultSavePlanner(flatten_state_dict=False))
            for f in ("common.pt", "metadata.json"):
                shutil.copy(os.path.join(it, f), it2)
            for f in os.listdir(base + "_moectl"):  # tracker, config.json, args.json
                if os.path.isfile(os.path.join(base + "_moectl", f)):
                    shutil.copy(os.path.join(base + "_moectl", f), out)
            files = sorted(f for f in os.listdir(it2) if f.endswith(".distcp"))
            moectl(["export", "--mcore_model", out, "--to_hf", "true", "--output_dir", out + "_hf"])
            assert raw_tensors(out + "_hf") == raw_tensors(base + "_hf"), "HF weights differ after the round trip"
            moectl(["export", "--mcore_model", out, "--to_hf", "true", "--output_dir", out + "_hf2",
                    "--test_convert_precision", "true"])
            print(f"ok   {name}: moectl reads PyTorch's dcp.save ({tag}, {len(files)} .distcp files): "
                  "HF weights bit-identical, --test_convert_precision passes")
            if OUT:
                dest = os.path.join(OUT, "fixtures", f"{name}_{tag}")
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(out, dest)
                shutil.copytree(base + "_hf", dest + "_source_hf")
    except Exception as e:  # noqa: BLE001 -- any failure of a case is reported and counted
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")

if OUT and os.path.isdir(os.path.join(OUT, "fixtures")):
    with open(os.path.join(OUT, "fixtures", "README.txt"), "w") as f:
        f.write(f"written by torch {torch.__version__}'s torch.distributed.checkpoint.save (dcp_interop.py)\n")
if failures:
    sys.exit(f"{len(failures)} failed: {failures}")
print(json.dumps({"torch": torch.__version__, "cases": 4, "failed": 0}))
