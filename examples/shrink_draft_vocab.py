"""A trained head with a smaller draft vocabulary: the N most frequent of its own draft tokens, its weights
unchanged (the draft lm_head is a frozen slice of the target's, so only the draft distribution's
normalisation loses the dropped tokens). Tokens are counted over training-pool rows answered by their
references (`reference_sample`; the held-out tuning prompts are left out by `read_conversations`), response
tokens weighted as `hf-specdec train --draft-vocab` weights them (`token_counts`).

This is issue 14's "8k and 12k draft vocabulary against 16k" without retraining; `hf-specdec train --init OUT
...` continues such a head on its new vocabulary.

    python examples/shrink_draft_vocab.py hf_specdec/pretrained/smollm2-135m-instruct-fspad runs/vocab/v8k \
        --size 8192 [--pool ../shared/data/train_prompts.jsonl] [--limit 8000]
"""

import argparse
import json

import torch
from transformers import AutoTokenizer

from hf_specdec import FSPADDraftModel
from hf_specdec.default_model import default_target_path
from hf_specdec.training.data import read_conversations, reference_sample
from hf_specdec.training.held_out import held_out_rows
from hf_specdec.training.train import shrink_draft_vocabulary


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("head", help="head folder with a draft vocabulary (e.g. a shipped head)")
    p.add_argument("out", help="folder for the head with the smaller vocabulary")
    p.add_argument("--size", type=int, required=True, help="draft tokens to keep")
    p.add_argument("--pool", default="../shared/data/train_prompts.jsonl")
    p.add_argument("--limit", type=int, default=8000, help="pool rows counted (file order)")
    args = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(default_target_path())
    samples = []
    for conv in read_conversations(args.pool, limit=args.limit):
        s = reference_sample(tokenizer, conv)
        if s is not None:
            samples.append({"input_ids": torch.tensor(s["input_ids"]), "loss_mask": torch.tensor(s["loss_mask"], dtype=torch.bool)})
    head = FSPADDraftModel.from_pretrained(args.head)
    before = head.draft_to_target.clone()
    shrink_draft_vocabulary(head, samples, args.size)
    head.save_pretrained(args.out)
    # coverage of the 60 held-out pool prompts' reference answers (never counted above)
    held_out = held_out_rows(args.pool, "tune") + held_out_rows(args.pool, "calibration")
    answers = torch.tensor([t for row in held_out for t in tokenizer(row["reference"], add_special_tokens=False)["input_ids"]])
    for name, ids in (("before", before), ("after", head.draft_to_target)):
        covered = torch.isin(answers, ids).float().mean().item()
        print(json.dumps({"vocabulary": name, "tokens": int(ids.shape[0]), "held_out_reference_coverage": round(covered, 4)}))
    print(f"{args.head}: {before.shape[0]} -> {args.size} draft tokens, counted over {len(samples)} pool rows; wrote {args.out}")


if __name__ == "__main__":
    main()
