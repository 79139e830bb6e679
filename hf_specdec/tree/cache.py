"""KV cache surgery for tree decoding: keep the prefix plus the accepted path."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..accel import kernels, kernels_serve


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


def compact_cache(cache: DynamicCache, prefix_len: int, path: torch.Tensor) -> None:
    """Keep the first `prefix_len` positions plus the tree entries prefix_len + path (path [P] ascending, the
    root first), in every layer, in place: the path's entries move next to the prefix and the rest is cut.

    Only P entries per layer move (the prefix stays where it is); the Triton kernel moves them for all layers
    in one launch where the kernels serve (hf_specdec.accel)."""
    layers = [layer for layer in cache.layers if layer.is_initialized and layer.keys.numel()]
    if not layers:
        return
    P = path.shape[0]
    if P > 1:  # the root's entry (path[0] = 0) is in place already: a cycle that accepted nothing moves nothing
        unique = {t.data_ptr(): t for layer in layers for t in (layer.keys, layer.values)}  # shared storage once
        if kernels_serve(layers[0].keys.device):
            groups: dict[tuple, list[torch.Tensor]] = {}
            for t in unique.values():
                groups.setdefault((t.shape, t.stride(), t.dtype, t.device), []).append(t)
            for tensors in groups.values():
                kernels().compact_kv(tensors, prefix_len, path)
        else:
            sources: dict[torch.device, torch.Tensor] = {}
            for t in unique.values():
                if t.device not in sources:  # a model split over devices keeps its layers' caches on each
                    sources[t.device] = (prefix_len + path[1:]).to(t.device)
                t[..., prefix_len + 1 : prefix_len + P, :] = t.index_select(-2, sources[t.device])
    for layer in layers:
        layer.keys = layer.keys[..., : prefix_len + P, :]
        layer.values = layer.values[..., : prefix_len + P, :]


def compact_cache_reference(cache: DynamicCache, prefix_len: int, path: torch.Tensor) -> None:
    """What `compact_cache` does, the plain way: rebuild every layer with index_select (copies the prefix too)."""
    keep = torch.cat([torch.arange(prefix_len, device=path.device), prefix_len + path])
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys.index_select(-2, keep.to(layer.keys.device))
            layer.values = layer.values.index_select(-2, keep.to(layer.values.device))


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop everything after the first `length` positions."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
