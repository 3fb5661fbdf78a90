#!/usr/bin/env python3
"""Deterministic corpus of varied strings for tokenizer parity tests.

    corpus.py [--out FILE] [--n 1200] [--seed 1]     JSON list of strings (stdout without --out)

Fixed cases first (empty string, single spaces, whitespace runs, CRLF, digit runs of every length
1..40, contractions in every case, special tokens inside text, combining marks NFC does and does
not compose, emoji ZWJ/skin-tone/flag sequences, code, URLs, many scripts, 200+ char words, words of
10,000+ characters), then
random mixtures of all of those pools up to --n. Deliberately avoids U+0085 and U+FEFF, the two
characters on which JavaScript's \\s and Rust regex's \\s (Unicode White_Space) disagree, so the
JS reference and Hugging Face tokenizers agree on every string here. `import corpus;
corpus.make(n, seed)` gives the same list."""
import argparse
import json
import random

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today?",
    "Mixture-of-Experts models route each token to a few experts.",
    "I'm sure it's fine; they've said we'd be done by 5pm.",
    "She said: \"Don't worry, I'll handle it.\"",
    "It was the best of times, it was the worst of times...",
    "Q: What's 2+2? A: 4.",
    "e.g. i.e. etc. Mr. Smith & Co. (est. 1999)",
    "A sentence with  two spaces and   three spaces.",
    "   leading spaces and trailing spaces   ",
    "CAPS LOCK SENTENCE HERE AND NOW",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
    "naïve café résumé coöperate Zürich straße façade",
    "The year 2024 had 366 days; 1,000,000 people; 3.14159 and -42.",
]
WORDS = ["hello", "world", "The", "quick", "brown", "fox", "tokenizer", "Mixture-of-Experts", "moectl",
         "expert", "router", "naïve", "café", "Zürich", "straße", "résumé", "ÆSIR", "ǅemal", "İstanbul",
         "ﬁne", "Ⅻ", "½", "x²", "H₂O", "№", "™", "ℌ", "µs", "Ω", "ſ"]
CONTRACTIONS = ["don't", "DON'T", "Don'T", "I'LL", "i'll", "I'll", "we'RE", "WE'RE", "We're", "you'VE",
                "YOU'VE", "I'M", "i'M", "he'D", "HE'D", "it'S", "IT'S", "that's", "'s", "'S", "'t", "'LL",
                "'re", "O'Neil", "rock'n'roll", "''quoted''", "' s", "'ll've"]
SCRIPTS = ["你好，世界！", "我是一个语言模型。", "混合专家模型的路由", "今天天气很好，我们去公园散步吧。",
           "こんにちは世界", "カタカナとひらがな、漢字も混ざる文章です。", "ｶﾀｶﾅ 半角", "안녕하세요 세계",
           "한국어 문장입니다.", "Привет, мир!", "Здравствуйте, как дела?", "Γειά σου Κόσμε", "Ελληνικά κείμενα",
           "مرحبا بالعالم", "اللغة العربية جميلة", "שלום עולם", "עִבְרִית", "नमस्ते दुनिया", "हिन्दी भाषा",
           "สวัสดีชาวโลก", "ภาษาไทยไม่มีช่องว่าง", "ሰላም ልዑል", "Xin chào thế giới", "Tiếng Việt có dấu",
           "ᚠᚢᚦᚨᚱᚲ", "ქართული ენა", "Հայերեն", "বাংলা ভাষা", "தமிழ்", "ꯃꯤꯇꯩ", "𝕄𝕒𝕥𝕙 𝒻𝓊𝓃", "𠀀𠀁𪚥"]
EMOJI = ["😀", "😂🤣", "👍", "👍🏻", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩‍👩‍👦", "🏳️‍🌈", "🏴‍☠️", "🇨🇳", "🇺🇸", "🇯🇵🇰🇷🇩🇪",
         "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "❤️", "❤", "♥️", "🧑🏿‍💻", "👩🏼‍🚀", "👩‍❤️‍💋‍👨", "🤖", "✨🎉", "☕️", "1️⃣", "#️⃣", "©️", "🫠",
         "🙇‍♀️", "🧔🏾‍♂️"]
CODE = [
    "def f(x):\n    return x * 2\n",
    "class Foo:\n    def __init__(self):\n        self.x = {'a': 1}\n\n    def bar(self):\n        pass\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "#include <vector>\n\nint main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n  return 0;\n}\n",
    "template <typename T>\nauto add(T a, T b) -> decltype(a + b) { return a + b; }",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true, "c": 1.5e-10}}',
    '{\n  "name": "moectl",\n  "version": "0.1.0",\n  "dependencies": {}\n}\n',
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%foo%';",
    "x = [i**2 for i in range(10) if i % 2]",
    "    indented\n        more\n\t\ttabbed\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "if (a && b || !c) { x <<= 2; y >>= 3; z ^= ~w; }",
    "const re = /^[a-z]+\\d*$/gi; // comment",
    "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | grep -v '^#'\n",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "$$\\frac{a}{b} + \\sum_{i=0}^{n} x_i^2$$",
]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]
CHAT = ["<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>", "text<|endoftext|>more text",
        "<|endoftext|><|endoftext|>", "<|im_start|><|im_end|>", " <|im_start|> ", "<|im_start", "im_start|>",
        "<|IM_START|>", "<think >", "<<think>>", "</think></think>", "<|endoftext|>\n\n<|im_start|>"]
