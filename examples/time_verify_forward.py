"""Where a tree verification's cost lies on this machine (the embedded SmolLM2, bf16, 300 cached tokens):
  1. the forward over a 16-node tree with the lm_head at all 16 nodes, at the 12 nodes that have children (what
     the greedy walk reads), and at one node: what computing a leaf's logits only when the path ends there
     could save (medians of interleaved rounds);
  2. the torch profiler's `aten::mm` and attention time per forward, for 1 token and for 16.

    python examples/time_verify_forward.py [--rounds 15]
"""

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

import hf_specdec
from hf_specdec.tree import DraftTree, crop_cache, tree_attention_mask, tree_position_ids

CACHED = 300


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    target, _ = hf_specdec.default_target()
    ids = torch.randint(0, target.config.vocab_size, (1, CACHED), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=target.config)

    def tree_inputs(n):
        parents = torch.tensor([[-1] + [max(0, i - 4) for i in range(1, n)]])
        tree = DraftTree.from_parents(ids[:, :n], parents)
        mask = tree_attention_mask(tree.ancestors, CACHED, target.dtype) if n > 1 else None
        return tree, mask, tree_position_ids(tree.depths, CACHED), parents

    def forward(n_inputs, keep=0):
        tree, mask, positions, _ = n_inputs
        target(input_ids=tree.tokens, cache=cache, use_cache=True, attention_mask=mask, position_ids=positions,
               logits_to_keep=keep)
        crop_cache(cache, CACHED)

    with torch.no_grad():
        target(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        sixteen, one = tree_inputs(16), tree_inputs(1)
        with_children = torch.unique(sixteen[3][0, 1:])
        keeps = {"lm_head at all 16 nodes": 0, f"at the {len(with_children)} with children": with_children,
                 "at one node": torch.tensor([0])}
        for keep in keeps.values():
            forward(sixteen, keep)
        ms = {name: [] for name in keeps}
        for _ in range(args.rounds):
            for name, keep in keeps.items():
                start = time.perf_counter()
                forward(sixteen, keep)
                ms[name].append((time.perf_counter() - start) * 1000)
        for name, samples in ms.items():
            print(f"16-node verification, {name}: {statistics.median(samples):.1f} ms")
        for n, inputs in ((1, one), (16, sixteen)):
            for _ in range(3):
                forward(inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(10):
                    forward(inputs)
            totals = {e.key: e.self_cpu_time_total / 1000 / 10 for e in prof.key_averages()}
            attention = sum(t for k, t in totals.items() if "attention" in k)
            print(f"{n} token(s): aten::mm {totals.get('aten::mm', 0):.1f} ms, attention {attention:.1f} ms per forward "
                  "(torch profiler, 10 forwards)")


if __name__ == "__main__":
    main()
