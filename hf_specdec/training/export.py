"""`hf-specdec export`: turn a trained head into a Hub-ready folder (weights in the serving dtype, the tuned
tree shape in generation_config.json). The model card (README.md) is written beside it by hand, from the
benchmark's numbers.

    hf-specdec export --head runs/smollm2/fspad/head --tree 4,4,16 --out hf_specdec/pretrained/NAME
"""

from __future__ import annotations

import argparse

import torch
from transformers import GenerationConfig

from ..draft import FSPADDraftModel


def export_head(head_dir, out_dir, tree: tuple[int, int, int] | None, dtype: torch.dtype = torch.bfloat16):
    head = FSPADDraftModel.from_pretrained(head_dir, dtype=dtype)
    if tree is not None:
        k, d, n = tree
        head.generation_config = GenerationConfig(tree_top_k=k, tree_depth=d, tree_total_tokens=n)
    head.save_pretrained(out_dir)
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec export", description=__doc__.split("\n")[0])
    p.add_argument("--head", required=True, help="a trained head folder (the run's head/)")
    p.add_argument("--out", required=True)
    p.add_argument("--tree", default=None, help="tree_top_k,tree_depth,tree_total_tokens to record as defaults")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    args = p.parse_args(argv)
    tree = tuple(int(v) for v in args.tree.split(",")) if args.tree else None
    export_head(args.head, args.out, tree, getattr(torch, args.dtype))
    print(f"exported to {args.out}")
    return 0
