"""The head's decoding products (draft/base.py: Product, decoding_product): weight-only int8 weights (int8_rows;
strategy="fspad"'s draft_int8), oneDNN-prepacked dense weights, the cache and `weights_fixed`: the quantization's
error bound, the products against their definitions, where each serves, and generate's outputs unchanged."""

import pytest
import torch
from transformers import GenerationConfig

from hf_specdec import FSPADDraftModel
from hf_specdec import prepacked
from hf_specdec.draft.base import (INT8_MAX_ROWS, Product, check_int8_weights, decoding_product, default_int8_weights, int8_rows,
                                   int8_serves, weights_fixed)
from hf_specdec.prepacked import packing_serves
from hf_specdec.strategies.calibration import cost_key

from conftest import tiny_target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_rows_error_is_at_most_half_a_step(dtype):
    torch.manual_seed(0)
    w = (torch.randn(50, 96) * torch.logspace(-3, 1, 50)[:, None]).to(dtype)
    w[7] = 0
    q, s = int8_rows(w)
    assert q.dtype == torch.int8 and s.dtype == dtype and q.shape == w.shape and s.shape == (50,)
    assert int(q.abs().max()) <= 127 and int(q[7].abs().max()) == 0 and float(s[7]) == 1.0
    error = (w.double() - s.double()[:, None] * q.double()).abs()
    assert bool((error <= s.double()[:, None] / 2 + 1e-12).all())
    assert int(q.abs().amax(1)[torch.arange(50) != 7].min()) >= 126  # the scale is the row's peak / 127 (rounded up)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(960, 576), (33, 64)])
def test_int8_product_is_x_times_the_dequantized_weight(dtype, tol, shape):
    torch.manual_seed(1)
    w, b = torch.randn(*shape).to(dtype), torch.randn(shape[0]).to(dtype)
    q, s = int8_rows(w)
    reference_weight = s.double()[:, None] * q.double()
    for x in (torch.randn(1, shape[1]), torch.randn(2, 3, shape[1])):
        x = x.to(dtype)
        out = Product(q, b, s)(x)
        expected = x.double() @ reference_weight.T + b.double()
        assert out.shape == (*x.shape[:-1], shape[0]) and out.dtype == dtype
        assert float((out.double() - expected).abs().max()) <= tol * float(expected.abs().max())
    unquantized = Product(w, b)(x)  # F.linear's values (prepacked large weights: see the packing tests)
    if dtype == torch.bfloat16 or not packing_serves(w):
        assert torch.equal(unquantized, torch.nn.functional.linear(x, w, b))
    else:
        torch.testing.assert_close(unquantized, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a torch built without oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_dense_products_run_on_prepacked_weights_with_f_linear_values(dtype):
    """bf16: the same values as F.linear bit for bit, for a few rows and for a prompt's catch-up; float32: oneDNN
    sums in another order than F.linear, so within float32 rounding. Small weights are not packed (the prepacked
    call costs more than their product)."""
    torch.manual_seed(2)
    w, b = torch.randn(960, 576).to(dtype), torch.randn(960).to(dtype)
    assert packing_serves(w) and not packing_serves(w[:64, :64]) and not packing_serves(w.to(torch.float16))
    product = Product(w, b)
    for x in (torch.randn(1, 576), torch.randn(1, 4, 576), torch.randn(2, 300, 576)):
        x = x.to(dtype)
        out, reference = product(x), torch.nn.functional.linear(x, w, b)
        assert out.shape == reference.shape and out.dtype == dtype
        if dtype == torch.bfloat16:
            assert torch.equal(out, reference)
        else:
            torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-4)
    assert product._dense[1] is not None and product._dense[1].is_mkldnn


def test_packing_can_be_switched_off(monkeypatch):
    w = torch.randn(960, 576)
    monkeypatch.setattr(prepacked, "PACK_WEIGHTS", False)
    x = torch.randn(3, 576)
    assert not packing_serves(w) and torch.equal(Product(w)(x), torch.nn.functional.linear(x, w))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_many_rows_take_a_dense_copy_of_the_same_quantized_weight(dtype, tol):
    """Torch's int8 kernel is slow for many rows (a prompt's catch-up): past INT8_MAX_ROWS rows the product
    multiplies by W' = diag(s) Q made dense, the same weight the kernel reads."""
    torch.manual_seed(5)
    w = torch.randn(48, 64).to(dtype)
    q, s = int8_rows(w)
    product = Product(q, None, s)
    few, many = torch.randn(1, INT8_MAX_ROWS, 64).to(dtype), torch.randn(3, INT8_MAX_ROWS, 64).to(dtype)
    reference = s.double()[:, None] * q.double()
    for x, dense in ((few, False), (many, True)):
        out = product(x)
        assert (product._dense is not None) == dense
        expected = x.double() @ reference.T
        assert float((out.double() - expected).abs().max()) <= tol * float(expected.abs().max())


def test_int8_serves_the_cpu_and_the_bf16_shapes_its_kernel_takes():
    assert int8_serves(torch.zeros(8, 64, dtype=torch.bfloat16))
    assert not int8_serves(torch.zeros(8, 40, dtype=torch.bfloat16))  # torch 2.13's bf16 kernel: garbage for K=40
    assert int8_serves(torch.zeros(8, 40))
    assert not int8_serves(torch.zeros(8, 64, dtype=torch.float64))
    assert not int8_serves(torch.zeros(8, 64, device="meta"))


