"""Cost of the pieces of one fspad cycle on this machine: a target verification forward over trees of several
sizes, and one draft-head step (catch-up and tree expansion, full vs reduced draft vocabulary).

    python -m hf_specdec.bench.costs --dtype bfloat16 --prefix 300 --out bench_results/costs.json
    hf-specdec calibrate [--refresh]     # the cost curve the engine sizes trees with (strategies/calibration.py)

Timings are medians of interleaved repetitions (every configuration measured once per round).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from ..default_model import default_target
from ..draft import FSPADDraftModel
from ..draft.base import check_int8_weights, default_int8_weights
from ..prepacked import check_prepack
from ..heads import default_draft
from ..strategies.calibration import cost_cache_path, cost_curve_for
from ..strategies.drafters import HeadDrafter
from ..strategies.engine import target_forward
from ..strategies.common import SpecDecodeStats
from ..tree import DraftTree, crop_cache, tree_mask_for, tree_position_ids


def _chain_and_fan_tree(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A tree of n nodes shaped like EAGLE-2 output: a root with a few children and chains below them."""
    parents = [-1] + [max(0, i - 4) for i in range(1, n)]
    return torch.arange(100, 100 + n)[None], torch.tensor([parents])


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run(dtype: str, prefix: int, rounds: int, tree_sizes: list[int], expand_widths: list[int], draft_vocabs: list[int],
        fused_layers: tuple[int, ...] | None = None):
    torch.set_grad_enabled(False)
    model, tok = default_target(dtype=getattr(torch, dtype))
    ids = torch.randint(100, 40000, (1, prefix), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    features, _ = target_forward(model, ids, cache, torch.arange(prefix)[None], logits_to_keep=1)

    heads = {"full": FSPADDraftModel.from_target(model)}
    for v in draft_vocabs:
        heads[f"top{v}"] = FSPADDraftModel.from_target(model, draft_vocab_size=v)
        heads[f"top{v}"].draft_to_target.copy_(torch.arange(v))
        heads[f"top{v}"].attach_target(model)
    drafters = {}
    for name, head in heads.items():
        drafter = HeadDrafter(head.to(model.dtype), SpecDecodeStats())
        drafter.catch_up(ids, features, 0)
        drafters[name] = drafter

    jobs = {}
    for n in tree_sizes:
        tokens, parents = _chain_and_fan_tree(n)
        tree = DraftTree.from_parents(tokens, parents)
        mask = tree_mask_for(model, tree.ancestors, prefix)
        pos = tree_position_ids(tree.depths, prefix)

        def verify(tree=tree, mask=mask, pos=pos):
            target_forward(model, tree.tokens, cache, pos, mask)
            crop_cache(cache, prefix)

        jobs[("verify", n)] = verify
        if fused_layers:  # the same forward handing an EAGLE-3 head the hidden states entering those layers

            def verify_fused(tree=tree, mask=mask, pos=pos):
                target_forward(model, tree.tokens, cache, pos, mask, feature_layers=fused_layers)
                crop_cache(cache, prefix)

            jobs[(f"verify+fused{list(fused_layers)}", n)] = verify_fused
    for name, drafter in drafters.items():
        for q in (1, 3, 5):
            def catch_up(drafter=drafter, q=q):
                drafter.catch_up(ids[:, -q:], features[:, -q:], prefix - q)  # leaves `prefix` entries

            jobs[(f"head_catch_up[{name}]", q)] = catch_up
        for k in expand_widths:
            expand = drafter.expand(prefix)
            anc = torch.eye(k, dtype=torch.bool)[None]

            def step(drafter=drafter, k=k, expand=expand, anc=anc):
                expand(ids[:, :k], features[:, :k], anc, 1)
                crop_cache(drafter.cache, prefix)

            jobs[(f"head_expand[{name}]", k)] = step

    for fn in jobs.values():  # warm-up
        fn()
    samples = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, fn in jobs.items():
            samples[key].append(_timed(fn))
    return {f"{kind}:{size}": statistics.median(v) for (kind, size), v in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prefix", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tree-sizes", type=int, nargs="+", default=[1, 4, 8, 12, 16, 24, 32, 48, 64])
    parser.add_argument("--expand-widths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--draft-vocabs", type=int, nargs="*", default=[8192, 16384])
    parser.add_argument("--fused-layers", default="eagle3",
                        help="also time verification with the fused-feature capture of an EAGLE-3 head: 'eagle3' "
                             "(its default layers 2, L//2, L-3), comma-separated layer ids, or 'none'")
    parser.add_argument("--out", default="bench_results/costs.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    fused = None
    if args.fused_layers == "eagle3":
        from ..draft.modeling_eagle3 import default_feature_layers
        from ..default_model import default_target_path
        from transformers import AutoConfig

        fused = default_feature_layers(AutoConfig.from_pretrained(default_target_path()).num_hidden_layers)
    elif args.fused_layers != "none":
        fused = tuple(int(i) for i in args.fused_layers.split(","))
    result = run(args.dtype, args.prefix, args.rounds, args.tree_sizes, args.expand_widths, args.draft_vocabs, fused)
    print(f"| piece ({args.dtype}, prefix {args.prefix}, torch threads {torch.get_num_threads()}) | median ms |")
    print("|---|---|")
    for key, ms in result.items():
        print(f"| {key} | {ms:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"dtype": args.dtype, "prefix": args.prefix, "rounds": args.rounds, "threads": torch.get_num_threads(),
            "fused_layers": list(fused) if fused else None}
    Path(args.out).write_text(json.dumps({"meta": meta, "median_ms": result}, indent=1))


def calibrate_main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec calibrate",
                                 description="Measure (or show) this machine's cost curve for tree sizing.")
    ap.add_argument("--model", default=None, help="target folder or id (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--draft", default=None, help="FSPAD head folder or id (default: the shipped head)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--refresh", action="store_true", help="measure again even if a cached curve exists")
    ap.add_argument("--int8", choices=["default", "on", "off"], default="default",
                    help="the curve for the head on int8 weights (on), on its exact weights (off), or as strategy='fspad' "
                         "runs it by default (draft_int8)")
    ap.add_argument("--prepack", choices=["default", "on", "off"], default="default",
                    help="the curve for the target's linear layers prepacked (on) or as F.linear runs them (off), or as "
                         "strategy='fspad' runs them by default (prepack_target)")
    args = ap.parse_args(argv)
    from ..training.prepare import load_target

    model, tok = load_target(args.model, getattr(torch, args.dtype))
    head = (FSPADDraftModel.from_pretrained(args.draft, dtype=model.dtype).attach_target(model, tok) if args.draft
            else default_draft(model, tok))
    int8 = {"default": None, "on": True, "off": False}[args.int8]
    int8 = default_int8_weights(head) if int8 is None else check_int8_weights(head, int8)
    prepack = check_prepack(model, {"default": None, "on": True, "off": False}[args.prepack])
    curve = cost_curve_for(model, head, refresh=args.refresh, int8=int8, prepack=prepack)
    alone = cost_curve_for(model, head, isolated=True, int8=int8, prepack=prepack)
    path = cost_cache_path(model, head, int8, prepack)
    print(f"costs for {type(model).__name__} ({args.dtype}, {model.device}, {torch.get_num_threads()} threads, head on "
          f"{'int8' if int8 else 'exact'} weights, target {'' if prepack else 'not '}prepacked), cached as {path}")
    print("| tree tokens | " + " | ".join(map(str, curve.sizes)) + " |")
    print("|---" * (len(curve.sizes) + 1) + "|")
    print(f"| verify ms after {curve.context} cached | " + " | ".join(f"{ms:.1f}" for ms in curve.verify_ms) + " |")
    if curve.long_verify_ms:
        print(f"| verify ms after {curve.long_context} cached | " + " | ".join(f"{ms:.1f}" for ms in curve.long_verify_ms) + " |")
    print(f"head step (4 nodes): {curve.head_step_ms:.2f} ms"
          + (f" ({curve.long_head_step_ms:.2f} ms after {curve.long_context})" if curve.long_verify_ms else "")
          + f"; measured alone, cold: {alone.head_step_ms:.2f} ms")
    stored = json.loads(path.read_text())
    fit = stored.get("cycle_fit")
    if fit:
        print(f"refitted to whole cycles: level x{fit['level']:.2f}, per tree token x{fit['slope']:.2f}, "
              f"head step x{fit['head']:.2f} of the isolated measurements")
        print("| fixed tree: tree tokens | head steps | cycle ms measured | isolated curve | fitted curve |")
        print("|---|---|---|---|---|")
        for c in fit["cycles"]:
            print(f"| {c['tree_tokens']} | {c['head_steps']} | {c['ms']:.1f} | {c['isolated_ms']:.1f} | {c['fitted_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    main()
