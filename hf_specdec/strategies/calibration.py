"""The machine's own costs for tree sizing (tree/sizing.py): measured once per (target, head, device, dtype,
threads) in a few seconds, cached on disk, refreshable.

    hf-specdec calibrate [--model ...] [--refresh]      # measure (or show the cached curve): bench/costs.py

Measured: one target forward over N tree tokens after a 256-token prefix, for N in VERIFY_SIZES, and one head
expansion step of 4 nodes; medians of interleaved rounds; then the same after a 1,024-token prefix, so the
sizing sees each cycle's own context (CostCurve.at). Those isolated pieces give the curve's shape; its level
comes from whole cycles: a short real decode with each of CYCLE_SHAPES (fixed trees) is timed cycle by cycle,
and the curve is refitted to what those cycles cost (tree/sizing.py, `fit_cycle_costs`), host work included.
The cache file keeps the isolated curve and the fit beside the curve the engine uses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import statistics
import threading
import time

import torch
from transformers import DynamicCache

from ..default_model import cache_dir
from .. import prepacked
from ..draft.base import default_int8_weights, int8_weights
from ..prepacked import check_prepack, prepacked_linears
from ..tree import CostCurve, DraftTree, crop_cache, fit_cycle_costs, refit_curve, tree_mask_for, tree_position_ids
from .common import SpecDecodeStats
from .drafters import HeadDrafter
from .engine import target_forward

logger = logging.getLogger(__name__)

VERIFY_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48)
PREFIX = 256
LONG_PREFIX = 1024  # a cycle deep in a long prompt (summarization, RAG) attends to ~1k cached tokens
ROUNDS = 5
OVERHEAD_MS = 2.0  # the isolated curve's host time per cycle (order of `hf-specdec overhead`, CPU); the fit replaces it
# A cycle that verifies the root alone: the plain decoding step a sized tree degrades to when no draft pays
# (its catch-up still runs). Timed among the shapes below, it is the only cycle whose tree adds nothing to c(1),
# so the only one that tells the fit's level apart from its slope: where c(n) - c(1) is the same for every timed
# tree (float32 on the AVX-512 EPYC, 2026-12-06: c(1) 65 ms, c(2..16) 106 ms), the two were one column, and a fit
# without it priced a plain step at 6.5 ms.
PLAIN_CYCLE = (1, 1, 1)
# Fixed trees (children per node, depth, tree tokens) timed as whole cycles, spread so that tree size and head
# steps vary apart: chains, one wide level, EAGLE-2 trees; and the plain step.
CYCLE_SHAPES = (PLAIN_CYCLE, (1, 1, 2), (8, 1, 9), (2, 2, 4), (1, 4, 5), (1, 6, 7), (4, 4, 16), (4, 3, 24), (8, 3, 32))
# The curve a plain step is decoded with: any tree beyond the root, and any head expansion, costs more than it
# can return, so every cycle verifies one token.
_NOTHING_PAYS = CostCurve(sizes=(1, 2), verify_ms=(1.0, 1e9), head_step_ms=1e9)
CYCLES = 4  # timed cycles per decode, after an untimed first one
CYCLE_ROUNDS = 3  # decodes per shape, interleaved with the other shapes'

_MEMORY: dict[str, tuple[CostCurve, CostCurve]] = {}  # key: (curve fitted to cycles, isolated curve)
_MEASURING = threading.Lock()


def _shape_json(config) -> str:
    """A config as JSON without where it was loaded from or which transformers wrote it: the same head from
    another folder (or the Hub) costs the same."""
    values = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    return json.dumps(values, sort_keys=True, default=str)


def cost_key(model, head, int8: bool, prepack: bool = False) -> str:
    """What the costs depend on: the two networks' shapes, device, dtype, threads, torch version, whether the
    head runs on int8 weights (`DraftHead.int8_weights`), whether its dense products are prepacked
    (hf_specdec/prepacked.py: PACK_WEIGHTS) and whether the target's are (`prepack`)."""
    parts = ["curve format 4: two contexts, fitted to cycles with a plain step among them",
             _shape_json(model.config), _shape_json(head.config), f"int8 weights: {bool(int8)}",
             f"prepacked dense products: {prepacked.PACK_WEIGHTS}", f"prepacked target: {bool(prepack)}",
             str(model.device), str(model.dtype), str(torch.get_num_threads()), torch.__version__,
             model.config._attn_implementation]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


