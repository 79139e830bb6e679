"""Batched decoding on this machine: stock greedy `generate` on B left-padded prompts vs strategy="fspad" on the
same batch (the shipped head, its defaults: cost-sized trees with lookup drafts), for several B; interleaved
per batch, in an order that alternates, so machine noise hits both alike.

    hf-specdec bench-batch --batch-sizes 1 2 4 8 --prompts 8 --max-new-tokens 128 --repeats 3
    hf-specdec bench-batch --batch-sizes 4 --prompts 4 --repeats 1 --layout-costs   (holes vs re-aligning)

Prompts: Spec-Bench dev first turns (`--per-category`, through the chat template), cut into consecutive
batches of B; every B sees the same prompts. tokens/s counts each row's real new tokens (to its EOS, not the
padding after it). The speedup is the median over repeats of (fspad tokens/s / stock tokens/s). Identity:
bf16, the share of rows equal to stock's batched row (near-ties may part, README); with `--check-float32`, the
share of rows of the float32 batch equal to stock float32 on that prompt alone (must be 100%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from .specbench import DEV_QUESTIONS, group_of, load_questions


def chat_batches(tokenizer, questions: list[dict], batch_size: int) -> list[dict]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True,
                                           tokenize=False) for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return [dict(tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False))
                for i in range(0, len(texts), batch_size)]
    finally:
        tokenizer.padding_side = side


def real_new_tokens(sequences: torch.Tensor, prompt_width: int, eos_ids: set[int]) -> list[list[int]]:
    """Each row's new tokens up to and including its first EOS (what stock and fspad both generate)."""
    rows = []
    for row in sequences[:, prompt_width:].tolist():
        out = []
        for token in row:
            out.append(token)
            if token in eos_ids:
                break
        rows.append(out)
    return rows


@torch.no_grad()
def run(model, tokenizer, head, questions, batch_sizes, max_new_tokens, repeats) -> dict:
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    methods = {"stock": {}, "fspad": {"strategy": "fspad", "assistant_model": head}}
    results = {}
    for B in batch_sizes:
        batches = chat_batches(tokenizer, questions, B)
        # warm-up: the cost curve is measured once, before any timing
        model.generate(**batches[0], max_new_tokens=8, do_sample=False, **methods["fspad"])
        times = {m: [0.0] * repeats for m in methods}
        tokens = {m: 0 for m in methods}
        same, rows, forwards, stats_tau = 0, 0, 0, []
        for r in range(repeats):
            for i, batch in enumerate(batches):
                order = list(methods) if (i + r) % 2 == 0 else list(reversed(methods))
                outs = {}
                for m in order:
                    start = time.perf_counter()
                    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                         return_dict_in_generate=True, **methods[m])
                    times[m][r] += time.perf_counter() - start
                    outs[m] = real_new_tokens(out.sequences, batch["input_ids"].shape[1], eos_ids)
                    if m == "fspad" and r == 0:
                        forwards += out.spec_stats.target_forwards
                        stats_tau.append(out.spec_stats.tau)
                if r == 0:
                    for m in methods:
                        tokens[m] += sum(map(len, outs[m]))
                    same += sum(a == b for a, b in zip(outs["stock"], outs["fspad"]))
                    rows += len(outs["stock"])
        rate = {m: [tokens[m] / t for t in times[m]] for m in methods}
        speedups = [f / s for f, s in zip(rate["fspad"], rate["stock"])]
        results[B] = {
            "batches": len(batches),
            "stock_tokens_per_s": statistics.median(rate["stock"]),
            "fspad_tokens_per_s": statistics.median(rate["fspad"]),
            "speedup": statistics.median(speedups),
            "speedups": speedups,
            "tau_per_row": statistics.mean(stats_tau),
            "target_forwards": forwards,
            "bf16_rows_equal_stock": same / rows,
            "new_tokens": tokens,
        }
        print(f"B={B}: stock {results[B]['stock_tokens_per_s']:.1f} tok/s, fspad {results[B]['fspad_tokens_per_s']:.1f}"
              f" tok/s, {results[B]['speedup']:.2f}x (runs {', '.join(f'{s:.2f}' for s in speedups)}), "
              f"tau/row {results[B]['tau_per_row']:.2f}, bf16 identity {same}/{rows}", flush=True)
    return results


