"""Attention masks and positions for a tree appended after a cached prefix."""

from __future__ import annotations

import torch


def tree_attention_mask(ancestors: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, N, prefix_len + N]: every node sees the whole prefix, itself and its ancestors.

    Additive (0 / finfo.min) in the model dtype, because eager attention adds a boolean mask instead of
    applying it.
    """
    B, N, _ = ancestors.shape
    visible = torch.cat(
        [torch.ones(B, N, prefix_len, dtype=torch.bool, device=ancestors.device), ancestors], dim=-1
    )
    mask = torch.zeros(B, 1, N, prefix_len + N, dtype=dtype, device=ancestors.device)
    return mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)


def tree_position_ids(depths: torch.Tensor, root_position: int) -> torch.Tensor:
    """Position of each node: the root's position plus the node's depth (siblings share a position)."""
    return depths + root_position
