"""Calibrate the lookup drafts' acceptance estimates (hf_specdec.lookup) on the target's own answers to
training-pool prompts held out from head training, and print the reliability table (predicted vs observed);
with --head, the same table for the shipped head's path probabilities, the other estimate on the scale.

    hf-specdec calibrate-lookup --prompts ../shared/data/train_prompts.jsonl --skip-per-source 800 --per-source 6 --head
    hf-specdec calibrate-lookup ... --temperature 1        (sampling: the rates LOOKUP_CALIBRATION_SAMPLING holds)

Teacher-forced: at every answer position the committed text is the prompt plus the answer so far, the lookup
trie is built as decoding builds it, and a node is scored against the answer's continuation. Greedy (the
default): a node counts as accepted when its path is the answer's continuation (what greedy verification
accepts). Sampling (--temperature T, answers sampled at T): given its parent accepted, a node is accepted with
probability p_T(token | the parent's path), the target's probability of drawing that token there (recursive
rejection over deterministic drafts accepts the node the target's draw lands on); the parent's path is known
only where it is the answer's continuation, so only those nodes are scored, and the table is of these
conditional rates. With raw frequencies f (count / M at depth 1, count(child) / count(parent) deeper), the
fitted a_n = sum(accepted) / sum(f) over depth-1 nodes and g_n = sum(accepted) / sum(f) over deeper nodes
whose parent was accepted: estimates that are right on average per match length n.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from ..lookup import LOOKUP_CALIBRATION, SuffixIndex, lookup_trie

BINS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]


def held_out_prompts(path, skip_per_source: int, per_source: int) -> list[str]:
    """Rows skip+1 .. skip+per_source of each source of a prompt pool (training took the first rows)."""
    seen, out = defaultdict(int), []
    for line in open(path, encoding="utf-8"):  # not str.splitlines: prompts may hold U+2028
        row = json.loads(line)
        seen[row["source"]] += 1
        if skip_per_source < seen[row["source"]] <= skip_per_source + per_source and len(row["prompt"]) < 4000:
            out.append(row["prompt"])
    return out


def node_records(sequence: list[int], answer_start: int, depth: int, max_matches: int,
                 records: list[tuple] | None = None, probs: torch.Tensor | None = None) -> list[tuple]:
    """Append to `records` one record per lookup trie node at every answer position of `sequence`: (match
    length n, depth, raw frequency f, index of the parent's record in `records` or -1, on the answer (the node's
    path is the answer's continuation), accepted). Greedy: accepted = on the answer. With `probs` [len(sequence),
    V] (the target's sampling distribution after each position): accepted = p(token | the parent's path) for a
    node whose parent is on the answer (or the root), else None (not known)."""
    ones = {n: (1.0, 1.0) for n in LOOKUP_CALIBRATION}
    index = SuffixIndex()
    index.extend(sequence[:answer_start])
    records = [] if records is None else records
    for t in range(answer_start, len(sequence) - depth + 1):  # where the whole continuation is known
        trie = lookup_trie(index, depth, max_matches, calibration=ones)
        truth = sequence[t : t + depth]
        first = len(records)  # trie node i is record first + i
        for node, (token, parent) in enumerate(zip(trie.tokens, trie.parents)):
            up = first + parent if parent >= 0 else -1
            d = 1 if up < 0 else records[up][1] + 1
            parent_on = up < 0 or records[up][4]
            on = parent_on and d <= len(truth) and truth[d - 1] == token
            accepted = on if probs is None else (float(probs[t + d - 2, token]) if parent_on else None)
            f = trie.estimates[node] if up < 0 else trie.estimates[node] / trie.estimates[parent]
            records.append((trie.match_length, d, f, up, on, accepted))
        index.extend([sequence[t]])
    return records


def fit(records) -> dict[int, tuple[float, float]]:
    """a_n, g_n per match length (module docstring)."""
    sums = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # n -> [accepted at depth 1, f, accepted deeper, f]
    for n, d, f, up, on, accepted in records:
        if up < 0:
            sums[n][0] += accepted
            sums[n][1] += f
        elif records[up][4]:  # the parent accepted (greedy), or drawn (sampling: the answer took its path)
            sums[n][2] += accepted
            sums[n][3] += f
    fitted = {}
    for n in sorted(LOOKUP_CALIBRATION):
        acc1, f1, acc2, f2 = sums.get(n, [0.0] * 4)
        a = acc1 / f1 if f1 else LOOKUP_CALIBRATION[n][0]
        g = acc2 / f2 if f2 else LOOKUP_CALIBRATION[n][1]
        fitted[n] = (round(min(a, 1.0), 3), round(min(g, 1.0), 3))
    return fitted


def estimates(records, calibration, conditional: bool = False) -> list[float]:
    """Each node's P(accepted) estimate (hf_specdec.lookup's formula) from its raw frequencies; `conditional`:
    given its parent accepted (a_n f at depth 1, g_n f deeper)."""
    out = []
    for n, d, f, up, *_ in records:
        a, g = calibration[min(n, max(calibration))]
        out.append(a * f if up < 0 else (1.0 if conditional else out[up]) * g * f)
    return out


def reliability(records, calibration, sampled: bool = False) -> list[dict]:
    """Predicted P(node accepted) against the observed share of accepted nodes, binned by prediction. `sampled`
    (records made with `probs`): the nodes whose acceptance is known (their parent on the answer) against
    their conditional estimates, as the observations are conditional too."""
    pairs = zip(estimates(records, calibration, conditional=sampled), (r[5] for r in records))
    return binned((est, acc) for est, acc in pairs if acc is not None)


def head_records(target, head, ids, max_new_tokens: int, temperature: float = 0.0) -> list[tuple[float, bool]]:
    """(estimate, accepted) for every head node verified while `strategy="fspad"` (fixed tree 4,4,16, no
    lookup) answers, greedily or sampling at `temperature`: the head's estimates are its path probabilities, and
    a node is accepted iff it lies on the accepted path (a draw under sampling, whose mean is P(accepted))."""
    import hf_specdec.strategies.fspad as fspad_module

    records = []
    rule = "verify_sampling" if temperature > 0 else "verify_greedy"
    real = getattr(fspad_module, rule)

    def recording(tree, scores, *args):
        verdict = real(tree, scores, *args)
        on_path = set(verdict.path[0].tolist())
        records.extend((float(e), i in on_path) for i, e in enumerate(tree.estimates[0].tolist()) if i > 0)
        return verdict

    sampling = dict(do_sample=True, temperature=temperature, top_k=None, top_p=None) if temperature > 0 else dict(do_sample=False)
    setattr(fspad_module, rule, recording)
    try:
        target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=max_new_tokens,
                        tree_top_k=4, tree_depth=4, tree_total_tokens=16, lookup_tokens=0, **sampling)
    finally:
        setattr(fspad_module, rule, real)
    return records


def binned(pairs) -> list[dict]:
    """(predicted, observed) pairs -> reliability rows by predicted bin."""
    rows = defaultdict(lambda: [0, 0.0, 0])
    for est, ok in pairs:
        b = next(i for i in range(len(BINS) - 1) if est < BINS[i + 1])
        rows[b][0] += 1
        rows[b][1] += est
        rows[b][2] += ok
    return [{"bin": f"{BINS[b]:.2f}-{min(BINS[b + 1], 1):.2f}", "nodes": c, "predicted": s / c, "observed": o / c}
            for b, (c, s, o) in sorted(rows.items())]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec calibrate-lookup", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", required=True, help="the training prompt pool (JSONL with source, prompt)")
    ap.add_argument("--skip-per-source", type=int, default=800, help="rows of each source that training may have used")
    ap.add_argument("--per-source", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--max-matches", type=int, default=8)
    ap.add_argument("--head", action="store_true", help="also the shipped head's estimates, from real decoding")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="0: greedy answers and acceptance; T > 0: answers sampled at T, acceptance p_T (docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results/lookup_calibration.json")
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    from ..default_model import default_target
    from ..heads import default_draft

    target, tok = default_target()
    head = default_draft(target, tok) if args.head else None
    records, head_pairs = [], []
    prompts = held_out_prompts(args.prompts, args.skip_per_source, args.per_source)
    for prompt_i, prompt in enumerate(tqdm(prompts, desc="answers")):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        probs = None
        with torch.no_grad():
            if args.temperature > 0:
                torch.manual_seed(args.seed + prompt_i)
                out = target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=True,
                                      temperature=args.temperature, top_k=None, top_p=None)
                probs = (target(out).logits[0].float() / args.temperature).softmax(-1)
            else:
                out = target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        node_records(out[0].tolist(), ids.shape[1], args.depth, args.max_matches, records, probs)
        if head is not None:
            head_pairs += head_records(target, head, ids, args.max_new_tokens, args.temperature)
    fitted = fit(records)
    table = reliability(records, fitted, sampled=args.temperature > 0)
    print(f"{len(prompts)} held-out pool prompts, {len(records)} lookup nodes")
    print("fitted (match length n: a_n, g_n):", fitted)
    print("| predicted bin | nodes | mean predicted | observed |\n|---|---|---|---|")
    for r in table:
        print(f"| {r['bin']} | {r['nodes']} | {r['predicted']:.3f} | {r['observed']:.3f} |")
    head_table = binned(head_pairs) if head is not None else None
    if head_table:
        print(f"\nthe shipped head's path probabilities (fixed tree 4,4,16, {len(head_pairs)} verified nodes):")
        print("| predicted bin | nodes | mean predicted | observed |\n|---|---|---|---|")
        for r in head_table:
            print(f"| {r['bin']} | {r['nodes']} | {r['predicted']:.3f} | {r['observed']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": vars(args), "fitted": fitted, "reliability": table,
                                          "head_reliability": head_table}, indent=1))
    return 0
