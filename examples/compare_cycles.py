"""Two heads' cost-sized cycles side by side: the answers to each prompt alternate between the heads (who goes
first rotating per prompt and round), and each cycle is recorded as `check_cost_model.py` records it (time,
tree tokens, head steps, tokens emitted). What a bench's tokens per second hides: whether a head's trees are
bigger, deeper or dearer, with the machine's slow spells shared by both.

    python examples/compare_cycles.py tune.jsonl HEAD_A HEAD_B [--temperature 1] [--rounds 2]
    python examples/compare_cycles.py tune.jsonl HEAD --int8-ab       # one head, draft_int8=False against True

Run it on a quiet CPU; held-out prompts only (examples/make_tune_prompts.py), never Spec-Bench.
"""

import argparse
import json

import numpy as np
import torch
from check_cost_model import record_cycles

from hf_specdec import FSPADDraftModel
from hf_specdec.default_model import default_target


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prompts", help="a JSONL of {prompt} rows")
    ap.add_argument("heads", nargs="+", help="two head folders (one with --int8-ab)")
    ap.add_argument("--int8-ab", action="store_true", help="one head's weight modes: draft_int8=False against True")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if len(args.heads) != (1 if args.int8_ab else 2):
        ap.error("give two head folders, or one with --int8-ab")
    target, tok = default_target(dtype=torch.bfloat16)
    loaded = [FSPADDraftModel.from_pretrained(path, dtype=target.dtype).attach_target(target, tok) for path in args.heads]
    if args.int8_ab:  # arm: generate kwargs
        arms = {"exact weights": dict(assistant_model=loaded[0], draft_int8=False),
                "int8 weights": dict(assistant_model=loaded[0], draft_int8=True)}
    else:
        arms = {path: dict(assistant_model=head) for path, head in zip(args.heads, loaded)}
    prompts = [json.loads(line)["prompt"] for line in open(args.prompts, encoding="utf-8")]
    mode = dict(do_sample=True, temperature=args.temperature, top_k=None, top_p=None) if args.temperature else dict(do_sample=False)
    cycles = {arm: [] for arm in arms}
    with torch.no_grad():
        for kwargs in arms.values():  # warm-up and the cost curves
            record_cycles(target, tok, prompts[:1], dict(kwargs, max_new_tokens=16, **mode))
        for round_i in range(args.rounds):
            for i, prompt in enumerate(prompts):
                order = list(arms) if (i + round_i) % 2 == 0 else list(arms)[::-1]
                for arm in order:
                    cycles[arm] += record_cycles(target, tok, [prompt], dict(arms[arm], **mode))
    print("| arm | cycles | ms per cycle | tree tokens | head steps | tokens emitted | tokens per second |\n"
          "|---|---|---|---|---|---|---|")
    for arm, cs in cycles.items():
        ms = np.mean([c["ms"] for c in cs])
        emitted = np.mean([1 + sum(c["accepted"][1:]) for c in cs])
        print(f"| {arm} | {len(cs)} | {ms:.1f} | {np.mean([c['n'] for c in cs]):.1f} | "
              f"{np.mean([c['steps'] for c in cs]):.2f} | {emitted:.2f} | {1000 * emitted / ms:.1f} |")


if __name__ == "__main__":
    main()
