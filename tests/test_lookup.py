"""Lookup drafts: the suffix index and trie by hand, grafting onto the head's tree, and strategy="fspad" with
lookup nodes in its trees: token-identical to stock greedy (float32) and exactly the target's distribution
when sampling."""

import pytest
import torch
from transformers import GenerationConfig

from hf_specdec import FSPADDraftModel
from hf_specdec.lookup import LookupTrie, SuffixIndex, lookup_trie
from hf_specdec.tree import CostCurve, DraftTree, graft

from conftest import chi_square_pvalue, exact_sequence_probs, oracle_head, tiny_target

ONES = {n: (1.0, 1.0) for n in (1, 2, 3, 4)}


def test_longest_match_finds_every_earlier_occurrence():
    index = SuffixIndex(max_n=3)
    index.extend([1, 2, 3, 4, 2, 3, 5, 2, 3])
    assert index.longest_match() == (2, [5, 2])  # "2 3" ended at 5 and 2 before; most recent first
    index.extend([5])
    assert index.longest_match() == (3, [6])  # "2 3 5"
    index.extend([9])
    assert index.longest_match() == (0, [])
    incremental = SuffixIndex(max_n=3)
    for token in [1, 2, 3, 4, 2, 3, 5, 2, 3, 5, 9]:
        incremental.extend([token])
    assert incremental.ends == index.ends


def test_a_full_length_match_is_measured_backwards_and_keeps_the_long_occurrences():
    # "1 2 3 4" occurs twice before the end: once after 9 8 (a 6-token match: 9 8 1 2 3 4), once after 5 6.
    index = SuffixIndex(max_n=4)
    index.extend([9, 8, 1, 2, 3, 4, 7, 5, 6, 1, 2, 3, 4, 0, 9, 8, 1, 2, 3, 4])
    assert index.longest_match(floors=(1, 2, 3, 4)) == (6, [12, 5])  # no floor above 4: every occurrence
    assert index.longest_match(floors=(1, 2, 3, 4, 6)) == (6, [5])  # the bucket from 6: the long one alone
    assert index.longest_match(floors=(1, 2, 3, 4, 8)) == (6, [12, 5])  # 6 < 8: the 4-7 bucket keeps both
    assert index.longest_match(extend_to=4, floors=(1, 2, 3, 4, 6)) == (4, [12, 5])  # not extended
    assert index.match_extent(5, cap=3) == 3 and index.match_extent(12, cap=32) == 4
    # the extent stops at the sequence's start: "9 8 1 2 3 4" at the start has nothing before it
    assert index.match_extent(5, cap=32) == 6


def test_long_matches_get_their_buckets_rates():
    index = SuffixIndex(max_n=2)
    index.extend([5, 6, 7, 1, 2, 8, 9, 5, 6, 7, 1, 2])  # "5 6 7 1 2" again: a 5-token match from a 2-gram index
    rates = {1: (0.5, 0.5), 2: (0.6, 0.6), 4: (0.9, 0.95)}
    trie = lookup_trie(index, depth=2, calibration=rates)
    assert trie.match_length == 5 and trie.tokens == [8, 9]
    assert trie.estimates == pytest.approx([0.9, 0.9 * 0.95])  # the 4-and-longer bucket's a and g


def test_trie_counts_and_estimates_by_hand():
    index = SuffixIndex(max_n=2)
    index.extend([7, 1, 4, 5, 7, 1, 4, 6, 7, 1, 8, 7, 1])
    trie = lookup_trie(index, depth=2, calibration={1: (0.5, 0.8), 2: (0.6, 0.9)})
    assert trie.match_length == 2  # "7 1", three times before
    # continuations (most recent first): [8, 7], [4, 6], [4, 5]
    assert trie.tokens == [8, 7, 4, 6, 5] and trie.parents == [-1, 0, -1, 2, 2]
    assert trie.estimates == pytest.approx([0.6 / 3, 0.6 / 3 * 0.9, 0.6 * 2 / 3, 0.6 * 2 / 3 * 0.9 / 2,
                                            0.6 * 2 / 3 * 0.9 / 2])
    # deeper estimates never exceed their parent's
    assert all(trie.estimates[i] <= trie.estimates[p] for i, p in enumerate(trie.parents) if p >= 0)