def test_a_product_the_kernel_does_not_serve_stays_unquantized_and_says_so(caplog):
    owner = torch.nn.Module()
    w = torch.randn(8, 40, dtype=torch.bfloat16)
    with caplog.at_level("WARNING", logger="hf_specdec.draft.base"):
        product = decoding_product(owner, "odd", ((w, None),), int8=True)
    assert product.scales is None and torch.equal(product.weight, w)
    assert "stays unquantized" in caplog.text


def test_decoding_products_are_cached_until_a_weight_changes():
    owner, lin = torch.nn.Module(), torch.nn.Linear(64, 32)
    params = ((lin.weight, lin.bias),)
    first = decoding_product(owner, "p", params, int8=True)
    assert first.scales is not None and decoding_product(owner, "p", params, int8=True) is first
    assert decoding_product(owner, "p", params, int8=False).scales is None  # the mode is part of the key
    with torch.no_grad():
        lin.weight.mul_(2)  # in place: the version moves
    again = decoding_product(owner, "p", params, int8=True)
    assert again is not first and torch.allclose(again.scales, 2 * first.scales)


def test_inside_weights_fixed_a_product_is_checked_once_per_block():
    owner, lin = torch.nn.Module(), torch.nn.Linear(64, 32)
    params = ((lin.weight, lin.bias),)
    with weights_fixed():
        first = decoding_product(owner, "p", params)
        with torch.no_grad():
            lin.weight.mul_(2)  # breaks the block's promise: the product checked in it is kept
        assert decoding_product(owner, "p", params) is first
        assert decoding_product(owner, "p", params, int8=True) is not first  # another mode is checked
    again = decoding_product(owner, "p", params)  # outside (or in the next block): checked again
    assert again is not first and torch.equal(again.weight, lin.weight)
    with weights_fixed():
        assert decoding_product(owner, "p", params) is again  # unchanged weights: the same product


def test_head_on_int8_weights_drafts_close_to_exact_and_trains_exactly(llama):
    torch.manual_seed(2)
    head = FSPADDraftModel.from_target(llama).eval()
    ids, feats = torch.tensor([[5, 9, 11, 2]]), torch.randn(1, 4, 64)

    def run(int8: bool, grad: bool):
        head.int8_weights = int8
        with torch.set_grad_enabled(grad):
            out = head(input_ids=ids, features=feats)
            return head.compute_logits(out.hidden_states).detach(), out.features.detach()

    exact, quantized, training = run(False, False), run(True, False), run(True, True)
    head.int8_weights = False
    for a, b in zip(exact, quantized):
        assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0.05, atol=0.05)
    assert all(torch.equal(a, b) for a, b in zip(exact, training))  # gradients on: the modules, never int8
    assert {"qkv"} <= set(head.self_attn.__dict__["_stacked_linears"])
    assert head.__dict__["_stacked_linears"]["logits"][1].scales is not None


def test_generate_outputs_are_stocks_with_and_without_int8_and_the_mode_is_restored(llama):
    torch.manual_seed(3)
    head = FSPADDraftModel.from_target(llama).eval()
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(4))
    stock = llama.generate(ids, max_new_tokens=24, do_sample=False)
    for draft_int8 in (None, True, False):
        head.__dict__.pop("_stacked_linears", None)
        out = llama.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=24, draft_int8=draft_int8,
                             tree_top_k=4, tree_depth=3, tree_total_tokens=12)
        assert torch.equal(out, stock)
        assert head.int8_weights is False  # the call's mode, then what it was
        # None: the default, exact weights for a float32 head (DRAFT_INT8_DTYPES)
        assert (head.__dict__["_stacked_linears"]["logits"][1].scales is not None) == (draft_int8 is True)


def test_draft_int8_bad_values_are_clear_errors(llama):
    head = FSPADDraftModel.from_target(llama)
    with pytest.raises(TypeError, match="draft_int8 must be True, False or None"):
        check_int8_weights(head, "yes")

    class OnGPU:
        device, generation_config = torch.device("cuda"), None

    with pytest.raises(ValueError, match="serves heads on the CPU"):
        check_int8_weights(OnGPU(), True)
    assert check_int8_weights(OnGPU(), None) is False and check_int8_weights(OnGPU(), False) is False
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match="draft_int8"):
        llama.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=2, draft_int8=1)


def test_the_default_is_int8_for_a_bf16_cpu_head_unless_its_generation_config_says_otherwise(llama):
    head = FSPADDraftModel.from_target(llama)
    head.generation_config = None
    assert head.dtype == torch.float32 and default_int8_weights(head) is False  # float32: measured slower in int8
    assert check_int8_weights(head, None) is False and check_int8_weights(head, True) is True  # asked for: served
    head.to(torch.bfloat16)
    assert default_int8_weights(head) is True
    head.generation_config = GenerationConfig(draft_int8=False)
    assert default_int8_weights(head) is False and check_int8_weights(head, True) is True


def test_cost_curves_are_kept_per_weight_mode(llama):
    head = FSPADDraftModel.from_target(llama)
    assert cost_key(llama, head, True) != cost_key(llama, head, False)


def test_cost_curves_are_kept_per_packing(llama, monkeypatch):
    head = FSPADDraftModel.from_target(llama)
    packed = cost_key(llama, head, False)
    monkeypatch.setattr(prepacked, "PACK_WEIGHTS", False)
    assert cost_key(llama, head, False) != packed
