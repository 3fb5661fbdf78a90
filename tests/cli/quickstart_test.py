#!/usr/bin/env python3
"""The README's main job: examples/quickstart.sh (pt -> export --to_hf -> export --to_mcore ->
sft self-cognition -> export --to_hf -> infer) with this build's moectl; the fine-tuned model
must answer "Who are you?" with its new name.
Usage: quickstart_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
env = dict(os.environ, MOECTL=MOECTL, OUT=WORK)
p = subprocess.run([os.path.join(SRC, "examples", "quickstart.sh")], env=env, capture_output=True, text=True)
if p.returncode != 0:
    sys.exit(f"quickstart.sh exit {p.returncode}\n{p.stderr[-3000:]}")
answers = [json.loads(l) for l in open(os.path.join(WORK, "answers.jsonl"))]
first = answers[0]["response"]
print("Who are you? ->", first)
if "moe-robot" not in first:
    sys.exit(f"the fine-tuned model does not give its new name: {first!r}")
if "moe-robot" not in p.stdout:
    sys.exit("the interactive session does not give the new name")
