"""EAGLE-2 dynamic draft trees (research/fspad.md section 4).

The draft expands the `top_k` best frontier nodes per level; every node's children are scored by the
cumulative draft log-probability of their path; at the end the `total_tokens - 1` best nodes of all levels
are kept. The draft itself is hidden behind `expand`, so any draft (an FSPAD head, a small LM) can grow a tree.
"""

from __future__ import annotations

from typing import Callable, Generator

import torch

from .structure import DraftTree, SampledDraftTree

# expand(tokens [B, k], features [B, k, H], slot_ancestors [B, k, S], depth) -> (log_probs [B, k, V], features [B, k, H])
# S counts every node fed to the draft so far in this tree, the k new ones last; depth is the new nodes' depth.
ExpandFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def grow_tree(
    expand: ExpandFn,
    root_tokens: torch.Tensor,
    root_log_probs: torch.Tensor,
    root_features: torch.Tensor | None,
    top_k: int,
    depth: int,
    total_tokens: int,
    draft_to_target: torch.Tensor | None = None,
    should_expand: Callable[[int, torch.Tensor, torch.Tensor], bool] | None = None,
) -> DraftTree:
    """Grow one EAGLE-2 tree per batch row.

    root_tokens [B]; root_log_probs [B, V] (the draft's next-token log-probs after the root);
    root_features [B, H] (the draft's feature fed to the root's children; None for a drafter that reads none, such
    as an ordinary causal LM). Node budget: total_tokens (root
    included). `should_expand(level, candidate log-scores [B, C], frontier log-scores [B, k])`, when given,
    is asked before each head step and ends the growth when it says no. Returns the kept nodes in creation
    order, with their path probabilities exp(cumulative draft log-probability) as estimates (EAGLE-2's
    confidence, a usable estimate of P(accepted)).
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
    # a drafter that reads no features (an ordinary causal LM) gives None, and gets None back
    frontier_features = None if root_features is None else root_features[:, None, :].expand(B, k, root_features.shape[-1])
    slot_ancestors = torch.zeros(B, 0, 0, dtype=torch.bool, device=device)  # among the nodes fed to the draft
    frontier_parent_slots = torch.full((B, k), -1, dtype=torch.long, device=device)

    themselves = torch.eye(k, dtype=torch.bool, device=device).expand(B, k, k)
    for level in range(1, depth):
        if should_expand is not None and not should_expand(level, torch.cat(cand_scores, 1), frontier_scores):
            break
        # Ancestors of the k new slots: their parent's ancestors (none at level 1: the root is not a slot) plus
        # themselves.
        S = slot_ancestors.shape[1]
        inherited = slot_ancestors.gather(1, frontier_parent_slots[..., None].expand(B, k, S)) if S else slot_ancestors.new_zeros(B, k, 0)
        inherited = torch.cat([inherited, themselves], dim=2)  # [B, k, S + k]
        slot_ancestors = torch.cat([torch.nn.functional.pad(slot_ancestors, (0, k)), inherited], dim=1)

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
        if features is not None:
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
    estimates = torch.cat([torch.ones(B, 1, device=device), all_scores.gather(1, kept).exp()], dim=1)
    return DraftTree.from_parents(tokens, parents, estimates, max_depth=len(cand_tokens))  # one level per list


# draw(q [M, V], m) -> children [M, m]: m children per row drawn from the draft probabilities q.
DrawFn = Callable[[torch.Tensor, int], torch.Tensor]


def grow_sampled_trees(
    expand: ExpandFn,
    draft_probs: Callable[[torch.Tensor], torch.Tensor],
    draw: DrawFn,
    root_tokens: torch.Tensor,
    root_log_probs: torch.Tensor,
    root_features: torch.Tensor | None,
    width: int,
    depth: int,
    total_tokens: int,
    distinct: bool,
) -> list[SampledDraftTree]:
    """One sampled tree per batch row (root_tokens [B], root_log_probs [B, V], root_features [B, H] or None),
    each grown by its own `sampled_growth`, with one `expand` per level for all rows: the
    rows' requests are padded to the most nodes any row feeds (padding nodes see themselves alone) and their
    slots laid side by side, level after level; a row whose tree is done feeds padding only."""
    B = root_tokens.shape[0]
    device = root_tokens.device
    growths = [sampled_growth(draft_probs, draw, root_tokens[b : b + 1], root_log_probs[b : b + 1],
                              None if root_features is None else root_features[b : b + 1], width, depth,
                              total_tokens, distinct) for b in range(B)]
    trees: list[SampledDraftTree | None] = [None] * B
    requests: dict[int, tuple] = {}

    def advance(b, answer=None):
        try:
            requests[b] = next(growths[b]) if answer is None else growths[b].send(answer)
        except StopIteration as done:
            trees[b] = done.value
            requests.pop(b, None)

    for b in range(B):
        advance(b)
    columns = [[] for _ in range(B)]  # the batch slot of each of a row's fed nodes
    width_so_far = 0
    while requests:
        n = max(request[0].shape[1] for request in requests.values())
        level = next(iter(requests.values()))[3]
        tokens = torch.zeros(B, n, dtype=torch.long, device=device)
        ancestors = torch.zeros(B, n, width_so_far + n, dtype=torch.bool, device=device)
        ancestors[:, :, width_so_far:] = torch.eye(n, dtype=torch.bool, device=device)
        features = None
        for b, (row_tokens, row_features, row_ancestors, _) in requests.items():
            k = row_tokens.shape[1]
            columns[b] += list(range(width_so_far, width_so_far + k))
            tokens[b, :k] = row_tokens[0]
            ancestors[b, :k] = False
            ancestors[b, :k, columns[b]] = row_ancestors[0]
            if row_features is not None:
                if features is None:
                    features = torch.zeros(B, n, row_features.shape[-1], dtype=row_features.dtype, device=device)
                features[b, :k] = row_features[0]
        log_probs, out_features = expand(tokens, features, ancestors, level)
        width_so_far += n
        for b, (row_tokens, *_rest) in list(requests.items()):
            k = row_tokens.shape[1]
            advance(b, (log_probs[b : b + 1, :k], None if out_features is None else out_features[b : b + 1, :k]))
    return trees


def grow_sampled_tree(expand: ExpandFn, *args, **kwargs) -> SampledDraftTree:
    """`grow_sampled_trees` for one sequence (root_token [1]): the same arguments, one tree."""
    return grow_sampled_trees(expand, *args, **kwargs)[0]


def sampled_growth(
    draft_probs: Callable[[torch.Tensor], torch.Tensor],
    draw: DrawFn,
    root_token: torch.Tensor,
    root_log_probs: torch.Tensor,
    root_features: torch.Tensor | None,
    width: int,
    depth: int,
    total_tokens: int,
    distinct: bool,
) -> Generator[tuple, tuple, SampledDraftTree]:
    """The growth of a tree of sampled children, level by level, for one sequence (batch size 1), as a
    generator: it yields each head step it needs, (tokens [1, n], features [1, n, H] or None, ancestors
    [1, n, S], level) -- `ExpandFn`'s arguments --, is sent that step's (log-probs [1, n, V], features), and
    returns the tree. (So one row can grow alone, or many in lock step with batched head steps.)

    Every expanded node gets `width` children drawn by `draw` from its draft distribution
    q = draft_probs(draft log-probs) (target vocabulary). The node budget `total_tokens` (root included) goes
    to the frontier nodes with the best cumulative draft log-probability first; the last one may get fewer
    children, and with `distinct` children a node gets at most nnz(q) of them. Only the nodes that will have
    children are fed to the draft. Which nodes are expanded, and how many children each gets, depends only on
    the draft's probabilities of the nodes' own paths, never on the children drawn, so a verifier that is
    lossless for any number of children stays lossless.
    """
    if root_token.shape[0] != 1:
        raise NotImplementedError("grow_sampled_tree handles batch size 1")
    device = root_token.device
    tokens, parents, scores = [int(root_token[0])], [-1], [0.0]
    probs_of: dict[int, torch.Tensor] = {}
    slot_of: dict[int, int] = {}  # node -> its slot among the nodes fed to the draft (the root is none)
    frontier, frontier_lp, frontier_features = [0], root_log_probs, root_features
    for level in range(1, depth + 1):
        q = draft_probs(frontier_lp.reshape(len(frontier), -1))  # [F, V]
        budget = total_tokens - len(tokens)
        counts = [0] * len(frontier)
        for f in sorted(range(len(frontier)), key=lambda f: -scores[frontier[f]]):
            cap = int((q[f] > 0).sum()) if distinct else width
            counts[f] = max(0, min(width, cap, budget))
            budget -= counts[f]
        children = [None] * len(frontier)
        for m in set(counts) - {0}:
            rows = [f for f, c in enumerate(counts) if c == m]
            for f, drawn in zip(rows, draw(q[rows], m).tolist()):
                children[f] = drawn
        new_nodes = []
        for f, node in enumerate(frontier):
            if not children[f]:
                continue
            probs_of[node] = q[f]
            log_q = q[f, children[f]].log().tolist()
            for token, lq in zip(children[f], log_q):
                new_nodes.append(len(tokens))
                tokens.append(token)
                parents.append(node)
                scores.append(scores[node] + lq)
        left = total_tokens - len(tokens)
        if level == depth or not new_nodes or left <= 0:
            break
        # Feed the nodes that the next level can expand: the best ones, enough to use the budget.
        fed = sorted(new_nodes, key=lambda n: -scores[n])[: -(-left // width)]
        fed.sort()
        for n in fed:
            slot_of[n] = len(slot_of)
        ancestors = torch.zeros(1, len(fed), len(slot_of), dtype=torch.bool, device=device)
        for row, n in enumerate(fed):
            a = n
            while a > 0:
                ancestors[0, row, slot_of[a]] = True
                a = parents[a]
        parent_rows = [frontier.index(parents[n]) for n in fed]
        features = None if frontier_features is None else frontier_features.reshape(len(frontier), -1)[parent_rows][None]
        frontier_lp, frontier_features = yield (
            torch.tensor([[tokens[n] for n in fed]], device=device), features, ancestors, level
        )
        frontier = fed
    base = DraftTree.from_parents(torch.tensor([tokens], device=device), torch.tensor([parents], device=device))
    vocab = next(iter(probs_of.values())).shape[-1]
    draft = torch.zeros(1, len(tokens), vocab, device=device)
    for node, q_node in probs_of.items():
        draft[0, node] = q_node
    return SampledDraftTree(base.tokens, base.parents, base.depths, base.ancestors, draft_probs=draft)
