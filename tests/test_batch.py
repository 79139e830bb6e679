"""strategy="fspad" with B > 1 left-padded prompts: each row's output is exactly what stock generate gives that
row alone (float32 greedy), finished rows are padded as stock pads them, and sampling keeps every row's
distribution exactly the target's."""

import pytest
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

import hf_specdec.strategies.fspad as fspad_module
from hf_specdec import FSPADDraftModel
from hf_specdec.tree.ragged import Slots, chain_ancestors, gather_paths, pad_paths, ragged_tree_mask, stack_trees
from hf_specdec.tree import DraftTree

from conftest import (
    CHEAP_CURVE,
    chi_square_pvalue,
    exact_sequence_probs,
    greedy_leaning_verifier,
    oracle_head,
    tiny_target,
)

FIXED = dict(tree_top_k=3, tree_depth=4, tree_total_tokens=12)


def left_pad(rows, pad=0):
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    return ids, mask


def random_rows(lengths, vocab=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=gen) for n in lengths]


def alone(target, row, **kwargs):
    return target.generate(row[None], do_sample=False, **kwargs)[0]


def assert_rows_equal_alone(out, rows, refs, pad):
    """Row b of the batch's output is refs[b] (that prompt generated alone) after its left padding, then pad
    tokens up to the longest row."""
    L = max(len(r) for r in rows)
    assert out.shape[1] == L + max(len(ref) - len(row) for row, ref in zip(rows, refs))
    for b, (row, ref) in enumerate(zip(rows, refs)):
        got = out[b, L - len(row):]
        assert torch.equal(got[: len(ref)], ref), f"row {b}"
        assert bool((got[len(ref):] == pad).all()), f"row {b} is not padded after its end"


@pytest.fixture(scope="module")
def plain():
    """A tiny Llama target and an untrained head."""
    target = tiny_target(seed=3)
    torch.manual_seed(0)
    return target, FSPADDraftModel.from_target(target)


def assert_batch_equals_stock(target, head, ids, mask, **options):
    out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", **options, **FIXED)
    stock = target.generate(ids, attention_mask=mask, do_sample=False, **options)
    assert torch.equal(out, stock), options
    return out


# ---- the pieces ------------------------------------------------------------------------------------------------

def test_ragged_mask_sees_valid_prefix_and_ancestors_and_never_an_empty_row():
    valid = torch.tensor([[False, True, True], [True, True, True]])
    ancestors = torch.tensor([[[True, False], [True, True]], [[True, False], [False, True]]])
    mask = ragged_tree_mask(valid, ancestors, torch.float32)
    visible = mask[:, 0] == 0
    assert visible.tolist() == [
        [[False, True, True, True, False], [False, True, True, True, True]],
        [[True, True, True, True, False], [True, True, True, False, True]],
    ]
    holes = chain_ancestors(torch.tensor([[False, False, True]]))
    assert holes[0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_slots_positions_count_a_rows_own_tokens():
    slots = Slots(torch.tensor([[False, True, True, False, True], [True] * 5]))
    assert slots.lengths.tolist() == [3, 5]
    assert slots.positions(torch.tensor([0, 1, 1])).tolist() == [[3, 4, 4], [5, 6, 6]]
    real = torch.tensor([[True, True, False], [True, True, True]])
    assert slots.positions_of(real)[:, :2].tolist() == [[3, 4], [5, 6]]
    grown = slots.append(torch.tensor([1, 3]), 3)
    assert grown.valid[:, 5:].tolist() == [[True, False, False], [True, True, True]]


def test_gather_paths_moves_each_rows_path_next_to_the_prefix():
    from transformers import DynamicCache

    cache = DynamicCache()
    keys = torch.arange(2 * 1 * 6, dtype=torch.float32).reshape(2, 1, 6, 1)
    cache.update(keys.clone(), keys.clone() + 100, 0)
    padded, lengths = pad_paths([torch.tensor([0, 2, 3]), torch.tensor([0])])
    assert padded.tolist() == [[0, 2, 3], [0, 0, 0]] and lengths.tolist() == [3, 1]
    gather_paths(cache, 2, padded)
    assert cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 1, 2, 4, 5]
    assert cache.layers[0].keys[1, 0, :3, 0].tolist() == [6, 7, 8]  # row 1: prefix, its root, then holes
    assert cache.layers[0].values[0, 0, :, 0].tolist() == [100, 101, 102, 104, 105]


