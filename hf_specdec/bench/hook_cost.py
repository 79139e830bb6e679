"""What `import hf_specdec` costs stock `generate` (no strategy=): per-token time with the generate hook
installed vs removed, A/B interleaved, medians; and whether the outputs are the same tokens.

    hf-specdec hook-cost [--model tiny|default] [--new-tokens 128] [--rounds 7]

The tiny random model shows host-side cost (its forwards are nearly free); the embedded SmolLM2 shows what a
user sees.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ..hook import install_generate_hook, uninstall_generate_hook
from .overhead import tiny_pair


def load(name: str):
    if name == "tiny":
        return tiny_pair()[0]
    from ..default_model import default_target

    return default_target(dtype=torch.bfloat16)[0]


@torch.no_grad()
def measure(model, new_tokens: int, rounds: int) -> dict:
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(1, vocab, (1, 32), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    states = {"hook installed": install_generate_hook, "hook removed": uninstall_generate_hook}
    outputs, times = {}, {name: [] for name in states}
    try:
        for name, set_state in states.items():  # warm-up
            set_state()
            outputs[name] = model.generate(ids, **kwargs)
        for r in range(rounds):
            order = list(states) if r % 2 == 0 else list(reversed(states))
            for name in order:
                states[name]()
                start = time.perf_counter()
                model.generate(ids, **kwargs)
                times[name].append((time.perf_counter() - start) * 1000 / new_tokens)
    finally:
        install_generate_hook()
    ms = {name: statistics.median(t) for name, t in times.items()}
    spread = {name: (min(t), max(t)) for name, t in times.items()}
    return {"ms_per_token": ms, "range": spread, "ratio": ms["hook installed"] / ms["hook removed"],
            "same_tokens": torch.equal(outputs["hook installed"], outputs["hook removed"])}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec hook-cost", description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "default"], nargs="+", default=["tiny", "default"])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="bench_results/hook_cost.json")
    args = ap.parse_args(argv)
    results = {name: measure(load(name), args.new_tokens, args.rounds) for name in args.model}
    print(f"| model ({torch.get_num_threads()} threads) | hook installed ms/token | hook removed ms/token | "
          "ratio | same tokens |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        (lo_a, hi_a), (lo_b, hi_b) = r["range"]["hook installed"], r["range"]["hook removed"]
        print(f"| {name} | {r['ms_per_token']['hook installed']:.3f} ({lo_a:.3f}-{hi_a:.3f}) | "
              f"{r['ms_per_token']['hook removed']:.3f} ({lo_b:.3f}-{hi_b:.3f}) | {r['ratio']:.3f} | "
              f"{r['same_tokens']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": vars(args), "results": results}, indent=1))
    return 0