@torch.no_grad()
def measure_costs(model, head, sizes=VERIFY_SIZES, prefix: int = PREFIX, rounds: int = ROUNDS,
                  long_prefix: int | None = LONG_PREFIX) -> CostCurve:
    """Time verification forwards and a head step on random tokens (costs do not depend on the text), after
    `prefix` cached tokens and, unless `long_prefix` is None, after that many too."""
    verify_ms, head_ms = _measure_at(model, head, sizes, prefix, rounds)
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if long_prefix is not None and limit is not None:  # a model with fewer positions gets what fits
        long_prefix = min(long_prefix, limit - max(sizes))
    if long_prefix is None or long_prefix <= prefix:
        return CostCurve(tuple(sizes), tuple(verify_ms), head_ms, OVERHEAD_MS, prefix)
    long_ms, long_head_ms = _measure_at(model, head, sizes, long_prefix, rounds)
    long_ms = [max(a, b) for a, b in zip(verify_ms, long_ms)]  # more context never costs less (noise aside)
    return CostCurve(tuple(sizes), tuple(verify_ms), head_ms, OVERHEAD_MS, prefix, long_prefix, tuple(long_ms),
                     max(head_ms, long_head_ms))


def _measure_at(model, head, sizes, prefix: int, rounds: int) -> tuple[list[float], float]:
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, prefix), generator=torch.Generator().manual_seed(0)).to(model.device)
    cache = DynamicCache(config=model.config)
    drafter = HeadDrafter(head, SpecDecodeStats())
    layers = drafter.feature_layers  # EAGLE-3 heads: the fused-feature capture is part of every forward
    features, _ = target_forward(model, ids, cache, torch.arange(prefix, device=model.device)[None],
                                 logits_to_keep=1, feature_layers=layers)
    drafter.catch_up(ids, features, 0)  # `prefix` head positions, as before a tree rooted after them
    jobs = {}
    for n in sizes:
        parents = torch.tensor([[-1] + [max(0, i - 4) for i in range(1, n)]], device=model.device)
        tree = DraftTree.from_parents(ids[:, :n], parents)
        mask, positions = tree_mask_for(model, tree.ancestors, prefix), tree_position_ids(tree.depths, prefix)

        def verify(tree=tree, mask=mask, positions=positions):
            target_forward(model, tree.tokens, cache, positions, mask, feature_layers=layers)
            crop_cache(cache, prefix)

        jobs[n] = verify
    expand = drafter.expand(prefix)
    k = 4
    ancestors = torch.eye(k, dtype=torch.bool, device=model.device)[None]

    def head_step():
        expand(ids[:, :k], features[:, :k], ancestors, 1)
        crop_cache(drafter.cache, prefix)

    # Timed last in each round, right after the largest verification: cold, as a cycle's catch-up runs (the
    # target's weights have just pushed the head's out of the CPU's caches; 32 ms against 7.4 ms warm on
    # 2026-12-02). Every step is priced so: pricing the expansions after the catch-up warm, what they cost
    # alone, drafted deeper and was slower on held-out prompts (README, "The cost curve").
    jobs["head"] = head_step
    for fn in jobs.values():
        fn()  # warm-up
    samples = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, fn in jobs.items():
            samples[key].append(_timed(fn))
    verify_ms = [statistics.median(samples[n]) for n in sizes]
    for i in range(1, len(verify_ms)):  # a larger tree never costs less (timing noise aside)
        verify_ms[i] = max(verify_ms[i], verify_ms[i - 1])
    return verify_ms, statistics.median(samples["head"])