def test_stack_trees_pads_smaller_trees_with_isolated_nodes():
    small = DraftTree.from_parents(torch.tensor([[5, 6]]), torch.tensor([[-1, 0]]))
    big = DraftTree.from_parents(torch.tensor([[7, 8, 9]]), torch.tensor([[-1, 0, 1]]))
    tokens, depths, ancestors = stack_trees([small, big])
    assert tokens.tolist() == [[5, 6, 0], [7, 8, 9]]
    assert depths.tolist() == [[0, 1, 0], [0, 1, 2]]
    assert ancestors[0, 2].tolist() == [False, False, True]


# ---- greedy: rows equal stock alone ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("tree", ["fixed", "sized", "no-lookup"])
def test_batch_rows_equal_stock_alone_untrained_head(family, tree):
    target = tiny_target(family, seed=3)
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(target)
    rows = random_rows([3, 9, 6, 1], seed=1)
    ids, mask = left_pad(rows)
    options = {"fixed": FIXED, "sized": {"cost_curve": CHEAP_CURVE}, "no-lookup": {**FIXED, "lookup_tokens": 0}}[tree]
    out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=20,
                          **options)
    refs = [alone(target, r, max_new_tokens=20) for r in rows]
    assert_rows_equal_alone(out, rows, refs, pad=0)
    assert torch.equal(out, target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("accuracy", [1.0, 0.6])
def test_batch_with_long_accepted_paths(family, accuracy):
    target = tiny_target(family, seed=5)
    rows = random_rows([4, 11, 2, 7, 5], seed=2)
    ids, mask = left_pad(rows)
    refs = [alone(target, r, max_new_tokens=33) for r in rows]
    head = oracle_head(target, refs, accuracy, seed=3)
    out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=33,
                          return_dict_in_generate=True, tree_top_k=2, tree_depth=5, tree_total_tokens=12)
    assert_rows_equal_alone(out.sequences, rows, refs, pad=0)
    stats = out.spec_stats
    assert len(stats.rows) == len(rows)
    for row, prompt, ref in zip(stats.rows, rows, refs):
        assert row.new_tokens == len(ref) - len(prompt) == 1 + sum(row.accepted_lengths)
        assert row.target_forwards == 1 + len(row.accepted_lengths) <= stats.target_forwards
        if accuracy == 1.0:  # full-depth paths, but where the row ends (max_new_tokens or EOS)
            assert set(row.accepted_lengths[:-1]) <= {6}
    assert stats.new_tokens == sum(len(ref) - len(prompt) for prompt, ref in zip(rows, refs))
    assert stats.target_forwards == 1 + max(len(row.accepted_lengths) for row in stats.rows)


def test_rows_that_stop_early_are_padded_and_leave_the_batch():
    target = tiny_target(seed=7)
    rows = random_rows([3, 8, 5, 6], seed=4)
    ids, mask = left_pad(rows)
    free = [alone(target, r, max_new_tokens=30) for r in rows]
    eos = int(free[1][len(rows[1]) + 9])  # row 1 stops inside a long accepted path; others may stop too
    refs = [alone(target, r, max_new_tokens=30, eos_token_id=eos) for r in rows]
    assert len({len(r) - len(p) for r, p in zip(refs, rows)}) > 1, "the rows should end at different lengths"
    head = oracle_head(target, free, 1.0)
    out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=30,
                          eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, tree_top_k=2,
                          tree_depth=6, tree_total_tokens=14)
    assert_rows_equal_alone(out.sequences, rows, refs, pad=0)
    stock = target.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=0,
                            do_sample=False)
    assert torch.equal(out.sequences, stock)
    finished_early = [b for b, r in enumerate(refs) if r[-1] == eos]
    for b in finished_early:  # a finished row took part in fewer forwards than the batch
        assert out.spec_stats.rows[b].target_forwards < out.spec_stats.target_forwards


def test_batch_max_length_counts_the_padding_as_stock_does(plain):
    ids, mask = left_pad(random_rows([2, 7, 4], seed=5))
    assert assert_batch_equals_stock(*plain, ids, mask, max_length=19).shape[1] == 19


def test_batch_processors_see_each_rows_own_state(plain):
    """A repetition penalty skips each row's own padding; prefix_allowed_tokens_fn gets the row's batch id;
    min_new_tokens holds back EOS in every row; the encoder repetition penalty and n-gram ban read each row's
    own prompt."""
    ids, mask = left_pad(random_rows([2, 7, 4], seed=6))

    def allowed(batch_id, sent):
        return list(range(batch_id * 30, batch_id * 30 + 60))

    for options in [
        dict(max_new_tokens=16, repetition_penalty=1.7, prefix_allowed_tokens_fn=allowed, min_new_tokens=5,
             eos_token_id=[40, 70]),
        dict(max_new_tokens=16, encoder_repetition_penalty=0.5, encoder_no_repeat_ngram_size=1),  # read each prompt
    ]:
        assert_batch_equals_stock(*plain, ids, mask, **options)


