"""One verified tree from two draft sources: the head's tree plus a lookup trie grafted onto it."""

from __future__ import annotations

from dataclasses import replace

import torch

from .structure import DraftTree


def graft(tree: DraftTree, tokens: list[int], parents: list[int], estimates: list[float], max_new: int) -> DraftTree:
    """The batch-1 `tree` plus up to `max_new` nodes of another draft (a trie rooted at the same root: node i has
    token `tokens[i]` under `parents[i]`, -1 for the root, parents first, with P(accepted) estimates that never
    grow from a parent to its child).

    A draft node whose path the tree already has is shared, never verified twice; the other nodes are added
    best estimate first (a parent always before its children, so the result is a tree), after the tree's own
    nodes. Siblings keep distinct tokens, as every verification rule expects."""
    if tree.tokens.shape[0] != 1:
        raise NotImplementedError("graft handles batch size 1")
    if max_new <= 0 or not tokens:
        return tree
    tree_tokens, tree_parents = tree.tokens[0].tolist(), tree.parents[0].tolist()
    tree_est = tree.estimates[0].tolist() if tree.estimates is not None else [1.0] * len(tree_tokens)
    child_of = {(p, t): i for i, (p, t) in enumerate(zip(tree_parents, tree_tokens)) if p >= 0}
    # Which draft nodes the tree already has (their tree node), and which would be new.
    in_tree: list[int | None] = []
    new = []
    for i, (token, parent) in enumerate(zip(tokens, parents)):
        at = 0 if parent < 0 else in_tree[parent]
        shared = child_of.get((at, token)) if at is not None else None
        in_tree.append(shared)
        if shared is None:
            new.append(i)
        else:  # one node, two drafts: the better estimate (still never above its parent's)
            tree_est[shared] = max(tree_est[shared], estimates[i])
    chosen = set()
    for i in sorted(new, key=lambda i: (-estimates[i], i)):
        if len(chosen) == max_new:
            break
        if parents[i] < 0 or in_tree[parents[i]] is not None or parents[i] in chosen:
            chosen.add(i)
    if not chosen:  # the same tree, with the shared nodes' better estimates
        return tree if tree.estimates is None else replace(tree, estimates=torch.tensor([tree_est], device=tree.tokens.device))
    node_of = {}
    for i in sorted(chosen):  # draft order: parents first
        parent = parents[i]
        tree_parents.append(0 if parent < 0 else (in_tree[parent] if in_tree[parent] is not None else node_of[parent]))
        node_of[i] = len(tree_tokens)
        tree_tokens.append(tokens[i])
        tree_est.append(estimates[i])
    device = tree.tokens.device
    return DraftTree.from_parents(torch.tensor([tree_tokens], device=device), torch.tensor([tree_parents], device=device),
                                  torch.tensor([tree_est], device=device))
