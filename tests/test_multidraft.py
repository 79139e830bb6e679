"""The multi-draft rules at one node (hf_specdec/multidraft.py), proven by exact enumeration of every draft
tuple, against closed forms and the optimal-transport LP bound, and by Monte Carlo through the real sampler
with a power check."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.stats import chisquare, kstest

from hf_specdec.multidraft import (
    VERIFIERS,
    NodePlan,
    hub_acceptance,
    hub_plan,
    hub_tokens,
    resolve,
    rrs_acceptance,
    rrs_plan,
    spechub_plan,
    without_hubs,
)

D = torch.float64


def draft_law(rule: str, q: torch.Tensor, m: int) -> list[tuple[tuple[int, ...], float]]:
    """Every ordered draft tuple the rule's sampler can produce, with its probability, written out from the
    definitions (independently of the samplers, whose law is checked separately by Monte Carlo)."""
    V = q.shape[0]
    qs = q.tolist()
    if rule == "rrs":
        return [(t, float(np.prod([qs[x] for x in t]))) for t in itertools.product(range(V), repeat=m)
                if all(qs[x] > 0 for x in t)]
    if rule == "rrsw":
        law = []
        for t in itertools.permutations(range(V), m):
            prob, left = 1.0, 1.0
            for x in t:
                prob *= qs[x] / left if left > 0 else 0.0
                left -= qs[x]
            if prob > 0:
                law.append((t, prob))
        return law
    if rule == "spechub":
        if m == 1:
            return [((x,), qs[x]) for x in range(V) if qs[x] > 0]
        hubs = hub_tokens(q, m - 1).tolist()
        q_tilde = without_hubs(q, torch.tensor(hubs)).tolist()
        law = []
        for x1 in range(V):
            if qs[x1] == 0:
                continue
            if x1 not in hubs:
                law.append(((x1, *hubs), qs[x1]))
            else:
                rest = [h for h in hubs if h != x1]
                law.extend(((x1, i, *rest), qs[x1] * q_tilde[i]) for i in range(V) if q_tilde[i] > 0)
        return law
    raise ValueError(rule)


def enumerate_rule(rule: str, p: torch.Tensor, q: torch.Tensor, m: int, plan_fn=None):
    """Exact (output distribution [V], acceptance rate): every tuple pushed through the plan analytically."""
    law = draft_law(rule, q, m)
    drafts = torch.tensor([t for t, _ in law])
    weight = torch.tensor([w for _, w in law], dtype=D)
    T = len(law)
    plan = (plan_fn or VERIFIERS[rule].plan)(p.expand(T, -1), q.expand(T, -1), drafts)
    out = torch.zeros_like(p)
    reach = weight.clone()
    accepted = 0.0
    for j in range(m):
        a = plan.accept[:, j]
        token = drafts.gather(1, plan.order[:, j : j + 1]).squeeze(1)
        out.index_add_(0, token, reach * a)
        accepted += float((reach * a).sum())
        reach = reach * (1 - a)
    out += (reach[:, None] * plan.residual).sum(0)
    assert float(weight.sum()) == pytest.approx(1.0, abs=1e-9), "the enumerated draft law is not a distribution"
    return out, accepted


def lp_bound(rule: str, p: torch.Tensor, q: torch.Tensor, m: int) -> float:
    """Optimal transport between the draft law Q and p: max sum pi(t, y) over y in t, rows <= Q(t), columns
    <= p(y) (linprog, HiGHS). No verifier for this draft law can accept more often."""
    law = draft_law(rule, q, m)
    variables = [(ti, y) for ti, (t, _) in enumerate(law) for y in sorted(set(t))]
    V = p.shape[0]
    A = np.zeros((len(law) + V, len(variables)))
    for v, (ti, y) in enumerate(variables):
        A[ti, v] = 1
        A[len(law) + y, v] = 1
    b = np.array([w for _, w in law] + p.tolist())
    res = linprog(-np.ones(len(variables)), A_ub=A, b_ub=b, bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun


def random_pair(V, gen, peaked=1.0):
    p = (torch.randn(V, generator=gen, dtype=D) * 2 * peaked).softmax(0)
    q = (torch.randn(V, generator=gen, dtype=D) * 2 * peaked).softmax(0)
    return p, q


def one_hot(V, i):
    return torch.nn.functional.one_hot(torch.tensor(i), V).to(D)


def adversarial_pairs(V):
    """p = q, disjoint supports, one-hot p, one-hot q, ties of the draft argmax, q = 0 where p > 0."""
    u = torch.full((V,), 1.0 / V, dtype=D)
    half = V // 2
    first = torch.cat([torch.ones(half), torch.zeros(V - half)]).to(D)
    first /= first.sum()
    second = first.flip(0)
    ramp = torch.arange(1, V + 1, dtype=D)
    ramp /= ramp.sum()
    tie = torch.tensor([3.0, 3.0] + [1.0] * (V - 2), dtype=D)
    tie /= tie.sum()
    gap = ramp.clone()
    gap[-1] = 0
    gap /= gap.sum()
    return {
        "p=q": (ramp, ramp.clone()),
        "disjoint": (first, second),
        "one-hot p": (one_hot(V, V - 1), ramp),
        "one-hot q": (ramp, one_hot(V, 0)),
        "argmax tie": (ramp, tie),
        "q=0 where p>0": (ramp.flip(0), gap),
        "uniform": (ramp, u),
    }


def cases():
    gen = torch.Generator().manual_seed(0)
    out = []
    for V in range(2, 9):
        for name, (p, q) in adversarial_pairs(V).items():
            out.append((f"V{V}-{name}", p, q))
        for i in range(4):
            out.append((f"V{V}-random{i}", *random_pair(V, gen, peaked=1 + i % 2)))
    return out


CASES = cases()


def usable_children(rule, q, m):
    """Distinct-children rules give a node at most nnz(q) children (what the tree grower does)."""
    return min(m, int((q > 0).sum())) if VERIFIERS[rule].distinct else m


@pytest.mark.parametrize("rule,m", [("rrs", 1), ("rrs", 2), ("rrs", 3), ("rrsw", 2), ("rrsw", 3),
                                    ("spechub", 2), ("spechub", 3), ("spechub", 4)])
def test_enumeration_output_is_exactly_p(rule, m):
    for name, p, q in CASES:
        if m >= 3 and p.shape[0] > 6:
            continue  # V^m tuples: keep the LP small
        k = usable_children(rule, q, m)
        out, accepted = enumerate_rule(rule, p, q, k)
        assert torch.allclose(out, p, atol=1e-9, rtol=0), (name, out, p)
        assert accepted <= lp_bound(rule, p, q, k) + 1e-9, name
        if rule == "rrs":
            assert accepted == pytest.approx(float(rrs_acceptance(p, q, k)), abs=1e-9), name
        if rule == "spechub" and k >= 2:
            assert accepted == pytest.approx(float(hub_acceptance(p, q, k - 1)), abs=1e-9), name
            # SpecHub reaches the optimal-transport optimum of its own draft law
            assert accepted == pytest.approx(lp_bound(rule, p, q, k), abs=1e-7), name


def test_spechub_paper_rule_and_hub_view_agree_at_two_children():
    """spechub_plan (the paper's two-uniform tests) and hub_plan (the single-draft view) are both exact and
    accept equally often; the closed form is p(a) + sum_{x != a} min(p(x), q~(x)) >= sum min(p, q)."""
    for name, p, q in CASES:
        if int((q > 0).sum()) < 2:
            continue
        out_paper, acc_paper = enumerate_rule("spechub", p, q, 2, plan_fn=spechub_plan)
        out_hub, acc_hub = enumerate_rule("spechub", p, q, 2, plan_fn=hub_plan)
        assert torch.allclose(out_paper, p, atol=1e-9, rtol=0) and torch.allclose(out_hub, p, atol=1e-9, rtol=0)
        assert acc_paper == pytest.approx(acc_hub, abs=1e-9), name
        assert acc_paper >= float(torch.minimum(p, q).sum()) - 1e-12, name


def test_spechub_beats_rrs_when_the_draft_is_confident():
    """The paper's regime (research notes: whenever q(a) >= 0.5): SpecHub accepts at least as often as RRS."""
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for _ in range(200):
        V = int(torch.randint(3, 9, (), generator=gen))
        p, q = random_pair(V, gen, peaked=2.0)
        if q.max() < 0.5:
            continue
        checked += 1
        assert float(hub_acceptance(p, q, 1)) >= float(rrs_acceptance(p, q, 2)) - 1e-12
    assert checked > 30


def test_rrs_closed_form_by_hand():
    """p = [.5, .3, .2], q = [.2, .2, .6]: TV(p, q) = 0.4; p_2 = norm((p - q)+) = [.75, .25, 0],
    TV(p_2, q) = 0.6; alpha_RRS(2) = 1 - 0.4 * 0.6 = 0.76."""
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=D), torch.tensor([0.2, 0.2, 0.6], dtype=D)
    assert float(rrs_acceptance(p, q, 1)) == pytest.approx(0.6)
    assert float(rrs_acceptance(p, q, 2)) == pytest.approx(0.76)
    # SpecHub: a = 2, q~ = [.5, .5, 0]: p(a) + min(.5, .5) + min(.3, .5) = 0.2 + 0.5 + 0.3 = 1.0
    assert float(hub_acceptance(p, q, 1)) == pytest.approx(1.0)


