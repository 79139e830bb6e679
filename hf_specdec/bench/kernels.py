"""The Triton tree kernels against the torch paths they replace, on a GPU.

    hf-specdec bench-kernels --out bench_results/kernels.json

    tree attention   kernel (packed ancestor bits)  vs  sdpa with the dense additive mask (per layer call)
    greedy verify    kernel walk                    vs  the torch rule (ancestor matrix), argmax included
    KV compaction    kernel, all layers, in place   vs  per-layer index_select (and the in-place torch path)

Shapes: tree sizes 16-256, prefixes 512-8k, head dims 64 and 128 (32 query heads over 8 KV heads), a
32-layer bf16 cache. Every row also reports the largest difference from the reference. Times are medians of
CUDA-event timings (triton.testing.do_bench); A and B of a row run back to back. Without CUDA the script
times the same calls on CPU, kernels in Triton's interpreter if TRITON_INTERPRET=1 (a smoke test, not a
measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..accel import kernel_mode, kernels, triton_available
from ..tree import DraftTree, compact_cache, pack_tree_mask, tree_attention_mask
from ..tree.cache import compact_cache_reference
from ..verification import greedy_tree_walk, verify_greedy

TARGETS = {  # the targets, checked in the summary
    "tree attention vs sdpa + dense mask at tree 64 / prefix 4096": 1.5,
    "compaction vs per-layer index_select, 32 layers": 3.0,
}


def eagle_tree(n: int, device, seed: int = 0) -> DraftTree:
    """A tree shaped like EAGLE-2 output (a few children at the root, chains and small fans below)."""
    gen = torch.Generator().manual_seed(seed)
    parents = [-1] + [max(0, i - int(torch.randint(1, 6, (1,), generator=gen))) for i in range(1, n)]
    tokens = torch.arange(100, 100 + n)[None]
    return DraftTree.from_parents(tokens.to(device), torch.tensor([parents], device=device))


def timer(device: torch.device, reps: int):
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=reps, return_mode="median")

    def cpu(fn):
        fn()
        times = []
        for _ in range(max(3, reps // 10)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    return cpu


class _Attn(torch.nn.Module):  # what sdpa_attention_forward reads off the attention module
    def __init__(self, groups):
        super().__init__()
        self.is_causal, self.num_key_value_groups = False, groups


def bench_attention(device, dtype, tree_sizes, prefixes, head_dims, time_ms, use_kernels):
    rows = []
    for head_dim in head_dims:
        heads, kv_heads = 32, 8
        module = _Attn(heads // kv_heads)
        for prefix in prefixes:
            for n in tree_sizes:
                tree = eagle_tree(n, device)
                q = torch.randn(1, n, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
                k = torch.randn(1, kv_heads, prefix + n, head_dim, device=device, dtype=dtype)
                v = torch.randn_like(k)
                dense = tree_attention_mask(tree.ancestors, prefix, dtype)
                packed = pack_tree_mask(tree.ancestors, prefix)
                ref = lambda: sdpa_attention_forward(module, q, k, v, dense, scaling=head_dim**-0.5)[0]  # noqa: E731
                row = {"head_dim": head_dim, "prefix": prefix, "tree": n, "sdpa_dense_ms": time_ms(ref),
                       "mask_build_ms": time_ms(lambda: tree_attention_mask(tree.ancestors, prefix, dtype))}
                if use_kernels:
                    fast = lambda: kernels().tree_attention(q, k, v, packed, head_dim**-0.5)  # noqa: E731
                    row["kernel_ms"] = time_ms(fast)
                    row["pack_ms"] = time_ms(lambda: pack_tree_mask(tree.ancestors, prefix))
                    row["speedup"] = row["sdpa_dense_ms"] / row["kernel_ms"]
                    row["max_abs_diff"] = float((fast().float() - ref().float()).abs().max())
                rows.append(row)
    return rows


def sweep_attention(device, dtype, time_ms, prefix=4096, n=64, head_dim=128):
    """Tile sizes and key splits of the tree attention kernel at one shape (to pick defaults on a new GPU)."""
    tree = eagle_tree(n, device)
    q = torch.randn(1, n, 32, head_dim, device=device, dtype=dtype).transpose(1, 2)
    k = torch.randn(1, 8, prefix + n, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    packed = pack_tree_mask(tree.ancestors, prefix)
    rows = []
    for block_m in (16, 32, 64, 128):
        for block_n in (32, 64, 128):
            for splits in (None, 1, 2, 4, 8, 16):
                for warps in (4, 8):
                    run = lambda: kernels().tree_attention(q, k, v, packed, None, block_m, block_n, splits, warps)  # noqa: E731
                    try:
                        rows.append({"block_m": block_m, "block_n": block_n, "splits": str(splits), "warps": warps,
                                     "ms": time_ms(run)})
                    except Exception as error:  # e.g. out of shared memory
                        rows.append({"block_m": block_m, "block_n": block_n, "splits": str(splits), "warps": warps,
                                     "ms": float("nan"), "error": type(error).__name__})
    return sorted(rows, key=lambda r: (r["ms"] != r["ms"], r["ms"]))


def bench_verify(device, tree_sizes, vocab, time_ms, use_kernels):
    rows = []
    for n in tree_sizes:
        tree = eagle_tree(n, device, seed=n)
        scores = torch.randn(1, n, vocab, device=device)
        scores[0, torch.arange(n - 1), tree.tokens[0, 1:]] += 100.0  # every draft is the argmax somewhere
        with kernel_mode("torch"):
            torch_rule = lambda: verify_greedy(tree, scores)  # noqa: E731
            row = {"tree": n, "vocab": vocab, "torch_ms": time_ms(torch_rule),
                   "torch_walk_ms": time_ms(lambda: greedy_tree_walk(tree, scores.argmax(-1)))}
            expected = torch_rule()
        if use_kernels:
            with kernel_mode("triton"):
                row["kernel_ms"] = time_ms(lambda: verify_greedy(tree, scores))
                got = verify_greedy(tree, scores)
                target_next = scores.argmax(-1)
                row["kernel_walk_ms"] = time_ms(lambda: kernels().greedy_tree_walk(tree.tokens, tree.parents, target_next))
            row["speedup"] = row["torch_ms"] / row["kernel_ms"]
            row["same_verdict"] = bool(torch.equal(got.path, expected.path) and torch.equal(got.next_tokens, expected.next_tokens))
        rows.append(row)
    return rows


def bench_compaction(device, dtype, prefixes, layers, tree, path_len, time_ms, use_kernels):
    """Times the data movement on the layers' tensors (repeatable, unlike editing one cache); the cut that
    follows is a view in every variant. Correctness is checked on whole caches."""
    rows = []
    kv_heads, head_dim = 8, 128
    path = torch.tensor([0] + sorted(torch.randperm(tree - 1)[: path_len - 1].add(1).tolist()), device=device)
    for prefix in prefixes:
        tensors = [torch.randn(1, kv_heads, prefix + tree, head_dim, device=device, dtype=dtype)
                   for _ in range(2 * layers)]
        keep = torch.cat([torch.arange(prefix, device=device), prefix + path])

        def in_place():
            for t in tensors:
                t[..., prefix : prefix + path_len, :] = t.index_select(-2, prefix + path)

        row = {"layers": layers, "prefix": prefix, "tree": tree, "path": path_len,
               "index_select_ms": time_ms(lambda: [t.index_select(-2, keep) for t in tensors]),
               "torch_inplace_ms": time_ms(in_place)}
        if use_kernels:
            row["kernel_ms"] = time_ms(lambda: kernels().compact_kv(tensors, prefix, path))
            row["speedup"] = row["index_select_ms"] / row["kernel_ms"]
            caches = []
            for mode in ("torch", "triton"):
                cache = DynamicCache()
                for i in range(layers):
                    cache.update(tensors[2 * i].clone(), tensors[2 * i + 1].clone(), i)
                with kernel_mode(mode):
                    (compact_cache_reference if mode == "torch" else compact_cache)(cache, prefix, path)
                caches.append(cache)
            row["identical"] = all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
                                   for a, b in zip(*(c.layers for c in caches)))
        rows.append(row)
    return rows


def print_table(title, rows):
    if not rows:
        return
    print(f"\n{title}")
    cols = list(rows[0])
    print(" | ".join(f"{c:>14s}" for c in cols))
    for row in rows:
        print(" | ".join(f"{row.get(c, float('nan')):14.4g}" if isinstance(row.get(c), float) else f"{str(row.get(c)):>14s}"
                         for c in cols))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hf-specdec bench-kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tree-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--prefixes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--path-len", type=int, default=5)
    parser.add_argument("--reps", type=int, default=100, help="ms of timing per call on CUDA (do_bench rep)")
    parser.add_argument("--sweep", action="store_true", help="also time tile sizes / key splits at tree 64, prefix 4k")
    parser.add_argument("--out", default="bench_results/kernels.json")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    use_kernels = triton_available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if device.type != "cuda":
        print("No CUDA device: CPU timings" + (" with the kernels in Triton's interpreter (a smoke test, not a "
                                               "measurement)" if use_kernels else " of the torch paths only"))
    time_ms = timer(device, args.reps)
    torch.manual_seed(0)
    with torch.no_grad():
        results = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": args.dtype, "torch": torch.__version__, "kernels": use_kernels,
            "tree_attention": bench_attention(device, dtype, args.tree_sizes, args.prefixes, args.head_dims, time_ms,
                                              use_kernels),
            "greedy_verify": bench_verify(device, args.tree_sizes, args.vocab, time_ms, use_kernels),
            "compaction": bench_compaction(device, dtype, args.prefixes, args.layers, 64, args.path_len, time_ms,
                                           use_kernels),
        }
        if args.sweep and use_kernels:
            results["attention_sweep"] = sweep_attention(device, dtype, time_ms)
    print_table("Tree attention, one layer call (32 query / 8 KV heads), ms", results["tree_attention"])
    print_table("Greedy tree verification (argmax + walk + path), ms", results["greedy_verify"])
    print_table(f"KV-cache compaction, {args.layers} layers, ms", results["compaction"])
    print_table("Tree attention tile sweep (tree 64, prefix 4096, d 128), fastest first", results.get("attention_sweep", [])[:12])
    if use_kernels and device.type == "cuda":
        at = [r for r in results["tree_attention"] if r["tree"] == 64 and r["prefix"] == 4096]
        comp = results["compaction"]
        summary = {
            "tree attention vs sdpa + dense mask at tree 64 / prefix 4096": min((r["speedup"] for r in at), default=None),
            "compaction vs per-layer index_select, 32 layers": min((r["speedup"] for r in comp), default=None),
        }
        results["summary"] = summary
        print("\nTargets (worst case over head dims / prefixes):")
        for name, value in summary.items():
            verdict = "n/a" if value is None else ("met" if value >= TARGETS[name] else "missed")
            print(f"  {name}: {value if value is None else f'{value:.2f}x'} (target {TARGETS[name]}x) {verdict}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
