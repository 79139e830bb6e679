"""The distillation losses on hand-computed cases."""

import math

import torch

from hf_specdec.training import feature_noise, feature_regression_loss, fspad_loss, soft_label_ce_loss


def test_feature_regression_loss_by_hand():
    pred = torch.tensor([[[0.0, 0.0], [3.0, 0.5], [9.0, 9.0]]])
    target = torch.tensor([[[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position is prompt: ignored however wrong
    # SmoothL1 (beta 1): |d|<1 -> 0.5 d^2, else |d| - 0.5
    token0 = (0.5 * 0.25 + 0.0) / 2
    token1 = ((3.0 - 0.5) + 0.5 * 0.25) / 2
    assert math.isclose(feature_regression_loss(pred, target, mask).item(), (token0 + token1) / 2, rel_tol=1e-6)


def test_soft_label_ce_by_hand():
    draft = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # softmax [.5,.5] and [.75,.25]
    target = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # p_T [.75,.25] and [.5,.5]
    mask = torch.tensor([[1, 1]])
    token0 = -(0.75 * math.log(0.5) + 0.25 * math.log(0.5))
    token1 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert math.isclose(soft_label_ce_loss(draft, target, mask).item(), (token0 + token1) / 2, rel_tol=1e-6)
    # the minimum over the draft is at the target distribution, where it equals the target's entropy
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(soft_label_ce_loss(target[:, :1], target[:, :1], mask[:, :1]).item(), entropy, rel_tol=1e-6)


def test_fspad_loss_weights_and_empty_mask():
    g = torch.Generator().manual_seed(0)
    reg, feat = torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    dl, tl = torch.randn(1, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    mask = torch.tensor([[0, 1, 1, 1]])
    loss, v, p = fspad_loss(reg, dl, feat, tl, mask)
    assert torch.isclose(loss, 1.0 * v + 0.1 * p)
    loss, _, _ = fspad_loss(reg, dl, feat, tl, torch.zeros_like(mask))
    assert loss.item() == 0.0  # no response tokens: no loss, no NaN


def test_feature_noise_range_scales_with_length():
    f = torch.zeros(1, 64, 32)
    noisy = feature_noise(f, torch.Generator().manual_seed(0))
    half_width = 0.2 * 512 / 64 / 2
    assert noisy.abs().max() <= half_width and noisy.abs().max() > 0.9 * half_width
    assert abs(noisy.mean().item()) < 0.05


def test_topk_distillation_loss():
    from hf_specdec.training.losses import topk_distillation_loss

    # target p = (0.5, 0.3, 0.2) at one position; draft q = (0.25, 0.25, 0.5)
    target = torch.tensor([[[0.5, 0.3, 0.2]]]).log()
    draft = torch.tensor([[[0.25, 0.25, 0.5]]]).log()
    mask = torch.ones(1, 1)
    expected = -(0.5 / 0.8 * math.log(0.25) + 0.3 / 0.8 * math.log(0.25))  # the top 2, renormalised
    assert math.isclose(topk_distillation_loss(draft, target, mask, 2).item(), expected, rel_tol=1e-6)
    # K >= V is the full soft label
    g = torch.Generator().manual_seed(1)
    dl, tl, m = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g), torch.ones(2, 5)
    assert torch.isclose(topk_distillation_loss(dl, tl, m, 16), soft_label_ce_loss(dl, tl, m))
    # in fspad_loss: off by default, added with its weight
    reg, feat = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    base, v, p = fspad_loss(reg, dl, feat, tl, m)
    with_k, v2, p2 = fspad_loss(reg, dl, feat, tl, m, w_topk=0.5, topk=4)
    assert torch.equal(v, v2) and torch.equal(p, p2)
    assert torch.isclose(with_k, base + 0.5 * topk_distillation_loss(dl, tl, m, 4))