def test_trie_path_length():
    trie = LookupTrie(tokens=[8, 7, 4, 6, 5], parents=[-1, 0, -1, 2, 2], estimates=[0.5] * 5)
    assert trie.path_length([4, 5, 9]) == 2 and trie.path_length([8, 7, 1]) == 2 and trie.path_length([8, 6]) == 1
    assert trie.path_length([7]) == 0 and trie.path_length([]) == 0 and LookupTrie().path_length([1]) == 0


def test_graft_shares_paths_and_adds_the_best_new_nodes():
    # head tree: root 3 -> 9 -> 7, root -> 4
    tree = DraftTree.from_parents(torch.tensor([[3, 9, 4, 7]]), torch.tensor([[-1, 0, 0, 1]]))
    # lookup: 9 -> 7 -> 1 (shared, shared, new), 4 -> 5 (shared, new), 6 (new)
    tokens, parents, est = [9, 7, 1, 4, 5, 6], [-1, 0, 1, -1, 3, -1], [0.9, 0.8, 0.7, 0.5, 0.2, 0.3]
    out = graft(tree, tokens, parents, est, max_new=2)
    assert out.tokens[0].tolist() == [3, 9, 4, 7, 1, 6] and out.parents[0].tolist() == [-1, 0, 0, 1, 3, 0]
    everything = graft(tree, tokens, parents, est, max_new=10)
    pairs = list(zip(everything.parents[0].tolist(), everything.tokens[0].tolist()))
    assert len(pairs) == len(set(pairs)) == 7  # no node twice
    assert graft(tree, tokens, parents, est, max_new=0) is tree
    # a chain that is new from its first node on keeps its parents before its children
    chain = graft(tree, [8, 8, 8], [-1, 0, 1], [0.5, 0.4, 0.3], max_new=3)
    assert chain.parents[0].tolist() == [-1, 0, 0, 1, 0, 4, 5] and chain.depths[0].tolist()[-3:] == [1, 2, 3]


def repetitive(vocab, seed, period=5, repeats=3):
    gen = torch.Generator().manual_seed(seed)
    unit = torch.randint(1, vocab, (period,), generator=gen)
    return unit.repeat(repeats)[None]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("lookup_tokens", [1, 4, 16])
def test_greedy_with_lookup_matches_stock(family, lookup_tokens):
    target = tiny_target(family, seed=3)
    head = FSPADDraftModel.from_target(target)
    gen = torch.Generator().manual_seed(lookup_tokens)
    prompts = [torch.randint(1, 128, (1, 9), generator=gen), repetitive(128, lookup_tokens)]
    for ids in prompts:
        ref = target.generate(ids, max_new_tokens=30, do_sample=False)
        out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=30,
                              lookup_tokens=lookup_tokens, tree_top_k=2, tree_depth=2, tree_total_tokens=4)
        assert torch.equal(out, ref)


def test_long_lookup_chains_are_accepted():
    """A target that repeats itself: an untrained head drafts nothing useful, lookup drafts whole periods.
    Without layers the next token depends on the last one only, so the greedy text ends in a cycle."""
    target = tiny_target(seed=3, num_hidden_layers=0)
    target.generation_config.eos_token_id = None
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(target)
    ids = torch.tensor([[3, 7]])
    ref = target.generate(ids, max_new_tokens=40, do_sample=False)
    assert len(set(ref[0, -24:].tolist())) <= 12  # a cycle of 11 tokens (by construction of this seed)
    kwargs = dict(assistant_model=head, strategy="fspad", max_new_tokens=40, return_dict_in_generate=True,
                  tree_top_k=2, tree_depth=2, tree_total_tokens=4)
    on = target.generate(ids, lookup_tokens=8, **kwargs)
    off = target.generate(ids, lookup_tokens=0, **kwargs)
    assert torch.equal(on.sequences, ref) and torch.equal(off.sequences, ref)
    assert max(on.spec_stats.accepted_lengths) > 3  # deeper than the head's depth-2 tree + bonus can reach
    assert on.spec_stats.tau > off.spec_stats.tau


