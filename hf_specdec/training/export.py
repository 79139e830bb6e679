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


CARD = """---
library_name: hf_specdec
tags: [speculative-decoding, draft-head, {layout}]
---
# {name}

A draft head converted by `hf-specdec convert` from `{source}` ({layout} layout) into hf_specdec's layout
(`FSPADDraftModel`, variant `{variant}`). Load it with `AutoModel.from_pretrained` after `import hf_specdec`, or
pass the folder as `assistant_model=` with `strategy="fspad"`. The weights are the source's, unchanged; the
copy of the target's embedding the source carried is not stored (the head borrows the target's).
{target_line}
"""


def convert(source: str, out_dir, to: str = "hf_specdec", target_name: str | None = None, revision: str | None = None):
    """Read a head in any layout `load_draft` knows and write it in `to`: hf_specdec's (config, safetensors,
    generation_config with tree defaults, a model card naming the source) or, for our own heads, the EAGLE-1/2
    / FSPAD-reference layouts."""
    from pathlib import Path

    from ..draft import load_draft, save_layout

    target = None
    if target_name is not None:
        from .prepare import DTYPES, load_target

        target, _ = load_target(None if target_name == "default" else target_name, DTYPES["float32"])
    head = load_draft(source, target=target, revision=revision)
    out = Path(out_dir)
    if to != "hf_specdec":
        if target is None:
            raise ValueError(f"--to {to} writes the target's embedding into the head: pass --target.")
        return save_layout(head, out, to)
    head.save_pretrained(out)
    target_line = (f"Checked against the target `{target_name}` (hidden size, vocabulary, embedding)."
                   if target_name else "Not checked against a target at conversion (pass --target to check).")
    layout = head.config.source_layout or "hf_specdec"
    (out / "README.md").write_text(CARD.format(name=out.name, source=source, layout=layout,
                                               variant=head.config.variant, target_line=target_line))
    return out


def convert_main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec convert",
                                description="A draft head from another project's layout into ours (or ours into theirs).")
    p.add_argument("source", help="head folder or Hub repo id (EAGLE-1/2, FSPAD reference, hf_specdec)")
    p.add_argument("--out", required=True)
    p.add_argument("--to", default="hf_specdec", choices=["hf_specdec", "eagle", "fspad-reference"],
                   help="the layout to write (eagle / fspad-reference: for our EAGLE-2 / FSPAD heads)")
    p.add_argument("--target", default=None, help="the target to check the head against ('default': the embedded one)")
    p.add_argument("--revision", default=None)
    args = p.parse_args(argv)
    out = convert(args.source, args.out, args.to, args.target, args.revision)
    print(f"wrote {out}")
    return 0
