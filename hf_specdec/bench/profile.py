"""Where strategy="fspad" spends its time on this machine: cProfile over a few answers with the shipped head,
split into the target's verification forwards, head steps, tree growth bookkeeping, verification rules,
KV-cache compaction and the rest (Python overhead, processors, stopping criteria).

    hf-specdec profile --prompts 4 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from .specbench import DEV_QUESTIONS, load_questions

# (label, module path suffix, function name): cumulative time of each; "tree growth" excludes head steps.
PARTS = [
    ("target forwards (prefill + verification)", "strategies/engine.py", "target_forward"),
    ("head steps: catch-up on accepted tokens", "strategies/drafters.py", "catch_up"),
    ("head steps: tree expansion", "strategies/drafters.py", "expand"),
    ("tree growth (incl. its head steps)", "tree/growth.py", "grow_tree"),
    ("verification rules", "verification.py", "verify_greedy"),
    ("verification rules", "verification.py", "verify_sampling"),
    ("KV-cache compaction", "tree/cache.py", "compact_cache"),
    ("logits processors per tree node", "strategies/common.py", "process_tree_scores"),
    ("emitting tokens + stopping criteria", "strategies/common.py", "emit"),
]


def breakdown(stats: pstats.Stats, total_name: str = "fspad_generate") -> dict[str, float]:
    """Seconds per part (cumulative), from a pstats.Stats of runs of `fspad_generate`."""
    cumulative = {}
    for (path, _, name), (_, _, _, ct, _) in stats.stats.items():
        key = (path.replace("\\", "/"), name)
        cumulative[key] = cumulative.get(key, 0.0) + ct

    def cum(suffix, name):
        return sum(t for (path, fn), t in cumulative.items() if fn == name and path.endswith(suffix))

    total = cum("strategies/fspad.py", total_name)
    parts = {}
    for label, suffix, name in PARTS:
        parts[label] = parts.get(label, 0.0) + cum(suffix, name)
    expansion = parts["head steps: tree expansion"]
    parts["tree growth bookkeeping (without head steps)"] = parts.pop("tree growth (incl. its head steps)") - expansion
    parts["rest (Python, glue)"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec profile", description=__doc__.split("\n")[0])
    p.add_argument("--questions", default=str(DEV_QUESTIONS))
    p.add_argument("--prompts", type=int, default=4, help="first-turn prompts, one per category group")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--draft", default=None, help="head folder (default: the shipped FSPAD head)")
    p.add_argument("--sample", action="store_true", help="profile do_sample=True (T=1) instead of greedy")
    args = p.parse_args(argv)
    from ..draft import FSPADDraftModel
    from ..heads import default_draft
    from ..training.prepare import load_target

    target, tok = load_target(None, getattr(torch, args.dtype))
    head = (FSPADDraftModel.from_pretrained(args.draft, dtype=target.dtype).attach_target(target, tok)
            if args.draft else default_draft(target, tok))
    prompts = [q["turns"][0] for q in load_questions(args.questions, per_category=1)][: args.prompts]
    inputs = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"] for t in prompts]
    kwargs = dict(assistant_model=head, strategy="fspad", max_new_tokens=args.max_new_tokens,
                  do_sample=args.sample, return_dict_in_generate=True)
    target.generate(inputs[0], **{**kwargs, "max_new_tokens": 8})  # warm-up
    profiler = cProfile.Profile()
    tokens = forwards = 0
    for ids in inputs:
        profiler.enable()
        out = target.generate(ids, **kwargs)
        profiler.disable()
        tokens += out.spec_stats.new_tokens
        forwards += out.spec_stats.target_forwards
    parts = breakdown(pstats.Stats(profiler))
    total = parts["total"]
    print(f"fspad, {len(inputs)} answers, {tokens} tokens, {forwards} target forwards (tau {tokens / forwards:.2f}), "
          f"{args.dtype}, {torch.get_num_threads()} threads: {total:.2f} s ({tokens / total:.1f} tok/s)\n")
    print("| part | seconds | share |\n|---|---|---|")
    for label, seconds in parts.items():
        if label != "total":
            print(f"| {label} | {seconds:.2f} | {seconds / total:.0%} |")
    return 0