def test_choose_mode_drafts_long_matches_without_the_head():
    target = tiny_target(seed=3, num_hidden_layers=0)  # its greedy text cycles (see above)
    target.generation_config.eos_token_id = None
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(target)
    ids = torch.tensor([[3, 7]])
    ref = target.generate(ids, max_new_tokens=40, do_sample=False)
    kwargs = dict(assistant_model=head, strategy="fspad", max_new_tokens=40, return_dict_in_generate=True,
                  tree_top_k=2, tree_depth=3, tree_total_tokens=6, lookup_tokens=8)
    choose = target.generate(ids, lookup_mode="choose", **kwargs)
    merge = target.generate(ids, **kwargs)
    assert torch.equal(choose.sequences, ref) and torch.equal(merge.sequences, ref)
    cycles = len(choose.spec_stats.accepted_lengths)
    # catch-ups: one per cycle and the prefill's; expansions (2 per head tree) only where the match was short
    assert choose.spec_stats.draft_forwards < 1 + cycles + 2 * cycles
    assert max(choose.spec_stats.accepted_lengths) > 4
    with pytest.raises(ValueError, match="lookup_mode must be 'merge' or 'choose'"):
        target.generate(ids, lookup_mode="both", **{**kwargs, "max_new_tokens": 2})


@pytest.mark.parametrize("max_new_tokens", [3, 7, 11])
def test_eos_and_max_new_tokens_inside_a_lookup_chain(max_new_tokens):
    target = tiny_target(seed=3)
    head = FSPADDraftModel.from_target(target)
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5]])
    free = target.generate(ids, max_new_tokens=30, do_sample=False)
    eos = int(free[0, ids.shape[1] + max_new_tokens - 1])
    for kwargs in (dict(max_new_tokens=max_new_tokens), dict(max_new_tokens=30, eos_token_id=eos)):
        ref = target.generate(ids, do_sample=False, **kwargs)
        # the oracle head and lookup propose the same tokens: shared nodes, verified once
        for draft in (head, oracle_head(target, free)):
            out = target.generate(ids, assistant_model=draft, strategy="fspad", lookup_tokens=8, **kwargs)
            assert torch.equal(out, ref)


def test_lookup_tokens_from_the_head_config_and_bad_values(llama):
    head = FSPADDraftModel.from_target(llama)
    ids = torch.tensor([[4, 5, 4, 5, 4]])
    head.generation_config = GenerationConfig(lookup_tokens=0)
    off = llama.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=8, return_dict_in_generate=True)
    head.generation_config = None
    on = llama.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=8, return_dict_in_generate=True)
    assert torch.equal(on.sequences, off.sequences)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="lookup_tokens must be a non-negative integer"):
            llama.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=3, lookup_tokens=bad)


VOCAB, NEW = 6, 3


GATE_CURVE = CostCurve((1, 8), (10.0, 10.0), head_step_ms=2.0)  # free verification; a head that fails is skipped