def skip_duplicates_rrs(p, q, drafts):
    """A deliberately lossy RRS: a sibling equal to an earlier one is skipped (acceptance 0) and the residual
    is NOT updated for it."""
    m = drafts.shape[-1]
    p_j, accept = p, []
    for j in range(m):
        x = drafts[..., j]
        dup = (drafts[..., :j] == x[..., None]).any(-1) if j else torch.zeros_like(x, dtype=torch.bool)
        a = (p_j.gather(-1, x[..., None]) / q.gather(-1, x[..., None])).clamp(max=1).squeeze(-1)
        accept.append(torch.where(dup, torch.zeros_like(a), a))
        moved = (p_j - q).clamp(min=0)
        moved = moved / moved.sum(-1, keepdim=True).clamp(min=1e-300)
        p_j = torch.where(dup[..., None], p_j, moved)
    return NodePlan(torch.arange(m).expand(drafts.shape), torch.stack(accept, -1), p_j)


def test_enumeration_catches_the_skip_duplicates_bug():
    """The research notes' counterexample: skipping duplicate siblings outputs [.46, .34, .20]."""
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=D), torch.tensor([0.2, 0.2, 0.6], dtype=D)
    out, _ = enumerate_rule("rrs", p, q, 2, plan_fn=skip_duplicates_rrs)
    assert torch.allclose(out, torch.tensor([0.46, 0.34, 0.20], dtype=D), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rule,m", [("rrs", 2), ("rrsw", 2), ("spechub", 2), ("spechub", 3)])
def test_low_precision_plans_stay_finite(dtype, rule, m):
    """No NaN / negative residuals in half precision, on the adversarial cases where residuals vanish."""
    for name, p, q in CASES:
        if p.shape[0] > 6:
            continue
        k = usable_children(rule, q, m)
        law = draft_law(rule, q, k)
        drafts = torch.tensor([t for t, _ in law])
        T = len(law)
        plan = VERIFIERS[rule].plan(p.to(dtype).expand(T, -1), q.to(dtype).expand(T, -1), drafts)
        assert torch.isfinite(plan.accept).all() and torch.isfinite(plan.residual).all(), name
        assert (plan.accept >= 0).all() and (plan.accept <= 1).all(), name
        assert (plan.residual >= 0).all(), name
        assert torch.allclose(plan.residual.float().sum(-1), torch.ones(T), atol=2e-2), name


# ---- Monte Carlo through the real sampler and resolver --------------------------------------------------------


def sample_node(rule, p, q, m, draws, seed, plan_fn=None):
    """draws independent nodes: children from the rule's sampler, resolved by `resolve` (float32, as in
    decoding). Returns (emitted tokens [draws], drafted tuples [draws, m])."""
    gen = torch.Generator().manual_seed(seed)
    P, Q = p.float().expand(draws, -1), q.float().expand(draws, -1)
    drafts = VERIFIERS[rule].sample(Q, m, gen)
    plan = (plan_fn or VERIFIERS[rule].plan)(P, Q, drafts)
    _, tokens = resolve(plan, drafts, gen)
    return tokens, drafts


def chi_square(counts, expected):
    keep = expected >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("rule,m", [("rrs", 2), ("rrsw", 2), ("spechub", 2), ("spechub", 3)])
def test_monte_carlo_output_is_p(rule, m):
    """Many (p, q) pairs, 20k draws each: the p-values of the chi-square tests are uniform (KS), and none is
    extreme."""
    gen = torch.Generator().manual_seed(7)
    pvalues = []
    for i in range(24):
        V = 3 + i % 6
        p, q = random_pair(V, gen, peaked=1 + (i % 3) / 2)
        draws = 20_000
        tokens, _ = sample_node(rule, p, q, m, draws, seed=100 + i)
        counts = np.bincount(tokens.numpy(), minlength=V)
        pvalues.append(chi_square(counts, p.numpy() * draws))
    assert kstest(pvalues, "uniform").pvalue > 1e-3
    assert min(pvalues) > 1e-5


@pytest.mark.parametrize("rule,m", [("rrs", 3), ("rrsw", 3), ("spechub", 2), ("spechub", 3)])
def test_samplers_draw_the_documented_law(rule, m):
    """The drafted tuples' histogram matches the law the enumeration assumes."""
    gen = torch.Generator().manual_seed(3)
    p, q = random_pair(5, gen, peaked=1.5)
    draws = 40_000
    _, drafts = sample_node(rule, p, q, m, draws, seed=5)
    law = dict(draft_law(rule, q, m))
    seen = {}
    for t in map(tuple, drafts.tolist()):
        seen[t] = seen.get(t, 0) + 1
    assert set(seen) <= set(law), set(seen) - set(law)
    keys = sorted(law)
    assert chi_square(np.array([seen.get(k, 0) for k in keys]), np.array([law[k] * draws for k in keys])) > 1e-4


def test_monte_carlo_power_catches_a_small_bias():
    """Skipping duplicate siblings biases the output by total variation 0.04 on the notes' example: 1e5
    draws must reject it, while the correct rule passes."""
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=D), torch.tensor([0.2, 0.2, 0.6], dtype=D)
    draws = 100_000
    good, _ = sample_node("rrs", p, q, 2, draws, seed=11)
    bad, _ = sample_node("rrs", p, q, 2, draws, seed=11, plan_fn=skip_duplicates_rrs)
    expected = p.numpy() * draws
    assert chi_square(np.bincount(good.numpy(), minlength=3), expected) > 1e-3
    assert chi_square(np.bincount(bad.numpy(), minlength=3), expected) < 1e-6


def test_hub_ties_go_to_the_lowest_token():
    q = torch.tensor([[0.1, 0.3, 0.3, 0.3]])
    assert hub_tokens(q, 2).tolist() == [[1, 2]]
    assert hub_tokens(q, 1).tolist() == [[1]]
