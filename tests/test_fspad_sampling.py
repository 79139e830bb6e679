"""strategy="fspad" with sampling: the output distribution is exactly the target's (chi-square over many
draws against the exact sequence probabilities of the processed target distribution, with a power check)."""

import itertools

import pytest
import torch
from scipy.stats import chisquare
from transformers import GenerationConfig

import hf_specdec.strategies.fspad as fspad_module
from hf_specdec import FSPADDraftModel
from hf_specdec.verification import Verdict

from conftest import oracle_head, tiny_target

VOCAB, NEW = 6, 2


@torch.no_grad()
def exact_sequence_probs(target, ids, gen_kwargs):
    """P(y1, y2 | ids) for every pair, from the target's processed distribution (stock warpers)."""
    config = GenerationConfig(do_sample=True, **gen_kwargs)
    processors = target._get_logits_processor(generation_config=config, input_ids_seq_length=ids.shape[1],
                                              encoder_input_ids=ids, prefix_allowed_tokens_fn=None,
                                              logits_processor=None, device="cpu", model_kwargs={})

    def dist(seq):
        logits = target(seq).logits[:, -1].float()
        return processors(seq, logits).double().softmax(-1)[0]

    probs = {}
    p1 = dist(ids)
    for a in range(VOCAB):
        if p1[a] == 0:
            continue
        p2 = dist(torch.cat([ids, torch.tensor([[a]])], 1))
        for b in range(VOCAB):
            probs[(a, b)] = float(p1[a] * p2[b])
    return probs


def sample_histogram(target, head, ids, draws, gen_kwargs, seed=0):
    torch.manual_seed(seed)
    counts = {}
    for _ in range(draws):
        out = target.generate(ids, assistant_model=head, strategy="fspad", do_sample=True, max_new_tokens=NEW,
                              tree_top_k=3, tree_depth=2, tree_total_tokens=6, **gen_kwargs)
        key = tuple(out[0, ids.shape[1]:].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


def chi_square_pvalue(counts, probs, draws):
    keys = [k for k, p in probs.items() if p > 0]
    assert all(k in probs and probs[k] > 0 for k in counts), "sampled a sequence of probability 0"
    observed = [counts.get(k, 0) for k in keys]
    expected = [probs[k] * draws for k in keys]
    # pool rare cells so the chi-square approximation holds
    big = [i for i, e in enumerate(expected) if e >= 5]
    small_o = sum(o for i, o in enumerate(observed) if i not in big)
    small_e = sum(e for i, e in enumerate(expected) if i not in big)
    obs = [observed[i] for i in big] + ([small_o] if small_e > 0 else [])
    exp = [expected[i] for i in big] + ([small_e] if small_e > 0 else [])
    scale = sum(obs) / sum(exp)  # float rounding of the exact probabilities
    return chisquare(obs, [e * scale for e in exp]).pvalue


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
    probs = exact_sequence_probs(target, ids, gen_kwargs)
    draws = 1500
    counts = sample_histogram(target, head, ids, draws, gen_kwargs, seed={"untrained": 0, "oracle": 1}[head_kind])
    assert chi_square_pvalue(counts, probs, draws) > 1e-3


def test_chi_square_detects_a_lossy_verifier(tiny, monkeypatch):
    """Power check: a verifier that accepts the first child whenever p(child) > 0 must be caught."""
    target, ids = tiny

    def greedy_leaning(tree, probs, generator=None):
        path, node = [0], 0
        while True:
            children = (tree.parents[0] == node).nonzero().flatten()
            ok = [int(c) for c in children if probs[0, node, tree.tokens[0, c]] > 0]
            if not ok:
                return Verdict(torch.tensor([path]), torch.multinomial(probs[0, node], 1))
            node = ok[0]
            path.append(node)

    monkeypatch.setattr(fspad_module, "verify_sampling", greedy_leaning)
    head = oracle_head(target, target.generate(ids, max_new_tokens=10, do_sample=False))
    gen_kwargs = {"temperature": 1.0}
    draws = 1500
    counts = sample_histogram(target, head, ids, draws, gen_kwargs)
    assert chi_square_pvalue(counts, exact_sequence_probs(target, ids, gen_kwargs), draws) < 1e-6