@torch.no_grad()
def float32_identity(questions, batch_size: int, max_new_tokens: int) -> dict:
    """Rows of a float32 fspad batch vs stock float32 on each prompt alone."""
    from ..default_model import default_target
    from ..heads import default_draft

    model, tokenizer = default_target(dtype=torch.float32)
    head = default_draft(model, tokenizer)
    equal = total = 0
    for batch in chat_batches(tokenizer, questions, batch_size):
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, strategy="fspad",
                             assistant_model=head)
        L = batch["input_ids"].shape[1]
        for b in range(out.shape[0]):
            ids = batch["input_ids"][b : b + 1, int((batch["attention_mask"][b] == 0).sum()):]
            ref = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0]
            row = out[b, L - ids.shape[1]:]
            equal += bool(torch.equal(row[: len(ref)], ref) and (row[len(ref):] == tokenizer.pad_token_id).all())
            total += 1
    return {"batch_size": batch_size, "rows_equal": equal, "rows": total}


@torch.no_grad()
def layout_costs(model, tokenizer, head, questions, batch_size: int = 4, max_new_tokens: int = 128) -> dict:
    """What the ragged layout (per-row holes, tree/ragged.py) costs against re-aligning the rows every cycle:
    the holes' share of the slots a real batch reserved, the per-cycle time of moving the accepted paths, of
    moving every row's whole cache instead, and of a verification forward over the holes."""
    from transformers import DynamicCache

    from ..strategies import batched
    from ..strategies.engine import target_forward
    from ..tree import crop_cache
    from ..tree.ragged import ragged_tree_mask

    cycles, gather_ms = [], []
    gather, pad = batched.gather_paths, batched.pad_paths

    def recorded_pad(paths):  # the widths and path lengths of each cycle
        padded, lengths = pad(paths)
        cycles.append((padded.shape[1], lengths.tolist()))
        return padded, lengths

    def timed_gather(cache, prefix_len, padded):
        start = time.perf_counter()
        gather(cache, prefix_len, padded)
        gather_ms.append((time.perf_counter() - start) * 1000)

    batched.gather_paths, batched.pad_paths = timed_gather, recorded_pad
    try:
        model.generate(**chat_batches(tokenizer, questions, batch_size)[0], max_new_tokens=max_new_tokens,
                       strategy="fspad", assistant_model=head)
    finally:
        batched.gather_paths, batched.pad_paths = gather, pad
    reserved = sum(width * len(paths) for width, paths in cycles)
    holes = 1 - sum(map(sum, (paths for _, paths in cycles))) / reserved

    def filled_cache(length):
        cache = DynamicCache(config=model.config)
        model(torch.randint(0, 1000, (batch_size, length)), cache=cache, use_cache=True)
        return cache

    def median_ms(fn, runs=12):
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times[2:])

    prefix = 300
    cache = filled_cache(prefix + 100)
    order = torch.stack([torch.randperm(prefix + 100) for _ in range(batch_size)])

    def realign():  # per-row compaction: every row's whole cache moves
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                setattr(layer, name, t.gather(2, order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1])))

    def verify_ms(width, n_holes, tokens=8):
        cache = filled_cache(width)
        valid = torch.ones(batch_size, width, dtype=torch.bool)
        valid[:, width - n_holes:] = False
        chain = torch.ones(tokens, tokens, dtype=torch.bool).tril().expand(batch_size, -1, -1)
        ids = torch.randint(0, 1000, (batch_size, tokens))
        positions = valid.sum(-1, keepdim=True) + torch.arange(tokens)
        mask = ragged_tree_mask(valid, chain, model.dtype)

        def forward():
            crop_cache(cache, width)
            target_forward(model, ids, cache, positions, mask)
        return median_ms(forward)

    n_holes = round(prefix * holes / (1 - holes))
    return {
        "batch_size": batch_size, "cycles": len(cycles), "hole_share": holes,
        "move_paths_ms": statistics.median(gather_ms), "realign_rows_ms": median_ms(realign),
        "realign_slots": prefix + 100, "prefix": prefix, "holes_at_prefix": n_holes,
        "verify_ms_compact": verify_ms(prefix, 0), "verify_ms_with_holes": verify_ms(prefix + n_holes, n_holes),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec bench-batch", description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--questions", default=str(DEV_QUESTIONS))
    ap.add_argument("--prompts", type=int, default=8, help="prompts in all (a multiple of every batch size)")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check-float32", type=int, default=0, metavar="B",
                    help="also check float32 identity at this batch size (0: skip)")
    ap.add_argument("--layout-costs", action="store_true",
                    help="also measure the ragged layout (holes) against re-aligning the rows each cycle")
    ap.add_argument("--out", default="bench_results/batch.json")
    args = ap.parse_args(argv)
    bad = [B for B in args.batch_sizes if args.prompts % B]
    if bad:
        raise SystemExit(f"--prompts {args.prompts} is not a multiple of batch size(s) {bad}.")
    from ..default_model import default_target
    from ..heads import default_draft

    questions = load_questions(args.questions, args.per_category)
    if len(questions) < args.prompts:
        raise SystemExit(f"{args.questions} gives {len(questions)} questions at --per-category {args.per_category}; "
                         f"need {args.prompts}.")
    # the first question of every group, then the second of every group...: all kinds of prompts at every B
    seen: dict[str, int] = defaultdict(int)
    rank = []
    for q in questions:
        rank.append(seen[group_of(q["category"])])
        seen[group_of(q["category"])] += 1
    questions = [q for _, q in sorted(zip(rank, questions), key=lambda pair: pair[0])][: args.prompts]
    model, tokenizer = default_target(dtype=torch.bfloat16)
    head = default_draft(model, tokenizer)
    results = run(model, tokenizer, head, questions, args.batch_sizes, args.max_new_tokens, args.repeats)
    identity = float32_identity(questions, args.check_float32, min(args.max_new_tokens, 64)) if args.check_float32 else None
    layout = layout_costs(model, tokenizer, head, questions, max_new_tokens=args.max_new_tokens) if args.layout_costs else None

    print(f"\n| B | stock tok/s | fspad tok/s | speedup (median of {args.repeats}) | tau per row | bf16 rows = stock |")
    print("|---|---|---|---|---|---|")
    for B, r in results.items():
        print(f"| {B} | {r['stock_tokens_per_s']:.1f} | {r['fspad_tokens_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{r['tau_per_row']:.2f} | {r['bf16_rows_equal_stock']:.0%} |")
    if identity:
        print(f"\nfloat32, B={identity['batch_size']}: {identity['rows_equal']}/{identity['rows']} rows equal stock alone")
    if layout:
        print(f"\nragged layout, B={layout['batch_size']}, {layout['cycles']} cycles: holes are "
              f"{layout['hole_share']:.0%} of the generated slots; moving the accepted paths "
              f"{layout['move_paths_ms']:.2f} ms / cycle vs re-aligning every row ({layout['realign_slots']} slots) "
              f"{layout['realign_rows_ms']:.2f} ms / cycle; a 4 x 8-token verification after {layout['prefix']} slots "
              f"{layout['verify_ms_compact']:.2f} ms, with {layout['holes_at_prefix']} holes more "
              f"{layout['verify_ms_with_holes']:.2f} ms")
    meta = {**vars(args), "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results, "float32": identity, "layout": layout},
                                          indent=1))
    return 0
