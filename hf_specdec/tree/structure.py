"""The draft tree: nodes in creation order, so every parent comes before its children."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DraftTree:
    """A batch of draft trees, all with N nodes. Node 0 is the root: the last committed token.

    tokens    [B, N] target token ids
    parents   [B, N] index of each node's parent (-1 for the root); parents[b, i] < i
    depths    [B, N] 0 for the root, parent's depth + 1 otherwise
    ancestors [B, N, N] bool, ancestors[b, i, j]: node j is node i or one of its ancestors
    estimates [B, N] or None: each node's estimated P(accepted) (1 for the root), where the drafter gives one
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    ancestors: torch.Tensor
    estimates: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    @classmethod
    def from_parents(cls, tokens: torch.Tensor, parents: torch.Tensor,
                     estimates: torch.Tensor | None = None, max_depth: int | None = None) -> "DraftTree":
        """Build depths and the ancestor closure from a parent array (parents before children). `max_depth`: a
        bound on the depth, where the caller knows one (else N - 1).

        By pointer jumping: after round r every node has its ancestors up to 2^r generations up and `jump` points
        2^r generations up (the root points at itself, so a jump past the root lands on it), so ceil(log2 D)
        rounds close a tree of depth D, without looking at the tensors (no host sync on a GPU)."""
        B, N = tokens.shape
        jump = parents.clamp(min=0)
        ancestors = torch.eye(N, dtype=torch.bool, device=tokens.device).expand(B, N, N).clone()
        ancestors.scatter_(2, jump[..., None], True)
        deepest = N - 1 if max_depth is None else min(max_depth, N - 1)
        for _ in range(max(deepest - 1, 0).bit_length()):  # ceil(log2(deepest))
            ancestors = ancestors | ancestors.gather(1, jump[..., None].expand(B, N, N))
            jump = jump.gather(1, jump)
        return cls(tokens=tokens, parents=parents, depths=ancestors.sum(-1) - 1, ancestors=ancestors,
                   estimates=estimates)

    def select(self, kept: list[int]) -> "DraftTree":
        """The batch-1 tree of the nodes `kept` (ascending, the root first, every kept node's parent kept)."""
        index = torch.tensor(kept, device=self.tokens.device)
        new_index = {old: new for new, old in enumerate(kept)}
        parents = [-1] + [new_index[p] for p in self.parents[0, index[1:]].tolist()]
        estimates = None if self.estimates is None else self.estimates[:, index]
        return DraftTree(self.tokens[:, index], torch.tensor([parents], device=self.tokens.device),
                         self.depths[:, index], self.ancestors[:, index][:, :, index], estimates)

    def row(self, b: int) -> "DraftTree":
        """Row b as a batch-1 tree."""
        rows = slice(b, b + 1)
        estimates = None if self.estimates is None else self.estimates[rows]
        return DraftTree(self.tokens[rows], self.parents[rows], self.depths[rows], self.ancestors[rows], estimates)

    def path_tokens(self) -> torch.Tensor:
        """[B, N, D] tokens along each node's path from depth 1 to its own depth (0-padded), D = max depth."""
        D = int(self.depths.max())
        levels = torch.arange(1, D + 1, device=self.tokens.device)
        at_level = self.ancestors[..., None] & (self.depths[:, None, :, None] == levels)  # [B, N, N, D]
        return (at_level * self.tokens[:, None, :, None]).sum(2)


@dataclass
class SampledDraftTree(DraftTree):
    """A draft tree whose children were sampled from the draft: also keeps, for every node with children,
    the draft distribution they were drawn from (what a multi-draft verifier compares the target with).

    draft_probs [B, N, V] target-vocabulary probabilities (zero rows for leaves)
    """

    draft_probs: torch.Tensor | None = None
