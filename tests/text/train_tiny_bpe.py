#!/usr/bin/env python3
"""Trains the embedded tiny model's byte-level BPE tokenizer (configs/tiny-moe/tokenizer.json and
tokenizer_config.json) on the few KB of English + Chinese assistant-style text below,
deterministically, in Hugging Face tokenizers' format with Qwen2/Qwen3's normalizer,
pre-tokenizer, post-processor and decoder (the same JSON as the real Qwen3 tokenizer.json).
Vocabulary: 256 byte tokens (ids 0-255, GPT-2 bytes_to_unicode order), one token per learned
merge, then 5 added tokens (<|endoftext|>, <|im_start|>, <|im_end|>, <think>, </think>).
Run once; its output is committed.
Usage: train_tiny_bpe.py [OUT_DIR (default configs/tiny-moe)] [--merges 700] [--check_qwen3 TOKENIZER_JSON]
  --check_qwen3: also assert the copied sections equal that file's (the real Qwen3 tokenizer.json)."""
import collections
import json
import os
import re
import sys

TEXT = """
Hello! I am moectl, a helpful assistant. I was made by the moectl authors, who wrote me in C++.
Hi there! How can I help you today? I can answer questions, write code, and explain ideas step by step.
Good morning! Good afternoon! Good evening! Nice to meet you. Welcome back, my friend.
My name is moectl. I am a small language model built from a mixture of experts. Each token is routed
to the two best experts, and their outputs are added together with the router's weights.
I was converted from the Hugging Face format, trained with tensor, pipeline and expert parallelism,
and converted back again. I run on a laptop CPU or on a GPU, and I try to be fast and correct.
Please tell me what you need, and I will do my best to help. Thank you for your question!
If I do not know the answer, I will say so honestly instead of making something up.
You asked: "What is the capital of France?" The capital of France is Paris.
You asked: "What is two plus two?" Two plus two is four. Three times three is nine.
Let me count: one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 512 1024 2048 4096 65536 3.14 2.718 1,000,000.
The year is 2025. The meeting starts at 10:30 and ends at 12:00. The price is $19.99 or 20 euros.
Sure! Here is a short Python function that adds two numbers:
def add(a, b):
    return a + b

print(add(2, 3))
And here is the same thing in C++:
#include <iostream>
int add(int a, int b) { return a + b; }
int main() {
    std::cout << add(2, 3) << std::endl;
    return 0;
}
A JSON object looks like this: {"name": "moectl", "experts": 8, "top_k": 2, "hidden_size": 64}.
for i in range(10):
    total += i * 2
    if total > 20:
        break
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Machine learning models learn patterns from data. Tokenizers split text into tokens, and tokens become ids.
The attention layer looks at every earlier token; the feed-forward layer is replaced by the experts.
Don't worry, it's easy. I'm happy to explain again. We're learning together, and you'll get it.
Goodbye! Have a wonderful day. See you next time. Take care!
<think>
The user greets me. I should answer politely and briefly.
</think>
Hello! What would you like to talk about?
你好！我是moectl，一个乐于助人的人工智能助手，由moectl的作者开发。
我可以回答问题、编写代码、翻译文本，也可以一步一步地解释复杂的概念。
我的名字是moectl。我是一个混合专家语言模型，每个词元会被路由到两个专家。
请告诉我你需要什么帮助，我会尽力回答。如果我不知道答案，我会诚实地告诉你。
今天天气很好。我们一起学习语言模型、分词器和专家混合模型吧。谢谢你的问题！
早上好！下午好！晚上好！很高兴认识你。欢迎回来，我的朋友。
一、二、三、四、五、六、七、八、九、十。一百，一千，一万。
中国的首都是北京。法国的首都是巴黎。二加二等于四。
再见！祝你有美好的一天。下次见！
"""


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# Qwen2's split regex, exactly as in Qwen2/Qwen3's tokenizer.json.
QWEN_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
              "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Sections copied verbatim from the real Qwen3 tokenizer.json.
NORMALIZER = {"type": "NFC"}
PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN_REGEX}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
POST_PROCESSOR = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
DECODER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
# Training-time approximation of QWEN_REGEX with Python's re (which lacks \p{..}); it only decides
# which merges are learned; encoding always uses the real regex.
APPROX = re.compile(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False),
         ("</think>", False)]
SPECIAL_RE = re.compile("|".join(re.escape(c) for c, _ in ADDED))


def train(n_merges):
    b2u = bytes_to_unicode()
    words = collections.Counter()
    for chunk in SPECIAL_RE.split(TEXT):  # added tokens are never part of BPE training
        for w in APPROX.findall(chunk):
            words[tuple(b2u[b] for b in w.encode("utf-8"))] += 1
    vocab = [b2u[b] for b in range(256)]
    known = set(vocab)
    merges = []
    while len(merges) < n_merges:
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        # Most frequent pair; ties broken by the pair's strings, so the result is deterministic.
        # Pairs whose concatenation is already a token (reachable by another merge order) are
        # skipped, so that every merge adds exactly one new token.
        cands = sorted(((-c, p) for p, c in pairs.items() if p[0] + p[1] not in known))
        if not cands:
            sys.exit(f"training text too small: only {len(merges)} merges learnable")
        a, b = cands[0][1]
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        known.add(a + b)
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
    args = sys.argv[1:]
    n = 700
    check = None
    if "--merges" in args:
        i = args.index("--merges")
        n = int(args[i + 1])
        del args[i:i + 2]
    if "--check_qwen3" in args:
        i = args.index("--check_qwen3")
        check = args[i + 1]
        del args[i:i + 2]
    out = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs",
                                            "tiny-moe")
    if check:
        with open(check, encoding="utf-8") as f:
            q = json.load(f)
        for key, mine in (("normalizer", NORMALIZER), ("pre_tokenizer", PRE_TOKENIZER),
                          ("post_processor", POST_PROCESSOR), ("decoder", DECODER)):
            assert q[key] == mine, f"{key} differs from {check}: {json.dumps(q[key])}"
        model_keys = {k: v for k, v in q["model"].items() if k not in ("vocab", "merges")}
        assert model_keys == MODEL_OPTIONS, model_keys
    vocab, merges = train(n)
    assert len(vocab) == len(set(vocab)) == 256 + n
    added = [{"id": len(vocab) + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": s} for i, (c, s) in enumerate(ADDED)]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": NORMALIZER, "pre_tokenizer": PRE_TOKENIZER, "post_processor": POST_PROCESSOR,
        "decoder": DECODER,
        "model": {**MODEL_OPTIONS, "vocab": {t: i for i, t in enumerate(vocab)}, "merges": merges},
    }
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
    cfg = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "errors": "replace", "model_max_length": 4096,
           "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
           "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in a if k != "id"} for a in added}}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"{len(vocab)} BPE tokens ({len(merges)} merges) + {len(added)} added tokens = {len(vocab) + len(added)}")


MODEL_OPTIONS = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                 "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False}

if __name__ == "__main__":
    main()
