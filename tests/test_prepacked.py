"""The target's linear layers on oneDNN-prepacked weights (hf_specdec/prepacked.py; strategy="fspad"'s
prepack_target): which layers switch, that they switch back, bf16 values bit for bit F.linear's, generate's
outputs unchanged, and the default's memory bound."""

import logging

import pytest
import torch

from hf_specdec import FSPADDraftModel, prepacked
from hf_specdec.prepacked import check_prepack, packable_bytes, prepacked_linears

from conftest import tiny_target

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a torch built without oneDNN")

# MLP weights of 256 x 512 = 2^17 elements: packed; attention's 256 x 256 and the 128-token lm_head: not
WIDE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def wide():
    return tiny_target("llama", **WIDE)


def switched(model):
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


def test_large_plain_linears_switch_for_the_block_and_back(wide):
    expected = sorted(f"model.layers.{i}.mlp.{p}" for i in range(wide.config.num_hidden_layers)
                      for p in ("gate_proj", "up_proj", "down_proj"))
    with torch.no_grad(), prepacked_linears(wide) as layers:
        assert sorted(switched(wide)) == expected and len(layers) == len(expected)
        with prepacked_linears(wide) as inner:  # nested: the enclosing block keeps them
            assert inner == []
        assert sorted(switched(wide)) == expected
    assert switched(wide) == []
    with prepacked_linears(wide) as layers:  # gradients on: the packed product has no backward
        assert layers == []
    with torch.no_grad(), prepacked_linears(wide, enabled=False) as layers:
        assert layers == []


def test_a_hooked_layer_is_left_alone(wide):
    layer = wide.model.layers[0].mlp.up_proj
    handle = layer.register_forward_hook(lambda *args: None)
    try:
        with torch.no_grad(), prepacked_linears(wide):
            assert "model.layers.0.mlp.up_proj" not in switched(wide)
    finally:
        handle.remove()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_prepacked_forward_is_f_linears(wide, dtype):
    model = tiny_target("llama", **WIDE).to(dtype)
    ids = torch.randint(1, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(ids).logits
        with prepacked_linears(model):
            packed = model(ids).logits
    if dtype == torch.bfloat16:
        assert torch.equal(packed, plain)
    else:  # oneDNN's float32 sums run in another order than MKL's
        torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-4)


def test_packed_copies_are_kept_until_a_weight_changes(wide):
    layer = wide.model.layers[0].mlp.gate_proj
    with torch.no_grad():
        with prepacked_linears(wide):
            first = layer.__dict__["_prepacked"][1]
        with prepacked_linears(wide):
            assert layer.__dict__["_prepacked"][1] is first
        layer.weight.mul_(1.0)  # in place: the version moves
        with prepacked_linears(wide):
            second = layer.__dict__["_prepacked"][1]
            assert second is not first
        for _ in range(2):  # replaced twice: a freed address must not pass for the packed one
            layer.weight.data = torch.randn_like(layer.weight)
        with prepacked_linears(wide):
            assert layer.__dict__["_prepacked"][1] is not second
            torch.testing.assert_close(layer(torch.ones(1, 256)), torch.ones(1, 256) @ layer.weight.T, rtol=1e-5,
                                       atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fspad_outputs_are_stocks_with_the_target_prepacked(dtype):
    model = tiny_target("llama", **WIDE).to(dtype)
    torch.manual_seed(3)
    head = FSPADDraftModel.from_target(model).eval()
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(4))
    stock = model.generate(ids, max_new_tokens=24, do_sample=False)
    for prepack in (None, True, False):
        out = model.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=24, prepack_target=prepack,
                             tree_top_k=4, tree_depth=3, tree_total_tokens=12)
        assert torch.equal(out, stock)
        assert switched(model) == []
    assert "_prepacked" in model.model.layers[0].mlp.up_proj.__dict__


