"""Held-out prompts for tuning the tree shape: rows 401-404 of each source of the training pool (training
uses the first 400 of each source), so neither training nor tuning ever sees a Spec-Bench question."""

import json
import sys
from collections import defaultdict

pool = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/train_prompts.jsonl"
seen = defaultdict(int)
for line in open(pool, encoding="utf-8"):
    row = json.loads(line)
    seen[row["source"]] += 1
    if 400 < seen[row["source"]] <= 404 and len(row["prompt"]) < 2500:
        print(json.dumps(row))
