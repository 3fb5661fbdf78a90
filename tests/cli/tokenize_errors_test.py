#!/usr/bin/env python3
"""Bad tokenizer input ends in exit code 2 and one line naming the file/flag and the problem:
unknown model / normalizer / pre-tokenizer / decoder types, a merge naming an unknown token,
invalid UTF-8 text, an unknown template name. Usage: tokenize_errors_test.py MOECTL SRC_DIR WORK_DIR"""
import copy
import json
import os
import shutil
import subprocess
import sys

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
base = json.load(open(os.path.join(SRC, "configs", "tiny-moe", "tokenizer.json")))
failures = 0


def expect(name, mutate, needles, args=("--text", "hello")):
    global failures
    d = os.path.join(WORK, name)
    os.makedirs(d)
    shutil.copy(os.path.join(SRC, "configs", "tiny-moe", "tokenizer_config.json"), d)
    shutil.copy(os.path.join(SRC, "configs", "tiny-moe", "config.json"), d)
    j = copy.deepcopy(base)
    mutate(j)
    json.dump(j, open(os.path.join(d, "tokenizer.json"), "w"))
    p = subprocess.run([MOECTL, "tokenize", "--model", d] + list(args), capture_output=True)
    err = p.stderr.decode(errors="replace")
    lines = [l for l in err.splitlines() if l.strip()]
    ok = p.returncode == 2 and len(lines) == 1 and all(n in lines[0] for n in needles)
    print(("ok   " if ok else "FAIL ") + name + ": " + (lines[0] if lines else f"(exit {p.returncode}, no message)"))
    failures += not ok


expect("model_type", lambda j: j["model"].update(type="WordPiece"), ["tokenizer.json", "WordPiece"])
expect("normalizer", lambda j: j.update(normalizer={"type": "Lowercase"}), ["tokenizer.json", "Lowercase"])
expect("pre_tokenizer", lambda j: j.update(pre_tokenizer={"type": "Whitespace"}), ["tokenizer.json", "Whitespace"])
expect("decoder", lambda j: j.update(decoder={"type": "WordPiece"}), ["tokenizer.json", "decoder 'WordPiece'"])
expect("merge", lambda j: j["model"]["merges"].append("zzq qqz"), ["tokenizer.json", "merge", "zzq"])
bad_text = os.path.join(WORK, "bad.txt")
open(bad_text, "wb").write(b"fine line\nbad \xff\xfe bytes\n")
expect("utf8", lambda j: None, ["not valid UTF-8"], args=("--file", bad_text))
ds = os.path.join(WORK, "ds.jsonl")
open(ds, "w").write('{"messages": [{"role": "user", "content": "hi"}]}\n')
expect("template", lambda j: None, ["--template 'nope'", "known:"], args=("--dataset", ds, "--template", "nope"))
print("PASS" if failures == 0 else f"{failures} failed")
sys.exit(1 if failures else 0)
