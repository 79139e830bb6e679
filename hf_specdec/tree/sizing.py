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

The head's estimates are its path probabilities, which need not be calibrated (soft-label training leaves them
under-confident at greedy, over-confident at T=1): `EstimateCalibration` maps them onto observed acceptance
before they meet the cost curve or the lookup nodes' estimates.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .structure import DraftTree


@dataclass(frozen=True)
class CostCurve:
    """Measured costs for one (target, head, device, dtype, threads): `verify_ms[i]` for a forward over
    `sizes[i]` tree tokens (sizes ascending, starting at 1) after `context` cached tokens, `head_step_ms` for
    one head step there, `overhead_ms` for the host work of one cycle outside the two. With the same measured
    after `long_context` cached tokens (`long_verify_ms`, `long_head_step_ms`), `at(L)` gives the curve for a
    cycle after L cached tokens: every tree token attends to the whole prefix, so both the level of c and its
    slope per tree token grow with L."""

    sizes: tuple[int, ...]
    verify_ms: tuple[float, ...]
    head_step_ms: float
    overhead_ms: float = 0.0
    context: int = 0
    long_context: int = 0
    long_verify_ms: tuple[float, ...] = ()
    long_head_step_ms: float = 0.0

    def verify(self, n: int) -> float:
        """c(n), linear between measured sizes and beyond the last two."""
        sizes, ms = self.sizes, self.verify_ms
        if n <= sizes[0]:
            return ms[0]
        i = min(bisect.bisect_left(sizes, n), len(sizes) - 1)
        lo, hi = i - 1, i
        return ms[lo] + (ms[hi] - ms[lo]) * (n - sizes[lo]) / (sizes[hi] - sizes[lo])

    def at(self, cached: int) -> "CostCurve":
        """The curve after `cached` tokens: linear in L between the two measured contexts and beyond them (not
        below a tenth of the measured cost), kept non-decreasing in n; itself where only one was measured."""
        if not self.long_verify_ms:
            return self
        t = (max(cached, 0) - self.context) / (self.long_context - self.context)

        def between(a: float, b: float) -> float:
            return max(a + t * (b - a), 0.1 * a)

        ms = [between(a, b) for a, b in zip(self.verify_ms, self.long_verify_ms)]
        for i in range(1, len(ms)):
            ms[i] = max(ms[i], ms[i - 1])
        return CostCurve(self.sizes, tuple(ms), between(self.head_step_ms, self.long_head_step_ms), self.overhead_ms)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CostCurve":
        return cls(tuple(d["sizes"]), tuple(d["verify_ms"]), float(d["head_step_ms"]), float(d.get("overhead_ms", 0)),
                   int(d.get("context", 0)), int(d.get("long_context", 0)), tuple(d.get("long_verify_ms", ())),
                   float(d.get("long_head_step_ms", 0.0)))


