"""Does the cost curve predict what a cycle really costs? Times every cycle of `strategy="fspad"` (default
settings) on the held-out tuning prompts and sets it beside the sizing's prediction for the tree it chose
(overhead + head steps x head_step_ms + c(N)); then fits both to cycle ~ a + b N + h steps + l L (N tree
tokens, steps head steps incl. the catch-up, L cached tokens), which shows which of the curve's terms is off.

    python examples/make_tune_prompts.py > tune.jsonl
    python examples/check_cost_model.py tune.jsonl [--temperature 1] [--draft HEAD_DIR] [--out check.json]
    python examples/check_cost_model.py tune.jsonl --estimate-calibration \
        hf_specdec/pretrained/smollm2-135m-instruct-fspad/estimate_calibration.json   (the head's fitted maps)

A cycle is timed from one tree growth to the next (growth, verification, compaction, emission, catch-up).
Run it on a quiet CPU.
"""

import argparse
import json
import time

import numpy as np
import torch

import hf_specdec.strategies.fspad as fspad_module
from hf_specdec import FSPADDraftModel
from hf_specdec.default_model import default_target
from hf_specdec.heads import default_draft
from hf_specdec.tree import EstimateCalibration


def accepted_nodes(tokens: list[int], parents: list[int], emitted: list[int]) -> list[bool]:
    """Which nodes of a verified tree were on its accepted path, from the draft tokens committed after it
    (siblings carry distinct tokens, so the path is the one spelling them out)."""
    on_path, node = [False] * len(tokens), 0
    on_path[0] = True
    for token in emitted:
        child = next((i for i, p in enumerate(parents) if p == node and tokens[i] == token), None)
        if child is None:
            break
        on_path[child], node = True, child
    return on_path


def record_cycles(target, tok, prompts, generate_kwargs) -> list[dict]:
    cycles, real_call = [], fspad_module.TreeDrafts.__call__

    def timed_call(self, committed, draft_state, cached):
        if self.curve is None:  # the calibration's own fixed-tree decodes (the curve measured on first use)
            return real_call(self, committed, draft_state, cached)
        now = time.perf_counter()
        if cycles and "ms" not in cycles[-1] and cycles[-1]["answer"] == answer[0]:
            last = cycles[-1]
            last["ms"] = (now - last["start"]) * 1000
            last["accepted"] = accepted_nodes(last["tokens"], last["parents"], committed[0, last["length"]:-1].tolist())
        steps_before = self.drafter.stats.draft_forwards
        tree = real_call(self, committed, draft_state, cached)
        steps, n, curve = 1 + self.drafter.stats.draft_forwards - steps_before, tree.num_nodes, self.curve
        cycles.append({"answer": answer[0], "start": now, "n": n, "steps": steps, "cached": cached,
                       "predicted_ms": curve.overhead_ms + steps * curve.head_step_ms + curve.verify(n),
                       "length": committed.shape[1], "tokens": tree.tokens[0].tolist(),
                       "parents": tree.parents[0].tolist(), "depths": tree.depths[0].tolist(),
                       "estimates": tree.estimates[0].tolist()})
        return tree

    answer = [0]
    fspad_module.TreeDrafts.__call__ = timed_call
    try:
        for i, prompt in enumerate(prompts):
            answer[0] = i
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            torch.manual_seed(i)
            target.generate(ids, strategy="fspad", **{"max_new_tokens": 128, **generate_kwargs})
    finally:
        fspad_module.TreeDrafts.__call__ = real_call
    return [c for c in cycles if "ms" in c]  # an answer's last cycle has no next growth to end it (nor a path)


def fit(cycles, key) -> dict:
    """Least squares of a cycle's time on its tree tokens, head steps, cached tokens and emitted tokens (the
    accepted path and the bonus token: what the catch-up, compaction and emission work on)."""
    X = np.column_stack([np.ones(len(cycles)), [c["n"] for c in cycles], [c["steps"] for c in cycles],
                         [c["cached"] for c in cycles], [sum(c["accepted"]) for c in cycles]])
    coef, *_ = np.linalg.lstsq(X, np.array([c[key] for c in cycles]), rcond=None)
    return dict(zip(["ms", "ms_per_tree_token", "ms_per_head_step", "ms_per_cached_token", "ms_per_emitted_token"],
                    coef.round(4).tolist()))


