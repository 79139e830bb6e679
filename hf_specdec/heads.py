"""The draft heads shipped inside the package (Hub-ready folders under hf_specdec/pretrained/).

    from hf_specdec import default_target, default_draft
    target, tokenizer = default_target()
    head = default_draft(target, tokenizer)
    target.generate(ids, assistant_model=head, strategy="fspad")
"""

from __future__ import annotations

from pathlib import Path

import torch

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_DRAFT = "smollm2-135m-instruct-fspad"
DEFAULT_BASELINE_DRAFT = "smollm2-135m-instruct-eagle2"


def shipped_head_path(name: str) -> Path:
    path = PRETRAINED_DIR / name
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in PRETRAINED_DIR.glob("*") if (p / "config.json").is_file())
        raise FileNotFoundError(f"No shipped head {name!r} in {PRETRAINED_DIR} (shipped: {shipped or 'none'}).")
    return path


def _load(name: str, target, tokenizer, dtype):
    from .draft import FSPADDraftModel

    if dtype is None:
        dtype = target.dtype if target is not None else torch.bfloat16
    head = FSPADDraftModel.from_pretrained(shipped_head_path(name), dtype=dtype)
    if target is not None:
        head.attach_target(target, tokenizer)
    return head.eval()


def default_draft(target=None, tokenizer=None, dtype: torch.dtype | None = None):
    """The trained FSPAD head for the default target (SmolLM2-135M-Instruct), attached to `target` if given.

    Its generation_config.json carries a fixed tree shape tuned for a 2-core CPU: generate's trees are sized by
    the machine's costs (with that shape's top-k) unless tree_top_k / tree_depth / tree_total_tokens are passed,
    and the shape fills in whichever of them is missing."""
    return _load(DEFAULT_DRAFT, target, tokenizer, dtype)


def default_baseline_draft(target=None, tokenizer=None, dtype: torch.dtype | None = None):
    """The EAGLE-2 baseline head (no FS, no PAD) trained on the same data and budget, for comparisons."""
    return _load(DEFAULT_BASELINE_DRAFT, target, tokenizer, dtype)
