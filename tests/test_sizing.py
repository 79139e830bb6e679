"""Cost-sized trees: the pure sizing functions by hand, the cost curve cache, and that the size chosen never
changes the output (float32 greedy identical to stock under several cost curves; a curve under which drafting
never pays degrades every cycle to a plain decoding step)."""

import pytest
import torch

from hf_specdec import FSPADDraftModel
from hf_specdec.testing import OracleHead
from hf_specdec.tree import CostCurve, DraftTree, best_tree_size, expansion_pays, prune_tree

from conftest import oracle_head, tiny_target

FLAT = CostCurve((1, 64), (10.0, 10.0), head_step_ms=1.0)  # verifying more tokens is free: keep everything
STEEP = CostCurve((1, 2, 64), (10.0, 1000.0, 1000.0), head_step_ms=1.0)  # a second token costs 100x: verify 1
SMOLLM_LIKE = CostCurve((1, 4, 8, 16, 32, 48), (24.0, 26.6, 29.3, 34.7, 44.0, 56.3), head_step_ms=2.5, overhead_ms=2.0)


def test_cost_curve_interpolates_and_extrapolates():
    curve = CostCurve((1, 4, 8), (10.0, 16.0, 18.0), head_step_ms=1.0)
    assert curve.verify(1) == 10.0 and curve.verify(2) == pytest.approx(12.0) and curve.verify(6) == pytest.approx(17.0)
    assert curve.verify(12) == pytest.approx(20.0)  # beyond the last point: the last segment's slope
    assert CostCurve.from_dict(curve.to_dict()) == curve


def test_best_tree_size_by_hand():
    curve = CostCurve((1, 2, 3, 4), (10.0, 11.0, 12.0, 20.0), head_step_ms=1.0)
    # rates with fixed 0: N=1 1/10, N=2 1.9/11, N=3 2.7/12, N=4 2.8/20
    n, rate = best_tree_size([0.9, 0.8, 0.1], curve, fixed_ms=0.0)
    assert n == 3 and rate == pytest.approx(2.7 / 12)
    assert best_tree_size([], curve, 5.0) == (1, pytest.approx(1 / 15))
    assert best_tree_size([0.01, 0.01], STEEP, 0.0)[0] == 1  # nothing worth verifying: a plain decoding step
    assert best_tree_size([0.01] * 10, FLAT, 0.0)[0] == 11


def test_expansion_pays_only_when_it_can_beat_the_current_rate():
    curve = CostCurve((1, 8), (10.0, 10.0), head_step_ms=2.0)  # verification is free up to 8 tokens
    # now: 1 node of 0.5 -> rate 1.5 / 10; one more step with frontier mass 0.5 over 2 nodes: 2.0 / 12 > 0.15
    assert expansion_pays([0.5], [0.3, 0.2], curve, fixed_ms=0.0)
    assert not expansion_pays([0.5], [0.1, 0.05], curve, fixed_ms=0.0)  # 1.65 / 12 < 0.15
    # the extra nodes must be verified too: where that is dear, no mass pays
    assert not expansion_pays([0.5], [0.9, 0.9], STEEP, fixed_ms=0.0)


def test_prune_keeps_the_best_nodes_and_their_parents():
    # root -> a (0.9) -> b (0.5) -> c (0.45); root -> d (0.6) -> e (0.55)
    tree = DraftTree.from_parents(torch.tensor([[0, 1, 2, 3, 4, 5]]), torch.tensor([[-1, 0, 1, 2, 0, 4]]),
                                  torch.tensor([[1.0, 0.9, 0.5, 0.45, 0.6, 0.55]]))
    pruned = prune_tree(tree, 4)
    assert pruned.tokens[0].tolist() == [0, 1, 4, 5] and pruned.parents[0].tolist() == [-1, 0, 0, 2]
    assert pruned.estimates[0].tolist() == pytest.approx([1.0, 0.9, 0.6, 0.55])
    assert prune_tree(tree, 10) is tree and prune_tree(tree, 1).num_nodes == 1


@pytest.mark.parametrize("curve", [FLAT, STEEP, SMOLLM_LIKE], ids=["flat", "steep", "smollm-like"])
def test_the_cost_choice_never_changes_the_output(curve):
    target = tiny_target(seed=5)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    ref = target.generate(ids, max_new_tokens=30, do_sample=False)
    for head in (FSPADDraftModel.from_target(target), oracle_head(target, ref, accuracy=0.8)):
        out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=30, cost_curve=curve,
                              return_dict_in_generate=True)
        assert torch.equal(out.sequences, ref)
        if curve is STEEP:  # every cycle verified the root alone: plain decoding, one head step (the catch-up)
            assert set(out.spec_stats.accepted_lengths) == {1}
            assert out.spec_stats.draft_forwards == out.spec_stats.target_forwards - 1
        if curve is FLAT and isinstance(head, OracleHead):
            assert out.spec_stats.tau > 3  # free verification: deep trees of the oracle's tokens


def test_cost_curve_is_measured_once_and_cached(tmp_path, monkeypatch):
    from hf_specdec.strategies import calibration

    monkeypatch.setenv("HF_SPECDEC_CACHE", str(tmp_path))
    monkeypatch.setattr(calibration, "_MEMORY", {})
    calls = []
    real = calibration.measure_costs
    monkeypatch.setattr(calibration, "measure_costs", lambda *a, **k: calls.append(1) or real(*a, **k))
    target = tiny_target(seed=6)
    head = FSPADDraftModel.from_target(target)
    curve = calibration.cost_curve_for(target, head)
    assert list(curve.sizes) == list(calibration.VERIFY_SIZES) and all(ms > 0 for ms in curve.verify_ms)
    assert list(curve.verify_ms) == sorted(curve.verify_ms) and curve.head_step_ms > 0
    calibration._MEMORY.clear()
    assert calibration.cost_curve_for(target, head) == curve and len(calls) == 1  # read back from disk
    assert len(list((tmp_path / "costs").glob("*.json"))) == 1
    calibration.cost_curve_for(target, head, refresh=True)
    assert len(calls) == 2
