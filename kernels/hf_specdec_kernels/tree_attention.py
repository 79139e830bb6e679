"""Tree attention: tree queries attend to a cached prefix (all visible) and to the tree nodes they descend from.

The mask comes packed, one int32 row per query instead of a dense [q, prefix + tree] mask:

    mask [B, 1, q, 1 + W] int32
      word 0        index of the first tree key along the key axis (the prefix length P; same in every row)
      words 1..W    ancestor bits: key P + t is visible to the query iff bit t % 32 of word 1 + t // 32 is set

Keys before P are visible to every query; keys at or after P only through their bit.

One program serves BLOCK_M (query, head) rows that share a key/value head: the G = H / H_kv query heads of
one GQA group are stacked along the rows, so each K/V tile is loaded once per group. The softmax is the
usual online one (running max and sum in fp32, exp2 with log2(e) folded into the scale); the prefix tiles
need no mask, so they run first, without reading any. When those programs are too few to fill the GPU (small
trees), a third grid axis splits the keys and a second kernel merges the splits' partial states.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k_base, v_base, mask_row, cols, d, d_ok, row_ok, tree_start, kv_len,
                 sk_n, sk_d, sv_n, sv_d, qk_scale, MASKED: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Fold the keys `cols` into the running softmax state of the rows (acc, m_i, l_i)."""
    if MASKED:
        col_ok = cols < kv_len
        k = tl.load(k_base + cols[None, :] * sk_n + d[:, None] * sk_d, mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * sv_n + d[None, :] * sv_d, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        k = tl.load(k_base + cols[None, :] * sk_n + d[:, None] * sk_d, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * sv_n + d[None, :] * sv_d, mask=d_ok[None, :], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee") * qk_scale
    else:
        s = tl.dot(q, k) * qk_scale
    if MASKED:
        t = cols - tree_start  # position in the tree; < 0 for the prefix's last keys
        in_tree = (t >= 0) & col_ok
        words = tl.load(mask_row[:, None] + 1 + (t[None, :] >> 5), mask=row_ok[:, None] & in_tree[None, :], other=0)
        visible = ((t < 0)[None, :] | (((words >> (t[None, :] & 31)) & 1) != 0)) & col_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no visible key yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _tree_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, qk_scale,
    sq_b, sq_h, sq_m, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sm_b, sm_m,
    so_b, so_m, so_h, so_d,
    n_queries, kv_len, n_kv_heads, keys_per_split, n_rows,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // n_kv_heads
    kv_head = tl.program_id(1) % n_kv_heads
    split = tl.program_id(2)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row r: query r // GROUP, head kv_head * GROUP + r % GROUP
    query = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = query < n_queries
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    q = tl.load(q_ptr + b * sq_b + head[:, None] * sq_h + query[:, None] * sq_m + d[None, :] * sq_d,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    mask_row = mask_ptr + b * sm_b + query * sm_m
    tree_start = tl.load(mask_ptr + b * sm_b)
    k_base = k_ptr + b * sk_b + kv_head * sk_h
    v_base = v_ptr + b * sv_b + kv_head * sv_h

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # This program's keys: [lo, hi), whole tiles; the tiles wholly inside the prefix need no mask.
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, kv_len)
    whole_prefix_tiles = (tree_start // BLOCK_N) * BLOCK_N
    for start in range(lo, tl.minimum(hi, whole_prefix_tiles), BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_base, v_base, mask_row, cols, d, d_ok, row_ok,
                                     tree_start, kv_len, sk_n, sk_d, sv_n, sv_d, qk_scale, False, IEEE, UPCAST)
    for start in range(tl.maximum(lo, whole_prefix_tiles), hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_base, v_base, mask_row, cols, d, d_ok, row_ok,
                                     tree_start, kv_len, sk_n, sk_d, sv_n, sv_d, qk_scale, True, IEEE, UPCAST)

    if SPLIT:  # partial state of this split; _combine_splits_kernel merges the splits
        flat = (b * n_queries + query) * (n_kv_heads * GROUP) + head
        ok = row_ok[:, None] & d_ok[None, :]
        tl.store(part_acc_ptr + (split * n_rows + flat[:, None]) * HEAD_DIM + d[None, :], acc, mask=ok)
        tl.store(part_m_ptr + split * n_rows + flat, m_i, mask=row_ok)
        tl.store(part_l_ptr + split * n_rows + flat, l_i, mask=row_ok)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + b * so_b + query[:, None] * so_m + head[:, None] * so_h + d[None, :] * so_d,
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _combine_splits_kernel(part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, n_rows, n_splits,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """out[r] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s, M = max_s m_s (log2 domain, as the splits)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < n_rows
    d = tl.arange(0, BLOCK_D)
    ok = r_ok[:, None] & (d < HEAD_DIM)[None, :]
    m_max = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(0, n_splits):
        m_max = tl.maximum(m_max, tl.load(part_m_ptr + s * n_rows + r, mask=r_ok, other=float("-inf")))
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    denominator = tl.zeros([BLOCK_R], dtype=tl.float32)
    for s in range(0, n_splits):
        weight = tl.exp2(tl.load(part_m_ptr + s * n_rows + r, mask=r_ok, other=float("-inf")) - m_max)
        denominator += weight * tl.load(part_l_ptr + s * n_rows + r, mask=r_ok, other=0.0)
        acc += weight[:, None] * tl.load(part_acc_ptr + (s * n_rows + r[:, None]) * HEAD_DIM + d[None, :], mask=ok,
                                         other=0.0)
    out = acc / tl.where(denominator == 0.0, 1.0, denominator)[:, None]
    tl.store(out_ptr + r[:, None] * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty), mask=ok)


_SM_COUNT: dict = {}


def _num_splits(programs: int, kv_tiles: int, device: torch.device) -> int:
    """Split the keys when the (query block, KV head) programs alone would leave most SMs idle: aim at two
    programs per SM, with at least 4 key tiles per split."""
    if device.type != "cuda":
        return 1
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(2 * _SM_COUNT[device], programs)
    return max(1, min(wanted, kv_tiles // 4))


def tree_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                   scaling: float | None = None, block_m: int | None = None, block_n: int | None = None,
                   num_splits: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """Attention with a packed tree mask (module docstring).

    query [B, H, q, D]; key, value [B, H_kv, kv, D] with H a multiple of H_kv; mask [B, 1, q, 1 + W] int32.
    Returns [B, q, H, D] (the layout transformers' attention functions return). Any strides.

    With few queries the (query block, KV head) programs are too few to fill a GPU, so the keys are split
    into `num_splits` ranges (default: chosen from the SM count) whose partial softmax states a second,
    small kernel merges (the flash-decoding scheme). block_m, block_n, num_warps: tile sizes (defaults not yet
    tuned on a GPU; `hf-specdec bench-kernels --sweep` times the alternatives).
    """
    B, H, n_queries, D = query.shape
    n_kv_heads, kv_len = key.shape[1], key.shape[2]
    if H % n_kv_heads:
        raise ValueError(f"{H} query heads are not a multiple of {n_kv_heads} key/value heads")
    if mask.dtype != torch.int32 or mask.dim() != 4 or mask.shape[2] != n_queries:
        raise ValueError(f"expected a packed tree mask [B, 1, {n_queries}, 1 + W] int32, got {tuple(mask.shape)} {mask.dtype}")
    group = H // n_kv_heads
    out = torch.empty(B, n_queries, H, D, dtype=query.dtype, device=query.device)
    block_d = max(16, triton.next_power_of_2(D))
    block_m = block_m or max(16, min(64, triton.next_power_of_2(n_queries * group)))
    block_n = block_n or (64 if block_d <= 64 else 32)
    programs = triton.cdiv(n_queries * group, block_m) * B * n_kv_heads
    kv_tiles = triton.cdiv(kv_len, block_n)
    splits = min(num_splits or _num_splits(programs, kv_tiles, query.device), kv_tiles)
    keys_per_split = triton.cdiv(kv_tiles, splits) * block_n
    splits = triton.cdiv(kv_len, keys_per_split)
    n_rows = B * n_queries * H
    if splits > 1:
        part_acc = torch.empty(splits, n_rows, D, dtype=torch.float32, device=query.device)
        part_m = torch.empty(splits, n_rows, dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out  # unused
    scale = (scaling if scaling is not None else 1.0 / math.sqrt(D)) * _LOG2E
    grid = (triton.cdiv(n_queries * group, block_m), B * n_kv_heads, splits)
    _tree_attention_kernel[grid](
        query, key, value, mask, out, part_acc, part_m, part_l, scale,
        *query.stride(), *key.stride(), *value.stride(),
        mask.stride(0), mask.stride(2),
        *out.stride(),
        n_queries, kv_len, n_kv_heads, keys_per_split, n_rows,
        GROUP=group, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=splits > 1,
        IEEE=query.dtype == torch.float32,
        # Triton's interpreter multiplies bf16 tiles as raw 16-bit integers: give it fp32 tiles instead.
        UPCAST=query.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps,
    )
    if splits > 1:
        block_r = 32
        _combine_splits_kernel[(triton.cdiv(n_rows, block_r),)](
            part_acc, part_m, part_l, out, n_rows, splits, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_R=block_r,
        )
    return out
