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
                     estimates: torch.Tensor | None = None) -> "DraftTree":
        """Build depths and the ancestor closure from a parent array (parents before children)."""
        B, N = tokens.shape
        eye = torch.eye(N, dtype=torch.bool, device=tokens.device).expand(B, N, N)
        safe_parents = parents.clamp(min=0)
        ancestors = eye.clone()
        depths = torch.zeros_like(parents)
        # Each round lets every node inherit one more generation of ancestors: depth rounds reach the root.
        for _ in range(N - 1):
            inherited = torch.gather(ancestors, 1, safe_parents[..., None].expand(B, N, N))
            inherited = inherited & (parents >= 0)[..., None]
            new = eye | inherited
            if torch.equal(new, ancestors):
                break
            ancestors = new
        depths = ancestors.sum(-1) - 1
        return cls(tokens=tokens, parents=parents, depths=depths, ancestors=ancestors, estimates=estimates)

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
