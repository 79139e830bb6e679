"""What keeping grouped key / value heads grouped saves in a tree verification on the CPU (README, "The cost curve
... and the engine's own overhead"): SmolLM2 verifies 16 tree tokens after 256 and 1,000 cached tokens, with
transformers' sdpa as it is (repeat_kv under a mask) and with transformers' own switch that keeps the heads grouped
(TRANSFORMERS_SDPA_FORCE_GQA=1, which is what hf_specdec's `hf_specdec_sdpa` attention does on the CPU).

    python examples/bench_grouped_sdpa.py
"""

import os
import statistics
import time

import torch
from transformers import DynamicCache

import hf_specdec
from hf_specdec.tree.masks import tree_attention_mask


@torch.no_grad()
def main(rounds: int = 3, calls: int = 5):
    model, _ = hf_specdec.default_target()
    for cached in (256, 1000):
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.randint(0, 40000, (1, cached)), cache=cache, use_cache=True)
        mask = tree_attention_mask(torch.ones(16, 16, dtype=torch.bool).tril()[None], cached, model.dtype)
        tokens, positions = torch.randint(0, 40000, (1, 16)), torch.arange(cached, cached + 16)[None]

        def verify():
            model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            cache.crop(-16)

        ms = {"0": [], "1": []}
        for _ in range(rounds):
            for grouped in ms:
                os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = grouped
                verify()
                start = time.perf_counter()
                for _ in range(calls):
                    verify()
                ms[grouped].append((time.perf_counter() - start) / calls * 1000)
        print(f"after {cached} cached tokens: repeat_kv {statistics.median(ms['0']):.1f} ms, "
              f"grouped {statistics.median(ms['1']):.1f} ms")


if __name__ == "__main__":
    main()
