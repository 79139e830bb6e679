"""Cost-sized trees: the pure sizing functions by hand, the cost curve cache, and that the size chosen never
changes the output (float32 greedy identical to stock under several cost curves; a curve under which drafting
never pays degrades every cycle to a plain decoding step)."""

import dataclasses
import json
import os

import pytest
import torch

from hf_specdec import FSPADDraftModel
from hf_specdec.testing import OracleHead
from hf_specdec.strategies.head_gate import HeadGate
from hf_specdec.tree import (CostCurve, DraftTree, EstimateCalibration, best_tree_size, expansion_pays, fit_cycle_costs,
                             head_pays, prune_tree, refit_curve)

from conftest import oracle_head, tiny_target

FLAT = CostCurve((1, 64), (10.0, 10.0), head_step_ms=1.0)  # verifying more tokens is free: keep everything
STEEP = CostCurve((1, 2, 64), (10.0, 1000.0, 1000.0), head_step_ms=1.0)  # a second token costs 100x: verify 1
def greedy_case(new_tokens: int):
    """A tiny target, a prompt and stock greedy decoding's output: what every output-identity test compares to."""
    target = tiny_target(seed=5)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    return target, ids, target.generate(ids, max_new_tokens=new_tokens, do_sample=False)


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
    target, ids, ref = greedy_case(30)
    for head in (FSPADDraftModel.from_target(target), oracle_head(target, ref, accuracy=0.8)):
        out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=30, cost_curve=curve,
                              return_dict_in_generate=True)
        assert torch.equal(out.sequences, ref)
        if curve is STEEP:  # every cycle verified the root alone: plain decoding, one head step (the catch-up)
            assert set(out.spec_stats.accepted_lengths) == {1}
            assert out.spec_stats.draft_forwards == out.spec_stats.target_forwards - 1
            gated = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=30, cost_curve=curve,
                                    head_gate=True, return_dict_in_generate=True)
            assert torch.equal(gated.sequences, ref)
            # with the gate, the head ran (a catch-up, no expansion) in the warm-up and the probes only
            assert gated.spec_stats.draft_forwards == head_runs_of_a_failing_head(len(gated.spec_stats.accepted_lengths))
        if curve is FLAT and isinstance(head, OracleHead):
            assert out.spec_stats.tau > 3  # free verification: deep trees of the oracle's tokens


def head_runs_of_a_failing_head(cycles: int) -> int:
    """The cycles of `cycles` in which the gate runs a head that never adds a token (by hand below)."""
    gate, runs = HeadGate(), 0
    for _ in range(cycles):
        if gate.run_head(base_rate=0.1):
            gate.observe(0, 5.0)
            runs += 1
    return runs


def test_head_gate_refuses_what_it_cannot_gate():
    target, ids, _ = greedy_case(2)
    head = FSPADDraftModel.from_target(target)
    with pytest.raises(ValueError, match="head_gate=True prices the head"):
        target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=2, tree_top_k=2, head_gate=True)
    with pytest.raises(NotImplementedError, match="head_gate=True decodes one row"):
        target.generate(ids.repeat(2, 1), assistant_model=head, strategy="fspad", max_new_tokens=2, head_gate=True,
                        cost_curve=SMOLLM_LIKE)
    with pytest.raises(TypeError, match="head_gate must be True or False"):
        target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=2, head_gate=1)


def test_cycle_fit_recovers_the_factors_that_made_the_cycles():
    curve = dataclasses.replace(SMOLLM_LIKE, context=256, long_context=1024,
                                long_verify_ms=tuple(2 * ms for ms in SMOLLM_LIKE.verify_ms), long_head_step_ms=5.0)
    truth = refit_curve(curve, 1.5, 0.7, 0.4)
    cycles = [(n, s, L, truth.at(L).verify(n) + s * truth.at(L).head_step_ms)
              for n, s, L in [(2, 1, 256), (9, 1, 300), (4, 2, 256), (7, 6, 600), (16, 4, 256), (32, 3, 1000)]]
    assert fit_cycle_costs(cycles, curve) == pytest.approx((1.5, 0.7, 0.4))
    # the refitted level carries the host overhead; the slope scales only what tree tokens add beyond one
    assert truth.overhead_ms == 0.0 and truth.verify(1) == pytest.approx(1.5 * 24.0)
    assert truth.verify(16) - truth.verify(1) == pytest.approx(0.7 * (34.7 - 24.0))
    assert truth.at(1024).head_step_ms == pytest.approx(0.4 * 5.0)
    # factors outside the bounds are clipped; too few cycles is an error
    assert fit_cycle_costs([(n, s, L, 100 * t) for n, s, L, t in cycles], curve)[0] == 10.0
    with pytest.raises(ValueError, match="at least 3 cycles"):
        fit_cycle_costs(cycles[:2], curve)


