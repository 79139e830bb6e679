#!/usr/bin/env bash
# Head release-3.3 candidates (issue "Head v3"): release 3.1 continued on the target's own answers, the text a
# head drafts on, rather than on written references (release 3.2's lesson, README "v3.2 candidate"). Arm A,
# exported at the end, shipped as release 3.3 (README "Acceptance under sampling, measured without sampling noise").
#   data:  the v3.2 greedy and T=1 answers (examples/make_v32_data.sh step 2) plus greedy answers to pool prompts
#          1,801-2,800 per source (no earlier release saw them; prompts up to 384 tokens); ~45 min on two threads
#   A:     the v3.2 recipe (FS + PAD losses 1.0 / 0.1, --unroll 3) on this data
#   B:     the same, token-focused: soft-label CE weight 0.5 and a top-10 distillation term (HASS) at 0.1
# A and B train side by side, one thread each (~65 min for 250 steps). Every step resumes after a kill; each
# training stops after --max-minutes with its head so far (the same command continues it).
set -euo pipefail
RUN=${RUN:-runs/v33}
POOL=${POOL:-../shared/data/train_prompts.jsonl}
V32=${V32:-runs/v32}
STEPS=${STEPS:-250}
MINUTES=${MINUTES:-80}
mkdir -p "$RUN"

hf-specdec distill --prompts "$POOL" --skip-per-source 1800 --per-source 1000 --max-prompt-tokens 384 \
    --batch-size 24 --max-new-tokens 192 --out "$RUN/responses.jsonl"
DATA="$V32/responses.jsonl $V32/responses_t1.jsonl $RUN/responses.jsonl"
hf-specdec data-stats $DATA

# Release 3.1, which both arms continue: the shipped folder held it until release 3.3 replaced it (commit 772dff4).
HEAD=${HEAD:-$RUN/release31}
if [ ! -s "$HEAD/model.safetensors" ]; then
    mkdir -p "$HEAD"
    for f in config.json generation_config.json model.safetensors; do
        git show "772dff4:hf_specdec/pretrained/smollm2-135m-instruct-fspad/$f" > "$HEAD/$f"
    done
fi
COMMON="--samples $DATA --max-length 2048 --init $HEAD --unroll 3 --lr 3e-4 --warmup-steps 20 --max-steps $STEPS
        --save-every 25 --max-minutes $MINUTES"
OMP_NUM_THREADS=1 hf-specdec train $COMMON --out "$RUN/a" > "$RUN/a.log" 2>&1 &
OMP_NUM_THREADS=1 hf-specdec train $COMMON --logit-weight 0.5 --topk-weight 0.1 --topk 10 --out "$RUN/b" \
    > "$RUN/b.log" 2>&1 &
wait

# Held-back positions of the same files, release 3.1 against both (features on the fly, a row per file):
hf-specdec evaluate "$HEAD" "$RUN/a/head" "$RUN/b/head" --samples $DATA --steps 3 | tee "$RUN/evaluate.md"
# Release 3.3 is arm A in bf16 with the fixed-tree defaults (hf_specdec/pretrained/smollm2-135m-instruct-fspad):
hf-specdec export --head "$RUN/a/head" --tree 4,4,16 --out "$RUN/a_export"
