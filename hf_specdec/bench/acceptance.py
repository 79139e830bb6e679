"""Per-node acceptance of the multi-draft rules on real (p, q) pairs: how often a node with k sampled children
accepts one of them, for RRS, RRSw and SpecHub, with p the target's and q the shipped FSPAD head's next-token
distributions (both at the same temperature) along the target's own sampled answers to Spec-Bench dev
questions. Closed forms for RRS and SpecHub, Monte Carlo through the real sampler and plan for RRSw. Far less
noisy than tau from whole generations, which the `bench` command measures.

    hf-specdec acceptance --per-category 1 --temperatures 0.6 1 --children 2 3 --max-new-tokens 96 --rrsw-draws 16

RRSw's Monte Carlo costs ~1 ms per node and draw at the full 49k vocabulary on this CPU (~70 ms a node at 64
draws), so it dominates the run time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from .specbench import DEV_QUESTIONS, load_questions


def rrsw_acceptance(p: torch.Tensor, q: torch.Tensor, m: int, draws: int, generator=None) -> torch.Tensor:
    """Monte Carlo estimate of RRSw's acceptance at each row of p, q [N, V]: P(some child accepted) averaged
    over `draws` draft tuples drawn by the real sampler, with the plan's exact acceptance per tuple."""
    from ..multidraft import VERIFIERS

    rule = VERIFIERS["rrsw"]
    out = []
    for p_row, q_row in zip(p, q):
        k = min(m, int((q_row > 0).sum()))
        drafts = rule.sample(q_row.expand(draws, -1), k, generator)
        plan = rule.plan(p_row.expand(draws, -1), q_row.expand(draws, -1), drafts)
        out.append(1 - (1 - plan.accept).prod(-1).mean())
    return torch.stack(out)


@torch.no_grad()
def node_distributions(target, head, tokenizer, prompt: str, temperature: float, max_new_tokens: int):
    """(p, q) [N, V] at every answer position: the target's and the head's next-token distributions at
    `temperature`, the head reading the target's features (what it sees for a tree root's children)."""
    from transformers import DynamicCache

    from ..strategies.engine import target_forward

    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = target.generate(ids, do_sample=True, temperature=temperature, top_k=None, top_p=None,
                          max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    L = ids.shape[1]
    features, logits = target_forward(target, out, DynamicCache(config=target.config), torch.arange(out.shape[1])[None])
    # the head at position t reads (x_{t+1}, f_t) and predicts x_{t+2}
    h = head(input_ids=out[:, 1:], features=features[:, :-1], position_ids=torch.arange(out.shape[1] - 1)[None],
             cache=DynamicCache())
    draft_logits = head.scatter_to_target(head.compute_logits(h.hidden_states).float(), fill=float("-inf"))
    # answer tokens x_L .. x_{end-1}: target p from position t = L-1 .., head q from head position t - 1
    p = (logits[0, L - 1 : -1] / temperature).softmax(-1)
    q = (draft_logits[0, L - 2 : -1] / temperature).softmax(-1)
    return p, q


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec acceptance", description=__doc__.split("\n")[0])
    ap.add_argument("--questions", default=str(DEV_QUESTIONS))
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 1.0])
    ap.add_argument("--children", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rrsw-draws", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results/acceptance.json")
    args = ap.parse_args(argv)
    from ..heads import default_draft
    from ..multidraft import hub_acceptance, rrs_acceptance
    from ..training.prepare import load_target

    target, tokenizer = load_target(None, getattr(torch, args.dtype))
    head = default_draft(target, tokenizer)
    questions = load_questions(args.questions, args.per_category)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for temperature in args.temperatures:
        torch.manual_seed(args.seed)
        pairs = [node_distributions(target, head, tokenizer, q["turns"][0], temperature, args.max_new_tokens)
                 for q in questions]
        p = torch.cat([a for a, _ in pairs])
        q = torch.cat([b for _, b in pairs])
        row = {"temperature": temperature, "nodes": p.shape[0],
               "single draft": float(torch.minimum(p, q).sum(-1).mean())}
        for k in args.children:
            row[f"rrs k={k}"] = float(rrs_acceptance(p, q, k).mean())
            row[f"rrsw k={k}"] = float(rrsw_acceptance(p, q, k, args.rrsw_draws, gen).mean())
            row[f"spechub k={k}"] = float(hub_acceptance(p, q, k - 1).mean())
        rows.append(row)
    meta = {
        "command": "hf-specdec acceptance " + " ".join(argv if argv is not None else sys.argv[2:]),
        "model": "SmolLM2-135M-Instruct", "head": "shipped FSPAD head", "dtype": args.dtype,
        "questions": len(questions), "machine": f"{platform.machine()} CPU", "date": datetime.date.today().isoformat(),
    }
    lines = [f"Per-node acceptance, {meta['questions']} questions, {meta['dtype']}, {meta['date']}", "",
             "| T | nodes | 1 draft | " + " | ".join(f"RRS / RRSw / SpecHub, k={k}" for k in args.children) + " |",
             "|---|---|---|" + "---|" * len(args.children)]
    for r in rows:
        cells = [f"{r[f'rrs k={k}']:.3f} / {r[f'rrsw k={k}']:.3f} / {r[f'spechub k={k}']:.3f}" for k in args.children]
        lines.append(f"| {r['temperature']:g} | {r['nodes']} | {r['single draft']:.3f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out}")
    return 0