def reliability(cycles) -> list[dict]:
    """Predicted vs observed acceptance of the nodes the sizing kept (the root aside), by estimate bin and by
    depth, and the cycle's expected tokens (1 + sum of its estimates) beside what it emitted, by tree size."""
    def row(label, pairs):
        return {"bin": label, "nodes": len(pairs), "predicted": float(np.mean([p for p, _ in pairs])),
                "observed": float(np.mean([o for _, o in pairs]))}

    nodes = [(e, a, d) for c in cycles for e, a, d in zip(c["estimates"][1:], c["accepted"][1:], c["depths"][1:])]
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]
    groups = [(f"{lo:.1f}-{min(hi, 1.0):.1f}", [(e, a) for e, a, _ in nodes if lo <= e < hi])
              for lo, hi in zip(edges, edges[1:])]
    groups += [(f"depth {depth}", [(e, a) for e, a, d in nodes if d == depth]) for depth in sorted({d for *_, d in nodes})]
    groups += [(f"cycles N {lo}-{hi - 1}", [(1 + sum(c["estimates"][1:]), 1 + sum(c["accepted"][1:]))
                                            for c in cycles if lo <= c["n"] < hi])
               for lo, hi in ((1, 2), (2, 5), (5, 9), (9, 17), (17, 25), (25, 49))]
    return [row(label, pairs) for label, pairs in groups if pairs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prompts", help="a JSONL of {prompt} rows (examples/make_tune_prompts.py)")
    ap.add_argument("--estimate-calibration", default=None,
                    help="a JSON with 'greedy' / 'sampling' maps (EstimateCalibration.to_dict) to size trees with")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--draft", default=None, help="a head folder (default: the shipped head)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    target, tok = default_target(dtype=torch.bfloat16)
    head = (FSPADDraftModel.from_pretrained(args.draft, dtype=target.dtype).attach_target(target, tok) if args.draft
            else default_draft(target, tok))
    prompts = [json.loads(line)["prompt"] for line in open(args.prompts, encoding="utf-8")]
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=None, top_p=None) if args.temperature else dict(do_sample=False)
    kwargs = dict(assistant_model=head, **sampling)
    if args.estimate_calibration:
        maps = json.load(open(args.estimate_calibration, encoding="utf-8"))
        kwargs["estimate_calibration"] = EstimateCalibration.from_dict(maps["sampling" if args.temperature else "greedy"])
    with torch.no_grad():
        record_cycles(target, tok, prompts[:1], {**kwargs, "max_new_tokens": 16})  # warm-up, cost curve
        cycles = record_cycles(target, tok, prompts, kwargs)
    report = {"cycles": len(cycles), "mean_ms": float(np.mean([c["ms"] for c in cycles])),
              "mean_predicted_ms": float(np.mean([c["predicted_ms"] for c in cycles])),
              "mean_tree_tokens": float(np.mean([c["n"] for c in cycles])),
              "mean_head_steps": float(np.mean([c["steps"] for c in cycles])),
              "fit_measured": fit(cycles, "ms"), "fit_predicted": fit(cycles, "predicted_ms")}
    print(f"{report['cycles']} cycles: {report['mean_ms']:.1f} ms measured, {report['mean_predicted_ms']:.1f} ms "
          f"predicted; {report['mean_tree_tokens']:.1f} tree tokens, {report['mean_head_steps']:.2f} head steps per cycle")
    print("| cycle ~ | a (ms) | per tree token | per head step | per cached token | per emitted token |\n"
          "|---|---|---|---|---|---|")
    for name in ("measured", "predicted"):
        f = report[f"fit_{name}"]
        print(f"| {name} | {f['ms']:.1f} | {f['ms_per_tree_token']:.3f} | {f['ms_per_head_step']:.2f} | "
              f"{f['ms_per_cached_token']:.4f} | {f['ms_per_emitted_token']:.2f} |")
    report["reliability"] = reliability(cycles)
    report["cycles_each"] = [{k: c[k] for k in ("answer", "n", "steps", "cached", "ms", "predicted_ms")}
                             | {"emitted": sum(c["accepted"])} for c in cycles]
    print("\n| kept nodes / cycles | count | predicted | observed |\n|---|---|---|---|")
    for r in report["reliability"]:
        print(f"| {r['bin']} | {r['nodes']} | {r['predicted']:.3f} | {r['observed']:.3f} |")
    if args.out:
        json.dump(report, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
