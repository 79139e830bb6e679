"""Multi-draft speculative sampling at one tree node: how the k children are drawn from the draft, and how
the target accepts one of them or emits a correction token (research/multidraft.md).

Notation: V the vocabulary, p the target distribution at the node, q the draft distribution there (both
after the same temperature / top-k / top-p), (z)+ = max(z, 0), norm(f) = f / sum f.

A rule is written as a `NodePlan`: the order in which the drafted children are tested, the probability of
accepting each one given that the earlier ones were rejected, and the residual distribution sampled when
all are rejected. Everything here is a pure function over batched probability vectors [..., V]; the plan
carries the whole math, so the exact-enumeration tests and the sampler run the very same code. A rule is
lossless iff the emitted token is distributed exactly as p, whatever the drafts.

Rules (`VERIFIERS`):
    rrs      recursive rejection sampling over i.i.d. drafts (SpecInfer)
    rrsw     recursive rejection sampling over drafts drawn without replacement
    spechub  SpecHub (Sun et al., arXiv 2411.05289): the draft's argmax as a hub plus one sampled token;
             with k > 2 children, k - 1 hubs (the generalisation in research/multidraft.md)
A node with a single child is ordinary speculative sampling under every rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class NodePlan:
    """order [..., m]: child slots in the order they are tested; accept [..., m]: P(accept the j-th tested
    child | all earlier tested children were rejected); residual [..., V]: what the correction token is
    drawn from when every child is rejected."""

    order: torch.Tensor
    accept: torch.Tensor
    residual: torch.Tensor


def normalize(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """norm(weights) along the last dim; rows whose mass is ~0 (a branch of probability ~0, where rounding
    would otherwise give NaN) get `fallback` instead."""
    mass = weights.sum(-1, keepdim=True)
    ok = mass > torch.finfo(weights.dtype).tiny * weights.shape[-1]
    return torch.where(ok, weights / torch.where(ok, mass, 1), fallback)


def accept_probability(target: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """P[u * cost < target] for u ~ U[0, 1): min(1, target / cost), with cost = 0 meaning "accept iff
    target > 0" (the paper's tests are all of this form)."""
    safe = torch.where(cost > 0, cost, 1)
    return torch.where(cost > 0, (target / safe).clamp(0, 1), (target > 0).to(target.dtype))


