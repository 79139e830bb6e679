"""Time one head expansion step (4 nodes with a tree mask after a cached prefix, the cache cropped back after
each) of a random FSPAD head, SmolLM2-sized in bf16 or tiny in float32: the README's head-step A/B. The step runs
as generate runs it: inside `weights_fixed` (one generate call), on the cache a tree drafter keeps. Run it once
per code version, alternating, in separate processes.

    python examples/time_head_step.py [--tiny] [--cached 300] [--rounds 7] [--steps 200] [--extra-layers N]
    python examples/time_head_step.py --ops      # what single small ops cost on this CPU, one thread
    python examples/time_head_step.py --tiny --compile   # the same step with the head's forward torch.compile'd
    python examples/time_head_step.py --int8     # the head's products: bf16 / float32 F.linear against int8 weights
    python examples/time_head_step.py --packing  # F.linear against oneDNN-prepacked weights: single products by
                                                 # size, and the embedded target's whole forward (hf_specdec/prepacked.py)
"""

import argparse
import statistics
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from torch.nn import functional as F

from hf_specdec import FSPADDraftModel
from hf_specdec.draft.base import weights_fixed
from hf_specdec.strategies.common import SpecDecodeStats
from hf_specdec.strategies.drafters import HeadDrafter
from hf_specdec.tree import crop_cache, tree_attention_mask


def time_ops(calls: int = 5000) -> None:
    """Mean microseconds per call of the small ops a tiny head step is made of ([1, 4, 64] inputs, one thread)."""
    torch.set_num_threads(1)
    x, w, norm_weight = torch.randn(1, 4, 64), torch.randn(128, 64), torch.ones(64)
    ops = {"F.linear [1,4,64] x [64,128]": lambda: F.linear(x, w),
           "F.rms_norm [1,4,64]": lambda: F.rms_norm(x, (64,), norm_weight, 1e-6),
           "add [1,4,64]": lambda: x + x}
    for name, op in ops.items():
        for _ in range(200):
            op()
        start = time.perf_counter()
        for _ in range(calls):
            op()
        print(f"{name}: {(time.perf_counter() - start) / calls * 1e6:.1f} us")