def test_a_row_can_finish_with_its_first_token(plain):
    target, head = plain
    rows = random_rows([5, 3, 6], seed=8)
    ids, mask = left_pad(rows)
    first = int(alone(target, rows[1], max_new_tokens=1)[-1])
    assert_batch_equals_stock(target, head, ids, mask, max_new_tokens=12, eos_token_id=first, pad_token_id=0)
    assert_batch_equals_stock(target, head, ids, mask, max_new_tokens=1)


def test_batch_stopping_criterion_per_row():
    """A criterion that fires for one row stops that row alone (stock pads it only with an EOS criterion, so
    the reference is each row alone)."""

    class StopAfter(StoppingCriteria):
        def __init__(self, token):
            self.token = token

        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == self.token

    target = tiny_target(seed=7)
    target.generation_config.eos_token_id = None  # the criterion alone ends a row
    rows = random_rows([3, 8, 5], seed=4)
    ids, mask = left_pad(rows)
    free = [alone(target, r, max_new_tokens=24) for r in rows]
    stop = StoppingCriteriaList([StopAfter(int(free[2][len(rows[2]) + 6]))])
    refs = [alone(target, r, max_new_tokens=24, stopping_criteria=stop) for r in rows]
    head = oracle_head(target, free, 1.0)
    out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=24,
                          stopping_criteria=stop, pad_token_id=0, tree_top_k=2, tree_depth=5, tree_total_tokens=12)
    assert_rows_equal_alone(out, rows, refs, pad=0)


# ---- sampling: each row's distribution is the target's ---------------------------------------------------------

VOCAB, NEW = 6, 3


@pytest.fixture(scope="module")
def tiny_sampler():
    target = tiny_target(vocab_size=VOCAB, seed=21, initializer_range=0.5)
    target.generation_config.eos_token_id = None
    rows = [torch.tensor([1, 2, 3]), torch.tensor([4, 1])]
    return target, rows


def batch_histograms(target, head, rows, draws, gen_kwargs, seed=0):
    ids, mask = left_pad(rows)
    torch.manual_seed(seed)
    counts = [{} for _ in rows]
    for _ in range(draws):
        out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", do_sample=True,
                              max_new_tokens=NEW, tree_top_k=3, tree_depth=2, tree_total_tokens=6, **gen_kwargs)
        for b in range(len(rows)):
            key = tuple(out[b, ids.shape[1]:].tolist())
            counts[b][key] = counts[b].get(key, 0) + 1
    return counts


@pytest.mark.parametrize("gen_kwargs", [{"temperature": 1.0}, {"temperature": 0.7, "top_k": 4}])
def test_batch_sampling_distribution_of_every_row(tiny_sampler, gen_kwargs):
    target, rows = tiny_sampler
    head = oracle_head(target, [alone(target, r, max_new_tokens=10) for r in rows])
    draws = 1200
    counts = batch_histograms(target, head, rows, draws, gen_kwargs)
    for b, row in enumerate(rows):
        probs = exact_sequence_probs(target, row[None], gen_kwargs, VOCAB, NEW)
        assert chi_square_pvalue(counts[b], probs, draws) > 1e-3, f"row {b}"


def test_batch_chi_square_detects_a_lossy_verifier(tiny_sampler, monkeypatch):
    target, rows = tiny_sampler

    monkeypatch.setattr(fspad_module, "verify_sampling", greedy_leaning_verifier)
    head = oracle_head(target, [alone(target, r, max_new_tokens=10) for r in rows])
    draws = 1200
    counts = batch_histograms(target, head, rows, draws, {"temperature": 1.0})
    for b, row in enumerate(rows):
        probs = exact_sequence_probs(target, row[None], {"temperature": 1.0}, VOCAB, NEW)
        assert chi_square_pvalue(counts[b], probs, draws) < 1e-6, f"row {b}"


# ---- spechub: sampled trees grown for all rows in lock step --------------------------------------------------

