#!/usr/bin/env bash
# The recipe that trained the shipped heads for SmolLM2-135M-Instruct on a 2-core CPU: release 2 (steps 1-4), then
# release 3 (steps 5-7), which continues release 2 on closer data with multi-step training, then releases 3.1 and
# 3.3 (step 8), which continue it on more data.
# Every step is resumable: after a kill, run the script again and each command continues where it stopped.
set -euo pipefail
RUN=${RUN:-runs/smollm2}
POOL=${POOL:-../shared/data/train_prompts.jsonl}

# 1. The target answers the first 600 prompts of each source (greedy, <= 192 new tokens, prompts <= 384 tokens).
hf-specdec distill --prompts "$POOL" --per-source 600 --max-prompt-tokens 384 --batch-size 24 \
    --max-new-tokens 192 --out "$RUN/responses.jsonl"
# 2. Target features (last hidden state, bf16) for the self-distilled answers, and for some of the pool's own
#    reference answers (more text at the cost of one forward each, no generation).
hf-specdec features --samples "$RUN/responses.jsonl" --out "$RUN/features"
hf-specdec features --prompts "$POOL" --per-source 500 --max-length 768 --out "$RUN/features"
# 3. The FSPAD head and the EAGLE-2 baseline head, same data, same budget, same 16k draft vocabulary;
#    side by side, one thread each (on 2 cores that is faster than one after the other with two threads).
for variant in fspad eagle2; do
    OMP_NUM_THREADS=1 hf-specdec train --features "$RUN/features" --variant "$variant" --draft-vocab 16384 \
        --epochs "${EPOCHS:-7}" --lr 1e-3 --warmup-steps 50 --save-every 50 --out "$RUN/$variant" &
done
wait
# 4. Tree shape: tuned on held-out pool prompts (never on Spec-Bench), e.g.
#    python examples/make_tune_prompts.py > "$RUN/tune_prompts.jsonl"
#    hf-specdec bench --questions "$RUN/tune_prompts.jsonl" --draft "$RUN/fspad/head" \
#        --methods stock fspad@4,4,16 fspad@2,4,8 fspad@3,5,12 --out "$RUN/tune.json"

# 5. Release 3's data (translation, back-translation, more self-distilled answers, long context; resumable).
bash examples/make_v3_data.sh
V3=${V3:-runs/v3}
# 6. Continue both release-2 heads (as exported in bf16: what release 2 shipped) on it, unrolled three steps (the
#    drafting-time test), same data and budget for both (the shipped FSPAD run had two threads to itself: 36 min).
for variant in fspad eagle2; do
    hf-specdec export --head "$RUN/$variant/head" --tree 4,4,16 --out "$RUN/export-$variant"
    OMP_NUM_THREADS=1 hf-specdec train --features "$V3/features" --variant "$variant" --init "$RUN/export-$variant" \
        --unroll 3 --lr 3e-4 --warmup-steps 20 --max-steps 700 --save-every 50 --out "$V3/${variant}_ft" &
done
wait
# 7. Export in bf16 with the tree defaults: what hf_specdec/pretrained/smollm2-135m-instruct-{fspad,eagle2} hold.
for variant in fspad eagle2; do
    hf-specdec export --head "$V3/${variant}_ft/head" --tree 4,4,16 --out "$V3/export-$variant"
done
# 8. Release 3.1: the step-6 command on release 3.1's data from release 3's weights (examples/make_v3_data.sh, its
#    closing comment). Release 3.3: release 3.1 continued on the target's own answers,
#    examples/make_v32_data.sh step 2 and then examples/make_v33_candidates.sh, whose arm A was exported with
#    `hf-specdec export --head runs/v33/a/head --tree 4,4,16`. The EAGLE-2 baseline's release 3.3: arm A's command
#    with --init hf_specdec/pretrained/smollm2-135m-instruct-eagle2 (release 3.1) and --out runs/v33/eagle2.
# 9. Release 3.4 (both heads shipped now): examples/make_v34_candidates.sh continues both release-3.3 heads on more
#    of the target's answers; its exports runs/v34/{fspad,eagle2}_export are hf_specdec/pretrained/
#    smollm2-135m-instruct-{fspad,eagle2}.