def test_cycle_fit_tells_level_from_slope_by_the_plain_step():
    """Where c(n) - c(1) is the same for every timed tree (float32 GEMMs on a CPU: 2 to 16 tokens cost alike), the
    level and slope columns are one unless a plain step (one token verified) is among the cycles. With the cycles
    calibration times (CYCLE_SHAPES, the plain step among them) the fit finds the factors that made them and
    prices a plain step at what it cost; without the plain step it does not."""
    from hf_specdec.strategies import calibration

    flat = CostCurve(sizes=(1, 2, 16, 24, 32), verify_ms=(65.0, 106.0, 106.0, 106.0, 106.0), head_step_ms=12.0)
    truth = refit_curve(flat, 1.2, 0.9, 0.5)
    shapes = [(total, 1 if shape == calibration.PLAIN_CYCLE else depth) for shape in calibration.CYCLE_SHAPES
              for _, depth, total in [shape]]
    cycles = [(n, s, 256, truth.verify(n) + s * truth.head_step_ms) for n, s in shapes]
    level, slope, head = fit_cycle_costs(cycles, flat)
    assert (level, slope, head) == pytest.approx((1.2, 0.9, 0.5))
    assert refit_curve(flat, level, slope, head).verify(1) == pytest.approx(1.2 * 65.0)
    without_plain = [c for c in cycles if c[0] > 1]
    assert fit_cycle_costs(without_plain, flat)[0] != pytest.approx(1.2, abs=0.05)


def test_calibration_times_a_plain_step():
    """PLAIN_CYCLE decodes with a curve under which no draft pays: every cycle verifies one token after its
    catch-up, and its row says so."""
    from hf_specdec.strategies import calibration

    assert calibration.PLAIN_CYCLE in calibration.CYCLE_SHAPES
    target = tiny_target(seed=7)
    head = FSPADDraftModel.from_target(target)
    rows = calibration.time_cycles(target, head, shapes=(calibration.PLAIN_CYCLE, (2, 2, 4)), prefix=16, cycles=2,
                                   rounds=1)
    assert [(n, steps) for n, steps, _, _ in rows] == [(1, 1), (4, 2)]
    assert all(ms > 0 for *_, ms in rows)


def test_head_pays_by_hand():
    # without the head: 1 token in 10 ms; the head adds 0.6 tokens for 5 ms: 0.12 / ms > 0.1 / ms
    assert head_pays(0.6, 5.0, base_rate=0.1) and not head_pays(0.4, 5.0, base_rate=0.1)


def test_head_gate_skips_a_failing_head_and_probes_it_less_and_less_often():
    gate, ran = HeadGate(), []
    for cycle in range(1, 62):
        if gate.run_head(base_rate=0.1):
            gate.observe(0, 5.0)
            ran.append(cycle)
    # the warm-up's 8 cycles, then probes after runs of 1, 2, 4, 8, 16, 16 skipped cycles
    assert ran == [1, 2, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 44, 61]
    assert head_runs_of_a_failing_head(28) == 12


def test_head_gate_returns_to_every_cycle_when_the_head_pays_again():
    gate = HeadGate()
    for _ in range(20):  # a failing stretch: probes spaced out
        if gate.run_head(0.1):
            gate.observe(0, 5.0)
    assert gate.skip_run > 2
    while not gate.run_head(0.1):  # until the next probe
        pass
    gate.observe(4.0, 5.0)  # the text changed: the head adds 4 tokens (running mean 1.0 > 0.1 * 5)
    assert [gate.run_head(0.1) for _ in range(3)] == [True, True, True] and gate.skip_run == 1
    assert HeadGate().run_head(1e9)  # nothing observed yet: the head runs


def test_cost_curve_is_measured_once_and_cached(tmp_path, monkeypatch):
    from hf_specdec.strategies import calibration

    monkeypatch.setenv("HF_SPECDEC_CACHE", str(tmp_path))
    monkeypatch.setattr(calibration, "_MEMORY", {})
    monkeypatch.setattr(calibration, "machine_busy", lambda model: None)  # (the suite itself may load the CPU)
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
    # the engine's curve is the isolated one refitted to whole timed cycles; both are kept
    stored = json.loads(next((tmp_path / "costs").glob("*.json")).read_text())
    fit = stored["cycle_fit"]
    assert len(fit["cycles"]) == len(calibration.CYCLE_SHAPES) and all(c["ms"] > 0 for c in fit["cycles"])
    alone = calibration.cost_curve_for(target, head, isolated=True)
    assert CostCurve.from_dict(stored["isolated"]) == alone
    assert calibration.cost_curve_for(target, head) == refit_curve(alone, fit["level"], fit["slope"], fit["head"])


