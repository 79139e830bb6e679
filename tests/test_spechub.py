"""strategy="spechub": sampled-children trees verified with SpecHub / RRS / RRSw. The output distribution is
exactly the target's (chi-square against enumerated sequence probabilities, with a power check), with an
FSPAD head and with an ordinary small LM as the draft; the draft's tree distributions are those of the LM
on each node's path; bad requests fail early."""

import copy
import zlib

import pytest
import torch

from hf_specdec import FSPADDraftModel
from hf_specdec.multidraft import VERIFIERS, NodePlan, Verifier, sample_hub_drafts
from hf_specdec.strategies.common import SpecDecodeStats
from hf_specdec.strategies.drafters import CausalLMDrafter
from hf_specdec.tree import grow_sampled_tree

from conftest import chi_square_pvalue, exact_sequence_probs, tiny_target

VOCAB, NEW = 6, 3  # three new tokens: the prefill's, then a depth-1 and a depth-2 decision of one cycle


@pytest.fixture(scope="module")
def tiny():
    target = tiny_target(vocab_size=VOCAB, seed=21, initializer_range=0.5)
    target.generation_config.eos_token_id = None  # exactly NEW tokens per draw, as the enumeration assumes
    return target, torch.tensor([[1, 2, 3]])


def make_draft(target, kind):
    if kind == "head":
        torch.manual_seed(4)
        return FSPADDraftModel.from_target(target)
    if kind == "copy":  # q = p at every node: long accepted paths
        return copy.deepcopy(target)
    return tiny_target(vocab_size=VOCAB, seed=5, initializer_range=0.5, num_hidden_layers=1)


