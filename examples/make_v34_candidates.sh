#!/usr/bin/env bash
# Head release-3.4 candidates (issue "Head v3"): release 3.3, the FSPAD head and the EAGLE-2 baseline alike,
# continued on ~2,800 more of the target's own greedy answers, to pool prompts 2,801-3,800 per source (no earlier
# release saw them; prompts up to 384 tokens), one epoch, release 3.3's recipe (FS + PAD losses, --unroll 3,
# lr 3e-4). Same data and budget for both heads, so their comparison stays fair.
#   distill: ~70 min alone on two threads (resumes after a kill);
#   train:   ~7 s per step on two threads, one head after the other (each resumes; --max-minutes stops it with its
#            head so far, and the same command continues it).
set -euo pipefail
RUN=${RUN:-runs/v34}
POOL=${POOL:-../shared/data/train_prompts.jsonl}
V33=${V33:-runs/v33}   # release 3.3's float32 heads: $V33/a/head (FSPAD), $V33/eagle2/head (EAGLE-2)
FSPAD_INIT=${FSPAD_INIT:-$V33/a/head}
EAGLE2_INIT=${EAGLE2_INIT:-$V33/eagle2/head}
SKIP=${SKIP:-2800}     # pool prompts per source that earlier releases answered
MINUTES=${MINUTES:-60}
# The next release the same way: RUN=runs/v35 SKIP=3800 FSPAD_INIT=runs/v34/fspad/head EAGLE2_INIT=runs/v34/eagle2/head
mkdir -p "$RUN"

hf-specdec distill --prompts "$POOL" --skip-per-source "$SKIP" --per-source 1000 --max-prompt-tokens 384 \
    --batch-size 24 --max-new-tokens 192 --out "$RUN/responses.jsonl"
hf-specdec data-stats "$RUN/responses.jsonl" | tee "$RUN/data_stats.md"

COMMON="--samples $RUN/responses.jsonl --max-length 2048 --unroll 3 --lr 3e-4 --warmup-steps 20 --epochs 1
        --save-every 25 --max-minutes $MINUTES"
hf-specdec train $COMMON --init "$FSPAD_INIT" --out "$RUN/fspad" >> "$RUN/fspad.log" 2>&1
hf-specdec train $COMMON --init "$EAGLE2_INIT" --out "$RUN/eagle2" >> "$RUN/eagle2.log" 2>&1

# Held-back positions of the new answers (the training's own hash split), release 3.3 against 3.4, both heads:
hf-specdec evaluate "$FSPAD_INIT" "$RUN/fspad/head" "$EAGLE2_INIT" "$RUN/eagle2/head" \
    --samples "$RUN/responses.jsonl" --steps 3 | tee "$RUN/evaluate.md"
# A release is the head in bf16 with the fixed-tree defaults:
hf-specdec export --head "$RUN/fspad/head" --tree 4,4,16 --out "$RUN/fspad_export"
hf-specdec export --head "$RUN/eagle2/head" --tree 4,4,16 --out "$RUN/eagle2_export"
