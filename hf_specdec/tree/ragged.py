"""Caches of a batch whose rows accept different numbers of tokens: one slot layout, per-row holes.

Every row of a batched KV cache (the target's and the draft head's) has the same number of slots S. A slot
either holds one of the row's tokens or is a hole: left padding of the prompt, or the slots a cycle reserves
for the batch's longest accepted path that this row's shorter path left empty. `valid` [B, S] tells which;
a row's positions count its own tokens only (what the row alone would see), and its queries never see holes.

Why holes rather than re-aligning the rows after every cycle (research/drafting.md section 4): re-aligning
moves every row's whole cache each cycle; holes move only the accepted path (as batch-1 compaction does) and
cost some attention over masked slots, a small part of a forward at these lengths. Rows that finish leave
the batch (`keep_rows`), so they cost nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .structure import DraftTree


@dataclass
class Slots:
    """valid [B, S] bool: which cache slots hold each row's tokens (the rest are holes)."""

    valid: torch.Tensor

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        """[B] tokens each row has in the cache: the position its next token takes."""
        return self.valid.sum(-1)

    def positions(self, offsets: torch.Tensor) -> torch.Tensor:
        """Positions [B, q] of q new tokens at `offsets` ([q] or [B, q]) past each row's last cached token."""
        return self.lengths[:, None] + offsets

    def positions_of(self, new_valid: torch.Tensor) -> torch.Tensor:
        """Positions [B, P] of P new slots of which `new_valid` [B, P] hold tokens (the others: any position)."""
        return self.positions((new_valid.cumsum(-1) - 1).clamp(min=0))

    def mask(self, model, ancestors: torch.Tensor) -> torch.Tensor:
        """The additive mask of q new tokens after these slots (see `ragged_tree_mask`)."""
        return ragged_tree_mask(self.valid, ancestors, model.dtype)

    def append(self, counts: torch.Tensor, width: int) -> "Slots":
        """The slots after `width` more, of which row b fills the first counts[b]."""
        return Slots(torch.cat([self.valid, first_slots(counts, width)], 1))

    def keep_rows(self, rows: torch.Tensor) -> "Slots":
        return Slots(self.valid[rows])


def ragged_tree_mask(prefix_valid: torch.Tensor, ancestors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, q, S + T] (0 / finfo.min in `dtype`) for q new tokens after S cached slots and T
    slots of new tokens (the q queries are the last q of them): a query sees the valid prefix slots and the
    new slots in its `ancestors` row [B, q, T] (itself included: a padding query then sees itself alone, and no
    row of the mask is empty, which would make attention NaN)."""
    B, q, T = ancestors.shape
    visible = torch.cat([prefix_valid[:, None, :].expand(B, q, -1), ancestors], -1)
    mask = torch.zeros(B, 1, q, visible.shape[-1], dtype=dtype, device=ancestors.device)
    return mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)


def chain_ancestors(real: torch.Tensor) -> torch.Tensor:
    """Ancestors [B, P, P] of a causal chain of P slots of which `real` [B, P] hold tokens: a token sees the
    tokens up to itself; a hole sees itself alone."""
    P = real.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool, device=real.device).tril()
    return (causal & real[:, None, :] & real[:, :, None]) | torch.eye(P, dtype=torch.bool, device=real.device)


def last_real(real: torch.Tensor) -> torch.Tensor:
    """[B]: the index of each row's last True in `real` [B, P]."""
    return (real * torch.arange(1, real.shape[1] + 1, device=real.device)).argmax(-1)


def first_slots(counts: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] bool: the first counts[b] slots of each row."""
    return torch.arange(width, device=counts.device) < counts[:, None]


def stack_trees(trees: list[DraftTree]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward's inputs for rows with trees of different sizes: tokens [B, N], depths [B, N], ancestors
    [B, N, N], N the largest tree. Padding nodes carry token 0 at depth 0 and see themselves alone; their
    outputs are never read."""
    N = max(t.num_nodes for t in trees)
    device = trees[0].tokens.device
    tokens = torch.zeros(len(trees), N, dtype=torch.long, device=device)
    depths = torch.zeros(len(trees), N, dtype=torch.long, device=device)
    ancestors = torch.eye(N, dtype=torch.bool, device=device).repeat(len(trees), 1, 1)
    for b, tree in enumerate(trees):
        n = tree.num_nodes
        tokens[b, :n], depths[b, :n], ancestors[b, :n, :n] = tree.tokens[0], tree.depths[0], tree.ancestors[0]
    return tokens, depths, ancestors


def pad_paths(paths: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Accepted paths of different lengths (tree-node indices, root first) as one [B, W] tensor, each padded
    with its own last node (a valid index whose copy lands in a hole), and their lengths [B]."""
    width = max(p.shape[0] for p in paths)
    lengths = torch.tensor([p.shape[0] for p in paths], device=paths[0].device)
    padded = torch.stack([torch.cat([p, p[-1:].expand(width - p.shape[0])]) for p in paths])
    return padded, lengths


def gather_paths(cache: DynamicCache, prefix_len: int, padded: torch.Tensor) -> None:
    """Move each row's accepted path (`pad_paths`) to the slots right after the first `prefix_len`, in every
    layer; a row with a shorter path than the longest leaves holes after it. Everything after is cut."""
    width = padded.shape[1]
    layers = [layer for layer in cache.layers if layer.is_initialized and layer.keys.numel()]
    for t in {t.data_ptr(): t for layer in layers for t in (layer.keys, layer.values)}.values():
        index = (prefix_len + padded.to(t.device))[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1])
        t[..., prefix_len : prefix_len + width, :] = t.gather(-2, index)
    for layer in layers:
        layer.keys = layer.keys[..., : prefix_len + width, :]
        layer.values = layer.values[..., : prefix_len + width, :]


def keep_cache_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep only these batch rows of every layer."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys[rows.to(layer.keys.device)]
            layer.values = layer.values[rows.to(layer.values.device)]
