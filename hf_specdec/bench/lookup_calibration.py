"""Calibrate the lookup drafts' acceptance estimates (hf_specdec.lookup) on the target's own answers to
training-pool prompts held out from head training (the 'calibration' split of training/held_out_pool.json), and
print the reliability table (predicted vs observed); with --head, the same for the shipped head's path
probabilities, the other estimate on the scale, and the monotone map that calibrates them
(tree/sizing.py: EstimateCalibration), checked on the half of the prompts it was not fitted on.

    hf-specdec calibrate-lookup --prompts ../shared/data/train_prompts.jsonl --head
    hf-specdec calibrate-lookup ... --temperature 1        (sampling: the rates LOOKUP_CALIBRATION_SAMPLING holds)
    hf-specdec calibrate-lookup ... --head --save-head-calibration hf_specdec/pretrained/smollm2-135m-instruct-fspad
        (the map, fitted on all prompts, into that head's generation_config.json for greedy or for sampling)

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

from ..lookup import LOOKUP_CALIBRATION, MATCH_BUCKETS, SuffixIndex, lookup_trie, match_bucket
from ..training.held_out import held_out_rows
from ..tree import EstimateCalibration

BINS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]


def held_out_prompts(path) -> list[str]:
    """The calibration split of the held-out pool prompts (training/held_out.py)."""
    return [row["prompt"] for row in held_out_rows(path, "calibration")]


def node_records(sequence: list[int], answer_start: int, depth: int, max_matches: int,
                 records: list[tuple] | None = None, probs: torch.Tensor | None = None) -> list[tuple]:
    """Append to `records` one record per lookup trie node at every answer position of `sequence`: (match
    length n, depth, raw frequency f, index of the parent's record in `records` or -1, on the answer (the node's
    path is the answer's continuation), accepted). Greedy: accepted = on the answer. With `probs` [len(sequence),
    V] (the target's sampling distribution after each position): accepted = p(token | the parent's path) for a
    node whose parent is on the answer (or the root), else None (not known)."""
    ones = {n: (1.0, 1.0) for n in MATCH_BUCKETS}  # raw frequencies, occurrences kept per bucket
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
    """a_n, g_n per bucket of match lengths (MATCH_BUCKETS; module docstring). A bucket without scored nodes
    takes the rates of the bucket below it (LOOKUP_CALIBRATION's for the first)."""
    sums = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # bucket -> [accepted at depth 1, f, accepted deeper, f]
    for n, d, f, up, on, accepted in records:
        n = match_bucket(n, MATCH_BUCKETS)
        if up < 0:
            sums[n][0] += accepted
            sums[n][1] += f
        elif records[up][4]:  # the parent accepted (greedy), or drawn (sampling: the answer took its path)
            sums[n][2] += accepted
            sums[n][3] += f
    fitted, below = {}, None
    for n in MATCH_BUCKETS:
        acc1, f1, acc2, f2 = sums.get(n, [0.0] * 4)
        known = below or LOOKUP_CALIBRATION[match_bucket(n, LOOKUP_CALIBRATION)]
        a = acc1 / f1 if f1 else known[0]
        g = acc2 / f2 if f2 else known[1]
        fitted[n] = below = (round(min(a, 1.0), 3), round(min(g, 1.0), 3))
    return fitted


def bucket_counts(records) -> dict[int, int]:
    """Depth-1 lookup nodes per match-length bucket: how much each fitted a_n rests on."""
    counts = dict.fromkeys(MATCH_BUCKETS, 0)
    for n, _, _, up, *_ in records:
        counts[match_bucket(n, MATCH_BUCKETS)] += up < 0
    return counts


def estimates(records, calibration, conditional: bool = False) -> list[float]:
    """Each node's P(accepted) estimate (hf_specdec.lookup's formula) from its raw frequencies; `conditional`:
    given its parent accepted (a_n f at depth 1, g_n f deeper)."""
    out = []
    for n, d, f, up, *_ in records:
        a, g = calibration[match_bucket(n, calibration)]
        out.append(a * f if up < 0 else (1.0 if conditional else out[up]) * g * f)
    return out


def reliability(records, calibration, sampled: bool = False) -> list[dict]:
    """Predicted P(node accepted) against the observed share of accepted nodes, binned by prediction. `sampled`
    (records made with `probs`): the nodes whose acceptance is known (their parent on the answer) against
    their conditional estimates, as the observations are conditional too."""
    pairs = zip(estimates(records, calibration, conditional=sampled), (r[5] for r in records))
    return binned((est, acc) for est, acc in pairs if acc is not None)


# The fixed tree the head's nodes are recorded in: the deepest and largest the cost sizing grows
# (strategies/fspad.py: AUTO_MAX_DEPTH, AUTO_MAX_NODES), so every node it may verify is represented.
HEAD_RECORD_TREE = dict(tree_top_k=4, tree_depth=6, tree_total_tokens=32)


def head_records(target, head, ids, max_new_tokens: int, temperature: float = 0.0) -> list[tuple[float, bool]]:
    """(estimate, accepted) for every head node verified while `strategy="fspad"` (fixed tree HEAD_RECORD_TREE,
    no lookup) answers, greedily or sampling at `temperature`: the head's estimates are its raw path
    probabilities, and a node is accepted iff it lies on the accepted path (a draw under sampling, whose mean is
    P(accepted): recursive rejection over deterministic drafts accepts a child with the target's probability
    of its token, whatever the tree's shape)."""
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
                        lookup_tokens=0, estimate_calibration=False, **HEAD_RECORD_TREE, **sampling)
    finally:
        setattr(fspad_module, rule, real)
    return records


