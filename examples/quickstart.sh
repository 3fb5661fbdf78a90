#!/usr/bin/env bash
# The main job on the embedded tiny model: install dependencies, build moectl, initialise the
# tiny Qwen3-MoE model from configs/tiny-moe, convert it to Megatron's format and back, and chat
# with the result (a batch of questions, then a short scripted interactive session). Idempotent; run from anywhere as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./third_party/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target moectl
MOECTL=build/apps/moectl/moectl
OUT=${OUT:-out/quickstart}
mkdir -p "$OUT"

# HF-format weights for the tiny model (random until training lands; `moectl pt` will train it).
$MOECTL init --config configs/tiny-moe --output_dir "$OUT/tiny-moe" --overwrite true

# HF -> Megatron and back, as `swift export --to_mcore true` / `--to_hf true` (training on the
# Megatron side, `moectl sft`, lands next).
$MOECTL export --model "$OUT/tiny-moe" --to_mcore true --torch_dtype bfloat16 --output_dir "$OUT/tiny-moe-mcore" --overwrite true
$MOECTL export --mcore_model "$OUT/tiny-moe-mcore" --to_hf true --torch_dtype bfloat16 --output_dir "$OUT/tiny-moe-hf" --overwrite true

# Batch inference, as `swift infer --val_dataset ... --result_path ...`.
$MOECTL infer --model "$OUT/tiny-moe-hf" --val_dataset examples/chat_questions.jsonl \
  --result_path "$OUT/answers.jsonl" --max_new_tokens 32 --temperature 0
echo "answers written to $OUT/answers.jsonl:"
cat "$OUT/answers.jsonl"

# Interactive chat, here fed through a pipe (run without the pipe to type yourself).
printf 'Who are you?\nclear\n你好\nexit\n' | $MOECTL infer --model "$OUT/tiny-moe-hf" --max_new_tokens 24 --stream true
