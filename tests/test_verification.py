"""The verification rules on their own."""

import pytest
import torch
from scipy.stats import chisquare

from hf_specdec.tree import DraftTree
from hf_specdec.verification import (
    accept_deterministic_drafts,
    deterministic_acceptance,
    expected_accepted,
    first_argmax,
    verify_greedy,
    verify_sampling,
)


def one_hot_scores(n_nodes, vocab, argmaxes):
    scores = torch.zeros(1, n_nodes, vocab)
    scores[0, torch.arange(n_nodes), torch.tensor(argmaxes)] = 5.0
    return scores


def test_greedy_accepts_the_longest_matching_path():
    #      0 (root)
    #    1(a=3)   2(b=4)
    #    3(c=5)   4(d=6)   <- 3 under 1, 4 under 2
    tree = DraftTree.from_parents(torch.tensor([[0, 3, 4, 5, 6]]), torch.tensor([[-1, 0, 0, 1, 2]]))
    # target: after root -> 4, after node 2 -> 6, after node 4 -> 9 (bonus)
    verdict = verify_greedy(tree, one_hot_scores(5, 10, [4, 0, 6, 0, 9]))
    assert verdict.path.tolist() == [[0, 2, 4]] and verdict.next_tokens.tolist() == [9]
    # target disagrees with every child: only the root, and the target's own token
    verdict = verify_greedy(tree, one_hot_scores(5, 10, [7, 0, 0, 0, 0]))
    assert verdict.path.tolist() == [[0]] and verdict.next_tokens.tolist() == [7]
    # a deep node whose parent was rejected is not accepted even if it matches its own parent
    verdict = verify_greedy(tree, one_hot_scores(5, 10, [3, 1, 6, 0, 0]))
    assert verdict.path.tolist() == [[0, 1]] and verdict.next_tokens.tolist() == [1]


def emitted_histogram(p, drafts, draws, rule=accept_deterministic_drafts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(p))
    for _ in range(draws):
        j, residual = rule(p, drafts, gen)
        token = drafts[j] if j >= 0 else torch.multinomial(residual / residual.sum(), 1, generator=gen)[0]
        counts[token] += 1
    return counts


@pytest.mark.parametrize(
    "p,drafts",
    [
        ([0.5, 0.3, 0.2, 0.0], [2, 0]),
        ([0.1, 0.1, 0.1, 0.7], [0, 1, 2]),  # the target's favourite is not drafted
        ([0.25, 0.25, 0.25, 0.25], [3, 2, 1, 0]),  # every token drafted
        ([0.0, 1.0, 0.0, 0.0], [0, 1]),  # one-hot target, first draft impossible
        ([0.6, 0.0, 0.4, 0.0], [1, 3]),  # only zero-probability drafts
    ],
)
def test_deterministic_draft_rule_emits_exactly_p(p, drafts):
    p, drafts = torch.tensor(p), torch.tensor(drafts)
    draws = 6000
    counts = emitted_histogram(p, drafts, draws)
    support = p > 0
    assert counts[~support].sum() == 0
    if support.sum() > 1:
        assert chisquare(counts[support], p[support] * draws).pvalue > 1e-3


def test_chi_square_has_power_against_a_lossy_rule():
    def accept_first(p, drafts, gen=None):  # always takes the first draft: not lossless
        return 0, p

    p, drafts = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([2, 0])
    counts = emitted_histogram(p, drafts, 2000, rule=accept_first)
    expected = p * 2000
    assert chisquare(counts + 1e-9, expected).pvalue < 1e-6


