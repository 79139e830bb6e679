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


class GrowingCache:
    """A draft's KV cache that writes new entries in place: per layer, key and value buffers [B, kv heads,
    capacity, D] grown by doubling, of which the first `get_seq_length()` positions are filled. `update` copies
    the q new entries into the buffers and returns views of the filled part; `crop` only moves the length.

    transformers' DynamicCache concatenates on every update, a copy of the whole cache: a head updates its cache
    four or more times per cycle (the catch-up and every expansion) and crops it back as often, so its cost grows
    with the context on every head step. Here an update copies the new entries only. The methods are those a
    head's attention and the tree drafters call (update, get_seq_length, crop), with DynamicCache's meaning."""

    MIN_CAPACITY = 256

    def __init__(self):
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self.lengths: list[int] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx] if layer_idx < len(self.lengths) else 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append key / value [B, kv heads, q, D] to layer `layer_idx`; returns its keys and values so far. (Further
        arguments, which transformers' attention layers pass to their caches, are not needed here.)"""
        while len(self.lengths) <= layer_idx:
            self.keys.append(None)
            self.values.append(None)
            self.lengths.append(0)
        n, q = self.lengths[layer_idx], key.shape[-2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if keys is None or n + q > keys.shape[-2] or keys.shape[:2] != key.shape[:2] or keys.dtype != key.dtype:
            keys, values = self._grown(layer_idx, key, value, n + q)
        keys.narrow(-2, n, q).copy_(key)
        values.narrow(-2, n, q).copy_(value)
        self.lengths[layer_idx] = n + q
        return keys.narrow(-2, 0, n + q), values.narrow(-2, 0, n + q)

    def _grown(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, needed: int):
        old_keys, old_values, n = self.keys[layer_idx], self.values[layer_idx], self.lengths[layer_idx]
        capacity = max(self.MIN_CAPACITY, needed, 2 * (old_keys.shape[-2] if old_keys is not None else 0))
        keys = key.new_empty(*key.shape[:2], capacity, key.shape[-1])
        values = value.new_empty(*value.shape[:2], capacity, value.shape[-1])
        if old_keys is not None and n:
            if old_keys.shape[:2] != key.shape[:2]:
                raise ValueError(f"GrowingCache: entries of shape {tuple(key.shape)} after {n} cached of "
                                 f"{tuple(old_keys[..., :n, :].shape)} (batch or heads changed).")
            keys[..., :n, :] = old_keys[..., :n, :]
            values[..., :n, :] = old_values[..., :n, :]
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        return keys, values

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` positions (negative: drop that many from the end), as DynamicCache.crop."""
        for i, n in enumerate(self.lengths):
            keep = n + max_length if max_length < 0 else max_length
            self.lengths[i] = max(0, min(n, keep))

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (a batch whose finished rows leave)."""
        for i, keys in enumerate(self.keys):
            if keys is not None:
                self.keys[i] = keys[rows.to(keys.device)]
                self.values[i] = self.values[i][rows.to(keys.device)]