def histogram(target, draft, ids, draws, seed, **kwargs):
    torch.manual_seed(seed)
    counts = {}
    for _ in range(draws):
        out = target.generate(ids, assistant_model=draft, strategy="spechub", do_sample=True, max_new_tokens=NEW,
                              **kwargs)
        key = tuple(out[0, ids.shape[1]:].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize(
    "verifier,draft_kind,width,gen_kwargs",
    [
        ("spechub", "head", 2, {"temperature": 1.0}),
        ("spechub", "copy", 2, {"temperature": 0.7, "top_k": 4}),
        ("spechub", "lm", 3, {"temperature": 1.0}),
        ("rrs", "lm", 2, {"temperature": 1.3, "top_p": 0.8}),
        ("rrsw", "head", 3, {"temperature": 1.0}),
        ("rrsw", "copy", 2, {"temperature": 1.0}),
    ],
)
def test_output_distribution_is_the_targets(tiny, verifier, draft_kind, width, gen_kwargs):
    target, ids = tiny
    draft = make_draft(target, draft_kind)
    draws = 1500
    counts = histogram(target, draft, ids, draws, seed=zlib.crc32(f"{verifier}-{draft_kind}".encode()), verifier=verifier,
                       drafts_per_node=width, tree_depth=2, **gen_kwargs)
    assert chi_square_pvalue(counts, exact_sequence_probs(target, ids, gen_kwargs, VOCAB, NEW), draws) > 1e-3


def test_chi_square_detects_a_lossy_rule(tiny, monkeypatch):
    """Power check: a rule that accepts the first drafted child whenever the target gives it any mass."""

    def first_if_possible(p, q, drafts):
        m = drafts.shape[-1]
        hit = (p.gather(-1, drafts[..., :1]) > 0).to(p.dtype)
        accept = torch.cat([hit, torch.zeros(drafts.shape[:-1] + (m - 1,), dtype=p.dtype)], -1)
        return NodePlan(torch.arange(m).expand(drafts.shape), accept, p)

    monkeypatch.setitem(VERIFIERS, "spechub", Verifier(sample_hub_drafts, first_if_possible, distinct=True))
    target, ids = tiny
    draws = 1500
    counts = histogram(target, make_draft(target, "lm"), ids, draws, seed=0, tree_depth=2)
    assert chi_square_pvalue(counts, exact_sequence_probs(target, ids, {}, VOCAB, NEW), draws) < 1e-6


@pytest.mark.parametrize("verifier", ["spechub", "rrs", "rrsw"])
def test_a_perfect_draft_is_always_accepted(llama, verifier):
    """With q = p at every node every rule accepts a child at every level: each verification forward emits
    depth + 1 tokens (the last one excepted, cut by max_new_tokens)."""
    ids = torch.tensor([[5, 9, 2, 7]])
    target = copy.deepcopy(llama)
    target.generation_config.eos_token_id = None  # 41 tokens whatever is drawn (tests share one process's RNG)
    torch.manual_seed(0)
    out = target.generate(ids, assistant_model=copy.deepcopy(llama), strategy="spechub", verifier=verifier,
                          do_sample=True, temperature=0.8, tree_depth=3, max_new_tokens=41,
                          return_dict_in_generate=True)
    stats = out.spec_stats
    assert stats.new_tokens == 41 and out.sequences.shape[1] == 4 + 41
    assert stats.accepted_lengths[:-1] == [4] * (len(stats.accepted_lengths) - 1)
    assert stats.target_forwards == 1 + len(stats.accepted_lengths) == 1 + 10


@torch.no_grad()
def test_tree_distributions_are_the_draft_lms_on_each_path(llama):
    """The small-LM drafter's tree forwards (tree mask over its cache, depth positions) give every node the
    same next-token distribution as running the LM on prompt + path; the budget and the draft law hold."""
    draft = tiny_target(seed=9, num_hidden_layers=1)
    prompt, first = torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([9])
    drafter = CausalLMDrafter(draft, SpecDecodeStats())
    log_probs, _ = drafter.start(prompt, first, None)
    L = prompt.shape[1]
    torch.manual_seed(0)
    tree = grow_sampled_tree(drafter.expand(L), lambda lp: lp.softmax(-1), VERIFIERS["spechub"].sample,
                             first, log_probs, None, width=2, depth=3, total_tokens=12, distinct=True)
    assert tree.num_nodes == 12 and int(tree.depths.max()) == 3
    paths = tree.path_tokens()[0]
    sequence = torch.cat([prompt, first[None]], 1)
    parents = tree.parents[0]
    for node in range(tree.num_nodes):
        children = (parents == node).nonzero().flatten()
        if children.numel() == 0:
            assert tree.draft_probs[0, node].sum() == 0
            continue
        d = int(tree.depths[0, node])
        context = torch.cat([sequence, paths[node, :d][None]], 1)
        expected = draft(context).logits[0, -1].softmax(-1)
        torch.testing.assert_close(tree.draft_probs[0, node], expected, atol=1e-5, rtol=1e-4)
        hub = int(expected.argmax())
        assert hub in tree.tokens[0, children].tolist()  # SpecHub: the hub is always a child


def test_budget_goes_to_the_likeliest_nodes_and_distinct_rules_respect_top_k(llama):
    """top_k=1 leaves each node one possible token: distinct-children rules then grow a chain."""
    ids = torch.tensor([[5, 9, 2, 7]])
    out = llama.generate(ids, assistant_model=tiny_target(seed=9, num_hidden_layers=1), strategy="spechub",
                         do_sample=True, top_k=1, tree_depth=3, max_new_tokens=12, return_dict_in_generate=True)
    assert out.sequences.shape[1] == 4 + 12
    greedy = llama.generate(ids, do_sample=False, max_new_tokens=12)
    assert torch.equal(out.sequences, greedy)  # top_k=1 sampling is greedy, whatever was drafted


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"do_sample": False}, "strategy='fspad'"),
        ({"verifier": "ksq"}, "Unknown verifier"),
        ({"drafts_per_node": 0}, "drafts_per_node"),
        ({"tree_depth": 2.5}, "tree_depth"),
        ({"tree_total_tokens": 1}, "at least 2"),
        ({"tree_top_k": 3}, "strategy 'fspad'"),
        ({"num_return_sequences": 2}, "several return sequences"),
    ],
)
def test_bad_requests_fail_early(llama, llama_head, kwargs, message):
    ids = torch.tensor([[5, 9, 2, 7]])
    args = {"do_sample": True, "max_new_tokens": 4, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        llama.generate(ids, assistant_model=llama_head, strategy="spechub", **args)


def test_wrong_drafts_are_named(llama):
    ids = torch.tensor([[5, 9, 2, 7]])
    with pytest.raises(ValueError, match="needs a draft"):
        llama.generate(ids, strategy="spechub", do_sample=True, max_new_tokens=4)
    with pytest.raises(ValueError, match="predicts 64 tokens but the target 128"):
        llama.generate(ids, assistant_model=tiny_target(vocab_size=64), strategy="spechub", do_sample=True,
                       max_new_tokens=4)
    with pytest.raises(TypeError, match="causal LM"):
        llama.generate(ids, assistant_model=torch.nn.Linear(2, 2), strategy="spechub", do_sample=True,
                       max_new_tokens=4)


def test_a_reduced_draft_vocabulary_head_drafts_only_its_tokens(llama):
    """A head scoring 16 of the 128 tokens: its q lives on those target ids (scatter_to_target), and decoding
    runs with them."""
    torch.manual_seed(2)
    head = FSPADDraftModel.from_target(llama, draft_vocab_size=16)
    head.draft_to_target.copy_(torch.arange(100, 116))
    head.attach_target(llama)
    q = head.scatter_to_target(torch.full((2, 16), 1 / 16))
    assert q.shape == (2, 128) and q[:, 100:116].sum() == 2 and q[:, :100].sum() == 0 and q[:, 116:].sum() == 0
    out = llama.generate(torch.tensor([[5, 9, 2, 7]]), assistant_model=head, strategy="spechub", do_sample=True,
                         max_new_tokens=12, return_dict_in_generate=True)
    assert out.sequences.shape[1] == 4 + 12 and out.spec_stats.target_forwards > 1