def gather(dist: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """dist [..., V] at tokens [...] -> [...]."""
    return dist.gather(-1, tokens[..., None]).squeeze(-1)


def remove(dist: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """dist with the entries at tokens [..., n] set to 0 (not renormalised)."""
    return dist.scatter(-1, tokens, 0)


def hub_tokens(q: torch.Tensor, n: int) -> torch.Tensor:
    """The n most likely draft tokens [..., n], best first, ties to the lowest token id. The drafting and
    the verification of a node must use the same hubs, so this is the only place that picks them
    (`argmax` is documented to return the first maximum, `topk` makes no such promise)."""
    hubs = []
    rest = q
    for _ in range(n):
        best = rest.argmax(-1)
        hubs.append(best)
        rest = rest.scatter(-1, best[..., None], -1.0)
    return torch.stack(hubs, -1) if hubs else q.new_zeros(q.shape[:-1] + (0,), dtype=torch.long)


# ---- recursive rejection sampling ---------------------------------------------------------------------------


def rrs_plan(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, without_replacement: bool = False) -> NodePlan:
    """Recursive rejection sampling (SpecInfer), drafts [..., m] tested in slot order.

    p_1 = p, q_1 = q. Accept x_j with min(1, p_j(x_j) / q_j(x_j)); on rejection
        p_{j+1} = norm((p_j - q_j)+),
        q_{j+1} = q_j                              (i.i.d. drafts, "rrs")
        q_{j+1} = norm(q_j with x_j set to 0)      (drafts without replacement, "rrsw").
    All m rejected: sample p_{m+1}. Duplicate siblings (possible with i.i.d. drafts) are tested like any
    other child: their acceptance probability is then 0, but the residual still moves on (skipping them is
    lossy). With m = 1 this is ordinary speculative sampling.
    """
    m = drafts.shape[-1]
    p_j, q_j = p, q
    accept = []
    for j in range(m):
        x = drafts[..., j]
        accept.append(accept_probability(gather(p_j, x), gather(q_j, x)))
        p_j = normalize((p_j - q_j).clamp(min=0), fallback=p)
        if without_replacement:
            q_j = normalize(remove(q_j, x[..., None]), fallback=q_j)
    order = torch.arange(m, device=drafts.device).expand(drafts.shape)
    return NodePlan(order=order, accept=torch.stack(accept, -1), residual=p_j)


def rrs_acceptance(p: torch.Tensor, q: torch.Tensor, m: int) -> torch.Tensor:
    """Closed form for i.i.d. drafts: alpha_RRS = 1 - prod_{j=1..m} TV(p_j, q), TV(p_j, q) = sum (q - p_j)+,
    with p_j the residuals of `rrs_plan`."""
    rejected = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    p_j = p
    for _ in range(m):
        rejected = rejected * (q - p_j).clamp(min=0).sum(-1)
        p_j = normalize((p_j - q).clamp(min=0), fallback=p)
    return 1 - rejected


# ---- SpecHub --------------------------------------------------------------------------------------------------


def without_hubs(q: torch.Tensor, hubs: torch.Tensor) -> torch.Tensor:
    """q~ = q conditioned on not being a hub: norm(q with the hubs set to 0). Normalising the remaining mass
    (rather than dividing by 1 - q(hubs)) keeps it exact when q(hubs) ~ 1."""
    return normalize(remove(q, hubs), fallback=torch.zeros_like(q))


def spechub_plan(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> NodePlan:
    """SpecHub for two children (x1, x2) drawn by `sample_hub_drafts` (Sun et al. 2024, section 4).

    Hub a = argmax q, S = V minus {a}, q~ = norm(q on S). Draft law: x1 ~ q; x2 = a if x1 != a, else x2 ~ q~,
    i.e. Q(i, a) = q(i) and Q(a, i) = q(a) q~(i) for i in S. With independent uniforms u1 (slot 1), u2 (slot 2):
        p1 = (p - q)+,  p2 = (p - q~)+,
        S1 = sum_{i in S} (Q(a, i) - p1(i))+,  S2 = sum_{i in S} (q(i) - p(i))+,
        drafted (i, a): accept i if u1 q(i) < p(i);    else accept a if u2 S2 < (p(a) - S1)+
        drafted (a, i): accept i if u2 Q(a,i) < p1(i); else accept a if u1 S1 < p(a)
        both rejected: sample norm(p2) on S.
    Acceptance rate p(a) + sum_{x in S} min(p(x), q~(x)) (`hub_acceptance` with one hub).
    """
    if drafts.shape[-1] != 2:
        raise ValueError(f"spechub_plan resolves exactly two children, got {drafts.shape[-1]}")
    hub = hub_tokens(q, 1)  # [..., 1]
    a = hub[..., 0]
    q_tilde = without_hubs(q, hub)
    q_a = gather(q, a)
    p1 = (p - q).clamp(min=0)
    p2 = remove((p - q_tilde).clamp(min=0), hub)
    joint_a = q_a[..., None] * q_tilde  # Q(a, i)
    s1 = remove((joint_a - p1).clamp(min=0), hub).sum(-1)
    s2 = remove((q - p).clamp(min=0), hub).sum(-1)
    p_a = gather(p, a)

    hub_first = drafts[..., 0] == a  # drafted (a, i)
    i = torch.where(hub_first, drafts[..., 1], drafts[..., 0])
    # drafted (i, a): test slot 0 (i), then slot 1 (the hub)
    i_then_hub = torch.stack([accept_probability(gather(p, i), gather(q, i)),
                              accept_probability((p_a - s1).clamp(min=0), s2)], -1)
    # drafted (a, i): test slot 1 (i), then slot 0 (the hub)
    i_then_hub_swapped = torch.stack([accept_probability(gather(p1, i), gather(joint_a, i)),
                                      accept_probability(p_a, s1)], -1)
    accept = torch.where(hub_first[..., None], i_then_hub_swapped, i_then_hub)
    slots = torch.tensor([0, 1], device=drafts.device)
    order = torch.where(hub_first[..., None], slots.flip(0), slots)
    return NodePlan(order=order, accept=accept, residual=normalize(p2, fallback=p))


def hub_plan(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> NodePlan:
    """SpecHub with m >= 2 children: the hubs T = the m - 1 most likely draft tokens, plus one token i ~ q~
    = norm(q off T) (the set law of `sample_hub_drafts`). Equivalent single-draft view: run speculative
    sampling of p against the draft i ~ q~, giving y ~ p; y is an accepted child iff y is in T or y = i.

    As tests: i with min(1, p(i) / q~(i)); then, with r = norm((p - q~)+), each hub t in turn with the
    one-hot rejection rule on r (accept with r(t), else zero t and renormalise); the correction token is
    drawn from r off T. Acceptance rate p(T) + sum_{x not in T} min(p(x), q~(x)); for m = 2 it equals
    `spechub_plan`'s.
    """
    m = drafts.shape[-1]
    hubs = hub_tokens(q, m - 1)
    q_tilde = without_hubs(q, hubs)
    is_hub = (drafts[..., :, None] == hubs[..., None, :]).any(-1)  # [..., m]
    i_slot = (~is_hub).to(torch.long).argmax(-1)  # exactly one non-hub slot
    i = drafts.gather(-1, i_slot[..., None]).squeeze(-1)
    accept = [accept_probability(gather(p, i), gather(q_tilde, i))]
    r = normalize((p - q_tilde).clamp(min=0), fallback=p)
    hub_slots = []
    for h in range(m - 1):
        t = hubs[..., h]
        accept.append(gather(r, t))
        r = normalize(remove(r, t[..., None]), fallback=p)
        hub_slots.append((drafts == t[..., None]).to(torch.long).argmax(-1))
    order = torch.stack([i_slot, *hub_slots], -1)
    return NodePlan(order=order, accept=torch.stack(accept, -1), residual=r)


def hub_acceptance(p: torch.Tensor, q: torch.Tensor, num_hubs: int) -> torch.Tensor:
    """Closed form: alpha = p(T) + sum_{x not in T} min(p(x), q~(x)), T the hubs; SpecHub's
    p(a) + sum_{x in S} min(p(x), q~(x)) for one hub."""
    hubs = hub_tokens(q, num_hubs)
    q_tilde = without_hubs(q, hubs)
    return p.gather(-1, hubs).sum(-1) + remove(torch.minimum(p, q_tilde), hubs).sum(-1)


# ---- drawing the children ---------------------------------------------------------------------------------------


def sample_iid_drafts(q: torch.Tensor, m: int, generator=None) -> torch.Tensor:
    """m i.i.d. draws from q [M, V] -> [M, m] (duplicates possible)."""
    return torch.multinomial(q, m, replacement=True, generator=generator)


def sample_drafts_without_replacement(q: torch.Tensor, m: int, generator=None) -> torch.Tensor:
    """m draws without replacement: x_j ~ norm(q with x_1..x_{j-1} set to 0). Needs m <= nnz(q)."""
    return torch.multinomial(q, m, replacement=False, generator=generator)


def sample_hub_drafts(q: torch.Tensor, m: int, generator=None) -> torch.Tensor:
    """SpecHub's sparse joint draft, [M, V] -> [M, m]: x1 ~ q; the other slots hold the hubs T (the m - 1 most
    likely tokens) and, when x1 is a hub, one extra token i ~ q~ = norm(q off T). Slot 1 alone is
    distributed as q, and the set of children is T plus one token i ~ q~. For m = 2: x2 = a if x1 != a,
    else x2 ~ q~. Needs m <= nnz(q)."""
    if m == 1:
        return sample_iid_drafts(q, 1, generator)
    hubs = hub_tokens(q, m - 1)
    x1 = torch.multinomial(q, 1, generator=generator)  # [M, 1]
    x1_is_hub = (x1 == hubs).any(-1, keepdim=True)
    q_tilde = without_hubs(q, hubs)
    # Rows where q~ has no mass only occur when x1 cannot be a hub-only draw; keep multinomial well defined.
    safe = torch.where(q_tilde.sum(-1, keepdim=True) > 0, q_tilde, q)
    extra = torch.multinomial(safe, 1, generator=generator)
    others = hubs.masked_fill((hubs == x1), -1)  # the hubs other than x1 (x1 may be one of them)
    # Slots after x1: the extra token first when x1 is a hub, then the remaining hubs in rank order.
    candidates = torch.cat([torch.where(x1_is_hub, extra, -1), others], -1)  # [M, m]; exactly m - 1 are >= 0
    rank = torch.where(candidates >= 0, torch.arange(m, device=q.device), m).sort(dim=-1, stable=True).indices
    rest = candidates.gather(-1, rank)[..., : m - 1]
    return torch.cat([x1, rest], -1)


@dataclass(frozen=True)
class Verifier:
    """A multi-draft rule: how children are drawn (`sample`: q [M, V], m -> [M, m]), how they are resolved
    (`plan`: p, q, drafts -> NodePlan), and whether the children must be distinct tokens (then a node gets at
    most nnz(q) children)."""

    sample: Callable
    plan: Callable
    distinct: bool


def _spechub_any(p, q, drafts):
    return spechub_plan(p, q, drafts) if drafts.shape[-1] == 2 else hub_plan(p, q, drafts)


def _single_or(plan):
    """Every rule is ordinary speculative sampling for a node with one child."""
    return lambda p, q, drafts: rrs_plan(p, q, drafts) if drafts.shape[-1] == 1 else plan(p, q, drafts)


VERIFIERS: dict[str, Verifier] = {
    "rrs": Verifier(sample_iid_drafts, rrs_plan, distinct=False),
    "rrsw": Verifier(sample_drafts_without_replacement,
                     _single_or(lambda p, q, d: rrs_plan(p, q, d, without_replacement=True)), distinct=True),
    "spechub": Verifier(sample_hub_drafts, _single_or(_spechub_any), distinct=True),
}


def resolve(plan: NodePlan, drafts: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the plan's tests with fresh uniforms, batched over rows [M]. Returns (slot [M]: the accepted child,
    or -1; token [M]: the accepted child's token, or a draw from the residual)."""
    u = torch.rand(plan.accept.shape, generator=generator, device=plan.accept.device, dtype=plan.accept.dtype)
    hit = u < plan.accept
    first = torch.where(hit.any(-1), hit.to(torch.long).argmax(-1), -1)
    slot = torch.where(first >= 0, plan.order.gather(-1, first.clamp(min=0)[..., None]).squeeze(-1), -1)
    correction = torch.multinomial(plan.residual, 1, generator=generator).squeeze(-1)
    token = torch.where(slot >= 0, drafts.gather(-1, slot.clamp(min=0)[..., None]).squeeze(-1), correction)
    return slot, token