def head_calibration_report(per_prompt: list[list[tuple[float, bool]]]) -> dict:
    """The map fitted on all prompts, and an honest check of it: fitted on the even prompts, the reliability of
    the odd prompts' calibrated estimates (and the other way round)."""
    def fit(groups):
        pairs = [p for g in groups for p in g]
        return EstimateCalibration.fit([e for e, _ in pairs], [float(a) for _, a in pairs])

    folds = [per_prompt[0::2], per_prompt[1::2]]
    checked = []
    for fitted_on, checked_on in (folds, folds[::-1]):
        calibration = fit(fitted_on)
        pairs = [p for g in checked_on for p in g]
        mapped = calibration(torch.tensor([e for e, _ in pairs], dtype=torch.float64)).tolist()
        checked += list(zip(mapped, (a for _, a in pairs)))
    return {"calibration": fit(per_prompt).to_dict(), "held_out_reliability": binned(checked)}


def save_head_calibration(head_dir, mode: str, calibration: dict) -> Path:
    """Store a fitted map in a head folder's generation_config.json as estimate_calibration[mode]."""
    path = Path(head_dir) / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.setdefault("estimate_calibration", {})[mode] = calibration
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


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
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--max-matches", type=int, default=8)
    ap.add_argument("--head", action="store_true", help="also the shipped head's estimates, from real decoding")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="0: greedy answers and acceptance; T > 0: answers sampled at T, acceptance p_T (docstring)")
    ap.add_argument("--save-head-calibration", metavar="HEAD_DIR", default=None,
                    help="with --head: write the fitted map into HEAD_DIR/generation_config.json (greedy, or sampling with --temperature)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results/lookup_calibration.json")
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    from ..default_model import default_target
    from ..heads import default_draft

    target, tok = default_target()
    head = default_draft(target, tok) if args.head else None
    records, head_pairs = [], []
    if args.save_head_calibration and not args.head:
        ap.error("--save-head-calibration needs --head")
    prompts = held_out_prompts(args.prompts)
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
            head_pairs.append(head_records(target, head, ids, args.max_new_tokens, args.temperature))
    fitted = fit(records)
    table = reliability(records, fitted, sampled=args.temperature > 0)
    print(f"{len(prompts)} held-out pool prompts, {len(records)} lookup nodes")
    print("fitted (match length n: a_n, g_n):", fitted)
    print("depth-1 nodes per bucket:", bucket_counts(records))
    print("| predicted bin | nodes | mean predicted | observed |\n|---|---|---|---|")
    for r in table:
        print(f"| {r['bin']} | {r['nodes']} | {r['predicted']:.3f} | {r['observed']:.3f} |")
    head_table = head_report = None
    if head is not None:
        head_table = binned(p for g in head_pairs for p in g)
        head_report = head_calibration_report(head_pairs)
        shape = ",".join(str(v) for v in HEAD_RECORD_TREE.values())
        print(f"\nthe shipped head's raw path probabilities (fixed tree {shape}, {sum(map(len, head_pairs))} verified nodes):")
        print("| predicted bin | nodes | mean predicted | observed |\n|---|---|---|---|")
        for r in head_table:
            print(f"| {r['bin']} | {r['nodes']} | {r['predicted']:.3f} | {r['observed']:.3f} |")
        print("\nfitted map (x -> y):", head_report["calibration"])
        print("calibrated by the map fitted on the other half of the prompts:")
        print("| predicted bin | nodes | mean predicted | observed |\n|---|---|---|---|")
        for r in head_report["held_out_reliability"]:
            print(f"| {r['bin']} | {r['nodes']} | {r['predicted']:.3f} | {r['observed']:.3f} |")
        if args.save_head_calibration:
            mode = "sampling" if args.temperature > 0 else "greedy"
            print("wrote", save_head_calibration(args.save_head_calibration, mode, head_report["calibration"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": vars(args), "fitted": fitted, "bucket_counts": bucket_counts(records),
                                          "reliability": table,
                                          "head_reliability": head_table, "head_calibration": head_report}, indent=1))
    return 0
