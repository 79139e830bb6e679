"""strategy="fspad" with greedy verification: token-identical to stock greedy generate (float32)."""

import pytest
import torch
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from hf_specdec import FSPADDraftModel

from conftest import CHEAP_CURVE, oracle_head, tiny_target

SHAPES = [(1, 1, 2), (2, 2, 4), (4, 4, 16), (3, 6, 24), (8, 3, 40)]


def prompts(n, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (1, int(torch.randint(1, 12, (1,), generator=gen))), generator=gen) for _ in range(n)]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("shape", SHAPES)
def test_untrained_head_matches_stock_greedy(family, shape):
    target = tiny_target(family, seed=3)
    head = FSPADDraftModel.from_target(target)
    top_k, depth, total = shape
    for ids in prompts(4, 128, seed=sum(shape)):
        ref = target.generate(ids, max_new_tokens=24, do_sample=False)
        out = target.generate(
            ids, assistant_model=head, strategy="fspad", max_new_tokens=24,
            tree_top_k=top_k, tree_depth=depth, tree_total_tokens=total,
        )
        assert torch.equal(out, ref)


@pytest.mark.parametrize("extra_layers,shape", [(1, (4, 4, 16)), (2, (2, 3, 8))])
def test_head_with_extra_layers_matches_stock_greedy(extra_layers, shape):
    """A head with extra decoder layers (their own KV cache entries, grown and cut with the first layer's) is
    lossless as any head."""
    target = tiny_target("llama", seed=4)
    torch.manual_seed(extra_layers)
    head = FSPADDraftModel.from_target(target, num_extra_layers=extra_layers)
    top_k, depth, total = shape
    for ids in prompts(3, 128, seed=7):
        ref = target.generate(ids, max_new_tokens=24, do_sample=False)
        out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=24, tree_top_k=top_k,
                              tree_depth=depth, tree_total_tokens=total)
        assert torch.equal(out, ref)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("accuracy", [1.0, 0.8, 0.4])
@pytest.mark.parametrize("shape", [(2, 3, 8), (4, 5, 20)])
def test_oracle_head_matches_stock_greedy_with_long_paths(family, accuracy, shape):
    target = tiny_target(family, seed=5)
    top_k, depth, total = shape
    for i, ids in enumerate(prompts(3, 128, seed=11)):
        ref = target.generate(ids, max_new_tokens=37, do_sample=False)
        head = oracle_head(target, ref, accuracy, seed=i)
        out = target.generate(
            ids, assistant_model=head, strategy="fspad", max_new_tokens=37, return_dict_in_generate=True,
            tree_top_k=top_k, tree_depth=depth, tree_total_tokens=total,
        )
        assert torch.equal(out.sequences, ref)
        stats = out.spec_stats
        assert stats.new_tokens == ref.shape[1] - ids.shape[1] == 1 + sum(stats.accepted_lengths)
        assert stats.target_forwards == 1 + len(stats.accepted_lengths)
        if accuracy == 1.0:  # every full-depth path is accepted; 37 = 1 + 6 x 6 cuts the last path
            assert max(stats.accepted_lengths) == depth + 1
            assert stats.tau > depth


def test_eos_inside_an_accepted_path_stops_there():
    target = tiny_target(seed=7)
    ids = torch.tensor([[5, 17, 33]])
    free = target.generate(ids, max_new_tokens=30, do_sample=False)
    eos = int(free[0, ids.shape[1] + 9])  # a token the model emits mid-way
    ref = target.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=eos)
    assert ref.shape[1] < free.shape[1] and ref[0, -1] == eos
    head = oracle_head(target, free)
    out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=30, eos_token_id=eos,
                          return_dict_in_generate=True, tree_depth=5, tree_top_k=2, tree_total_tokens=12)
    assert torch.equal(out.sequences, ref)
    assert max(out.spec_stats.accepted_lengths) > 1  # the EOS arrived inside a multi-token step


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7, 12])
def test_max_new_tokens_and_max_length_cut_inside_a_path(max_new_tokens):
    target = tiny_target(seed=8)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    ref = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    head = oracle_head(target, target.generate(ids, max_new_tokens=40, do_sample=False))
    out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=max_new_tokens, tree_depth=5)
    assert torch.equal(out, ref)
    out = target.generate(ids, assistant_model=head, strategy="fspad", max_length=ids.shape[1] + max_new_tokens, tree_depth=5)
    assert torch.equal(out, ref)


def test_logits_processors_see_each_nodes_own_context():
    target = tiny_target(seed=9)
    ids = torch.tensor([[9, 8, 7, 6]])
    kwargs = dict(max_new_tokens=30, do_sample=False, repetition_penalty=1.8, min_new_tokens=5, no_repeat_ngram_size=2)
    ref = target.generate(ids, **kwargs)
    head = oracle_head(target, ref)
    out = target.generate(ids, assistant_model=head, strategy="fspad", return_dict_in_generate=True,
                          cost_curve=CHEAP_CURVE, **kwargs)
    assert torch.equal(out.sequences, ref)
    assert out.spec_stats.tau > 2  # the processors did not stop the head's (processed) tokens from landing
    extra = LogitsProcessorList([NoRepeatNGramLogitsProcessor(3)])
    assert torch.equal(
        target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=20, logits_processor=extra),
        target.generate(ids, max_new_tokens=20, do_sample=False, logits_processor=extra),
    )


@pytest.mark.parametrize("length", [dict(max_new_tokens=20), dict(max_new_tokens=20, min_new_tokens=12),
                                    dict(max_length=25), dict(max_new_tokens=20, repetition_penalty=1.5)])
