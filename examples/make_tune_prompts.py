"""Held-out prompts for tuning (tree shape, lookup_tokens, sizing): the 'tune' split of
hf_specdec/training/held_out_pool.json, 15 training-pool prompts (the last rows of five sources) that no
shipped head trained on and every data builder leaves out. Estimate calibrations use its 'calibration' split,
so neither training, calibration nor tuning ever sees a Spec-Bench question or each other's prompts.

(Until 2026-12-01 the tuning prompts were rows 901-903 of each source and the calibration rows 801-806; the
release-3 heads' data grew to the first 1,500 rows of each source and took 6 and 21 of them.)

    python examples/make_tune_prompts.py ../shared/data/train_prompts.jsonl > tune.jsonl
    hf-specdec bench --questions tune.jsonl --methods stock fspad fspad/lookup=0
"""

import json
import sys

from hf_specdec.training.held_out import held_out_rows

pool = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/train_prompts.jsonl"
for row in held_out_rows(pool, "tune"):
    print(json.dumps(row))
