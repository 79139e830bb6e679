"""KV cache surgery for tree decoding: keep the prefix plus the accepted path."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def check_compactable(cache) -> None:
    """Raise unless every layer of `cache` is a plain growing DynamicLayer (what path compaction edits)."""
    layers = getattr(cache, "layers", None)
    bad = (
        not isinstance(cache, DynamicCache)
        or layers is None
        or any(type(layer) is not DynamicLayer for layer in layers)
    )
    if bad:
        kinds = sorted({type(layer).__name__ for layer in (layers or [])}) or [type(cache).__name__]
        raise ValueError(
            f"Tree decoding needs a DynamicCache of full-attention layers, whose entries it can select along the "
            f"sequence; got {type(cache).__name__} with {', '.join(kinds)}. Use the default cache "
            "(do not pass cache_implementation='static' / a StaticCache / a sliding-window or quantized cache)."
        )


def compact_cache(cache: DynamicCache, keep: torch.Tensor) -> None:
    """Keep only the sequence positions `keep` [K] (ascending) in every layer, in place."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys.index_select(-2, keep)
            layer.values = layer.values.index_select(-2, keep)


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop everything after the first `length` positions."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