@pytest.mark.parametrize("sized", [False, True], ids=["fixed-tree", "cost-sized-with-head-gate"])
def test_sampling_with_lookup_nodes_is_the_targets_distribution(monkeypatch, sized):
    """Also with the head gate (its warm-up off: a draw has two cycles at most): a draw whose first cycle
    accepted nothing drafts its second from lookup alone."""
    import hf_specdec.strategies.fspad as fspad_module
    from hf_specdec.strategies import head_gate
    from hf_specdec.strategies.head_gate import HeadGate

    monkeypatch.setattr(head_gate, "WARM_UP", 1)

    target = tiny_target(vocab_size=VOCAB, seed=21, initializer_range=0.5)
    target.generation_config.eos_token_id = None
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])  # every suffix occurred before: lookup drafts each cycle
    torch.manual_seed(4)
    head = FSPADDraftModel.from_target(target)
    grafted = []
    real_graft = fspad_module.graft

    def counting_graft(tree, *args):
        out = real_graft(tree, *args)
        grafted.append(out.num_nodes - tree.num_nodes)
        return out

    monkeypatch.setattr(fspad_module, "graft", counting_graft)
    skipped = []
    real_run_head = HeadGate.run_head
    monkeypatch.setattr(HeadGate, "run_head", lambda gate, rate: real_run_head(gate, rate) or skipped.append(1))
    tree = dict(cost_curve=GATE_CURVE, head_gate=True) if sized else dict(tree_top_k=2, tree_depth=1, tree_total_tokens=3)
    gen_kwargs = {"temperature": 1.0}
    probs = exact_sequence_probs(target, ids, gen_kwargs, VOCAB, NEW)
    torch.manual_seed(0)
    counts, draws = {}, 1500
    for _ in range(draws):
        out = target.generate(ids, assistant_model=head, strategy="fspad", do_sample=True, max_new_tokens=NEW,
                              lookup_tokens=3, **tree, **gen_kwargs)
        key = tuple(out[0, ids.shape[1]:].tolist())
        counts[key] = counts.get(key, 0) + 1
    assert sum(grafted) > draws / 2  # lookup nodes were in the trees
    if sized:  # some cycles ran without the head
        assert len(skipped) > draws / 20
    assert chi_square_pvalue(counts, probs, draws) > 1e-3


def test_sampling_uses_the_sampling_calibration(monkeypatch, llama):
    """The lookup estimates come from LOOKUP_CALIBRATION when generate is greedy and from
    LOOKUP_CALIBRATION_SAMPLING when it samples."""
    import hf_specdec.strategies.fspad as fspad_module
    from hf_specdec.lookup import LOOKUP_CALIBRATION, LOOKUP_CALIBRATION_SAMPLING

    used, real = [], fspad_module.lookup_trie
    monkeypatch.setattr(fspad_module, "lookup_trie", lambda *a, calibration=None, **k: used.append(calibration) or real(*a, calibration=calibration, **k))
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(llama)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])
    for sample, table in ((False, LOOKUP_CALIBRATION), (True, LOOKUP_CALIBRATION_SAMPLING)):
        used.clear()
        llama.generate(ids, assistant_model=head, strategy="fspad", do_sample=sample, max_new_tokens=5, lookup_tokens=4,
                       tree_top_k=2, tree_depth=2, tree_total_tokens=4)
        assert used and all(c is table for c in used)
    assert LOOKUP_CALIBRATION_SAMPLING[4][0] < LOOKUP_CALIBRATION[4][0]
    # generate's lookup_calibration replaces both tables; the output is stock's whatever the rates
    rates = {1: (1.0, 1.0), 8: (0.5, 0.5)}
    ref = llama.generate(ids, max_new_tokens=5, do_sample=False)
    for sample in (False, True):
        used.clear()
        out = llama.generate(ids, assistant_model=head, strategy="fspad", do_sample=sample, max_new_tokens=5,
                             lookup_tokens=4, tree_top_k=2, tree_depth=2, tree_total_tokens=4, lookup_calibration=rates)
        assert used and all(c == rates for c in used)
        if not sample:
            assert torch.equal(out, ref)
    for bad in ({2: (0.5, 0.5)}, {1: (1.5, 0.5)}, {1: 0.5}, {0.5: (0.5, 0.5), 1: (1, 1)}, [(1, 1)]):
        with pytest.raises(ValueError, match="lookup_calibration"):
            llama.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=3, lookup_calibration=bad)


