#!/usr/bin/env bash
# Data for head release 3.2 (issue "Head v3"): prompts no earlier release trained on, so that release 3.1 can
# continue on them. Release 3 / 3.1 answered the first 1,500 pool prompts per source, translated the first ~900
# pool rows and took long context from the first 4,000 T0 rows (examples/make_v3_data.sh); their files were
# lost with the machine that made them. Every step resumes after a kill. No Spec-Bench, no WMT14 / CNN-DM / NQ.
set -euo pipefail
RUN=${RUN:-runs/v32}
POOL=${POOL:-../shared/data/train_prompts.jsonl}
N=${N:-150}  # prompts per source and per step; the whole recipe took 35 min on two threads at N=150
mkdir -p "$RUN"

# 1. Translation both ways, from pool rows 8,000 on (release 3 translated sentences of the first ~900).
[ -s "$RUN/pool_from_8000.jsonl" ] || tail -n +8001 "$POOL" > "$RUN/pool_from_8000.jsonl"
[ -s "$RUN/translation.jsonl" ] || hf-specdec make-prompts translation --pool "$RUN/pool_from_8000.jsonl" \
    --pairs en-de en-fr en-es --limit $((3 * N)) --seed 1 --out "$RUN/translation.jsonl"
hf-specdec distill --prompts "$RUN/translation.jsonl" --batch-size 24 --max-new-tokens 160 \
    --out "$RUN/translation_answers.jsonl"
[ -s "$RUN/back_translation.jsonl" ] || hf-specdec make-prompts back-translation --prompts "$RUN/translation.jsonl" \
    --answers "$RUN/translation_answers.jsonl" --seed 1 --out "$RUN/back_translation.jsonl"
hf-specdec distill --prompts "$RUN/back_translation.jsonl" --batch-size 24 --max-new-tokens 160 \
    --out "$RUN/back_translation_answers.jsonl"

# 2. Self-distilled answers to the next N prompts of each source, greedy; then the N after those sampled at
#    T=1 (text like what a head drafts on at T=1).
hf-specdec distill --prompts "$POOL" --skip-per-source 1500 --per-source $N --max-prompt-tokens 384 \
    --batch-size 24 --max-new-tokens 192 --out "$RUN/responses.jsonl"
hf-specdec distill --prompts "$POOL" --skip-per-source $((1500 + N)) --per-source $N --max-prompt-tokens 384 \
    --batch-size 24 --max-new-tokens 192 --sample --out "$RUN/responses_t1.jsonl"

# 3. The pool's own written answers (no generation; the target still labels every position): GSM8K and
#    GPTeacher codegen rows after every prompt used above (roleplay and toolformer have none left), and long
#    context: T0 rows 4,001-10,000 whose prompts hold 385-2,048 tokens and whose references are real answers
#    (summaries, mostly), at least 8 tokens.
hf-specdec distill --prompts "$POOL" --references --skip-per-source 2000 --per-source $((5 * N)) \
    --sources gsm8k-train gpteacher-codegen --max-prompt-tokens 1024 --out "$RUN/references.jsonl"
hf-specdec distill --prompts "$POOL" --references --sources t0-train --skip-per-source 4000 --per-source 6000 \
    --min-prompt-tokens 385 --max-prompt-tokens 2048 --out "$RUN/long_references.jsonl"

hf-specdec data-stats "$RUN"/translation_answers.jsonl "$RUN"/back_translation_answers.jsonl \
    "$RUN"/responses.jsonl "$RUN"/responses_t1.jsonl "$RUN"/references.jsonl "$RUN"/long_references.jsonl
# Then (resumable; features on the fly):
# hf-specdec train --samples "$RUN"/translation_answers.jsonl "$RUN"/back_translation_answers.jsonl \
#     "$RUN"/responses.jsonl "$RUN"/responses_t1.jsonl "$RUN"/references.jsonl "$RUN"/long_references.jsonl \
#     --max-length 2048 \
#     --init hf_specdec/pretrained/smollm2-135m-instruct-fspad --unroll 3 --lr 3e-4 --warmup-steps 20 \
#     --max-steps 450 --save-every 25 --out "$RUN/fspad"
