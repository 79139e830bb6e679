"""Superposed Decoding on this machine: k drafts from strategy="superposed" against (a) k sequential nucleus
runs, (b) one batched num_return_sequences=k nucleus run, (c) one greedy run, (d) beam search with k beams.
Wall time (methods interleaved per prompt, median over prompts), perplexity of each draft under the target
(best of k and mean), and distinctness across the k drafts (unique bigrams / all bigrams).

    hf-specdec bench-superposed --prompts 6 --ks 3 5 8 --lengths 10 30

Prompts: the first `--prefix-tokens` tokens of Spec-Bench dev first turns, as plain text (autocomplete).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .specbench import DEV_QUESTIONS, load_questions

# "superposed/unpacked": with prepack_target=False, what the model's prepacked weights give it (hf_specdec/prepacked.py)
METHODS = ["greedy", "superposed", "superposed/unpacked", "nucleus x k (sequential)", "nucleus k (batched)", "beam k"]


@torch.no_grad()
def perplexities(model, prompt: torch.Tensor, sequences: torch.Tensor, pad: int | None) -> list[float]:
    """exp(-mean log p(new tokens | prompt)) of each row under the model (stopping at the first pad/EOS)."""
    out = []
    for seq in sequences:
        new = seq[prompt.shape[1]:]
        if pad is not None and (new == pad).any():
            new = new[: int((new == pad).nonzero()[0]) + 1]  # keep the EOS itself
        if new.numel() == 0:
            continue
        ids = torch.cat([prompt[0], new])[None]
        logp = model(ids).logits[0, prompt.shape[1] - 1 : -1].float().log_softmax(-1)
        out.append(float((-logp.gather(-1, new[:, None]).mean()).exp()))
    return out


def distinctness(prompt_len: int, sequences: torch.Tensor) -> float:
    bigrams = [tuple(s[i : i + 2].tolist()) for s in sequences for i in range(prompt_len - 1, s.numel() - 1)]
    return len(set(bigrams)) / max(len(bigrams), 1)


def run_method(model, ids, method, k, n, pad):
    common = dict(max_new_tokens=n, pad_token_id=pad)
    if method == "greedy":
        return model.generate(ids, do_sample=False, **common)
    if method in ("superposed", "superposed/unpacked"):
        return model.generate(ids, strategy="superposed", num_return_sequences=k,
                              prepack_target=False if method == "superposed/unpacked" else None, **common)
    if method == "nucleus x k (sequential)":
        runs = [model.generate(ids, do_sample=True, top_p=0.9, temperature=1.0, top_k=None, **common) for _ in range(k)]
        width = max(r.shape[1] for r in runs)
        return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad) for r in runs])
    if method == "nucleus k (batched)":
        return model.generate(ids, do_sample=True, top_p=0.9, temperature=1.0, top_k=None, num_return_sequences=k,
                              **common)
    if method == "beam k":
        return model.generate(ids, do_sample=False, num_beams=k, num_return_sequences=k, **common)
    raise ValueError(method)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec bench-superposed", description=__doc__.split("\n")[0])
    ap.add_argument("--questions", default=str(DEV_QUESTIONS))
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prefix-tokens", type=int, default=15)
    ap.add_argument("--ks", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--lengths", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--out", default="bench_results/superposed.json")
    args = ap.parse_args(argv)
    from ..default_model import default_target

    model, tok = default_target(dtype=getattr(torch, args.dtype))
    pad = tok.eos_token_id
    questions = load_questions(args.questions, per_category=max(1, args.prompts // 6 + 1))[: args.prompts]
    prompts = [tok(q["turns"][0], return_tensors="pt").input_ids[:, : args.prefix_tokens] for q in questions]
    torch.manual_seed(0)
    run_method(model, prompts[0], "superposed", 3, 4, pad)  # warm-up (loads the n-gram table)
    records = []
    for k in args.ks:
        for n in args.lengths:
            for i, ids in enumerate(prompts):
                order = METHODS[i % len(METHODS):] + METHODS[: i % len(METHODS)]
                for method in order:
                    start = time.perf_counter()
                    seqs = run_method(model, ids, method, k, n, pad)
                    seconds = time.perf_counter() - start
                    ppl = perplexities(model, ids, seqs, pad)
                    records.append({"k": k, "new_tokens": n, "prompt": i, "method": method, "seconds": seconds,
                                    "ppl_best": min(ppl), "ppl_mean": statistics.mean(ppl),
                                    "distinct": distinctness(ids.shape[1], seqs) if seqs.shape[0] > 1 else None})
    rows = []
    for k in args.ks:
        for n in args.lengths:
            recs = [r for r in records if r["k"] == k and r["new_tokens"] == n]
            greedy = {r["prompt"]: r["seconds"] for r in recs if r["method"] == "greedy"}
            for method in METHODS:
                mine = [r for r in recs if r["method"] == method]
                rows.append({
                    "k": k, "new_tokens": n, "method": method,
                    "ms": 1000 * statistics.median(r["seconds"] for r in mine),
                    "vs_greedy": statistics.median(r["seconds"] / greedy[r["prompt"]] for r in mine),
                    "ppl_best": statistics.median(r["ppl_best"] for r in mine),
                    "ppl_mean": statistics.median(r["ppl_mean"] for r in mine),
                    "distinct": (statistics.median(r["distinct"] for r in mine) if mine[0]["distinct"] is not None
                                 else None),
                })
    meta = {"command": "hf-specdec bench-superposed " + " ".join(argv if argv is not None else sys.argv[2:]),
            "model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "prompts": len(prompts),
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "date": datetime.date.today().isoformat()}
    lines = [f"Superposed decoding, {meta['prompts']} prompts, {meta['dtype']}, {meta['machine']}, {meta['date']} "
             "(medians over prompts)", "",
             "| k | new tokens | method | ms | time / greedy | ppl best-of-k | ppl mean | distinct bigrams |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = f"{r['distinct']:.2f}" if r["distinct"] is not None else "-"
        lines.append(f"| {r['k']} | {r['new_tokens']} | {r['method']} | {r['ms']:.0f} | {r['vs_greedy']:.2f}x | "
                     f"{r['ppl_best']:.2f} | {r['ppl_mean']:.2f} | {d} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "records": records}, indent=1))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out}")
    return 0