def test_lookup_calibration_fit_and_reliability():
    from hf_specdec.bench.lookup_calibration import bucket_counts, fit, node_records, reliability

    periodic = [5, 6, 7, 8] * 6  # every continuation repeats exactly: all lookup nodes are right
    records = node_records(periodic, 8, depth=3, max_matches=4)
    fitted = fit(records)
    assert fitted[4] == (1.0, 1.0)
    node_records([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3, 9], 4, 3, 4, records)  # a second text: parent indices stay its own
    assert all(up < i for i, (_, _, _, up, *_) in enumerate(records))
    assert all(records[up][1] == d - 1 for (_, d, _, up, *_) in records if up >= 0)
    table = reliability(records, fit(records))
    assert sum(r["nodes"] for r in table) == len(records)
    assert sum(r["observed"] * r["nodes"] for r in table) == sum(r[5] for r in records)
    # long matches have buckets of their own; one without nodes takes the rates of the bucket below it
    assert bucket_counts(records)[16] > 0 and fitted[16] == (1.0, 1.0)
    one_match = [(1, 1, 0.5, -1, True, True), (1, 2, 1.0, 0, False, False)]  # n=1 only: a_1 = 2, capped at 1
    assert fit(one_match) == {n: (1.0, 0.0) for n in (1, 2, 3, 4, 8, 16)}


def test_lookup_calibration_under_sampling_scores_the_draw_probability():
    """A target that draws the text's next token with probability `right` (the rest spread elsewhere): every
    lookup node of a periodic text is accepted, given its parent, with probability `right`."""
    from hf_specdec.bench.lookup_calibration import fit, node_records, reliability

    periodic = [5, 6, 7, 8] * 6
    for right in (1.0, 0.5):
        probs = torch.full((len(periodic), 10), (1 - right) / 9)
        probs[torch.arange(len(periodic) - 1), torch.tensor(periodic[1:])] = right  # probs[i]: after position i
        records = node_records(periodic, 8, depth=3, max_matches=4, probs=probs)
        assert fit(records)[4] == (right, right)
        assert all(r[5] is not None for r in records if r[3] < 0 or records[r[3]][4])
        table = reliability(records, fit(records), sampled=True)
        assert all(r["predicted"] == pytest.approx(right) and r["observed"] == pytest.approx(right) for r in table)


def test_stop_string_inside_a_lookup_chain():
    from transformers import AutoTokenizer

    from hf_specdec.default_model import default_target_path

    tok = AutoTokenizer.from_pretrained(default_target_path())
    target = tiny_target(seed=4, num_hidden_layers=0, vocab_size=len(tok))  # the next token depends on the last only
    target.generation_config.eos_token_id = None
    ids = torch.tensor([[500, 600]])
    free = target.generate(ids, max_new_tokens=80, do_sample=False)
    new = free[0, 2:].tolist()
    period = next(p for p in range(1, 40) if new[-p:] == new[-2 * p:-p])  # this seed's greedy text ends in a cycle
    ids = free[:, :-period]  # the prompt holds whole periods: lookup can copy from the first cycle on
    stop = tok.decode(new[-period // 2 - 1: -period // 2 + 1])  # two tokens from the middle of the next period
    kwargs = dict(max_new_tokens=40, stop_strings=[stop], tokenizer=tok)
    ref = target.generate(ids, do_sample=False, **kwargs)
    assert ids.shape[1] + 3 < ref.shape[1] < ids.shape[1] + period
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(target)
    out = target.generate(ids, assistant_model=head, strategy="fspad", lookup_tokens=16, return_dict_in_generate=True,
                          tree_top_k=2, tree_depth=2, tree_total_tokens=4, **kwargs)
    assert torch.equal(out.sequences, ref)
    assert max(out.spec_stats.accepted_lengths) > 3  # lookup chains were accepted on the way to the stop
