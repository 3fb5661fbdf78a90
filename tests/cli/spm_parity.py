#!/usr/bin/env python3
"""sentencepiece tokenizer.model parity: trains a small BPE model (byte fallback) with Debian's
spm_train on 2,000 generated lines and checks that moectl's ids equal `spm_encode
--output_format=id` and its decoding equals `spm_decode` for every line.
Usage: spm_parity.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
sys.path.insert(0, os.path.join(SRC, "tests", "text"))
import corpus  # noqa: E402

shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(os.path.join(WORK, "model"))
lines = [s.replace("\r", " ").replace("\n", " ") for s in corpus.make(2000, 7)]
text = os.path.join(WORK, "corpus.txt")
open(text, "w", encoding="utf-8").write("\n".join(lines) + "\n")
prefix = os.path.join(WORK, "spm")
subprocess.run(["spm_train", f"--input={text}", f"--model_prefix={prefix}", "--vocab_size=2000", "--model_type=bpe",
                "--byte_fallback=true", "--character_coverage=0.995", "--minloglevel=2"], check=True)
shutil.copy(prefix + ".model", os.path.join(WORK, "model", "tokenizer.model"))

with open(text, "rb") as f:
    ref = [[int(x) for x in l.split()] for l in
           subprocess.run(["spm_encode", f"--model={prefix}.model", "--output_format=id"], stdin=f,
                          capture_output=True, check=True).stdout.decode().splitlines()]
p = subprocess.run([MOECTL, "tokenize", "--model", os.path.join(WORK, "model"), "--file", text],
                   capture_output=True, text=True, check=True)
mine = [json.loads(l)["ids"] for l in p.stdout.split("\n") if l]
assert len(ref) == len(mine) == len(lines), (len(ref), len(mine), len(lines))
bad = [i for i in range(len(lines)) if ref[i] != mine[i]]
print(f"spm bpe: {len(lines)} lines, {sum(map(len, ref))} tokens, {len(bad)} id mismatches")
for i in bad[:5]:
    print(f"  {lines[i]!r}\n    moectl: {mine[i]}\n    spm:    {ref[i]}")

ids_file = os.path.join(WORK, "ids.txt")
open(ids_file, "w").write("\n".join(" ".join(map(str, r)) for r in ref) + "\n")
with open(ids_file) as f:
    ref_text = subprocess.run(["spm_decode", f"--model={prefix}.model", "--input_format=id"], stdin=f,
                              capture_output=True, check=True).stdout.decode().split("\n")[:len(lines)]
ids_json = os.path.join(WORK, "ids.jsonl")
open(ids_json, "w").write("\n".join(json.dumps(r) for r in ref) + "\n")
p = subprocess.run([MOECTL, "tokenize", "--model", os.path.join(WORK, "model"), "--file", ids_json, "--decode", "true"],
                   capture_output=True, text=True, check=True)
texts = [json.loads(l)["text"] for l in p.stdout.split("\n") if l]
dec = [i for i in range(len(lines)) if texts[i] != ref_text[i]]
print(f"spm bpe: moectl decode != spm_decode for {len(dec)} lines")
for i in dec[:5]:
    print(f"  moectl: {texts[i]!r}\n  spm:    {ref_text[i]!r}")
ok = not bad and not dec
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
