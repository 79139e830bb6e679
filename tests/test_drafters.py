"""The drafters' caches: a multi-token catch-up over a filled cache computes what one full forward over the
whole sequence computes (the head attends to every cached position, not to the first ones)."""

import pytest
import torch

from hf_specdec import FSPADDraftModel
from hf_specdec.strategies.common import SpecDecodeStats
from hf_specdec.strategies.drafters import CausalLMDrafter, DeferredHeadDrafter, HeadDrafter

from conftest import tiny_target


@pytest.mark.parametrize("cached,new,extra_layers", [(1, 2, 0), (3, 4, 0), (8, 4, 0), (8, 1, 0), (5, 7, 0),
                                                    (3, 4, 2), (8, 1, 1)])
def test_head_catch_up_equals_a_full_forward(llama, cached, new, extra_layers):
    torch.manual_seed(cached * 10 + new)
    head = FSPADDraftModel.from_target(llama, num_extra_layers=extra_layers)
    n = cached + new
    tokens, features = torch.randint(1, 128, (1, n)), torch.randn(1, n, llama.config.hidden_size)
    full = head(input_ids=tokens, features=features)
    drafter = HeadDrafter(head, SpecDecodeStats())
    drafter.catch_up(tokens[:, :cached], features[:, :cached], 0)
    drafter.catch_up(tokens[:, cached:cached + 2], features[:, cached:cached + 2], cached)  # rewound below
    log_probs, feature = drafter.catch_up(tokens[:, cached:], features[:, cached:], cached)
    torch.testing.assert_close(feature, full.features[:, -1], atol=1e-5, rtol=1e-5)
    expected = head.compute_logits(full.hidden_states[:, -1]).float().log_softmax(-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)


def test_deferred_catch_ups_run_once_when_asked_with_the_pairs_of_skipped_cycles(llama):
    """DeferredHeadDrafter: cycles that never ask for the head leave their pairs pending; the next catch-up
    asked for feeds them all in one forward and gives what catching up cycle by cycle gives."""
    torch.manual_seed(3)
    head = FSPADDraftModel.from_target(llama)
    tokens, features = torch.randint(1, 128, (1, 12)), torch.randn(1, 12, llama.config.hidden_size)
    eager, stats = HeadDrafter(head, SpecDecodeStats()), SpecDecodeStats()
    deferred = DeferredHeadDrafter(head, stats)
    eager.start(tokens[:, :5], tokens[0, 5:6], features[:, :5])
    first = deferred.start(tokens[:, :5], tokens[0, 5:6], features[:, :5])
    first()  # a cycle that ran the head: its growth left entries in the cache, which the next catch-up drops
    deferred.expand(5)(tokens[:, :2], features[:, :2], torch.ones(1, 2, 2, dtype=torch.bool), 1)
    for start, end in ((6, 8), (8, 9)):  # two cycles that drafted without the head
        expected = eager.catch_up(tokens[:, start - 1:end - 1], features[:, start - 1:end - 1], start - 1)
        pending = deferred.catch_up(tokens[:, start - 1:end - 1], features[:, start - 1:end - 1], start - 1)
    assert stats.draft_forwards == 2 and pending.cached == 5 and pending.tokens.shape[1] == 3
    log_probs, feature = pending()
    assert pending() is pending.state and stats.draft_forwards == 3  # run once
    torch.testing.assert_close(log_probs, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feature, expected[1], atol=1e-5, rtol=1e-5)
    assert deferred.cache.get_seq_length() == eager.cache.get_seq_length() == 8


@pytest.mark.parametrize("cached,new", [(1, 2), (4, 4), (7, 3)])
def test_draft_lm_catch_up_equals_a_full_forward(cached, new):
    draft = tiny_target(seed=31)
    n = cached + 1 + new
    tokens = torch.randint(1, 128, (1, n))
    drafter = CausalLMDrafter(draft, SpecDecodeStats())
    drafter.start(tokens[:, :cached], tokens[:, cached], None)  # the cache holds cached + 1 tokens (root incl.)
    log_probs, _ = drafter.catch_up(tokens[:, cached + 1:], None, cached)
    expected = draft(tokens).logits[:, -1].float().log_softmax(-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)


def test_head_refuses_causal_attention_over_a_filled_cache(llama, llama_head):
    from transformers import DynamicCache

    cache = DynamicCache()
    H = llama.config.hidden_size
    llama_head(input_ids=torch.tensor([[1, 2, 3]]), features=torch.randn(1, 3, H), cache=cache)
    llama_head(input_ids=torch.tensor([[4]]), features=torch.randn(1, 1, H), cache=cache)  # one token: fine
    with pytest.raises(ValueError, match="explicit attention_mask"):
        llama_head(input_ids=torch.tensor([[5, 6]]), features=torch.randn(1, 2, H), cache=cache)
