#!/usr/bin/env bash
# The main job on the embedded tiny model, as Megatron-SWIFT's quick start: install
# dependencies, build moectl, pre-train the tiny Qwen3-MoE model of configs/tiny-moe briefly,
# convert it to HF and on to Megatron's format, fine-tune its self-cognition there, convert back
# to HF and chat with the result (a batch of questions, then a short scripted interactive session). Idempotent; run
# from anywhere as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
# MOECTL=path/to/moectl skips installing and building (the test suite runs this script that way).
if [ -z "${MOECTL:-}" ]; then
  ./third_party/install_deps.sh
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build --target moectl
  MOECTL=build/apps/moectl/moectl
fi
OUT=${OUT:-out/quickstart}
mkdir -p "$OUT"

# The starting model: pre-train the tiny config (random init) briefly with `moectl pt`, then
# convert it to an HF directory, the form models are published in.
rm -rf "$OUT/tiny-moe-pt"
$MOECTL pt --model configs/tiny-moe --dataset 'self-cognition#400' --model_name 'the assistant' \
  --model_author 'its developers' --train_iters 40 --micro_batch_size 2 --global_batch_size 8 --lr 2e-3 \
  --min_lr 2e-4 --lr_warmup_iters 4 --max_length 512 --log_interval 10 --save "$OUT/tiny-moe-pt" \
  --add_version false --save_safetensors false --no_save_optim true
$MOECTL export --mcore_model "$OUT/tiny-moe-pt" --to_hf true --output_dir "$OUT/tiny-moe" --overwrite true

# HF -> Megatron, as `swift export --to_mcore true`.
$MOECTL export --model "$OUT/tiny-moe" --to_mcore true --torch_dtype bfloat16 --output_dir "$OUT/tiny-moe-mcore" --overwrite true

# Self-cognition fine-tuning on the Megatron side, as `megatron sft --load ... --dataset
# swift/self-cognition#500 --model_name ... --model_author ...` (one CPU process here).
rm -rf "$OUT/tiny-moe-sft"
$MOECTL sft --load "$OUT/tiny-moe-mcore" --dataset 'self-cognition#500' --model_name moe-robot --model_author moectl \
  --max_epochs 3 --micro_batch_size 2 --global_batch_size 8 --lr 1e-3 --min_lr 1e-4 --lr_warmup_fraction 0.05 \
  --max_length 512 --log_interval 10 --save "$OUT/tiny-moe-sft" --add_version false --save_safetensors false
echo "training log: $OUT/tiny-moe-sft/logging.jsonl, plots: $OUT/tiny-moe-sft/images/"

# Megatron -> HF, as `swift export --mcore_model ... --to_hf true`.
$MOECTL export --mcore_model "$OUT/tiny-moe-sft" --to_hf true --torch_dtype bfloat16 --output_dir "$OUT/tiny-moe-hf" --overwrite true

# Batch inference, as `swift infer --val_dataset ... --result_path ...`.
$MOECTL infer --model "$OUT/tiny-moe-hf" --val_dataset examples/chat_questions.jsonl \
  --result_path "$OUT/answers.jsonl" --max_new_tokens 32 --temperature 0
echo "answers written to $OUT/answers.jsonl:"
cat "$OUT/answers.jsonl"

# Interactive chat, here fed through a pipe (run without the pipe to type yourself).
printf 'Who are you?\nclear\n你好\nexit\n' | $MOECTL infer --model "$OUT/tiny-moe-hf" --max_new_tokens 24 --stream true
