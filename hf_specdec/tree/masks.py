"""Attention masks and positions for a tree appended after a cached prefix."""

from __future__ import annotations

import torch


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


def tree_position_ids(depths: torch.Tensor, root_position: int) -> torch.Tensor:
    """Position of each node: the root's position plus the node's depth (siblings share a position)."""
    return depths + root_position
