"""How far a head is from the best any drafter can do when the target samples (T > 0), per tree shape.

Under sampling, fspad verifies a node's deterministic children with recursive rejection, which accepts child x
with the target's probability p(x) (`verification.deterministic_acceptance`): the expected tokens of a cycle are
1 + sum over non-root nodes of the product of p along the node's path (`verification.expected_accepted`). A
drafter whose distribution is the target's own (q = p) ranks every node by that very product, so the EAGLE-2
tree it grows holds the nodes most likely to be accepted, and its expected tau is the ceiling for that node
budget. (Greedy has no such ceiling short of depth + 1: a head that is always right accepts every level.)

Here the target drafts its own trees (an ordinary causal-LM drafter running the target) and both it and the head
report expected tau (no accept / reject draw noise) on the same prompts and tree shapes, lookup drafts off:

    hf-specdec sampling-ceiling --per-category 2 --max-new-tokens 96 --shapes 4,4,16 8,6,32

Tau only: nothing is timed, so it may share the CPU with other work.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..default_model import default_target
from ..heads import default_draft
from ..strategies.common import SpecDecodeStats
from ..strategies.drafters import CausalLMDrafter, check_draft_lm
from ..strategies.engine import open_request, run_tree_decoding
from ..strategies.fspad import TreeDrafts, TreeShape
from ..strategies.spechub import draft_warpers
from ..verification import expected_accepted, verify_sampling
from .specbench import DEV_QUESTIONS, group_of, load_questions


class WarpedLMDrafter(CausalLMDrafter):
    """A causal-LM drafter whose log-probs pass through the request's sampling warpers (temperature, top-k, ...):
    run by the target itself, its q is the target's processed p, the distribution verification samples from."""

    def __init__(self, draft, stats: SpecDecodeStats, warpers):
        super().__init__(draft, stats)
        self.warpers = warpers

    def _warp(self, log_probs: torch.Tensor) -> torch.Tensor:
        return self.warpers(None, log_probs.float()).log_softmax(-1)

    def _feed(self, tokens, start):
        log_probs, features = super()._feed(tokens, start)
        return self._warp(log_probs), features

    def expand(self, cached: int):
        unwarped = super().expand(cached)

        def expand(*args):
            log_probs, features = unwarped(*args)
            return self._warp(log_probs), features

        return expand


def self_drafted_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                          draft_model=None, streamer=None, tree_top_k: int = 4, tree_depth: int = 4,
                          tree_total_tokens: int = 16, synced_gpus: bool = False, **model_kwargs):
    """fspad's tree decoding (EAGLE-2 growth, recursive rejection over deterministic children) with an ordinary
    causal LM as the drafter, one row, sampling only; `spec_stats.expected_tau` is what the cycles were expected
    to emit. With `draft_model` the target itself (q = p) that is the sampling ceiling of the tree shape.
    (`generate(..., custom_generate=self_drafted_generate, draft_model=lm)`: an analysis tool, not a strategy.)"""
    if not generation_config.do_sample:
        raise ValueError("self_drafted_generate measures sampling (do_sample=True); at greedy a perfect drafter "
                         "accepts every level, so the ceiling is tree_depth + 1.")
    check_draft_lm(draft_model, model, "self_drafted_generate")
    cache, padding, prompt = open_request("fspad", model, input_ids, generation_config, synced_gpus, model_kwargs,
                                          draft=draft_model, batched=False)
    stats = SpecDecodeStats(expected_lengths=[])
    drafter = WarpedLMDrafter(draft_model, stats, draft_warpers(logits_processor))
    shape = TreeShape(tree_top_k, tree_depth, tree_total_tokens, lookup_tokens=0)
    grow = TreeDrafts(drafter, shape, None, "merge", None, sampling=True)

    def verify(tree, scores):
        stats.expected_lengths.append(1.0 + float(expected_accepted(tree, scores)[0]))
        return verify_sampling(tree, scores)

    return run_tree_decoding(model, prompt, padding, cache, drafter, grow, verify, logits_processor,
                             stopping_criteria, generation_config, streamer, stats)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hf-specdec sampling-ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default=str(DEV_QUESTIONS), help="Spec-Bench style JSONL")
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--shapes", nargs="+", default=["4,4,16", "8,6,32"], help="tree_top_k,tree_depth,tree_total_tokens")
    parser.add_argument("--draft", default=None, help="the head to compare (default: the shipped FSPAD head)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_results/sampling_ceiling.json")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        raise SystemExit("--temperature must be > 0: at greedy the ceiling is tree_depth + 1.")
    torch.set_grad_enabled(False)
    target, tok = default_target(dtype=getattr(torch, args.dtype))
    if args.draft:
        from ..draft import load_draft

        head = load_draft(args.draft, target=target)
    else:
        head = default_draft(target, tok)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    questions = load_questions(args.questions, args.per_category)
    records = []
    for q_i, question in enumerate(questions):
        ids = tok.apply_chat_template([{"role": "user", "content": question["turns"][0]}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        for shape in shapes:
            tree = dict(tree_top_k=shape[0], tree_depth=shape[1], tree_total_tokens=shape[2])
            for drafter in ("head", "target"):
                torch.manual_seed(args.seed * 100_003 + q_i)
                common = dict(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature,
                              top_k=None, top_p=None, return_dict_in_generate=True, **tree)
                if drafter == "head":
                    out = target.generate(ids, assistant_model=head, strategy="fspad", lookup_tokens=0,
                                          track_expected_tau=True, **common)
                else:
                    out = target.generate(ids, custom_generate=self_drafted_generate, draft_model=target, **common)
                stats = out.spec_stats
                records.append({"question_id": question["question_id"], "group": group_of(question["category"]),
                                "shape": ",".join(map(str, shape)), "drafter": drafter,
                                "cycles": len(stats.expected_lengths), "expected_tau": stats.expected_tau})
    rows = []
    print(f"Expected tau at T={args.temperature:g} ({args.dtype}, {len(questions)} questions, {args.max_new_tokens} "
          "new tokens, lookup off): the head against the target drafting its own tree (q = p, the ceiling)")
    print("| group | tree | head | ceiling | head / ceiling |")
    print("|---|---|---|---|---|")
    groups = sorted({r["group"] for r in records}) + ["overall"]
    for group in groups:
        for shape in args.shapes:
            def tau(drafter):
                picked = [r for r in records if r["shape"] == shape and r["drafter"] == drafter
                          and group in (r["group"], "overall")]
                # per-cycle mean over all the group's cycles, as bench's tau
                return sum(r["expected_tau"] * r["cycles"] for r in picked) / max(1, sum(r["cycles"] for r in picked))
            head_tau, ceiling = tau("head"), tau("target")
            rows.append({"group": group, "shape": shape, "head": head_tau, "ceiling": ceiling})
            print(f"| {group} | {shape} | {head_tau:.2f} | {ceiling:.2f} | {head_tau / ceiling:.0%} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": vars(args), "rows": rows, "records": records}, indent=1))


if __name__ == "__main__":
    main()