def test_sampling_walk_follows_accepted_children():
    tree = DraftTree.from_parents(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[-1, 0, 0, 1]]))
    probs = torch.zeros(1, 4, 5)
    probs[0, 0, 1] = 1.0  # root surely accepts node 1 (token 1)
    probs[0, 1, 3] = 1.0  # node 1 surely accepts node 3 (token 3)
    probs[0, 3, 4] = 1.0  # after the leaf: token 4
    verdict = verify_sampling(tree, probs.log())  # scores: the distribution is their softmax
    assert verdict.path.tolist() == [[0, 1, 3]] and verdict.next_tokens.tolist() == [4]
    probs[0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])  # both children impossible: residual gives 4
    verdict = verify_sampling(tree, probs.log())
    assert verdict.path.tolist() == [[0]] and verdict.next_tokens.tolist() == [4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_argmax_is_argmax_with_ties_nan_and_inf(dtype):
    """The greedy rule's faster argmax picks exactly what stock greedy's argmax picks: the first of tied maxima,
    NaN wherever a row has one, the first index of an all -inf row."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 40, (), generator=g))
        scores = torch.randint(-3, 3, (1, n, 4099), generator=g).to(dtype)  # many tied maxima per row
        scores[0, 0, torch.randint(0, 4099, (3,), generator=g)] = float("nan")
        scores[0, -1] = float("-inf")
        assert torch.equal(first_argmax(scores), scores.argmax(-1))
    tied = torch.tensor([[1.0, 5.0, 5.0, 2.0, 5.0]])
    assert first_argmax(tied).tolist() == [1]


def exact_acceptance_of_the_rule(p, drafts):
    """P(some draft accepted), followed through the rule's own steps: reach x_j, accept it with p_j(x_j)."""
    residual, reach, accepted = p.clone().double(), 1.0, 0.0
    for x in drafts.tolist():
        mass = float(residual.sum())
        if mass <= 0:
            break
        accepted += reach * float(residual[x]) / mass
        reach *= 1 - float(residual[x]) / mass
        residual[x] = 0.0
    return accepted


@pytest.mark.parametrize("seed", range(5))
def test_deterministic_acceptance_is_the_rules_acceptance(seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(3 * torch.randn(12, generator=gen), -1)
    for m in (1, 2, 4, 12):
        drafts = torch.randperm(12, generator=gen)[:m]
        assert float(deterministic_acceptance(p, drafts)) == pytest.approx(exact_acceptance_of_the_rule(p, drafts), abs=1e-6)
    # and as sampled from the rule itself, for the target's three favourite tokens: within 4 standard deviations
    # of the formula, while a rule that tried each draft against p afresh (no residual: 1 - prod(1 - p(x_j)))
    # would sit more than 8 away (the power check)
    drafts = p.topk(3).indices
    want, draws = float(deterministic_acceptance(p, drafts)), 4000
    sd = (want * (1 - want) / draws) ** 0.5
    hits = sum(accept_deterministic_drafts(p, drafts, gen)[0] >= 0 for _ in range(draws))
    assert abs(hits / draws - want) < 4 * sd
    assert abs(1 - float(torch.prod(1 - p[drafts])) - want) > 8 * sd


def test_deterministic_acceptance_batched():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert deterministic_acceptance(p, torch.tensor([[0, 2], [2, 1]])).tolist() == pytest.approx([0.7, 0.9])


def test_expected_accepted_is_the_mean_of_the_sampling_rule():
    """E[accepted] from the path products equals (i) the sum of the path products written out by hand for a small
    tree, with a drafted token the processors removed, and (ii) the mean accepted count of verify_sampling over
    many draws (within 4 standard errors)."""
    #        0
    #    1(a)   2(b)     3(c)
    #    4(d)   5(e)
    #    6(f)
    tree = DraftTree.from_parents(torch.tensor([[0, 1, 2, 3, 4, 5, 6]]), torch.tensor([[-1, 0, 0, 0, 1, 2, 4]]))
    gen = torch.Generator().manual_seed(0)
    scores = 2 * torch.randn(1, 7, 8, generator=gen)
    scores[0, 2, 5] = float("-inf")  # node 5's token, removed by the processors (top-k / top-p) after node 2
    p = scores[0].softmax(-1)
    tok = tree.tokens[0]
    # by hand: each node's path product
    want = (p[0, tok[1]] + p[0, tok[2]] + p[0, tok[3]] + p[0, tok[1]] * p[1, tok[4]] + p[0, tok[2]] * p[2, tok[5]]
            + p[0, tok[1]] * p[1, tok[4]] * p[4, tok[6]])
    got = expected_accepted(tree, scores)
    assert got.shape == (1,) and float(got[0]) == pytest.approx(float(want), rel=1e-5)
    draws = 4000
    counts = torch.tensor([float(verify_sampling(tree, scores, gen).accepted_tokens) for _ in range(draws)])
    se = float(counts.std()) / draws**0.5
    assert abs(float(counts.mean()) - float(got[0])) < 4 * se
    # batched: two rows, one of them a tree whose draft tokens the target never takes
    never = scores.clone()
    never[0, :, tok.unique()] = float("-inf")
    never[0, :, 7] = 0.0
    both = DraftTree.from_parents(tree.tokens.repeat(2, 1), tree.parents.repeat(2, 1))
    batched = expected_accepted(both, torch.cat([scores, never]))
    assert float(batched[0]) == pytest.approx(float(got[0]), rel=1e-6) and float(batched[1]) == 0.0
