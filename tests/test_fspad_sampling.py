"""strategy="fspad" with sampling: the output distribution is exactly the target's (chi-square over many
draws against the exact sequence probabilities of the processed target distribution, with a power check)."""

import pytest
import torch

import hf_specdec.strategies.fspad as fspad_module
from hf_specdec import FSPADDraftModel

from conftest import chi_square_pvalue, exact_sequence_probs, greedy_leaning_verifier, oracle_head, tiny_target

VOCAB, NEW = 6, 3  # the prefill's token, then a depth-1 and a depth-2 decision of one cycle


def sample_histogram(target, head, ids, draws, gen_kwargs, seed=0):
    torch.manual_seed(seed)
    counts = {}
    for _ in range(draws):
        out = target.generate(ids, assistant_model=head, strategy="fspad", do_sample=True, max_new_tokens=NEW,
                              tree_top_k=3, tree_depth=2, tree_total_tokens=6, **gen_kwargs)
        key = tuple(out[0, ids.shape[1]:].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture(scope="module")
def tiny():
    target = tiny_target(vocab_size=VOCAB, seed=21, initializer_range=0.5)
    target.generation_config.eos_token_id = None  # exactly NEW tokens per draw, as the enumeration assumes
    return target, torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize(
    "gen_kwargs",
    [{"temperature": 1.0}, {"temperature": 0.7, "top_k": 4}, {"temperature": 1.3, "top_p": 0.8}],
)
@pytest.mark.parametrize("head_kind", ["untrained", "oracle"])
def test_sampling_output_distribution_is_the_targets(tiny, gen_kwargs, head_kind):
    target, ids = tiny
    if head_kind == "untrained":
        torch.manual_seed(4)
        head = FSPADDraftModel.from_target(target)
    else:  # proposes the greedy continuation: many acceptances
        head = oracle_head(target, target.generate(ids, max_new_tokens=10, do_sample=False))
    probs = exact_sequence_probs(target, ids, gen_kwargs, VOCAB, NEW)
    draws = 1500
    counts = sample_histogram(target, head, ids, draws, gen_kwargs, seed={"untrained": 0, "oracle": 1}[head_kind])
    assert chi_square_pvalue(counts, probs, draws) > 1e-3


def test_chi_square_detects_a_lossy_verifier(tiny, monkeypatch):
    """Power check: a verifier that accepts the first child whenever p(child) > 0 must be caught."""
    target, ids = tiny

    monkeypatch.setattr(fspad_module, "verify_sampling", greedy_leaning_verifier)
    head = oracle_head(target, target.generate(ids, max_new_tokens=10, do_sample=False))
    gen_kwargs = {"temperature": 1.0}
    draws = 1500
    counts = sample_histogram(target, head, ids, draws, gen_kwargs)
    assert chi_square_pvalue(counts, exact_sequence_probs(target, ids, gen_kwargs, VOCAB, NEW), draws) < 1e-6


@pytest.mark.parametrize("names", [("temperature", "top_k", "top_p"), ("repetition", "temperature", "top_p")])
def test_tree_scores_are_each_nodes_own_processed_scores(names):
    """process_tree_scores against each node run alone with its context; the first set takes the all-nodes-at-once
    path (warpers read the scores alone), the second the per-depth one (the repetition penalty reads the path)."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    from hf_specdec.strategies.common import process_tree_scores
    from hf_specdec.tree import DraftTree

    make = {"temperature": lambda: TemperatureLogitsWarper(0.7), "top_k": lambda: TopKLogitsWarper(5),
            "top_p": lambda: TopPLogitsWarper(0.8), "repetition": lambda: RepetitionPenaltyLogitsProcessor(1.5)}
    processors = LogitsProcessorList([make[n]() for n in names])
    tree = DraftTree.from_parents(torch.tensor([[4, 7, 9, 4, 3, 7]]), torch.tensor([[-1, 0, 0, 1, 1, 3]]))
    logits = torch.randn(1, 6, 12, generator=torch.Generator().manual_seed(0))
    sequence = torch.tensor([[1, 4, 2, 4]])
    got = process_tree_scores(logits, tree, sequence, processors)
    paths = tree.path_tokens()[0]
    for node in range(6):
        context = torch.cat([sequence, paths[node : node + 1, : int(tree.depths[0, node])]], 1)
        torch.testing.assert_close(got[0, node], processors(context, logits[0, node : node + 1])[0], rtol=0, atol=0)


def test_expected_tau_is_the_mean_of_the_accepted_counts(tiny):
    """track_expected_tau: each cycle's expected tokens (1 + expected_accepted) average to the same as the
    accepted counts the draws give, over many generate calls with temperature and top-p (within 4 standard
    errors of the difference); without sampling it is an error, and it leaves the output unchanged."""
    target, ids = tiny
    head = oracle_head(target, target.generate(ids, max_new_tokens=10, do_sample=False))
    kwargs = dict(assistant_model=head, strategy="fspad", do_sample=True, temperature=0.9, top_p=0.95,
                  max_new_tokens=12, tree_top_k=3, tree_depth=3, tree_total_tokens=8, return_dict_in_generate=True)
    accepted, expected = [], []
    for seed in range(60):
        torch.manual_seed(seed)
        out = target.generate(ids, track_expected_tau=True, **kwargs)
        stats = out.spec_stats
        assert len(stats.expected_lengths) == len(stats.accepted_lengths) and min(stats.expected_lengths) >= 1
        # the last cycle may be cut by max_new_tokens: compare whole cycles only
        accepted += stats.accepted_lengths[:-1]
        expected += stats.expected_lengths[:-1]
        if seed < 3:
            torch.manual_seed(seed)
            assert torch.equal(target.generate(ids, **kwargs).sequences, out.sequences)
    diff = torch.tensor(accepted, dtype=torch.float64) - torch.tensor(expected, dtype=torch.float64)
    assert len(diff) > 150 and abs(float(diff.mean())) < 4 * float(diff.std()) / len(diff) ** 0.5
    assert 1.3 < sum(expected) / len(expected) < 3.5  # the oracle's drafts are often accepted, not always
    with pytest.raises(ValueError, match="track_expected_tau=True is for sampling"):
        target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=4, track_expected_tau=True)
