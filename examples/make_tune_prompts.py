"""Held-out prompts for tuning (tree shape, lookup_tokens, sizing): rows 901-903 of each source of the training
pool. The shipped heads trained on the first 600 rows of each source and the lookup estimates were calibrated
on rows 801-806, so neither training, calibration nor tuning ever sees a Spec-Bench question or each other's
prompts. (The v1 tuning used rows 401-404, which the v2 heads' training data now contains.)

    python examples/make_tune_prompts.py ../shared/data/train_prompts.jsonl > tune.jsonl
    hf-specdec bench --questions tune.jsonl --methods stock fspad fspad/lookup=0
"""

import json
import sys
from collections import defaultdict

pool = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/train_prompts.jsonl"
seen = defaultdict(int)
for line in open(pool, encoding="utf-8"):
    row = json.loads(line)
    seen[row["source"]] += 1
    if 900 < seen[row["source"]] <= 903 and len(row["prompt"]) < 4000:
        print(json.dumps(row))