COMBINING = ["e\u0301", "E\u0301", "a\u0308", "n\u0303", "A\u030a", "o\u0302\u0323", "\u1100\u1161",
             "\u1100\u1161\u11a8", "c\u0327", "u\u0308\u0301", "\u212b", "\u2126", "\u0958",
             # NFC does not compose these:
             "q\u0307", "x\u0301\u0302", "\u0915\u093c", "e\u0301\u0301", "a\u20dd", "\u0301", "\u0301abc",
             "z\u0335", "a\u0358", "\u05d0\u05b8", "\u0627\u0651", "i\u0307", "\u00e9", "\u1e9b\u0323"]
WS = [" ", "  ", "   ", "    ", "        ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r", "\r\r\n",
      " \n ", "\t\t\n", "  \n\n  ", "\u00a0", "\u3000", "\u2003", "\u2009", "\u200b", "\r\n\r\n", "   \n",
      "\x0b", "\x0c", " \t \t", "\u2028", "\u2029"]
PUNCT = ["...", "!!!", "???", "?!", "—", "–", "-", "--", "«quotes»", "“curly”", "‘single’", "(parens)",
         "[brackets]", "{braces}", "@#$%^&*", "~`|\\", ";:", ",.", "。", "、", "！？", "・", "…", "¿Qué?", "¡Hola!"]
URLS = ["https://example.com/path?q=1&x=y#frag", "http://localhost:8080/", "user@example.com",
        "ftp://files.example.org/pub/file-1.2.3.tar.gz", "https://zh.wikipedia.org/wiki/%E4%B8%AD%E6%96%87",
        "www.example.co.uk", "C:\\Users\\name\\file.txt", "/usr/local/bin/moectl", "git@github.com:a/b.git"]


def long_words(r):
    return ["a" * 300, "supercalifragilistic" * 12, "x" * 201, "ab" * 150, "Ab1" * 80, "中" * 250,
            "é" * 210, "😀" * 100, "-" * 220, " " * 250, "\n" * 205, "1" * 260,
            "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(512)),
            "Pneumonoultramicroscopicsilicovolcanoconiosis" * 5, "hello" + "o" * 300 + "!"]


def very_long_words():
    """Single pre-tokenizer pieces of 10,000-30,000 characters: BPE must merge them in
    O(n log n) and still agree with the reference."""
    r = random.Random(7)
    return ["a" * 30000, "ab" * 10000, "".join(r.choice("abcdefghij") for _ in range(20000)),
            "".join(r.choice("混合专家模型路由训练推理") for _ in range(10000)),
            "".join(r.choice(["e\u0301", "a", "\u00e9", "n\u0303"]) for _ in range(10000))]


def very_long_words():
    """Single pre-tokenizer pieces of 10,000-30,000 characters: BPE must merge them in
    O(n log n) and still agree with the reference."""
    r = random.Random(7)
    return ["a" * 30000, "ab" * 10000, "".join(r.choice("abcdefghij") for _ in range(20000)),
            "".join(r.choice("混合专家模型路由训练推理") for _ in range(10000)),
            "".join(r.choice(["e\u0301", "a", "\u00e9", "n\u0303"]) for _ in range(10000))]


def make(n=1200, seed=1):
    r = random.Random(seed)
    out = ["", " ", "  ", "a", "A", "\n", "\r\n", "\t", "0", "00", "3.14159", "1,000,000", "2026-11-22",
           "12:34:56", "+1 (555) 123-4567", "ÀÉÎÕÜ àéîõü", "hello world", " hello", "hello ", "Hello World"]
    out += ["".join(r.choice("0123456789") for _ in range(k)) for k in range(1, 41)]
    out += ["x" + "7" * k + "y" for k in range(1, 12)] + ["%d" % (10 ** k) for k in range(0, 19)]
    out += ENGLISH + CONTRACTIONS + SCRIPTS + EMOJI + CODE + CHAT + SPECIAL + COMBINING + WS + PUNCT + URLS
    out += long_words(r) + very_long_words()
    out += [w + " " + c for w in ["I", "WE", "we", "You"] for c in ["'LL", "'RE", "'re", "'Ll"]]
    pools = [ENGLISH, WORDS, CONTRACTIONS, SCRIPTS, EMOJI, CODE, SPECIAL, CHAT, COMBINING, WS, PUNCT, URLS]
    seps = ["", " ", " ", "", "\n", ", ", ". ", "  ", "\t", "\r\n", "\n\n"]
    while len(out) < n:
        parts = []
        for _ in range(r.randint(1, 14)):
            kind = r.random()
            if kind < 0.08:
                parts.append(str(r.randint(0, 10 ** r.randint(1, 18))))
            elif kind < 0.13:
                parts.append("".join(r.choice("0123456789") for _ in range(r.randint(1, 40))))
            elif kind < 0.18:
                c = r.randint(0x20, 0x2fff)
                parts.append(chr(c) if c != 0x85 else "\u2026")
            elif kind < 0.20:
                parts.append(r.choice(long_words(r))[: r.randint(1, 260)])
            else:
                parts.append(r.choice(r.choice(pools)))
            parts.append(r.choice(seps))
        s = "".join(parts)
        if r.random() < 0.1:
            s = s.upper()
        out.append(s)
    assert all("\u0085" not in s and "\ufeff" not in s for s in out)
    return out[:n] if n >= 0 else out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    data = json.dumps(make(a.n, a.seed), ensure_ascii=False)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(data)
    else:
        print(data)


if __name__ == "__main__":
    main()
