"""EAGLE-2 dynamic draft trees (research/fspad.md section 4).

The draft expands the `top_k` best frontier nodes per level; every node's children are scored by the
cumulative draft log-probability of their path; at the end the `total_tokens - 1` best nodes of all levels
are kept. The draft itself is hidden behind `expand`, so any draft (an FSPAD head, a small LM) can grow a tree.
"""

from __future__ import annotations

from typing import Callable

import torch

from .structure import DraftTree

# expand(tokens [B, k], features [B, k, H], slot_ancestors [B, k, S], depth) -> (log_probs [B, k, V], features [B, k, H])
# S counts every node fed to the draft so far in this tree, the k new ones last; depth is the new nodes' depth.
ExpandFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def grow_tree(
    expand: ExpandFn,
    root_tokens: torch.Tensor,
    root_log_probs: torch.Tensor,
    root_features: torch.Tensor,
    top_k: int,
    depth: int,
    total_tokens: int,
    draft_to_target: torch.Tensor | None = None,
) -> DraftTree:
    """Grow one EAGLE-2 tree per batch row.

    root_tokens [B]; root_log_probs [B, V] (the draft's next-token log-probs after the root);
    root_features [B, H] (the draft's feature fed to the root's children). Node budget: total_tokens (root
    included). Returns the kept nodes in creation order.
    """
    B = root_tokens.shape[0]
    device = root_tokens.device
    to_target = (lambda ids: draft_to_target[ids]) if draft_to_target is not None else (lambda ids: ids)
    k = min(top_k, root_log_probs.shape[-1])

    scores, tokens = root_log_probs.float().topk(k, dim=-1)  # [B, k]
    cand_tokens, cand_scores = [tokens], [scores]
    cand_parents = [torch.full((B, k), -1, dtype=torch.long, device=device)]  # -1: the root
    n_cand = k

    frontier_ids = torch.arange(k, device=device).expand(B, k)  # candidate index of each frontier node
    frontier_tokens, frontier_scores = tokens, scores
    frontier_features = root_features[:, None, :].expand(B, k, root_features.shape[-1])
    slot_ancestors = torch.zeros(B, 0, 0, dtype=torch.bool, device=device)  # among the nodes fed to the draft
    frontier_parent_slots = torch.full((B, k), -1, dtype=torch.long, device=device)

    for level in range(1, depth):
        # Ancestors of the k new slots: their parent's ancestors plus themselves.
        S = slot_ancestors.shape[1]
        padded = torch.nn.functional.pad(slot_ancestors, (0, k))  # [B, S, S + k]
        inherited = torch.zeros(B, k, S + k, dtype=torch.bool, device=device)
        if S:
            rows = torch.gather(padded, 1, frontier_parent_slots.clamp(min=0)[..., None].expand(B, k, S + k))
            inherited |= rows & (frontier_parent_slots >= 0)[..., None]
        inherited[:, :, S:] |= torch.eye(k, dtype=torch.bool, device=device)
        slot_ancestors = torch.cat([padded, inherited], dim=1)  # [B, S + k, S + k]

        log_probs, features = expand(to_target(frontier_tokens), frontier_features, inherited, level)
        child_lp, child_tokens = log_probs.float().topk(k, dim=-1)  # [B, k, k]
        child_scores = (frontier_scores[..., None] + child_lp).reshape(B, k * k)
        child_tokens = child_tokens.reshape(B, k * k)
        cand_tokens.append(child_tokens)
        cand_scores.append(child_scores)
        cand_parents.append(frontier_ids.repeat_interleave(k, dim=1))

        best_scores, best = child_scores.topk(k, dim=-1)  # the next frontier
        parent_in_frontier = best // k
        frontier_ids = n_cand + best
        frontier_tokens = child_tokens.gather(1, best)
        frontier_scores = best_scores
        frontier_features = features.gather(1, parent_in_frontier[..., None].expand(-1, -1, features.shape[-1]))
        frontier_parent_slots = S + parent_in_frontier
        n_cand += k * k

    all_tokens = torch.cat(cand_tokens, dim=1)
    all_scores = torch.cat(cand_scores, dim=1)
    all_parents = torch.cat(cand_parents, dim=1)
    keep = min(total_tokens - 1, n_cand)
    # A child never outscores its parent; the stable sort breaks ties by creation order, so the kept set
    # contains every kept node's parent. Re-sorting by index puts parents before children.
    order = torch.sort(all_scores, dim=-1, descending=True, stable=True).indices[:, :keep]
    kept = order.sort(dim=-1).values  # [B, keep]
    node_of_cand = torch.zeros(B, n_cand, dtype=torch.long, device=device)  # 0 = the root
    node_of_cand.scatter_(1, kept, torch.arange(1, keep + 1, device=device).expand(B, keep))
    kept_parents = all_parents.gather(1, kept)
    parents = torch.where(kept_parents >= 0, node_of_cand.gather(1, kept_parents.clamp(min=0)), 0)
    tokens = torch.cat([root_tokens[:, None], to_target(all_tokens.gather(1, kept))], dim=1)
    parents = torch.cat([torch.full((B, 1), -1, dtype=torch.long, device=device), parents], dim=1)
    return DraftTree.from_parents(tokens, parents)