def test_costs_measured_on_a_busy_machine_are_used_but_not_cached(tmp_path, monkeypatch, caplog):
    """A curve timed while another job loads the CPU would size every later tree wrongly: it serves the process
    that measured it, with a warning naming the load and the fix, and is not written; measured on a quiet machine
    it is."""
    import logging

    from hf_specdec.strategies import calibration

    monkeypatch.setenv("HF_SPECDEC_CACHE", str(tmp_path))
    monkeypatch.setattr(calibration, "_MEMORY", {})
    cores = os.cpu_count() or 1
    target = tiny_target(seed=6)
    head = FSPADDraftModel.from_target(target)
    monkeypatch.setattr(calibration.os, "getloadavg", lambda: (cores + 2.0, 1.0, 1.0))
    assert calibration.machine_busy(target) == f"1-minute load average {cores + 2.0:.1f} on {cores} cores"
    with caplog.at_level(logging.WARNING, logger="hf_specdec"):
        busy_curve = calibration.cost_curve_for(target, head)
    assert "not cached" in caplog.text and "hf-specdec calibrate --refresh" in caplog.text
    assert not list(tmp_path.glob("costs/*.json"))
    assert calibration.cost_curve_for(target, head) is busy_curve  # this process keeps it
    monkeypatch.setattr(calibration.os, "getloadavg", lambda: (cores - 0.5, 1.0, 1.0))
    assert calibration.machine_busy(target) is None
    calibration.cost_curve_for(target, head, refresh=True)
    assert len(list(tmp_path.glob("costs/*.json"))) == 1


def test_cost_key_is_the_shapes_not_the_folder(tmp_path):
    """The same head saved to another folder (or by another transformers) keeps its cached curve; another shape
    of head does not."""
    from hf_specdec.strategies import calibration

    target = tiny_target(seed=6)
    head = FSPADDraftModel.from_target(target)
    for name in ("a", "b"):
        head.save_pretrained(tmp_path / name)
    a, b = (FSPADDraftModel.from_pretrained(tmp_path / name) for name in ("a", "b"))
    assert a.config.name_or_path != b.config.name_or_path
    b.config.transformers_version = "0.0.1"
    assert calibration.cost_key(target, a, False) == calibration.cost_key(target, b, False) == calibration.cost_key(target, head, False)
    other = FSPADDraftModel.from_target(target, draft_vocab_size=16)
    assert calibration.cost_key(target, other, False) != calibration.cost_key(target, head, False)


def test_cycle_timing_interleaves_the_shapes_over_rounds(monkeypatch):
    """Each round decodes every shape once, in an order rotated by one per round, so that a slow spell of the
    machine is spread over the shapes; each shape gives one row, in the shapes' order."""
    from hf_specdec.strategies import calibration

    target = tiny_target(seed=7)
    head = FSPADDraftModel.from_target(target)
    order, real = [], target.generate
    monkeypatch.setattr(target, "generate", lambda *a, **k: order.append(k["tree_total_tokens"]) or real(*a, **k))
    shapes = ((1, 1, 2), (2, 2, 4), (4, 2, 8))
    rows = calibration.time_cycles(target, head, shapes=shapes, prefix=16, cycles=2, rounds=3)
    assert order == [2, 4, 8, 4, 8, 2, 8, 2, 4]
    assert [(n, steps, cached) for n, steps, cached, _ in rows] == [(2, 1, 17), (4, 2, 17), (8, 2, 17)]
    assert all(ms > 0 for *_, ms in rows)


# --- the head's path probabilities mapped onto P(accepted) (EstimateCalibration) ---

PESSIMISTIC = EstimateCalibration((0.0, 0.999, 1.0), (0.0, 0.001, 1.0))  # every draft node ~0: never worth verifying
OPTIMISTIC = EstimateCalibration((0.0, 0.001, 1.0), (0.0, 0.999, 1.0))  # every draft node ~1


