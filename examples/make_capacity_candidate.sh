#!/usr/bin/env bash
# Capacity (issue "Head v3"): does a deeper head draft better? Release 3.3's FSPAD head grown by extra decoder
# layers on its logit half (FSPADConfig.num_extra_layers; the new layers start as no-ops), then trained exactly as
# release 3.4 was: the same 2,804 answers, the same 168 steps, the same recipe. Release 3.4 is the same run without
# the extra layers, so the two differ in capacity alone.
# The grown layer starts with zero output projections, so at the continuation's rate it hardly trains in one epoch
# (runs/x2l: output projections at RMS 0.0015 against the first layer's 0.030); EXTRA_LR gives it its own rate.
# The second run: RUN=runs/x2l_v35 DATA=runs/v35/responses.jsonl INIT=runs/v34/fspad/head
#   BASELINE=runs/v35/fspad/head EXTRA_LR=3e-3 (release 3.4 grown, against the v3.5 candidate: the same run without
#   the layer).
#   train: ~9 s per step on two threads (one epoch, 168 steps; resumes after a kill, --max-minutes stops it with its
#          head so far and the same command continues it); then both heads on the run's held-back positions.
set -euo pipefail
RUN=${RUN:-runs/x2l}
DATA=${DATA:-runs/v34/responses.jsonl}
INIT=${INIT:-runs/v33/a/head}       # release 3.3, float32 (what release 3.4 was trained from)
BASELINE=${BASELINE:-runs/v34/fspad/head}
EXTRA=${EXTRA:-1}
EXTRA_LR=${EXTRA_LR:-3e-4}          # the new layers' own rate (--extra-layers-lr); 3e-4 is the rest's
mkdir -p "$RUN"
hf-specdec train --samples "$DATA" --max-length 2048 --unroll 3 --lr 3e-4 --warmup-steps 20 --epochs 1 \
    --save-every 25 --max-minutes "${MINUTES:-60}" --init "$INIT" --extra-layers "$EXTRA" --extra-layers-lr "$EXTRA_LR" --out "$RUN/fspad" \
    >> "$RUN/fspad.log" 2>&1
hf-specdec evaluate "$BASELINE" "$RUN/fspad/head" --samples "$DATA" --steps 3 | tee "$RUN/evaluate.md"
hf-specdec export --head "$RUN/fspad/head" --tree 4,4,16 --out "$RUN/fspad_export"
