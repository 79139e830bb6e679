"""Trees sized by the machine's own costs (research/drafting.md section 3).

A cycle that verifies N tree tokens (root included) after spending `fixed_ms` on drafting emits, in
expectation, 1 + sum of P(accepted) over its N - 1 draft nodes (the bonus token included), in
fixed_ms + c(N) ms, c the measured cost of one target forward over N tree tokens. Every function here is pure:
node estimates and a cost curve in, a size or a decision out.

    rate(N)      = (1 + sum_{i < N} e_(i)) / (fixed_ms + c(N))     e_(1) >= e_(2) >= ... the node estimates
    N*           = argmax_N rate(N)                                 (N = 1: a plain decoding step)
    expand again iff some N gives (1 + sum_{i < N} e_(i) + F) / (fixed_ms + h + c(N + k)) > rate(N*),
    F the frontier's estimate mass, k its size, h one head step
(a child is accepted only with its parent, so the next level adds at most the frontier's estimate mass).
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

from .structure import DraftTree


@dataclass(frozen=True)
class CostCurve:
    """Measured costs for one (target, head, device, dtype, threads): `verify_ms[i]` for a forward over
    `sizes[i]` tree tokens (sizes ascending, starting at 1), `head_step_ms` for one head step, `overhead_ms`
    for the host work of one cycle outside the two."""

    sizes: tuple[int, ...]
    verify_ms: tuple[float, ...]
    head_step_ms: float
    overhead_ms: float = 0.0

    def verify(self, n: int) -> float:
        """c(n), linear between measured sizes and beyond the last two."""
        sizes, ms = self.sizes, self.verify_ms
        if n <= sizes[0]:
            return ms[0]
        i = min(bisect.bisect_left(sizes, n), len(sizes) - 1)
        lo, hi = i - 1, i
        return ms[lo] + (ms[hi] - ms[lo]) * (n - sizes[lo]) / (sizes[hi] - sizes[lo])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CostCurve":
        return cls(tuple(d["sizes"]), tuple(d["verify_ms"]), float(d["head_step_ms"]), float(d.get("overhead_ms", 0)))


def best_tree_size(estimates_desc: list[float], curve: CostCurve, fixed_ms: float) -> tuple[int, float]:
    """(N*, rate(N*)) over N = 1 .. len(estimates) + 1 (module docstring); estimates sorted descending."""
    return best_batch_tree_size([estimates_desc], curve, fixed_ms)


def best_batch_tree_size(rows: list[list[float]], curve: CostCurve, fixed_ms: float) -> tuple[int, float]:
    """The same for B rows verified in one forward, each with N nodes (its best N - 1 draft nodes, sorted
    descending per row): a forward over B rows of N tokens costs about what one row of B * N tokens does, so

        rate_B(N) = sum_b (1 + sum_{i < N} e_b(i)) / (fixed_ms + c(B * N))

    and the batch's trees shrink as B grows, down to N = 1, plain batched decoding."""
    B = len(rows)
    best_n, best_rate = 1, B / (fixed_ms + curve.verify(B))
    expected = float(B)
    for i in range(max(map(len, rows), default=0)):
        expected += sum(row[i] for row in rows if i < len(row))
        rate = expected / (fixed_ms + curve.verify(B * (i + 2)))
        if rate > best_rate:
            best_n, best_rate = i + 2, rate
    return best_n, best_rate


def expansion_pays(estimates_desc: list[float], frontier: list[float], curve: CostCurve, fixed_ms: float) -> bool:
    """Whether one more head step can raise the cycle's best rate. Its best case: the frontier's estimate mass
    F = sum(frontier) arrives in len(frontier) more verified nodes, for one more head step."""
    return batch_expansion_pays([estimates_desc], [frontier], curve, fixed_ms)


def batch_expansion_pays(rows: list[list[float]], frontiers: list[list[float]], curve: CostCurve, fixed_ms: float,
                         head_step_ms: float | None = None) -> bool:
    """`expansion_pays` for B rows verified together (rate_B of `best_batch_tree_size`): every row's frontier
    mass arrives in k more nodes per row, for one more head step over the batch (`head_step_ms`, default the
    curve's one-row step)."""
    _, rate = best_batch_tree_size(rows, curve, fixed_ms)
    B, extra = len(rows), max(map(len, frontiers))
    step = curve.head_step_ms if head_step_ms is None else head_step_ms
    expected = B + sum(map(sum, frontiers))
    for n in range(max(map(len, rows), default=0) + 1):  # n of each row's current nodes kept, plus the new ones
        if n:
            expected += sum(row[n - 1] for row in rows if n <= len(row))
        if expected / (fixed_ms + step + curve.verify(B * (1 + n + extra))) > rate:
            return True
    return False


def prune_tree(tree: DraftTree, keep: int) -> DraftTree:
    """The root and the `keep - 1` draft nodes with the best estimates (ties: earlier nodes first). Estimates never
    grow from a parent to its child, so every kept node's parent is kept."""
    if tree.tokens.shape[0] != 1 or tree.estimates is None:
        raise ValueError("prune_tree needs a batch-1 tree with estimates")
    if keep >= tree.num_nodes:
        return tree
    est = tree.estimates[0].tolist()
    order = sorted(range(1, tree.num_nodes), key=lambda i: (-est[i], i))[: keep - 1]
    return tree.select([0] + sorted(order))