def test_estimate_calibration_interpolates_between_its_knots():
    c = EstimateCalibration((0.0, 0.2, 0.6, 1.0), (0.0, 0.1, 0.5, 1.0))
    e = torch.tensor([0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5])
    assert c(e).tolist() == pytest.approx([0.0, 0.05, 0.1, 0.3, 0.5, 0.75, 1.0, 1.0])
    assert EstimateCalibration.from_dict(c.to_dict()) == c
    for x, y in [((0.0, 0.5), (0.0, 1.0)), ((0.0, 0.6, 0.4, 1.0), (0.0, 0.1, 0.2, 1.0)),
                 ((0.0, 0.5, 1.0), (0.0, 0.7, 0.6)), ((0.0, 1.0), (0.0, 0.5, 1.0)), ((0.0, 1.0), (0.0, 1.2)),
                 ((0.0, 1.0), (0.1, 1.0))]:
        with pytest.raises(ValueError, match="both non-decreasing, x from 0"):
            EstimateCalibration(x, y)


def test_estimate_calibration_fit_pools_violators_and_recovers_calibrated_estimates():
    # bins 0.0-0.05 (2 nodes, 1 accepted), 0.4-0.5 (2 nodes, none), 0.9-1.0 (1, accepted): 0.5 > 0 is a
    # violation, pooled to (1 + 0) / 4 = 0.25 for both
    c = EstimateCalibration.fit([0.02, 0.04, 0.42, 0.48, 0.95], [1, 0, 0, 0, 1])
    assert c.x == pytest.approx((0.0, 0.03, 0.45, 0.95, 1.0)) and c.y == pytest.approx((0.0, 0.25, 0.25, 1.0, 1.0))
    c = EstimateCalibration.fit([0.1, 0.1, 0.5, 0.5], [0, 1, 1, 0])  # flat above the last bin
    assert c.x == pytest.approx((0.0, 0.1, 0.5, 1.0)) and c.y == pytest.approx((0.0, 0.5, 0.5, 0.5))
    # estimates that are right on average map (nearly) onto themselves
    gen = torch.Generator().manual_seed(0)
    e = torch.rand(20000, generator=gen)
    accepted = (torch.rand(20000, generator=gen) < e).float()
    fitted = EstimateCalibration.fit(e.tolist(), accepted.tolist())
    probe = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    assert fitted(probe).tolist() == pytest.approx(probe.tolist(), abs=0.03)


@pytest.mark.parametrize("calibration", [PESSIMISTIC, OPTIMISTIC, False], ids=["pessimistic", "optimistic", "raw"])
def test_the_estimate_calibration_never_changes_the_output(calibration):
    target, ids, ref = greedy_case(30)
    for head in (FSPADDraftModel.from_target(target), oracle_head(target, ref, accuracy=0.8)):
        out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=30, cost_curve=SMOLLM_LIKE,
                              estimate_calibration=calibration, lookup_tokens=0, return_dict_in_generate=True)
        assert torch.equal(out.sequences, ref)
        if calibration is PESSIMISTIC and not isinstance(head, OracleHead):
            # it takes effect: no draft node of the untrained head (path probabilities < 1) is worth verifying
            assert set(out.spec_stats.accepted_lengths) == {1}
            assert out.spec_stats.draft_forwards == out.spec_stats.target_forwards - 1
        if isinstance(head, OracleHead):  # its path probabilities are 1, which every calibration keeps
            assert max(out.spec_stats.accepted_lengths) > 1


def test_the_head_carries_its_calibration_per_decoding_mode(tmp_path):
    from hf_specdec.bench.lookup_calibration import save_head_calibration
    from hf_specdec.strategies.fspad import head_estimate_calibration

    target = tiny_target(seed=5)
    head = FSPADDraftModel.from_target(target)
    assert head_estimate_calibration(head, None, sampling=False) is None  # none stored: raw path probabilities
    head.save_pretrained(tmp_path)
    save_head_calibration(tmp_path, "sampling", PESSIMISTIC.to_dict())
    loaded = FSPADDraftModel.from_pretrained(tmp_path)
    assert head_estimate_calibration(loaded, None, sampling=True) == PESSIMISTIC
    assert head_estimate_calibration(loaded, None, sampling=False) is None
    assert head_estimate_calibration(loaded, False, sampling=True) is None
    assert head_estimate_calibration(loaded, OPTIMISTIC, sampling=True) == OPTIMISTIC
    with pytest.raises(TypeError, match="estimate_calibration must be"):
        head_estimate_calibration(loaded, {"x": [0, 1]}, sampling=True)
    loaded.generation_config.estimate_calibration = {"greedy": {"x": [0.0, 0.5], "y": [0.0, 1.0]}}
    with pytest.raises(ValueError, match="unusable estimate_calibration"):
        head_estimate_calibration(loaded, None, sampling=False)


