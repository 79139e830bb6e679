"""The tree pieces on their own: growth, structure, masks, cache compaction."""

import pytest
import torch
from transformers import DynamicCache

from hf_specdec.tree import (
    DraftTree,
    GrowingCache,
    check_compactable,
    compact_cache,
    crop_cache,
    grow_tree,
    tree_attention_mask,
    tree_position_ids,
)


def random_expand(vocab, hidden, seed=0):
    """A fake draft: random log-probs; records what it was fed."""
    gen = torch.Generator().manual_seed(seed)
    calls = []

    def expand(tokens, features, slot_ancestors, depth):
        calls.append((tokens.clone(), slot_ancestors.clone(), depth))
        B, k = tokens.shape
        return torch.randn(B, k, vocab, generator=gen).log_softmax(-1), torch.randn(B, k, hidden, generator=gen)

    return expand, calls


@pytest.mark.parametrize("top_k,depth,total", [(1, 1, 2), (2, 3, 6), (3, 4, 12), (4, 4, 16), (5, 6, 60), (4, 3, 200)])
def test_grown_tree_is_a_valid_best_first_tree(top_k, depth, total):
    vocab = 50
    gen = torch.Generator().manual_seed(top_k * 100 + depth)
    root_lp = torch.randn(1, vocab, generator=gen).log_softmax(-1)
    expand, calls = random_expand(vocab, 8, seed=depth)
    tree = grow_tree(expand, torch.tensor([7]), root_lp, torch.zeros(1, 8), top_k, depth, total)
    n_cand = top_k + (depth - 1) * top_k * top_k
    assert tree.num_nodes == min(total - 1, n_cand) + 1
    assert len(calls) == depth - 1
    parents, depths = tree.parents[0], tree.depths[0]
    assert parents[0] == -1 and tree.tokens[0, 0] == 7
    assert (parents[1:] < torch.arange(1, tree.num_nodes)).all() and (parents[1:] >= 0).all()
    assert torch.equal(depths[1:], depths[parents[1:]] + 1)
    assert depths.max() <= depth
    for i in range(1, tree.num_nodes):  # siblings are distinct tokens (deterministic top-k drafts)
        sib = tree.tokens[0, parents == parents[i]]
        assert len(set(sib.tolist())) == len(sib)


def test_growth_keeps_the_highest_scoring_paths():
    # Depth-2 tree where the root's second child has a far better child than anything else.
    vocab = 6
    root_lp = torch.tensor([[0.6, 0.4, 0, 0, 0, 0]]).clamp(min=1e-9).log()

    def expand(tokens, features, slot_ancestors, depth):
        lp = torch.full((1, 2, vocab), 1e-9)
        lp[0, 0, 2], lp[0, 0, 3] = 0.5, 0.5  # children of token 0: 0.6*0.5 = 0.3 each
        lp[0, 1, 4], lp[0, 1, 5] = 0.99, 0.01  # children of token 1: 0.396, 0.004
        return lp.log(), torch.zeros(1, 2, 4)

    tree = grow_tree(expand, torch.tensor([9]), root_lp, torch.zeros(1, 4), top_k=2, depth=2, total_tokens=5)
    kept = {(int(tree.tokens[0, tree.parents[0, i]]), int(tree.tokens[0, i])) for i in range(1, 5)}
    assert kept == {(9, 0), (9, 1), (1, 4), (0, 2)} or kept == {(9, 0), (9, 1), (1, 4), (0, 3)}


def test_expand_sees_each_frontier_nodes_ancestors():
    vocab, k = 30, 3
    expand, calls = random_expand(vocab, 4, seed=3)
    grow_tree(expand, torch.tensor([1]), torch.randn(1, vocab).log_softmax(-1), torch.zeros(1, 4), k, 4, 40)
    for level, (tokens, anc, depth) in enumerate(calls, start=1):
        assert depth == level
        assert anc.shape == (1, k, level * k)
        assert (anc.sum(-1) == level).all()  # self plus one ancestor per earlier level
        assert anc[0, :, -k:].equal(torch.eye(k, dtype=torch.bool))


def test_from_parents_and_path_tokens():
    #        0(r)
    #       /    \
    #      1      2
    #     / \      \
    #    3   4      5
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15]])
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2]])
    tree = DraftTree.from_parents(tokens, parents)
    assert tree.depths.tolist() == [[0, 1, 1, 2, 2, 2]]
    assert tree.ancestors[0, 4].nonzero().flatten().tolist() == [0, 1, 4]
    assert tree.ancestors[0, 5].nonzero().flatten().tolist() == [0, 2, 5]
    assert tree.path_tokens()[0].tolist() == [[0, 0], [11, 0], [12, 0], [11, 13], [11, 14], [12, 15]]


