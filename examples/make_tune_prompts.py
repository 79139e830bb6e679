"""Held-out prompts for tuning (tree shape, lookup_tokens, sizing): the 'tune' split of
hf_specdec/training/held_out_pool.json, 15 training-pool prompts (the last rows of five sources) that no
shipped head trained on and every data builder leaves out. Estimate calibrations use its 'calibration' split,
so neither training, calibration nor tuning ever sees a Spec-Bench question or each other's prompts.

(Until 2026-12-01 the tuning prompts were rows 901-903 of each source and the calibration rows 801-806; the
release-3 heads' data grew to the first 1,500 rows of each source and took 6 and 21 of them.)

    python examples/make_tune_prompts.py ../shared/data/train_prompts.jsonl > tune.jsonl
    hf-specdec bench --questions tune.jsonl --methods stock fspad fspad/lookup=0

With --translation: translation prompts (English into German, French, Spanish; the data builder's templates)
made from the sentences of the tune and calibration rows, a held-out set where the drafts mostly fail.

With --long: 15 long-context prompts no data builder has read: T0 rows after the source's 12,000th (the
recipes stop at its 10,000th) whose prompt text is 385-1,024 tokens long (without the chat template).
"""

import json
import sys

from hf_specdec.training.held_out import held_out_rows
from hf_specdec.training.prompts import translation_rows

args = [a for a in sys.argv[1:] if not a.startswith("--")]
pool = args[0] if args else "../shared/data/train_prompts.jsonl"
if "--long" in sys.argv:
    from hf_specdec.training.held_out import is_held_out
    from hf_specdec.training.prepare import load_target_tokenizer

    tokenizer, rows, seen = load_target_tokenizer(None), [], 0
    with open(pool, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["source"] != "t0-train":
                continue
            seen += 1
            messages = [{"role": "user", "content": row["prompt"]}]
            if seen > 12000 and not is_held_out(messages) and 385 <= len(tokenizer(row["prompt"])["input_ids"]) <= 1024:
                rows.append({"id": row["id"], "source": "t0-long", "prompt": row["prompt"]})
                if len(rows) == 15:
                    break
elif "--translation" in sys.argv:
    rows = held_out_rows(pool, "tune") + held_out_rows(pool, "calibration")
    rows = translation_rows(rows, [("en", "de"), ("en", "fr"), ("en", "es")], limit=30)
else:
    rows = held_out_rows(pool, "tune")
for row in rows:
    print(json.dumps(row))
