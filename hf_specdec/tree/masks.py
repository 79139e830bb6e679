"""Attention masks and positions for a tree appended after a cached prefix.

Two forms of the same mask:
  dense   additive [B, 1, q, prefix + S] in the model dtype, for any attention implementation;
  packed  int32 [B, 1, q, 1 + W], for the tree attention implementation (tree/attention.py): word 0 holds the
          prefix length, words 1..W the ancestor bits (bit t % 32 of word 1 + t // 32: tree slot t is visible).
          q rows of (1 + ceil(S / 32)) words instead of q * (prefix + S) elements, so a long prefix costs nothing.
Both are 4D tensors, so transformers' mask creation hands either to the attention function untouched.
"""

from __future__ import annotations

import torch

_BITS = 32


def tree_attention_mask(ancestors: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, q, prefix_len + S] for q new nodes over a cached prefix and S tree slots (the new
    ones last): every node sees the whole prefix, itself and its ancestors. ancestors [B, q, S] bool; for a
    whole tree verified at once q = S = N.

    Additive (0 / finfo.min) in the model dtype, because eager attention adds a boolean mask instead of
    applying it.
    """
    B, q, S = ancestors.shape
    mask = torch.zeros(B, 1, q, prefix_len + S, dtype=dtype, device=ancestors.device)
    mask[:, 0, :, prefix_len:].masked_fill_(~ancestors, torch.finfo(dtype).min)
    return mask


def pack_tree_mask(ancestors: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """The packed form (module docstring) of the mask `tree_attention_mask` builds: int32 [B, 1, q, 1 + W]."""
    B, q, S = ancestors.shape
    W = -(-S // _BITS)
    bits = torch.nn.functional.pad(ancestors, (0, W * _BITS - S)).reshape(B, q, W, _BITS).long()
    words = (bits << torch.arange(_BITS, device=ancestors.device)).sum(-1)  # < 2**32, exact in int64
    words = torch.where(words >= 2**31, words - 2**32, words)  # the same 32 bits, as a signed int32
    header = torch.full((B, q, 1), prefix_len, dtype=torch.long, device=ancestors.device)
    return torch.cat([header, words], -1).to(torch.int32)[:, None]


def is_packed_tree_mask(mask) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.int32 and mask.dim() == 4


def unpack_tree_mask(packed: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Boolean visibility [B, 1, q, kv_len] (True = attend) of a packed mask over kv_len keys."""
    prefix_len = int(packed[0, 0, 0, 0])
    t = torch.arange(kv_len - prefix_len, device=packed.device)
    words = packed[..., 1:].long().gather(-1, (t // _BITS).expand(*packed.shape[:3], -1))
    tree = ((words >> (t % _BITS)) & 1).bool()
    prefix = torch.ones(*packed.shape[:3], prefix_len, dtype=torch.bool, device=packed.device)
    return torch.cat([prefix, tree], -1)


def tree_position_ids(depths: torch.Tensor, root_position: int) -> torch.Tensor:
    """Position of each node: the root's position plus the node's depth (siblings share a position)."""
    return depths + root_position
