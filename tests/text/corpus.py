#!/usr/bin/env python3
"""Deterministic corpus of varied strings for tokenizer parity tests (JSON list on stdout or
--out FILE): many scripts, emoji sequences, code, digit runs, whitespace and newline runs, CRLF,
combining marks, upper-case contractions, special tokens inside text, very long words."""
import json
import random
import sys

WORDS = ["hello", "world", "The", "quick", "brown", "fox", "tokenizer", "Mixture-of-Experts", "don't", "I'm",
         "DON'T", "WE'RE", "You'LL", "it's", "naïve", "café", "Zürich", "straße", "résumé", "coöperate"]
SCRIPTS = ["你好，世界！", "我是一个语言模型。", "混合专家模型的路由", "こんにちは世界", "カタカナとひらがな", "안녕하세요 세계",
           "Привет, мир!", "Здравствуйте", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
           "สวัสดีชาวโลก", "ሰላም ልዑል", "Xin chào thế giới", "Ελληνικά κείμενα", "ꯃꯤꯇꯩ", "ᚠᚢᚦᚨᚱᚲ"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇨🇳🇺🇸", "❤️", "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "🤖", "✨🎉", "☕️", "1️⃣"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        '{"key": [1, 2, 3], "nested": {"a": null}}', "#include <vector>\nint main() { return 0; }",
        "SELECT * FROM users WHERE id = 42;", "x = [i**2 for i in range(10) if i % 2]",
        "    indented\n        more\n", "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "o\u0302\u0323", "\u1100\u1161", "q\u0307", "x\u0301\u0302",
             "\u0915\u093c", "Å", "\u212b"]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t\n", "\u00a0", "\u3000", "\u2003", "\r\n\r\n", "   \n"]


def make(n, seed):
    r = random.Random(seed)
    out = ["", " ", "a", "\n", "\r\n", "12345678901234567890", "3.14159", "1,000,000", "2026-11-22",
           "https://example.com/path?q=1&x=y#frag", "user@example.com", "a" * 300, "supercalifragilistic" * 12,
           "ÀÉÎÕÜ àéîõü", "CAPS LOCK SENTENCE HERE", "...!!!???", "—–-", "«quotes» “curly” ‘single’"]
    pools = [WORDS, SCRIPTS, EMOJI, CODE, SPECIAL, COMBINING, WS]
    while len(out) < n:
        parts = []
        for _ in range(r.randint(1, 12)):
            kind = r.random()
            if kind < 0.1:
                parts.append(str(r.randint(0, 10 ** r.randint(1, 15))))
            elif kind < 0.15:
                parts.append("".join(r.choice("0123456789") for _ in range(r.randint(1, 40))))
            elif kind < 0.2:
                parts.append(chr(r.randint(0x20, 0x2fff)))
            else:
                parts.append(r.choice(r.choice(pools)))
            parts.append(r.choice(["", " ", " ", "", "\n", ", ", ". "]))
        out.append("".join(parts))
    return out


if __name__ == "__main__":
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 1200
    data = json.dumps(make(n, 1), ensure_ascii=False)
    if "--out" in sys.argv:
        open(sys.argv[sys.argv.index("--out") + 1], "w", encoding="utf-8").write(data)
    else:
        print(data)