def test_attention_mask_and_left_padding(length):
    """Stock counts the padding in max_length / min_length and shows it to the processors: so do we."""
    target = tiny_target(seed=10)
    target.generation_config.eos_token_id = None  # no early stop: the padded length decides where it ends
    head = FSPADDraftModel.from_target(target)
    ids = torch.tensor([[0, 0, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, **length)
    out = target.generate(ids, attention_mask=mask, assistant_model=head, strategy="fspad", **length)
    assert torch.equal(out, ref)
    ones = torch.ones_like(ids)
    assert torch.equal(
        target.generate(ids, attention_mask=ones, assistant_model=head, strategy="fspad", max_new_tokens=10),
        target.generate(ids, attention_mask=ones, max_new_tokens=10, do_sample=False),
    )


def test_min_new_tokens_with_left_padding_holds_back_eos():
    target = tiny_target(seed=10)
    target.generation_config.eos_token_id = None
    ids, mask = torch.tensor([[0, 0, 12, 13, 14]]), torch.tensor([[0, 0, 1, 1, 1]])
    free = target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    eos = int(free[0, 5 + 2])  # emitted early; min_new_tokens must hold it back
    kwargs = dict(attention_mask=mask, max_new_tokens=20, min_new_tokens=8, eos_token_id=eos, do_sample=False)
    ref = target.generate(ids, **kwargs)
    head = oracle_head(target, torch.cat([ids[:, 2:], free[:, 5:]], 1))
    assert torch.equal(target.generate(ids, assistant_model=head, strategy="fspad", **kwargs), ref)


def test_prefix_constrained_decoding_sees_batch_row_zero():
    target = tiny_target(seed=13)
    ids = torch.tensor([[5, 6, 7]])
    seen = set()

    def allowed(batch_id, sent):
        seen.add(batch_id)
        return list(range(batch_id * 10 + 1, 128, 2))  # odd tokens for row 0, anything else for other rows

    ref = target.generate(ids, max_new_tokens=15, do_sample=False, prefix_allowed_tokens_fn=allowed)
    head = oracle_head(target, ref)
    out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=15,
                          prefix_allowed_tokens_fn=allowed, tree_top_k=3, tree_depth=3, tree_total_tokens=10)
    assert torch.equal(out, ref) and seen == {0}


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention"])
def test_attention_that_cannot_take_a_tree_mask_is_refused(impl):
    target = tiny_target(seed=14)
    head = FSPADDraftModel.from_target(target)
    target.config._attn_implementation = impl  # as from_pretrained(attn_implementation=impl) would set it
    with pytest.raises(ValueError, match=f"attn_implementation='{impl}'.*set_attn_implementation"):
        target.generate(torch.tensor([[1, 2]]), assistant_model=head, strategy="fspad", max_new_tokens=5)


def test_eager_attention_matches_stock():
    target = tiny_target(seed=14)
    target.set_attn_implementation("eager")
    head = oracle_head(target, target.generate(torch.tensor([[1, 2]]), max_new_tokens=30, do_sample=False))
    ids = torch.tensor([[1, 2]])
    assert torch.equal(target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=20),
                       target.generate(ids, max_new_tokens=20, do_sample=False))


def scaled_logits_target(family):
    """A tiny model whose forward rescales the lm_head's logits after it."""
    from transformers import CohereConfig, CohereForCausalLM, GraniteConfig, GraniteForCausalLM

    torch.manual_seed(15)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, initializer_range=0.2, pad_token_id=0)
    if family == "cohere":
        model = CohereForCausalLM(CohereConfig(logit_scale=0.25, tie_word_embeddings=True, **common))
    else:
        model = GraniteForCausalLM(GraniteConfig(logits_scaling=4.0, **common))
    model.generation_config.pad_token_id = 0
    return model.eval()


@pytest.mark.parametrize("family", ["cohere", "granite"])
def test_models_that_rescale_their_logits(family):
    """Greedy tokens do not move under a positive scale, but the scores, logits and sampling do."""
    target = scaled_logits_target(family)
    ids = torch.tensor([[3, 9, 27]])
    kwargs = dict(max_new_tokens=12, return_dict_in_generate=True, output_scores=True, output_logits=True)
    ref = target.generate(ids, do_sample=False, **kwargs)
    head = oracle_head(target, ref.sequences)
    out = target.generate(ids, assistant_model=head, strategy="fspad", cost_curve=CHEAP_CURVE, **kwargs)
    assert torch.equal(out.sequences, ref.sequences) and out.spec_stats.tau > 2
    for ours, theirs in zip(out.logits, ref.logits):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


class Recorder(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.ended = True


def test_streamer_scores_and_logits_like_stock():
    target = tiny_target(seed=12)
    ids = torch.tensor([[1, 2, 3]])
    ref = target.generate(ids, max_new_tokens=20, do_sample=False, return_dict_in_generate=True,
                          output_scores=True, output_logits=True, repetition_penalty=1.3)
    head = oracle_head(target, ref.sequences)
    rec = Recorder()
    out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=20, streamer=rec,
                          return_dict_in_generate=True, output_scores=True, output_logits=True, repetition_penalty=1.3)
    assert rec.ended and rec.chunks[0] == [1, 2, 3]
    assert sum(rec.chunks[1:], []) == out.sequences[0, 3:].tolist()
    assert any(len(c) > 1 for c in rec.chunks[1:])
    assert len(out.scores) == len(ref.scores) == 20
    for ours, theirs in zip(out.scores, ref.scores):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(out.logits, ref.logits):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
