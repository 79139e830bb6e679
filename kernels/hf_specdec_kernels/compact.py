"""KV-cache compaction after verification: move the accepted path's keys and values next to the prefix.

Every layer's K and V hold [prefix | tree] along the sequence axis; the accepted path's entries move to
prefix + 0 .. prefix + P - 1. One launch serves every tensor of every layer: the kernel reads each tensor's
base address from a table. One program loads all P rows of one (tensor, batch, head, dim block) before it
stores any, which makes the in-place move safe although sources and destinations overlap. The data is moved
as raw 16- or 32-bit words, so any dtype of that width works (bf16 included).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_WORD = {2: tl.int16, 4: tl.int32}


@triton.jit
def _compact_kernel(
    table_ptr, path_ptr, path_len, prefix_len, n_heads,
    s_b, s_h, s_n, s_d, head_dim,
    WORD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    base = tl.load(table_ptr + tl.program_id(0)).to(tl.pointer_type(WORD))
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    p = tl.arange(0, BLOCK_P)
    p_ok = p < path_len
    src = prefix_len + tl.load(path_ptr + p, mask=p_ok, other=0)
    dst = prefix_len + p
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = p_ok[:, None] & (d < head_dim)[None, :]
    row = base + b * s_b + h * s_h
    rows = tl.load(row + src[:, None] * s_n + d[None, :] * s_d, mask=ok)
    tl.store(row + dst[:, None] * s_n + d[None, :] * s_d, rows, mask=ok)


def compact_kv(tensors: list[torch.Tensor], prefix_len: int, path: torch.Tensor) -> None:
    """In every tensor [B, H, S, D] (same shape, strides and element size), set positions
    prefix_len + i to positions prefix_len + path[i], for i < len(path). path: ascending, path[0] = 0."""
    if not tensors:
        return
    first = tensors[0]
    for t in tensors:
        if t.shape != first.shape or t.stride() != first.stride() or t.element_size() != first.element_size():
            raise ValueError("compact_kv needs tensors of one shape, stride and element size; group them first")
        if t.device != first.device:
            raise ValueError("compact_kv needs tensors on one device")
    if first.element_size() not in _WORD:
        raise ValueError(f"compact_kv moves 2- or 4-byte elements, got {first.dtype}")
    B, H, _, D = first.shape
    P = path.shape[0]
    table = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=first.device)
    block_d = min(128, max(16, triton.next_power_of_2(D)))
    grid = (len(tensors), B * H, triton.cdiv(D, block_d))
    _compact_kernel[grid](
        table, path.to(device=first.device, dtype=torch.int32), P, prefix_len, H,
        *first.stride(), D,
        WORD=_WORD[first.element_size()], BLOCK_P=max(16, triton.next_power_of_2(P)), BLOCK_D=block_d,
    )