@torch.no_grad()
def test_sampled_trees_of_a_batch_are_each_rows_own():
    """With a deterministic draw, the lock-step growth over a ragged batch gives every row the tree (tokens,
    parents, draft distributions at every node) that the row grows alone."""
    from hf_specdec.strategies.common import SpecDecodeStats
    from hf_specdec.strategies.drafters import HeadDrafter
    from hf_specdec.tree import grow_sampled_tree, grow_sampled_trees

    target = tiny_target(seed=3)
    torch.manual_seed(2)
    head = FSPADDraftModel.from_target(target)
    head.attach_target(target)
    rows = random_rows([5, 2, 8], seed=11)
    ids, mask = left_pad(rows)
    first = torch.tensor([7, 9, 11])

    def features_of(ids, mask):
        return target(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]

    def top_m(q, m):  # deterministic: the m likeliest tokens
        return q.topk(m, dim=-1).indices

    probs = lambda lp: lp.softmax(-1)  # noqa: E731
    drafter = HeadDrafter(head, SpecDecodeStats())
    log_probs, feature = drafter.start(ids, first, features_of(ids, mask), valid=mask.bool())
    slots = Slots(mask.bool())
    trees = grow_sampled_trees(drafter.expand(slots), probs, top_m, first, log_probs, feature, width=2, depth=3,
                               total_tokens=9, distinct=True)
    for b, row in enumerate(rows):
        alone_drafter = HeadDrafter(head, SpecDecodeStats())
        lp, f = alone_drafter.start(row[None], first[b : b + 1], features_of(row[None], None))
        tree = grow_sampled_tree(alone_drafter.expand(len(row)), probs, top_m, first[b : b + 1], lp, f, width=2,
                                 depth=3, total_tokens=9, distinct=True)
        assert torch.equal(trees[b].tokens, tree.tokens) and torch.equal(trees[b].parents, tree.parents), b
        torch.testing.assert_close(trees[b].draft_probs, tree.draft_probs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("verifier,width", [("spechub", 2), ("rrsw", 3)])
def test_batch_spechub_distribution_of_every_row(tiny_sampler, verifier, width):
    target, rows = tiny_sampler
    torch.manual_seed(4)
    head = FSPADDraftModel.from_target(target)
    ids, mask = left_pad(rows)
    draws = 1200
    torch.manual_seed(5)
    counts = [{} for _ in rows]
    for _ in range(draws):
        out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="spechub", do_sample=True,
                              max_new_tokens=NEW, verifier=verifier, drafts_per_node=width, tree_depth=2)
        for b in range(len(rows)):
            key = tuple(out[b, ids.shape[1]:].tolist())
            counts[b][key] = counts[b].get(key, 0) + 1
    for b, row in enumerate(rows):
        probs = exact_sequence_probs(target, row[None], {}, VOCAB, NEW)
        assert chi_square_pvalue(counts[b], probs, draws) > 1e-3, f"row {b}"


# ---- errors ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_setup(plain):
    return (*plain, *left_pad(random_rows([3, 5], seed=9)))


def test_batch_refuses_a_streamer(batch_setup):
    from transformers.generation.streamers import BaseStreamer

    target, head, ids, mask = batch_setup
    with pytest.raises(ValueError, match="streamer"):
        target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=4,
                        streamer=BaseStreamer())


def test_batch_refuses_output_scores(batch_setup):
    target, head, ids, mask = batch_setup
    with pytest.raises(NotImplementedError, match="output_scores"):
        target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=4,
                        return_dict_in_generate=True, output_scores=True)


def test_batch_names_the_row_with_a_hole_or_no_tokens(batch_setup):
    target, head, ids, mask = batch_setup
    holed = mask.clone()
    holed[1, 3] = 0
    with pytest.raises(ValueError, match="Row 1 .*position"):
        target.generate(ids, attention_mask=holed, assistant_model=head, strategy="fspad", max_new_tokens=4)
    empty = mask.clone()
    empty[0] = 0
    with pytest.raises(ValueError, match="Row 0 .*padding"):
        target.generate(ids, attention_mask=empty, assistant_model=head, strategy="fspad", max_new_tokens=4)


def test_what_takes_one_row_says_so(batch_setup):
    target, head, ids, mask = batch_setup
    with pytest.raises(NotImplementedError, match="draft LM .*batch size 1"):
        target.generate(ids, attention_mask=mask, assistant_model=tiny_target(seed=9, num_hidden_layers=1),
                        strategy="spechub", do_sample=True, max_new_tokens=4)
    with pytest.raises(NotImplementedError, match="one prompt at a time"):
        target.generate(ids, attention_mask=mask, strategy="superposed", max_new_tokens=4)
    with pytest.raises(NotImplementedError, match="lookup_mode"):
        target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", max_new_tokens=4,
                        lookup_mode="choose")


def test_generation_config_object_batch(batch_setup):
    target, head, ids, mask = batch_setup
    config = GenerationConfig(max_new_tokens=9, do_sample=False, pad_token_id=0)
    out = target.generate(ids, generation_config=config, attention_mask=mask, assistant_model=head,
                          strategy="fspad", **FIXED)
    assert torch.equal(out, target.generate(ids, generation_config=config, attention_mask=mask))