def test_head_calibration_report_checks_each_half_with_the_other_halfs_map():
    from hf_specdec.bench.lookup_calibration import head_calibration_report

    gen = torch.Generator().manual_seed(1)
    prompts = []
    for _ in range(40):  # over-confident estimates: accepted with probability e / 2
        e = torch.rand(200, generator=gen)
        prompts.append(list(zip(e.tolist(), (torch.rand(200, generator=gen) < e / 2).tolist())))
    report = head_calibration_report(prompts)
    c = EstimateCalibration.from_dict(report["calibration"])
    assert c(torch.tensor([0.6])).item() == pytest.approx(0.3, abs=0.04)
    for row in report["held_out_reliability"]:
        assert row["observed"] == pytest.approx(row["predicted"], abs=0.06)


# --- the cost curve at each cycle's own context ---

TWO_CONTEXTS = CostCurve((1, 8, 16), (20.0, 22.0, 24.0), head_step_ms=2.0, overhead_ms=1.0, context=256,
                         long_context=1024, long_verify_ms=(28.0, 34.0, 40.0), long_head_step_ms=3.0)


def test_cost_curve_at_a_context_interpolates_between_the_measured_ones():
    mid = TWO_CONTEXTS.at(640)  # halfway from 256 to 1024
    assert mid.verify_ms == pytest.approx((24.0, 28.0, 32.0)) and mid.head_step_ms == pytest.approx(2.5)
    assert mid.overhead_ms == 1.0 and not mid.long_verify_ms  # a plain curve for one cycle
    assert TWO_CONTEXTS.at(256).verify_ms == pytest.approx(TWO_CONTEXTS.verify_ms)
    assert TWO_CONTEXTS.at(1792).verify_ms == pytest.approx((36.0, 46.0, 56.0))  # beyond: the same slope in L
    assert TWO_CONTEXTS.at(0).verify_ms == pytest.approx((20 - 8 / 3, 22 - 4, 24 - 16 / 3))
    assert min(TWO_CONTEXTS.at(-10**6).verify_ms) >= 2.0  # never below a tenth of the measured cost
    crossing = CostCurve((1, 2), (10.0, 11.0), 1.0, 0.0, 256, 1024, (20.0, 11.0), 1.0)  # noisy long row
    assert crossing.at(1024).verify_ms == (20.0, 20.0)  # kept non-decreasing in n
    assert CostCurve.from_dict(TWO_CONTEXTS.to_dict()) == TWO_CONTEXTS
    assert SMOLLM_LIKE.at(5000) is SMOLLM_LIKE  # one context measured (or an old cached curve): as it is


def test_a_longer_context_changes_the_size_chosen_but_not_the_output():
    # at 256 cached tokens, 16 tree tokens cost 1.2x one; far into a long context, they cost 10x: verify 1
    steep_when_long = CostCurve((1, 16), (20.0, 24.0), head_step_ms=1.0, context=256, long_context=1024,
                                long_verify_ms=(20.0, 200.0), long_head_step_ms=1.0)
    assert best_tree_size([0.5] * 15, steep_when_long.at(256), 1.0)[0] == 16
    assert best_tree_size([0.5] * 15, steep_when_long.at(4000), 1.0)[0] == 1
    target, ids, ref = greedy_case(20)
    head = oracle_head(target, ref, accuracy=0.8)
    for curve in (steep_when_long, dataclasses.replace(steep_when_long, context=0, long_context=4)):
        out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=20, cost_curve=curve,
                              lookup_tokens=0, return_dict_in_generate=True)
        assert torch.equal(out.sequences, ref)
    # the second curve is past its long context from the first cycle: plain decoding steps
    assert set(out.spec_stats.accepted_lengths) == {1}


def test_measure_costs_times_two_contexts_within_the_models_positions():
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_specdec.strategies.calibration import measure_costs

    target = tiny_target(seed=6)
    curve = measure_costs(target, FSPADDraftModel.from_target(target), sizes=(1, 4), prefix=16, rounds=1, long_prefix=64)
    assert (curve.context, curve.long_context) == (16, 64) and len(curve.long_verify_ms) == 2
    assert all(b >= a for a, b in zip(curve.verify_ms, curve.long_verify_ms)) and curve.long_head_step_ms >= curve.head_step_ms
    short = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=40)).eval()
    curve = measure_costs(short, FSPADDraftModel.from_target(short), sizes=(1, 4), prefix=16, rounds=1, long_prefix=64)
    assert curve.long_context == 36  # 40 positions, 4 tree tokens