def median_call_us(fn, rounds: int, calls: int, warm_up: int) -> float:
    """Median over `rounds` of the mean microseconds per call of `fn` over `calls` calls, after `warm_up` calls."""
    for _ in range(warm_up):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def time_int8_products(rounds: int = 5, calls: int = 200) -> None:
    """Median microseconds per call of SmolLM2-sized head products (the 16k lm_head rows, gate / up, down) for a
    few row counts: F.linear on bf16 and float32 weights, the bf16 weight prepacked (what a dense decoding product
    runs, hf_specdec/prepacked.py), and torch's int8 kernel on int8 weights (`aten._weight_int8pack_mm`, what
    `Product` runs up to INT8_MAX_ROWS rows): where the int8 kernel stops paying is where INT8_MAX_ROWS belongs."""
    from hf_specdec.draft.base import int8_rows
    from hf_specdec.prepacked import pack, packed_linear

    def median_us(fn):
        return median_call_us(fn, rounds, calls, warm_up=20)

    print("| weight [N, K] | rows | bf16 | bf16 prepacked | int8 kernel | float32 |\n|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for n, k in ((16384, 576), (1536, 576), (1152, 1536)):
        w = torch.randn(n, k, dtype=torch.bfloat16)
        q, s = int8_rows(w)
        packed, wf = pack(w), w.float()
        for rows in (1, 2, 4, 6, 8, 12, 16):
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            print(f"| [{n}, {k}] | {rows} | {median_us(lambda: F.linear(x, w)):.0f} | "
                  f"{median_us(lambda: packed_linear(x, packed, None)):.0f} | "
                  f"{median_us(lambda: torch.ops.aten._weight_int8pack_mm(x, q, s)):.0f} | "
                  f"{median_us(lambda: F.linear(x.float(), wf)):.0f} |")


def time_packing(rounds: int = 5, calls: int = 2000) -> None:
    """1. Microseconds per product of 4 rows, F.linear against `packed_linear` on weights of growing size (warm,
    the threshold PACK_MIN_ELEMENTS); 2. ms per forward of the embedded SmolLM2 over 1, 4 and 16 tree tokens
    after 300 cached ones, plain against `prepacked_linears` (medians of 7 interleaved rounds), bf16 and float32."""
    import hf_specdec
    from hf_specdec.prepacked import pack, packed_linear, prepacked_linears
    from hf_specdec.tree import DraftTree, crop_cache, tree_position_ids

    def median_us(fn):
        return median_call_us(fn, rounds, calls, warm_up=50)

    print("| dtype | weight [N, K] | F.linear us | prepacked us |\n|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for n, k in ((128, 64), (256, 256), (576, 576), (1536, 576), (3072, 576)):
            w, x = torch.randn(n, k).to(dtype), torch.randn(1, 4, k).to(dtype)
            packed = pack(w)
            print(f"| {dtype} | [{n}, {k}] | {median_us(lambda: F.linear(x, w)):.1f} | "
                  f"{median_us(lambda: packed_linear(x, packed, None)):.1f} |")
    cached = 300
    print("\n| dtype | target forward | plain ms | prepacked ms |\n|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        target, _ = hf_specdec.default_target(dtype=dtype)
        ids = torch.randint(0, target.config.vocab_size, (1, cached), generator=torch.Generator().manual_seed(0))
        cache = DynamicCache(config=target.config)
        with torch.no_grad():
            target(input_ids=ids, past_key_values=cache, use_cache=True)

            def forward(n):
                tree = DraftTree.from_parents(ids[:, :n], torch.tensor([[-1] + [max(0, i - 4) for i in range(1, n)]]))
                mask = tree_attention_mask(tree.ancestors, cached, dtype) if n > 1 else None
                target(input_ids=tree.tokens, past_key_values=cache, use_cache=True, attention_mask=mask,
                       position_ids=tree_position_ids(tree.depths, cached))
                crop_cache(cache, cached)

            times = {(p, n): [] for p in (False, True) for n in (1, 4, 16)}
            for _ in range(7):
                for p, n in times:
                    with prepacked_linears(target, p):
                        start = time.perf_counter()
                        forward(n)
                        times[p, n].append((time.perf_counter() - start) * 1e3)
        for n in (1, 4, 16):
            print(f"| {dtype} | {n} tokens | {statistics.median(times[False, n]):.1f} | "
                  f"{statistics.median(times[True, n]):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers' shape, float32 (host cost only)")
    ap.add_argument("--cached", type=int, default=None, help="tokens in the head's cache (default: 64 tiny, 300 SmolLM2)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--extra-layers", type=int, default=0, help="the head's extra decoder layers (num_extra_layers)")
    ap.add_argument("--ops", action="store_true", help="time single small ops instead")
    ap.add_argument("--int8", action="store_true", help="time the head's products on bf16, float32 and int8 weights")
    ap.add_argument("--packing", action="store_true", help="time F.linear against oneDNN-prepacked weights")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the head's forward (dynamic shapes; its compile time is printed, not timed)")
    args = ap.parse_args()
    if args.ops:
        return time_ops()
    if args.int8:
        return time_int8_products()
    if args.packing:
        return time_packing()
    torch.manual_seed(0)
    if args.tiny:
        config, dtype, cached = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2), torch.float32, 64
    else:
        config, dtype, cached = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                                            num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True), torch.bfloat16, 300
    cached = args.cached or cached
    head = FSPADDraftModel.from_target(LlamaForCausalLM(config).to(dtype).eval(), num_extra_layers=args.extra_layers).eval()
    if args.compile:
        head.forward = torch.compile(head.forward, dynamic=True)
    H, cache = config.hidden_size, HeadDrafter(head, SpecDecodeStats()).cache  # the cache generate's drafter keeps
    ids, features = torch.randint(1, 500, (1, 4)), torch.randn(1, 4, H, dtype=dtype)
    ancestors, positions = torch.eye(4, dtype=torch.bool)[None], torch.full((1, 4), cached)
    with torch.no_grad(), weights_fixed():
        head(input_ids=torch.randint(1, 500, (1, cached)), features=torch.randn(1, cached, H, dtype=dtype), cache=cache,
             max_position=cached)

        def step():
            mask = tree_attention_mask(ancestors, cached, dtype)
            head(input_ids=ids, features=features, position_ids=positions, attention_mask=mask, cache=cache,
                 max_position=cached + 1)
            crop_cache(cache, cached)

        start = time.perf_counter()
        step()  # with --compile: the compilation
        first_ms = (time.perf_counter() - start) * 1e3
        for _ in range(args.steps // 4):
            step()
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rounds.append((time.perf_counter() - start) / args.steps * 1e6)
    print(f"head step: {statistics.median(rounds):.0f} us (median of {args.rounds} rounds of {args.steps}; "
          f"{'tiny float32' if args.tiny else 'SmolLM2-sized bf16'}, {cached} cached, {torch.get_num_threads()} threads"
          f"{f', compiled: first call {first_ms / 1e3:.1f} s' if args.compile else ''})")


if __name__ == "__main__":
    main()