class _CycleClock:
    """A streamer that notes when each chunk of tokens arrives: one cycle lies between two chunks."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def time_cycles(model, head, shapes=CYCLE_SHAPES, prefix: int = PREFIX, cycles: int = CYCLES,
                rounds: int = CYCLE_ROUNDS, prepack: bool = False) -> list[tuple[int, int, int, float]]:
    """Whole cycles of strategy="fspad" with each fixed tree shape (no lookup drafts; PLAIN_CYCLE: a plain
    decoding step), greedy on a random prompt
    of `prefix` tokens: per shape (tree tokens, head steps per cycle incl. the catch-up, cached tokens, median
    ms of its cycles after the first of each decode). The shapes are decoded in `rounds` interleaved rounds,
    their order rotated each round, so that a slow spell of a shared machine falls on every shape alike rather
    than on the few decoded during it (one decode per shape gave head-step factors from 0.45 to 1.55 in three
    quiet runs). Costs do not depend on the text; a cycle that accepts drafts emits more tokens, so a shape
    may give fewer cycles than asked."""
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, prefix), generator=torch.Generator().manual_seed(1)).to(model.device)
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, eos_token_id=None, max_new_tokens=cycles + 2, temperature=None, top_p=None,
                  top_k=None, return_dict_in_generate=True)
    spans = {shape: [] for shape in shapes}
    steps = {}
    for r in range(rounds):
        for shape in shapes[r % len(shapes):] + shapes[:r % len(shapes)]:
            top_k, depth, total = shape
            clock = _CycleClock()
            tree = (dict(cost_curve=_NOTHING_PAYS) if shape == PLAIN_CYCLE
                    else dict(tree_top_k=top_k, tree_depth=depth, tree_total_tokens=total))
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                 assistant_model=head, strategy="fspad", lookup_tokens=0, streamer=clock,
                                 draft_int8=bool(head.int8_weights), prepack_target=prepack, **tree)
            # chunks: the prompt, the prefill's token, then one per cycle
            times = clock.times[2:] if len(clock.times) > 3 else clock.times[1:]
            spans[shape] += [(b - a) * 1000 for a, b in zip(times, times[1:])]
            n_cycles = out.spec_stats.target_forwards - 1
            steps[shape] = round(out.spec_stats.draft_forwards / max(n_cycles, 1))
    # a shape without spans: the prefill's token finished the answer (drafts accepted to max_new_tokens at once)
    return [(shape[2], steps[shape], prefix + cycles // 2, statistics.median(spans[shape]))
            for shape in shapes if spans[shape]]


def fitted_curve(model, head, isolated: CostCurve, prepack: bool = False) -> tuple[CostCurve, dict]:
    """The isolated curve refitted to whole cycles (`time_cycles`), and a record of the fit."""
    rows = time_cycles(model, head, prepack=prepack)
    if len(rows) < 3:  # a draft that is always accepted leaves too few timed cycles to fit
        logger.warning("hf_specdec: too few timed cycles (%d) to refit the cost curve; using the isolated one", len(rows))
        return isolated, {"level": 1.0, "slope": 1.0, "head": 1.0, "cycles": [], "unfitted": True}
    level, slope, head_factor = fit_cycle_costs(rows, isolated)
    curve = refit_curve(isolated, level, slope, head_factor)

    def predicted(c: CostCurve, n: int, steps: int, cached: int) -> float:  # what the sizing prices such a cycle at
        at = c.at(cached)
        return round(at.overhead_ms + steps * at.head_step_ms + at.verify(n), 2)

    record = {"level": level, "slope": slope, "head": head_factor,
              "cycles": [{"tree_tokens": n, "head_steps": s, "cached": L, "ms": round(ms, 2),
                          "isolated_ms": predicted(isolated, n, s, L), "fitted_ms": predicted(curve, n, s, L)}
                         for n, s, L, ms in rows]}
    return curve, record


def cost_curve_for(model, head, refresh: bool = False, isolated: bool = False, int8: bool | None = None,
                   prepack: bool | None = None) -> CostCurve:
    """The cached curve for this (target, head, device, dtype, threads), measured on first use: fitted to whole
    cycles, or with `isolated` the curve of the isolated measurements alone (for comparisons). `int8`: for the
    head on int8 weights or not (default: as strategy="fspad" runs it by default, `default_int8_weights`);
    `prepack`: for the target on prepacked weights or not (default: generate's, `check_prepack`)."""
    int8 = default_int8_weights(head) if int8 is None else int8
    prepack = check_prepack(model, None) if prepack is None else prepack
    key = cost_key(model, head, int8, prepack)
    with _MEASURING:  # concurrent first calls measure once, not side by side (which would time contention)
        if key not in _MEMORY or refresh:
            with int8_weights(head, int8):  # measured as it will decode
                _MEMORY[key] = _load_or_measure(model, head, cost_cache_path(model, head, int8, prepack), refresh,
                                                prepack)
    fitted, alone = _MEMORY[key]
    return alone if isolated else fitted


def cost_cache_path(model, head, int8: bool | None = None, prepack: bool | None = None):
    """The cache file of this pair's curves: the fitted curve, its "isolated" one and the "cycle_fit" record
    (`int8`, `prepack` as in `cost_curve_for`)."""
    int8 = default_int8_weights(head) if int8 is None else int8
    prepack = check_prepack(model, None) if prepack is None else prepack
    return cache_dir() / "costs" / f"{cost_key(model, head, int8, prepack)}.json"


def machine_busy(model) -> str | None:
    """Why costs measured now would time contention rather than this machine, or None: on a CPU, a 1-minute load
    average above its core count (another job competing for the cores; a decode of our own adds at most its
    threads). A curve measured then sizes every later tree wrongly, so it is not cached."""
    if model.device.type != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return f"1-minute load average {load:.1f} on {cores} cores" if load > cores + 0.5 else None


def _load_or_measure(model, head, path, refresh: bool, prepack: bool) -> tuple[CostCurve, CostCurve]:
    if path.is_file() and not refresh:
        stored = json.loads(path.read_text())
        return CostCurve.from_dict(stored), CostCurve.from_dict(stored["isolated"])
    logger.warning("hf_specdec: measuring this machine's verification and head-step costs once (seconds; cached "
                   "in %s)", path)
    with prepacked_linears(model, prepack):
        alone = measure_costs(model, head)
    curve, record = fitted_curve(model, head, alone, prepack)
    busy = machine_busy(model)
    if busy:
        logger.warning("hf_specdec: the machine was busy while its costs were measured (%s): this process sizes trees "
                       "with them, but they are not cached; run `hf-specdec calibrate --refresh` when it is quiet.", busy)
        return curve, alone
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # whole or absent for another process reading it
    tmp.write_text(json.dumps({**curve.to_dict(), "isolated": alone.to_dict(), "cycle_fit": record}, indent=1))
    tmp.replace(path)
    return curve, alone
