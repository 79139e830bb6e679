"""What the fspad engine delivers at a known draft accuracy, before a trained head exists: an oracle head
whose top token is the target's own greedy continuation with probability `accuracy`, on the default target,
against stock greedy `generate` (runs interleaved per prompt; medians). Separates engine overhead from
head quality, and shows which tree shape pays on this machine. Float32 by default (see --dtype).

    hf-specdec ceiling --prompts 3 --max-new-tokens 96 --out bench_results/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ..default_model import default_target
from .specbench import DEV_QUESTIONS
from ..testing import oracle_head



def load_prompts(path: Path, n: int) -> list[str]:
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_cat = {}
        for row in rows:
            by_cat.setdefault(row["category"], row["turns"][0])
        return list(by_cat.values())[:n]
    return ["Explain why the sky is blue.", "Write a short poem about autumn.", "What is 17 times 23?"][:n]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default=str(DEV_QUESTIONS))
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accuracies", type=float, nargs="+", default=[1.0, 0.8, 0.6])
    parser.add_argument("--shapes", nargs="+", default=["4,4,16", "2,6,12", "4,6,24", "8,5,32"],
                        help="tree_top_k,tree_depth,tree_total_tokens")
    # float32 by default: the oracle follows stock greedy output, and in bf16 fspad's output parts from it by
    # rounding (see README), after which the oracle is wrong for every later token and tau says nothing.
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--out", default="bench_results/ceiling.json")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    target, tok = default_target(dtype=getattr(torch, args.dtype))
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    methods = [("stock", None, None)] + [(f"acc{a}:{s}", a, s) for a in args.accuracies for s in shapes]
    times = {m[0]: [] for m in methods}
    taus = {m[0]: [] for m in methods}
    match = {m[0]: [] for m in methods}
    tokens = {m[0]: [] for m in methods}
    for p_i, prompt in enumerate(load_prompts(Path(args.questions), args.prompts)):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        ref = target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)  # warm-up + reference
        for _ in range(args.rounds):
            for name, acc, shape in methods:
                if acc is None:
                    start = time.perf_counter()
                    out = target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
                    times[name].append(time.perf_counter() - start)
                    tokens[name].append(out.shape[1] - ids.shape[1])
                    continue
                head = oracle_head(target, ref, acc, seed=p_i)
                start = time.perf_counter()
                out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=args.max_new_tokens,
                                      do_sample=False, return_dict_in_generate=True, tree_top_k=shape[0],
                                      tree_depth=shape[1], tree_total_tokens=shape[2])
                times[name].append(time.perf_counter() - start)
                tokens[name].append(out.spec_stats.new_tokens)
                taus[name].append(out.spec_stats.tau)
                match[name].append(torch.equal(out.sequences, ref))
    base = sum(tokens["stock"]) / sum(times["stock"])
    rows = []
    print(f"| method ({args.dtype}, {torch.get_num_threads()} threads) | tau | tok/s | speedup | identical to stock |")
    print("|---|---|---|---|---|")
    for name, _, _ in methods:
        rate = sum(tokens[name]) / sum(times[name])
        tau = statistics.median(taus[name]) if taus[name] else 1.0
        same = sum(match[name]) / len(match[name]) if match[name] else 1.0
        rows.append({"method": name, "tau": tau, "tokens_per_s": rate, "speedup": rate / base, "match_rate": same})
        print(f"| {name} | {tau:.2f} | {rate:.1f} | {rate / base:.2f}x | {same:.0%} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