@pytest.mark.parametrize("shape", ["chain", "random"])
def test_from_parents_closes_every_tree(shape):
    """Against a walk up the parents, for every size up to 70 (the pointer jumping's round count is exact at the
    powers of two)."""
    g = torch.Generator().manual_seed(1)
    for N in range(1, 71):
        parents = [-1] + [i - 1 if shape == "chain" else int(torch.randint(0, i, (1,), generator=g)) for i in range(1, N)]
        tree = DraftTree.from_parents(torch.zeros(1, N, dtype=torch.long), torch.tensor([parents]))
        bounded = DraftTree.from_parents(tree.tokens, tree.parents, max_depth=int(tree.depths.max()))
        assert torch.equal(bounded.ancestors, tree.ancestors)  # the depth bound the growth passes is enough
        for i in range(N):
            chain, a = set(), i
            while a >= 0:
                chain, a = chain | {a}, parents[a]
            assert set(tree.ancestors[0, i].nonzero().flatten().tolist()) == chain, (N, i)
            assert int(tree.depths[0, i]) == len(chain) - 1


def test_select_is_the_rebuilt_subtree():
    tree = DraftTree.from_parents(torch.tensor([[10, 11, 12, 13, 14, 15]]), torch.tensor([[-1, 0, 0, 1, 1, 2]]),
                                  torch.tensor([[1.0, 0.9, 0.8, 0.5, 0.4, 0.3]]))
    part = tree.select([0, 1, 2, 4])
    rebuilt = DraftTree.from_parents(torch.tensor([[10, 11, 12, 14]]), torch.tensor([[-1, 0, 0, 1]]))
    for name in ("tokens", "parents", "depths", "ancestors"):
        assert torch.equal(getattr(part, name), getattr(rebuilt, name)), name
    assert part.estimates[0].tolist() == pytest.approx([1.0, 0.9, 0.8, 0.4])


def test_tree_mask_and_positions():
    tree = DraftTree.from_parents(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[-1, 0, 0, 1]]))
    mask = tree_attention_mask(tree.ancestors, prefix_len=3, dtype=torch.float32)
    assert mask.shape == (1, 1, 4, 7)
    visible = mask[0, 0] == 0
    assert visible[:, :3].all()
    assert visible[:, 3:].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert (mask[0, 0][~visible] == torch.finfo(torch.float32).min).all()
    assert tree_position_ids(tree.depths, 3).tolist() == [[3, 4, 4, 5]]
    # the draft's case: 2 new slots over 4 slots fed so far (rectangular ancestors)
    new = torch.tensor([[[1, 0, 1, 0], [0, 1, 0, 1]]], dtype=torch.bool)
    rect = tree_attention_mask(new, prefix_len=2, dtype=torch.bfloat16)
    assert rect.shape == (1, 1, 2, 6) and rect.dtype == torch.bfloat16
    assert (rect[0, 0] == 0).tolist() == [[1, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1]]


def test_compact_and_crop_cache():
    cache = DynamicCache()
    k = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 2, 10, 3).contiguous()
    for layer in range(3):
        cache.update(k + layer, k - layer, layer)
    compact_cache(cache, 2, torch.tensor([0, 3, 6]))  # keep positions 0, 1 and the tree entries 2, 5, 8
    assert cache.get_seq_length() == 5
    for layer in range(3):
        assert cache.layers[layer].keys[0, 1, :, 0].tolist() == [v + layer for v in (0, 1, 2, 5, 8)]
        assert cache.layers[layer].values[0, 0, :, 2].tolist() == [v - layer for v in (0, 1, 2, 5, 8)]
    crop_cache(cache, 3)
    assert cache.get_seq_length() == 3
    crop_cache(cache, 7)  # longer than the cache: nothing to do
    assert cache.get_seq_length() == 3
    for layer in range(3):  # a cycle that accepted nothing keeps the root's entry after the prefix
        cache.update(k[:, :, :4] + layer, k[:, :, :4] - layer, layer)
    compact_cache(cache, 3, torch.tensor([0]))
    assert cache.get_seq_length() == 4
    assert cache.layers[2].keys[0, 0, :, 0].tolist() == [v + 2 for v in (0, 1, 2, 0)]