def refit_curve(curve: CostCurve, level: float, slope: float, head: float) -> CostCurve:
    """The curve a fit on real cycles gives (`fit_cycle_costs`): at both contexts

        c'(n) = level * c(1) + slope * (c(n) - c(1)),    h' = head * h,

    and no separate host overhead (the level carries it: a cycle's fixed cost scales with nothing else)."""

    def verify(ms: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(level * ms[0] + slope * (m - ms[0]) for m in ms)

    return CostCurve(curve.sizes, verify(curve.verify_ms), head * curve.head_step_ms, 0.0, curve.context,
                     curve.long_context, verify(curve.long_verify_ms) if curve.long_verify_ms else (),
                     head * curve.long_head_step_ms)


def fit_cycle_costs(cycles: list[tuple[int, int, int, float]], curve: CostCurve,
                    bounds: tuple[float, float] = (0.1, 10.0)) -> tuple[float, float, float]:
    """(level, slope, head) for `refit_curve` from real cycles (n tree tokens verified, s head steps incl. the
    catch-up, L cached tokens, t measured ms), by least squares on

        t = level * c_L(1) + slope * (c_L(n) - c_L(1)) + head * s * h_L      (c_L, h_L: `curve.at(L)`)

    Each term scaled by its column's norm before solving; each factor clipped to `bounds`. Isolated
    measurements miss what a cycle adds and shares (host work, the head's weights meeting a cache the target
    has just swept): on 2026-12-02 (examples/check_cost_model.py) they priced a cycle ~1.5x too high, its tree
    tokens ~45% too cheap and its head steps 3-4x too dear."""
    rows, times = [], []
    for n, steps, cached, ms in cycles:
        c = curve.at(cached)
        rows.append((c.verify(1), c.verify(n) - c.verify(1), steps * c.head_step_ms))
        times.append(ms)
    if len(rows) < 3:
        raise ValueError(f"fitting three cost factors needs at least 3 cycles, got {len(rows)}")
    X, y = np.asarray(rows, dtype=float), np.asarray(times, dtype=float)
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    theta = np.linalg.lstsq(X / scale, y, rcond=None)[0] / scale
    level, slope, head = (float(np.clip(v, *bounds)) for v in theta)
    return level, slope, head


@dataclass(frozen=True)
class EstimateCalibration:
    """A monotone map from raw P(accepted) estimates e to calibrated ones: linear between knots (x_i, y_i),
    both non-decreasing, x from 0 to 1, y from 0 within [0, 1]. Monotone, so a node's calibrated estimate still never exceeds
    its parent's, and the head's own order of its nodes is unchanged; only the sizing and the competition
    with lookup nodes see other numbers."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self):
        x, y = self.x, self.y
        if (len(x) != len(y) or len(x) < 2 or (x[0], y[0], x[-1]) != (0.0, 0.0, 1.0) or y[-1] > 1.0
                or any(b < a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:]))):
            raise ValueError("an estimate calibration needs knots x, y of one length, both non-decreasing, x from 0 "
                             f"to 1, y from 0 to at most 1; got x={list(x)}, y={list(y)}")

    def __call__(self, estimates: torch.Tensor) -> torch.Tensor:
        x = torch.tensor(self.x, dtype=estimates.dtype, device=estimates.device)
        y = torch.tensor(self.y, dtype=estimates.dtype, device=estimates.device)
        e = estimates.clamp(0.0, 1.0)
        hi = torch.searchsorted(x, e, right=True).clamp(1, len(self.x) - 1)
        x0, x1, y0, y1 = x[hi - 1], x[hi], y[hi - 1], y[hi]
        return y0 + (y1 - y0) * ((e - x0) / (x1 - x0).clamp_min(1e-12))

    @classmethod
    def fit(cls, predicted: list[float], accepted: list[float], edges=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                                      0.8, 0.9, 1.0)) -> "EstimateCalibration":
        """Knots at each bin's mean prediction, valued at the observed acceptance share there, made monotone by
        pooling adjacent violators (isotonic regression weighted by the bins' node counts); (0, 0) below them,
        flat above them up to x = 1."""
        sums = [[0, 0.0, 0.0] for _ in edges[1:]]  # nodes, sum predicted, sum accepted
        for e, a in zip(predicted, accepted):
            row = sums[min(max(bisect.bisect_right(edges, e) - 1, 0), len(sums) - 1)]
            row[0], row[1], row[2] = row[0] + 1, row[1] + e, row[2] + a
        bins = [(s / n, o / n, n) for n, s, o in sums if n]
        blocks: list[list[float]] = []  # pooled runs: [observed, weight, bins]
        for _, observed, n in bins:
            blocks.append([observed, n, 1])
            while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
                o2, w2, k2 = blocks.pop()
                o1, w1, k1 = blocks.pop()
                blocks.append([(o1 * w1 + o2 * w2) / (w1 + w2), w1 + w2, k1 + k2])
        ys = [o for o, _, k in blocks for _ in range(k)]
        xs = [mean for mean, _, _ in bins]
        keep = [i for i in range(len(xs)) if 0.0 < xs[i] < 1.0]
        ys = [round(min(max(ys[i], 0.0), 1.0), 4) for i in keep]
        return cls((0.0, *(round(xs[i], 4) for i in keep), 1.0), (0.0, *ys, ys[-1] if ys else 1.0))

    def to_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: dict) -> "EstimateCalibration":
        return cls(tuple(map(float, d["x"])), tuple(map(float, d["y"])))


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


def head_pays(head_tokens: float, head_ms: float, base_rate: float) -> bool:
    """Whether a cycle should run the head at all. Without it the cycle is the lookup-only tree (a plain
    decoding step when lookup has nothing), T_0 expected tokens in C_0 ms: rate r_0 = T_0 / C_0. The head adds
    g expected tokens beyond that tree's for c_h more ms (its catch-up and expansions, and the extra nodes
    verified), which pays iff

        (T_0 + g) / (C_0 + c_h) > T_0 / C_0   <=>   g / c_h > r_0."""
    return head_tokens > base_rate * head_ms


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