def test_the_default_packs_within_the_memory_bound_and_says_so(wide, monkeypatch, caplog):
    assert packable_bytes(wide) == 3 * wide.config.num_hidden_layers * 256 * 512 * 4
    prepacked._log_decision.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hf_specdec.prepacked"):
        assert check_prepack(wide, None) is True
    assert "prepacked weights" in caplog.text and "prepack_target=False" in caplog.text
    monkeypatch.setattr(prepacked, "PREPACK_DEFAULT_MAX_BYTES", 1024)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_specdec.prepacked"):
        assert check_prepack(wide, None) is False and check_prepack(wide, True) is True
    assert "prepack_target=True packs them" in caplog.text
    assert check_prepack(wide, False) is False
    assert check_prepack(tiny_target("llama"), None) is False  # nothing large enough to pack
    with pytest.raises(TypeError, match="prepack_target must be True, False or None"):
        check_prepack(wide, "yes")
    monkeypatch.setattr(prepacked, "PACK_WEIGHTS", False)
    assert check_prepack(wide, True) is False and packable_bytes(wide) == 0


def test_spechub_samples_the_same_with_the_target_prepacked():
    """bf16: prepacked values are F.linear's, so with one seed the sampled output is the same token for token."""
    model = tiny_target("llama", **WIDE).to(torch.bfloat16)
    torch.manual_seed(3)
    head = FSPADDraftModel.from_target(model).eval()
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(4))
    outs = []
    for prepack in (True, False):
        torch.manual_seed(7)
        outs.append(model.generate(ids, assistant_model=head, strategy="spechub", do_sample=True, max_new_tokens=20,
                                   prepack_target=prepack))
        assert switched(model) == []
    assert torch.equal(*outs)
    assert "_prepacked" in model.model.layers[0].mlp.up_proj.__dict__
    with pytest.raises(TypeError, match="prepack_target"):
        model.generate(ids, assistant_model=head, strategy="spechub", do_sample=True, max_new_tokens=2, prepack_target=1)


def test_superposed_finds_the_same_drafts_with_the_model_prepacked():
    """strategy='superposed' packs its model too (one-token forwards); bf16 values are F.linear's, so its k drafts
    and their scores are the same, and the layers switch back."""
    model = tiny_target("llama", **WIDE).to(torch.bfloat16)
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(5))
    outs = [model.generate(ids, strategy="superposed", num_return_sequences=3, max_new_tokens=12, ngram=False,
                           return_dict_in_generate=True, prepack_target=prepack) for prepack in (True, False, None)]
    assert switched(model) == []
    for out in outs[1:]:
        assert torch.equal(out.sequences, outs[0].sequences)
        assert torch.equal(out.sequences_scores, outs[0].sequences_scores)
    assert "_prepacked" in model.model.layers[0].mlp.up_proj.__dict__
    with pytest.raises(TypeError, match="prepack_target"):
        model.generate(ids, strategy="superposed", num_return_sequences=3, max_new_tokens=2, ngram=False, prepack_target=1)


def test_inside_autocast_nothing_runs_on_prepared_weights(wide, caplog):
    """Autocast casts each op's inputs and weights; a prepacked (or int8) product would bypass that, and a bf16 input
    against a packed float32 weight fails in oneDNN (training's bf16 evaluation crashed so). Inside autocast the
    target's layers stay as they are (said once) and a head runs its modules: the same values as with gradients on."""
    prepacked._log_autocast.cache_clear()
    torch.manual_seed(8)
    head = FSPADDraftModel.from_target(wide).eval()
    head.int8_weights = True
    ids, feats = torch.tensor([[5, 9, 11, 2]]), torch.randn(1, 4, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with caplog.at_level(logging.WARNING, logger="hf_specdec.prepacked"), torch.no_grad():
            with prepacked_linears(wide, True) as switched_layers:
                assert switched_layers == [] and switched(wide) == []
            out = head(input_ids=ids, features=feats)
            logits = head.compute_logits(out.hidden_states)
        assert "autocast" in caplog.text
        reference = head(input_ids=ids, features=feats)
        assert torch.equal(out.features, reference.features.detach())
        assert torch.equal(logits, head.compute_logits(reference.hidden_states).detach())