def test_growing_cache_returns_what_a_dynamic_cache_does():
    """A head's cache written in place (GrowingCache) holds and returns, after any sequence of updates and crops
    across its growth (256, then doubling), exactly what transformers' DynamicCache does, per layer; it keeps
    batch rows like a DynamicCache indexed by rows, and refuses entries of another batch or head count."""
    gen = torch.Generator().manual_seed(0)
    ours, ref = GrowingCache(), DynamicCache()
    for step in range(60):
        q = int(torch.randint(1, 40, (), generator=gen))
        for layer in range(2):
            k, v = torch.randn(2, 3, q, 4, generator=gen), torch.randn(2, 3, q, 4, generator=gen)
            got, want = ours.update(k, v, layer), ref.update(k, v, layer)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert ours.get_seq_length() == ref.get_seq_length() == ours.get_seq_length(1)
        if step % 3 == 2:
            n = ref.get_seq_length()
            keep = int(torch.randint(0 if step == 2 else max(0, n - 30), n + 1, (), generator=gen))
            crop_cache(ours, keep)
            crop_cache(ref, keep)
            assert ours.get_seq_length() == ref.get_seq_length() == keep
    assert ours.keys[0].shape[2] >= 512  # it grew past its first 256 positions
    crop_cache(ours, 5)
    ours.crop(-2)  # DynamicCache's meaning: drop two from the end
    assert ours.get_seq_length() == 3 and ours.get_seq_length(7) == 0
    ours.keep_rows(torch.tensor([1]))
    k = torch.randn(1, 3, 2, 4, generator=gen)
    keys, values = ours.update(k, -k, 0)
    assert keys.shape == (1, 3, 5, 4) and torch.equal(keys[:, :, :3], ref.layers[0].keys[1:2, :, :3])
    assert torch.equal(values[:, :, 3:], -k)
    with pytest.raises(ValueError, match="batch or heads changed"):
        ours.update(torch.randn(1, 2, 300, 4), torch.randn(1, 2, 300, 4), 0)


def test_non_dynamic_caches_are_refused():
    from transformers import LlamaConfig, StaticCache

    config = LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1)
    with pytest.raises(ValueError, match="DynamicCache of full-attention layers"):
        check_compactable(StaticCache(config=config, max_cache_len=16))
    sliding = DynamicCache(config=LlamaConfig(**{**config.to_dict(), "sliding_window": 4, "layer_types": ["sliding_attention"]}))
    with pytest.raises(ValueError, match="DynamicSlidingWindowLayer"):
        check_compactable(sliding)
    check_compactable(DynamicCache())


# ------------------------------------------------------------------------------- grouped sdpa on the CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_sdpa_is_transformers_sdpa_bit_for_bit(dtype):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from hf_specdec.tree.attention import grouped_sdpa_attention_forward

    class Module:  # what the attention functions read of a layer
        num_key_value_groups, is_causal, training = 3, True, False

    g = torch.Generator().manual_seed(0)
    for q_len, kv_len in ((4, 37), (16, 300), (1, 20)):
        q = torch.randn(2, 6, q_len, 16, generator=g).to(dtype)
        k, v = (torch.randn(2, 2, kv_len, 16, generator=g).to(dtype) for _ in range(2))
        ancestors = torch.rand(2, q_len, q_len, generator=g) < 0.5
        mask = tree_attention_mask(ancestors | torch.eye(q_len, dtype=torch.bool), kv_len - q_len, dtype)
        for m in (mask, None):
            ours, _ = grouped_sdpa_attention_forward(Module(), q, k, v, m, scaling=0.25)
            theirs, _ = sdpa_attention_forward(Module(), q, k, v, m, scaling=0.25)
            assert torch.equal(ours, theirs), (q_len, kv_len, m is None)


def test_tree_decoding_on_the_cpu_switches_to_grouped_sdpa_and_back():
    from conftest import tiny_target
    from transformers import LogitsProcessor

    from hf_specdec import FSPADDraftModel
    from hf_specdec.tree.attention import GROUPED_SDPA

    target = tiny_target("llama")  # 4 query heads on 2 key / value heads
    head = FSPADDraftModel.from_target(target)
    seen = []

    class Spy(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append((target.config._attn_implementation, head.config._attn_implementation))
            return scores

    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    for batch in (ids, ids.repeat(2, 1)):
        seen.clear()
        target.generate(batch, assistant_model=head, strategy="fspad", max_new_tokens=6, logits_processor=[Spy()],
                        tree_top_k=2, tree_depth=2, tree_total_tokens=4)
        assert seen and set(seen) == {(GROUPED_SDPA, GROUPED_SDPA)}
        assert target.config._attn_implementation == head.config._attn_implementation == "sdpa"
