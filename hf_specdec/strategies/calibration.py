"""The machine's own costs for tree sizing (tree/sizing.py): measured once per (target, head, device, dtype,
threads) in a few seconds, cached on disk, refreshable.

    hf-specdec calibrate [--model ...] [--refresh]      # measure (or show the cached curve): bench/costs.py

Measured: one target forward over N tree tokens after a 256-token prefix, for N in VERIFY_SIZES, and one head
expansion step of 4 nodes; medians of interleaved rounds; then the same after a 1,024-token prefix, so the
sizing sees each cycle's own context (CostCurve.at). The engine's own host work per cycle is not in them;
OVERHEAD_MS stands for it (`hf-specdec overhead` measures it).
"""

from __future__ import annotations

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
from ..tree import CostCurve, DraftTree, crop_cache, tree_mask_for, tree_position_ids
from .common import SpecDecodeStats
from .drafters import HeadDrafter
from .engine import target_forward

logger = logging.getLogger(__name__)

VERIFY_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48)
PREFIX = 256
LONG_PREFIX = 1024  # a cycle deep in a long prompt (summarization, RAG) attends to ~1k cached tokens
ROUNDS = 5
OVERHEAD_MS = 2.0  # host time of one cycle beyond forwards and head steps (order of `hf-specdec overhead`, CPU)

_MEMORY: dict[str, CostCurve] = {}
_MEASURING = threading.Lock()


def cost_key(model, head) -> str:
    """What the costs depend on: the two networks' shapes, device, dtype, threads, torch version."""
    parts = ["curve format 2: two contexts",
             model.config.to_json_string(use_diff=False), head.config.to_json_string(use_diff=False),
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


def cost_curve_for(model, head, refresh: bool = False) -> CostCurve:
    """The cached curve for this (target, head, device, dtype, threads), measured on first use."""
    key = cost_key(model, head)
    with _MEASURING:  # concurrent first calls measure once, not side by side (which would time contention)
        if key in _MEMORY and not refresh:
            return _MEMORY[key]
        curve = _load_or_measure(model, head, key, refresh)
        _MEMORY[key] = curve
    return curve


def _load_or_measure(model, head, key: str, refresh: bool) -> CostCurve:
    path = cache_dir() / "costs" / f"{key}.json"
    if path.is_file() and not refresh:
        curve = CostCurve.from_dict(json.loads(path.read_text()))
    else:
        logger.warning("hf_specdec: measuring this machine's verification and head-step costs once (a few "
                       "seconds; cached in %s)", path)
        curve = measure_costs(model, head)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # whole or absent for another process reading it
        tmp.write_text(json.dumps(curve.to_dict(), indent=1))
        tmp.replace(path)
    return curve
