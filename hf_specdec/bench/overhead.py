"""Host time per cycle: strategy="fspad" with a tiny random target and head, whose forwards are nearly free,
so what is measured is the engine's own work (tree growth, masks, verification, compaction, emission), the
cost that sits on top of every cycle on a GPU. Stock greedy decoding of the same model is the reference.

    hf-specdec overhead --new-tokens 256 --rounds 5
    hf-specdec overhead --by-site       (also: where a fixed 4,4,16 cycle's torch calls come from)
    hf-specdec overhead --phases        (also: where a fixed 4,4,16 cycle's time goes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig, LlamaForCausalLM

from ..draft import FSPADDraftModel

CONFIGS = {  # name: generate kwargs
    "fspad 4,4,16, no lookup": dict(tree_top_k=4, tree_depth=4, tree_total_tokens=16, lookup_tokens=0),
    "fspad 4,4,16 + lookup 16": dict(tree_top_k=4, tree_depth=4, tree_total_tokens=16, lookup_tokens=16),
    "fspad cost-sized + lookup 16 (default)": dict(),
}


def tiny_pair(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    target = LlamaForCausalLM(config).eval()
    target.generation_config.eos_token_id = None
    return target, FSPADDraftModel.from_target(target)


SITE_PACKAGES = ("hf_specdec", "transformers")  # where a call is attributed: the innermost frame in one of them


def call_site(frame) -> str:
    """'package/module.py:function' of the innermost frame, from `frame` outwards, in hf_specdec or transformers
    (the code that asked for the call, not torch's wrappers around it); 'other' where there is none."""
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        for package in SITE_PACKAGES:
            at = path.rfind(f"/{package}/")
            if at >= 0:
                return f"{path[at + 1:]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "other"


class CallCounter(TorchFunctionMode):
    """Counts the torch calls made inside it (torch functions and tensor methods, as __torch_function__ sees
    them): on a small model the host time of a step is about this count times a few microseconds. With
    `by_site`, also per `call_site` in `sites`. Attribute reads (`.shape` aside: `.data_ptr()`, `._version`,
    `.dtype`) are counted too, though they cost far less than an operation."""

    def __init__(self, by_site: bool = False):
        super().__init__()
        self.calls = 0
        self.sites: Counter | None = Counter() if by_site else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if self.sites is not None:
            self.sites[call_site(sys._getframe(1))] += 1
        return func(*args, **(kwargs or {}))


SITES_CONFIG = "fspad 4,4,16, no lookup"  # the fixed cycle the overhead target is set for


def decoding_jobs(new_tokens: int) -> dict:
    """{method: a call that decodes `new_tokens` from one fixed prompt with the tiny pair}: stock greedy and each
    of CONFIGS (those return spec_stats)."""
    target, head = tiny_pair()
    ids = torch.randint(1, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    jobs = {"stock greedy": lambda: target.generate(ids, max_new_tokens=new_tokens, do_sample=False)}
    for name, kwargs in CONFIGS.items():
        jobs[name] = lambda kwargs=kwargs: target.generate(ids, assistant_model=head, strategy="fspad",
                                                           max_new_tokens=new_tokens, return_dict_in_generate=True,
                                                           **kwargs)
    return jobs


@torch.no_grad()
def calls_by_site(new_tokens: int) -> tuple[int, Counter]:
    """(cycles, torch calls per call site) of one decoding with the fixed 4,4,16 tree and no lookup (after a
    warm-up run)."""
    job = decoding_jobs(new_tokens)[SITES_CONFIG]
    job()
    with CallCounter(by_site=True) as counter:
        out = job()
    return out.spec_stats.target_forwards - 1, counter.sites


PHASES = ("target forward", "head catch-up", "head expansions", "growth bookkeeping", "the rest")


@torch.no_grad()
def time_by_phase(new_tokens: int, rounds: int) -> dict[str, float]:
    """Milliseconds per cycle of a SITES_CONFIG decoding (fixed 4,4,16, no lookup), by phase (PHASES), median over `rounds`: the
    engine's target forward, the head's catch-up, its expansions, the tree growth less those expansions, and
    the rest (masks, verification, compaction, emission). Timed by wrappers around the engine's functions for
    the length of the runs (a microsecond or so each)."""
    from ..strategies import drafters, engine, fspad

    job = decoding_jobs(new_tokens)[SITES_CONFIG]
    job()
    spent: Counter = Counter()

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start
        return wrapper

    expand = drafters.HeadDrafter.expand
    patches = {(engine, "target_forward"): timed("target forward", engine.target_forward),
               (drafters.HeadDrafter, "catch_up"): timed("head catch-up", drafters.HeadDrafter.catch_up),
               (drafters.HeadDrafter, "expand"): lambda self, cached: timed("head expansions", expand(self, cached)),
               (fspad, "grow_tree"): timed("growth", fspad.grow_tree)}
    originals = {key: getattr(*key) for key in patches}
    per_round = []
    try:
        for (owner, name), patched in patches.items():
            setattr(owner, name, patched)
        for _ in range(rounds):
            spent.clear()
            start = time.perf_counter()
            out = job()
            total, cycles = time.perf_counter() - start, out.spec_stats.target_forwards - 1
            phases = {"target forward": spent["target forward"], "head catch-up": spent["head catch-up"],
                      "head expansions": spent["head expansions"],
                      "growth bookkeeping": spent["growth"] - spent["head expansions"]}
            phases["the rest"] = total - sum(phases.values())
            per_round.append({k: v * 1000 / cycles for k, v in {**phases, "cycle": total}.items()})
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
    return {k: statistics.median(r[k] for r in per_round) for k in (*PHASES, "cycle")}


@torch.no_grad()
def measure(new_tokens: int, rounds: int) -> list[dict]:
    jobs = decoding_jobs(new_tokens)
    steps, calls = {}, {}
    for name, job in jobs.items():  # warm-up (and the cost curve, measured once), then an untimed counted run
        out = job()
        steps[name] = new_tokens if name == "stock greedy" else out.spec_stats.target_forwards - 1
        with CallCounter() as counter:
            job()
        calls[name] = counter.calls
    times = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append((time.perf_counter() - start) * 1000)
    return [{"method": name, "ms_total": statistics.median(t), "steps": steps[name],
             "ms_per_step": statistics.median(t) / max(steps[name], 1),
             "torch_calls_per_step": calls[name] / max(steps[name], 1)} for name, t in times.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hf-specdec overhead", description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench_results/overhead.json")
    ap.add_argument("--by-site", action="store_true",
                    help=f"also count the torch calls of a '{SITES_CONFIG}' cycle per call site (untimed)")
    ap.add_argument("--phases", action="store_true",
                    help=f"also time a '{SITES_CONFIG}' cycle by phase (target forward, head steps, growth, the rest)")
    args = ap.parse_args(argv)
    rows = measure(args.new_tokens, args.rounds)
    print(f"| method (tiny random target, {torch.get_num_threads()} threads) | steps | ms per step (token / cycle) "
          "| torch calls per step |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['steps']} | {r['ms_per_step']:.2f} | {r['torch_calls_per_step']:.0f} |")
    result = {"meta": vars(args), "rows": rows}
    if args.by_site:
        cycles, sites = calls_by_site(args.new_tokens)
        print(f"\n| call site ({SITES_CONFIG}, {cycles} cycles) | torch calls per cycle |")
        print("|---|---|")
        for site, calls in sites.most_common():
            if calls / cycles >= 1:
                print(f"| {site} | {calls / cycles:.0f} |")
        result["calls_per_cycle_by_site"] = {site: calls / cycles for site, calls in sites.most_common()}
    if args.phases:
        phases = time_by_phase(args.new_tokens, args.rounds)
        print(f"\n| phase ({SITES_CONFIG}, median of {args.rounds} runs) | ms per cycle |")
        print("|---|---|")
        for phase, ms in phases.items():
            print(f"| {phase} | {ms:.2f} |")
        result["ms_per_cycle_by_phase"] = phases
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0
