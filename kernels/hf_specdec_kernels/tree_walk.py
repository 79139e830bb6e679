"""Greedy tree verification: the accepted path of each draft tree, found on the device.

Starting at the root, the walk moves to the child whose token is the target's greedy choice after the current
node, until no child matches. One program per batch row holds the whole tree (a few hundred nodes) in
registers; each step is one vector compare and one reduction, so the host waits once, for the result, instead
of once per node.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _greedy_tree_walk_kernel(
    tokens_ptr, parents_ptr, target_next_ptr, path_ptr, length_ptr, next_token_ptr,
    n_nodes, s_tokens, s_parents, s_target, s_path,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    ok = idx < n_nodes
    tokens = tl.load(tokens_ptr + b * s_tokens + idx, mask=ok, other=-1)
    parents = tl.load(parents_ptr + b * s_parents + idx, mask=ok, other=-2)
    target_next = tl.load(target_next_ptr + b * s_target + idx, mask=ok, other=-1)

    tl.store(path_ptr + b * s_path + idx, tl.where(idx == 0, 0, -1), mask=ok)
    node = tl.full([], 0, tl.int32)  # the root
    length = tl.full([], 1, tl.int32)
    moved = tl.full([], 1, tl.int1)
    while moved:
        wanted = tl.sum(tl.where(idx == node, target_next, 0))  # the target's token after `node`
        hit = (parents == node) & (tokens == wanted) & ok
        child = tl.min(tl.where(hit, idx, BLOCK))  # siblings carry distinct tokens; ties go to the first
        moved = child < BLOCK
        tl.store(path_ptr + b * s_path + length, child, mask=moved)
        node = tl.where(moved, child, node)
        length += moved.to(tl.int32)
    tl.store(length_ptr + b, length)
    tl.store(next_token_ptr + b, tl.sum(tl.where(idx == node, target_next, 0)))


def greedy_tree_walk(tokens: torch.Tensor, parents: torch.Tensor, target_next: torch.Tensor):
    """tokens, parents, target_next [B, N] (parents[:, 0] = -1; target_next: the target's argmax after each node).

    Returns path [B, N] (accepted node indices, root first, then -1), length [B] (nodes on the path, the root
    included) and next_token [B] (the target's token after the path's last node), all int64.
    """
    B, N = tokens.shape
    path = torch.empty(B, N, dtype=torch.int32, device=tokens.device)
    length = torch.empty(B, dtype=torch.int32, device=tokens.device)
    next_token = torch.empty(B, dtype=torch.int32, device=tokens.device)
    tokens32, parents32, target32 = (t.to(torch.int32) for t in (tokens, parents, target_next))
    _greedy_tree_walk_kernel[(B,)](
        tokens32, parents32, target32, path, length, next_token,
        N, tokens32.stride(0), parents32.stride(0), target32.stride(0), path.stride(0),
        BLOCK=max(16, triton.next_power_of_2(N)),
    )
    return path.long(), length.long(), next_token.long()
