#!/usr/bin/env bash
# The Spec-Bench runs behind the README's results table (shipped heads, embedded SmolLM2-135M-Instruct, 2-core CPU).
# The first command took 55 minutes with --repeats 3 on a 2-core CPU (--repeats 1 times each answer once, for a
# quicker look); the second takes a few minutes. Each writes JSON (every answer's record) and a markdown table
# beside it; --plot adds a PNG.
set -euo pipefail
OUT=${OUT:-bench_results}
# bf16, greedy and T=1: stock generate, prompt lookup decoding, strategy="fspad" with its defaults (lookup drafts
# merged into cost-sized trees) and with the head alone (lookup_tokens=0).
hf-specdec bench --per-category 4 --max-new-tokens 128 --temperatures 0 1 --repeats "${REPEATS:-3}" \
    --methods stock pld fspad fspad/lookup=0 --out "$OUT/specbench_bf16.json"
# float32, greedy: every method's answers must be token-identical to stock's (match rate 100%).
hf-specdec bench --per-category 1 --max-new-tokens 48 --dtype float32 --methods stock pld fspad fspad/lookup=0 \
    --out "$OUT/specbench_fp32.json"
