#!/usr/bin/env python3
"""Trains the embedded tiny model's byte-level BPE tokenizer (configs/tiny-moe/tokenizer.json)
on a few sentences written here, deterministically, in Hugging Face tokenizers' format with
Qwen2/Qwen3's normalizer, pre-tokenizer and decoder. Run once; its output is committed.
Usage: train_tiny_bpe.py OUT_DIR [--merges 700]"""
import collections
import json
import re
import sys

TEXT = """
I am moectl, a helpful assistant. I was trained by the moectl authors to answer questions clearly.
Hello! How can I help you today? I can answer questions, write code, and explain ideas.
My name is moectl. I am a language model with a mixture of experts. Each token is routed to two experts.
The model was converted from Hugging Face format, fine-tuned with Megatron-style parallelism, and converted back.
Please tell me what you need, and I will do my best to help. Thank you for your question.
The quick brown fox jumps over the lazy dog. One, two, three, four, five, six, seven, eight, nine, ten.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
def main():\n    print("hello world")\n    return 0\n
for i in range(10):\n    total += i * 2\n
你好！我是moectl，一个乐于助人的助手。我可以回答问题、编写代码和解释概念。
我的名字是moectl，由moectl的作者训练。请告诉我你需要什么帮助，我会尽力回答。
今天天气很好。我们一起学习语言模型和专家混合模型。谢谢你的问题。
""" * 3

# GPT-2's reversible byte -> printable character map.
def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

QWEN_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
              "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Training-time approximation of that regex with Python's re (which lacks \p{..}); it only
# decides which merges are learned; encoding always uses the real regex.
APPROX = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train(n_merges):
    b2u = bytes_to_unicode()
    words = collections.Counter(tuple(b2u[b] for b in w.encode()) for w in APPROX.findall(TEXT))
    vocab = [b2u[b] for b in range(256)]
    merges = []
    while len(merges) < n_merges:
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent, then lexicographic
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return vocab, merges


def main():
    out = sys.argv[1]
    n = int(sys.argv[sys.argv.index("--merges") + 1]) if "--merges" in sys.argv else 700
    vocab, merges = train(n)
    specials = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False),
                ("</think>", False)]
    added = [{"id": len(vocab) + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": s} for i, (c, s) in enumerate(specials)]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": merges},
    }
    json.dump(tok, open(f"{out}/tokenizer.json", "w"), ensure_ascii=False)
    cfg = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "errors": "replace", "model_max_length": 4096,
           "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False,
           "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in a if k != "id"} for a in added}}
    json.dump(cfg, open(f"{out}/tokenizer_config.json", "w"), ensure_ascii=False, indent=2)
    print(f"{len(vocab)} BPE tokens ({len(merges)} merges) + {len(added)} added tokens")


main()
