"""`hf-specdec bench` end to end on 2 questions with a tiny target (float32, so every method must match stock)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_target

from hf_specdec import FSPADDraftModel
from hf_specdec.bench import specbench


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from hf_specdec.default_model import default_target_path

    root = tmp_path_factory.mktemp("bench")
    tokenizer = AutoTokenizer.from_pretrained(default_target_path())
    target = tiny_target("llama", vocab_size=len(tokenizer))
    target.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    for variant in ("fspad", "eagle2"):
        torch.manual_seed(3)
        FSPADDraftModel.from_target(target, tokenizer, variant=variant).save_pretrained(root / variant)
    questions = root / "questions.jsonl"
    questions.write_text(
        json.dumps({"question_id": 0, "category": "qa", "turns": ["Who wrote Hamlet?"]}) + "\n"
        + json.dumps({"question_id": 1, "category": "qa", "turns": ["Unused: over the per-category limit"]}) + "\n"
        + json.dumps({"question_id": 2, "category": "writing", "turns": ["Write a line.", "Shorter."]}) + "\n"
    )
    return root, questions


def test_bench_end_to_end_on_two_questions(tiny_setup, tmp_path, capsys):
    root, questions = tiny_setup
    out = tmp_path / "bench.json"
    specbench.main(["--questions", str(questions), "--per-category", "1", "--max-new-tokens", "12",
                    "--model", str(root / "target"), "--draft", str(root / "fspad"),
                    "--baseline-draft", str(root / "eagle2"), "--dtype", "float32", "--temperatures", "0", "1",
                    "--methods", "stock", "pld", "fspad", "fspad/lookup=0", "eagle2", "--out", str(out)])
    result = json.loads(out.read_text())
    records = result["records"]
    # 2 questions, 3 turns, 5 methods, 2 temperatures
    assert len(records) == 3 * 5 * 2
    assert {r["question_id"] for r in records} == {0, 2}
    rows = {(r["temperature"], r["group"], r["method"]): r for r in result["rows"]}
    assert set(g for _, g, _ in rows) == {"qa", "multi-turn conversation", "overall"}
    for method in ("pld", "fspad", "fspad/lookup=0", "eagle2"):
        assert rows[(0.0, "overall", method)]["match_rate"] == 1.0  # float32: lossless means identical
        assert "match_rate" not in rows[(1.0, "overall", method)]
    assert rows[(0.0, "overall", "stock")]["speedup"] == pytest.approx(1.0)
    assert rows[(0.0, "overall", "stock")]["tau"] == pytest.approx(1.0)  # one forward per token, prefill counted
    for r in records:
        assert r["new_tokens"] == len(r["tokens"]) and r["target_forwards"] >= 1
    # greedy turn-1 answers are the same tokens for every method
    first = [r for r in records if r["temperature"] == 0 and r["turn"] == 0 and r["question_id"] == 0]
    assert len({tuple(r["tokens"]) for r in first}) == 1
    table = out.with_suffix(".md").read_text()
    assert "| 0 | overall | fspad |" in table and "| 1 | qa | eagle2 |" in table
    assert table in capsys.readouterr().out


def test_bench_repeats_keep_the_median_time(tiny_setup, tmp_path):
    root, questions = tiny_setup
    out = tmp_path / "bench.json"
    specbench.main(["--questions", str(questions), "--per-category", "1", "--max-new-tokens", "6",
                    "--model", str(root / "target"), "--draft", str(root / "fspad"), "--methods", "stock", "fspad",
                    "--dtype", "float32", "--repeats", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["meta"]["repeats"] == 3
    assert len(result["records"]) == 3 * 2  # one record per (turn, method), not per repeat
    for r in result["records"]:
        assert len(r["seconds_each"]) == 3
        assert r["seconds"] == sorted(r["seconds_each"])[1]


def test_load_questions_rejects_rows_without_turns(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 5, "category": "qa"}) + "\n")
    with pytest.raises(ValueError, match="question 5 needs 'category' and non-empty 'turns'"):
        specbench.load_questions(path)


def test_method_names_with_tree_shapes():
    assert specbench.parse_method("fspad") == ("fspad", {})
    assert specbench.parse_method("eagle2@2,3,6") == ("eagle2", {"tree_top_k": 2, "tree_depth": 3, "tree_total_tokens": 6})
    with pytest.raises(ValueError, match="Unknown method 'medusa'"):
        specbench.parse_method("medusa")
    with pytest.raises(ValueError, match="three integers"):
        specbench.parse_method("fspad@4,4")
    with pytest.raises(SystemExit):
        specbench.main(["--methods", "stock", "pld@1,2,3"])
    assert specbench.parse_method("fspad/lookup=0") == ("fspad", {"lookup_tokens": 0})
    assert specbench.parse_method("fspad/unpacked") == ("fspad", {"prepack_target": False})
    assert specbench.parse_method("spechub@7/unpacked")[1]["prepack_target"] is False
    assert specbench.method_kwargs("stock/prepacked", {}, 10) == {"prepacked_target": True}
    assert specbench.method_kwargs("pld/prepacked", {}, 10) == {"prompt_lookup_num_tokens": 10, "prepacked_target": True}
    with pytest.raises(ValueError, match="stock and pld take '/prepacked'"):
        specbench.parse_method("stock/unpacked")
    assert specbench.parse_method("fspad@4,4,16/lookup=12/choose") == (
        "fspad", {"tree_top_k": 4, "tree_depth": 4, "tree_total_tokens": 16, "lookup_tokens": 12, "lookup_mode": "choose"})
    assert specbench.parse_method("fspad/lookup=0/raw") == ("fspad", {"lookup_tokens": 0, "estimate_calibration": False})
    assert specbench.parse_method("fspad/head-gate") == ("fspad", {"head_gate": True})
    assert specbench.parse_method("eagle2/lookup=0/exact") == ("eagle2", {"lookup_tokens": 0, "draft_int8": False})
    assert specbench.parse_method("fspad/head-cost=1.5") == ("fspad", {"head_cost_scale": 1.5})
    assert specbench.parse_method("fspad/calibration=maps.json") == ("fspad", {"estimate_calibration_file": "maps.json"})
    assert specbench.parse_method("fspad/lookup=0/calibration=runs/a/maps.json") == (
        "fspad", {"lookup_tokens": 0, "estimate_calibration_file": "runs/a/maps.json"})
    assert specbench.parse_method("fspad/lookup=16/lookup-rates=runs/a/rates.json") == (
        "fspad", {"lookup_tokens": 16, "lookup_rates_file": "runs/a/rates.json"})
    for bad in ("stock/lookup=3", "fspad/lookup=-1", "fspad/merge", "fspad/head-cost=0", "fspad/head-cost=x",
                "fspad/calibration=", "fspad/lookup-rates="):
        with pytest.raises(ValueError, match="'/lookup=N'|follow fspad"):
            specbench.parse_method(bad)


def test_calibration_option_reads_the_map_of_the_decoding_mode(tmp_path):
    maps = {"greedy": {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.7, 0.9]}, "sampling": {"x": [0.0, 1.0], "y": [0.0, 0.5]}}
    path = tmp_path / "maps.json"
    path.write_text(json.dumps(maps))
    assert specbench.load_estimate_calibration(str(path), sampling=False).y == (0.0, 0.7, 0.9)
    assert specbench.load_estimate_calibration(str(path), sampling=True).y == (0.0, 0.5)
    path.write_text(json.dumps({"greedy": maps["greedy"]}))
    with pytest.raises(ValueError, match="'sampling' map"):
        specbench.load_estimate_calibration(str(path), sampling=True)
    with pytest.raises(ValueError, match="need a JSON file"):
        specbench.load_estimate_calibration(str(tmp_path / "missing.json"), sampling=False)


def test_lookup_rates_option_reads_the_table_of_the_decoding_mode(tmp_path):
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({"greedy": {"1": [0.4, 0.6], "8": [0.9, 0.9]}, "sampling": {"1": [0.2, 0.5]}}))
    assert specbench.load_lookup_rates(str(path), sampling=False) == {1: (0.4, 0.6), 8: (0.9, 0.9)}
    assert specbench.load_lookup_rates(str(path), sampling=True) == {1: (0.2, 0.5)}
    path.write_text(json.dumps({"greedy": {"1": [0.4, 0.6]}}))
    with pytest.raises(ValueError, match="'sampling' table"):
        specbench.load_lookup_rates(str(path), sampling=True)


def test_plot_writes_one_chart_per_temperature(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"temperature": t, "group": g, "method": m, "speedup": s}
            for t in (0.0, 1.0) for g in ("qa", "overall") for m, s in (("stock", 1.0), ("fspad", 1.3))]
    assert specbench.plot(rows, tmp_path / "bench.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_T0.png", "bench_T1.png"]


def test_profile_breakdown_adds_up(llama, llama_head):
    import cProfile
    import pstats

    from hf_specdec.bench.profile import breakdown

    profiler = cProfile.Profile()
    profiler.enable()
    # a fixed tree: a cost curve measured on first use would run inside the profile
    llama.generate(torch.tensor([[3, 1, 4, 1, 5]]), assistant_model=llama_head, strategy="fspad", max_new_tokens=20,
                   tree_top_k=2, tree_depth=3, tree_total_tokens=8)
    profiler.disable()
    parts = breakdown(pstats.Stats(profiler))
    assert parts["total"] > 0 and parts["target forwards (prefill + verification)"] > 0
    assert parts["head steps: tree expansion"] > 0 and parts["KV-cache compaction"] > 0
    # the named parts do not overlap: together they fit in the total, so the rest is not negative
    assert all(v >= 0 for v in parts.values()), parts


def test_profile_breakdown_by_hand():
    """Known cumulative times in, the parts out: expansion is taken out of tree growth, the rest is what no
    part claims, and functions of other modules with the same names do not count."""
    from types import SimpleNamespace

    from hf_specdec.bench.profile import breakdown

    def entry(path, name, cumulative):
        return (path, 1, name), (1, 1, 0.0, cumulative, {})

    stats = SimpleNamespace(stats=dict([
        entry("/x/hf_specdec/strategies/fspad.py", "fspad_generate", 10.0),
        entry("/x/hf_specdec/strategies/engine.py", "target_forward", 6.0),
        entry("/x/hf_specdec/tree/growth.py", "grow_tree", 2.5),
        entry("/x/hf_specdec/strategies/drafters.py", "expand", 2.0),
        entry("/x/hf_specdec/strategies/drafters.py", "catch_up", 0.5),
        entry("/x/hf_specdec/tree/cache.py", "compact_cache", 0.25),
        entry("/x/other/engine.py", "target_forward", 99.0),
    ]))
    parts = breakdown(stats)
    assert parts["total"] == 10.0 and parts["target forwards (prefill + verification)"] == 6.0
    assert parts["head steps: tree expansion"] == 2.0 and parts["tree growth bookkeeping (without head steps)"] == 0.5
    assert parts["head steps: catch-up on accepted tokens"] == 0.5 and parts["KV-cache compaction"] == 0.25
    assert parts["rest (Python, glue)"] == pytest.approx(10.0 - 6.0 - 2.5 - 0.5 - 0.25)


def test_multidraft_method_names():
    assert specbench.parse_method("spechub@7") == (
        "spechub", {"verifier": "spechub", "drafts_per_node": 2, "tree_depth": 2, "tree_total_tokens": 7})
    assert specbench.parse_method("rrsw@13,3")[1] == {"verifier": "rrsw", "drafts_per_node": 3, "tree_depth": 2,
                                                      "tree_total_tokens": 13}
    assert specbench.parse_method("rrs@16")[1]["tree_depth"] == 4  # the smallest full binary tree holding 16
    assert specbench.parse_method("rrs@4,1")[1]["tree_depth"] == 3  # a chain
    with pytest.raises(ValueError, match="budget N or N,W"):
        specbench.parse_method("spechub@a")
    with pytest.raises(SystemExit):  # sampling methods need a temperature above 0
        specbench.main(["--methods", "stock", "spechub@7", "--temperatures", "0"])


def test_bench_runs_the_multidraft_rules(tiny_setup, tmp_path):
    root, questions = tiny_setup
    out = tmp_path / "bench.json"
    specbench.main(["--questions", str(questions), "--per-category", "1", "--max-new-tokens", "10",
                    "--model", str(root / "target"), "--draft", str(root / "fspad"), "--dtype", "float32",
                    "--temperatures", "0.6", "--methods", "spechub@7", "rrs@3", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {r["method"] for r in result["records"]} == {"stock", "spechub@7", "rrs@3"}
    rows = {(r["group"], r["method"]): r for r in result["rows"]}
    assert rows[("overall", "spechub@7")]["tau"] >= 1.0 and "match_rate" not in rows[("overall", "spechub@7")]


def test_rrsw_acceptance_estimate_matches_enumeration():
    """The benchmark's Monte Carlo RRSw acceptance agrees with the exact enumeration of the rule."""
    from test_multidraft import enumerate_rule

    from hf_specdec.bench.acceptance import rrsw_acceptance

    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    _, exact = enumerate_rule("rrsw", p, q, 2)
    estimate = rrsw_acceptance(p[None], q[None], 2, draws=40_000, generator=gen)
    assert float(estimate) == pytest.approx(exact, abs=0.01)
    assert exact > float(torch.minimum(p, q).sum())  # two drafts beat one


def test_bench_batch_runs_every_batch_size_and_counts_real_tokens(tiny_setup):
    """bench-batch's measuring loop on the tiny float32 target: every row equals stock's batched row, tokens
    are counted to each row's EOS, and the prompts are left-padded chat turns."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_specdec.bench import batch

    root, questions = tiny_setup
    target = AutoModelForCausalLM.from_pretrained(root / "target").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "target")
    head = FSPADDraftModel.from_pretrained(root / "fspad")
    rows = [{"turns": [t]} for t in ["Who wrote Hamlet?", "Write a line.", "Hi", "Name a prime number, please."]]
    tokenizer.padding_side = "right"
    padded = batch.chat_batches(tokenizer, rows, 4)[0]
    assert padded["attention_mask"][:, -1].all() and not padded["attention_mask"][:, 0].all()  # left padding
    assert tokenizer.padding_side == "right"  # the tokenizer's own setting is restored
    results = batch.run(target, tokenizer, head, rows, [1, 2, 4], max_new_tokens=10, repeats=1)
    assert set(results) == {1, 2, 4}
    for B, r in results.items():
        assert r["bf16_rows_equal_stock"] == 1.0  # float32 here: every row is stock's
        assert r["new_tokens"]["stock"] == r["new_tokens"]["fspad"] <= 4 * 10
        assert r["batches"] == 4 // B and r["speedup"] > 0
    eos = 7
    assert batch.real_new_tokens(torch.tensor([[1, 2, 3, eos, 0, 0], [1, 4, 5, 6, 8, 9]]), 2, {eos}) == [
        [3, eos], [5, 6, 8, 9]]


def test_overhead_attributes_every_torch_call_of_a_cycle_to_its_call_site():
    import sys

    from hf_specdec.bench import overhead

    cycles, sites = overhead.calls_by_site(new_tokens=12)
    assert cycles > 0
    per_cycle = {site: calls / cycles for site, calls in sites.items()}
    assert per_cycle["hf_specdec/tree/growth.py:grow_tree"] >= 1  # the engine's own work, by function
    assert any(site.startswith("transformers/models/llama/modeling_llama.py:") for site in sites)  # the target's
    assert per_cycle.get("other", 0) < 1  # nearly every call is asked for by one of the two packages
    assert overhead.call_site(sys._getframe()) == "other"  # a frame outside both (this test, pytest)

    # the sites share out exactly the calls a plain count sees in the same decoding
    job = overhead.decoding_jobs(new_tokens=12)[overhead.SITES_CONFIG]
    for _ in range(2):  # the second run, as calls_by_site counts it (the first builds the head's tables)
        with torch.no_grad(), overhead.CallCounter() as plain:
            job()
    assert sum(sites.values()) == plain.calls


def test_bench_expected_tau_at_sampling_temperatures(tiny_setup, tmp_path):
    """--expected-tau: sampled fspad answers carry their expected token count (the accepted counts replaced by
    their expectations, so at least one token per target forward), rows and table an E[tau] / E[speedup]."""
    root, questions = tiny_setup
    out = tmp_path / "bench.json"
    specbench.main(["--questions", str(questions), "--per-category", "1", "--max-new-tokens", "8",
                    "--model", str(root / "target"), "--draft", str(root / "fspad"), "--methods", "stock", "fspad",
                    "pld", "--dtype", "float32", "--temperatures", "0", "1", "--expected-tau", "--out", str(out)])
    result = json.loads(out.read_text())
    for r in result["records"]:
        tracked = r["method"] == "fspad" and r["temperature"] == 1
        assert ("expected_new_tokens" in r) == tracked
        if tracked:
            assert r["expected_new_tokens"] >= r["target_forwards"]  # >= 1 token per forward, the prefill's too
    rows = {(r["temperature"], r["group"], r["method"]): r for r in result["rows"]}
    assert rows[(1.0, "overall", "fspad")]["expected_tau"] >= 1.0
    assert rows[(1.0, "overall", "fspad")]["expected_speedup"] > 0
    assert "expected_tau" not in rows[(0.0, "overall", "fspad")] and "expected_tau" not in rows[(1.0, "overall", "pld")]
    table = out.with_suffix(".md").read_text()
    assert "E[tau] | E[speedup] |" in table and "| 1 | overall | pld |" in table


def test_overhead_times_a_cycle_by_phase_and_restores_the_engine():
    """The phases add up to the cycle (the rest is what the timed functions leave), each is positive, and the
    wrapped engine functions are the originals again afterwards."""
    from hf_specdec.bench import overhead
    from hf_specdec.strategies import drafters, engine, fspad

    before = (engine.target_forward, drafters.HeadDrafter.catch_up, drafters.HeadDrafter.expand, fspad.grow_tree)
    phases = overhead.time_by_phase(new_tokens=12, rounds=1)
    assert set(phases) == {*overhead.PHASES, "cycle"}
    assert all(phases[p] > 0 for p in overhead.PHASES)
    assert abs(sum(phases[p] for p in overhead.PHASES) - phases["cycle"]) < 1e-6
    assert (engine.target_forward, drafters.HeadDrafter.catch_up, drafters.HeadDrafter.expand, fspad.grow_tree) == before


def test_a_target_drafting_its_own_tree_scores_every_node_with_its_own_probabilities(llama):
    """The sampling ceiling's drafter (the target as an ordinary causal-LM drafter in fspad's tree growth): every
    node's estimate is the product of the target's probabilities along its path, each from a plain forward of
    that prefix (q = p at every node, so the tree is ranked by what verification accepts)."""
    from hf_specdec.strategies.common import SpecDecodeStats
    from hf_specdec.strategies.drafters import CausalLMDrafter
    from hf_specdec.strategies.fspad import TreeDrafts, TreeShape

    prompt = torch.tensor([[5, 17, 42, 9, 33]])
    first = torch.tensor([61])
    drafter = CausalLMDrafter(llama, SpecDecodeStats())
    with torch.no_grad():
        state = drafter.start(prompt, first, None)
        tree = TreeDrafts(drafter, TreeShape(3, 3, 10, lookup_tokens=0), None, "merge", None, sampling=True)(
            torch.cat([prompt, first[:, None]], 1), state, prompt.shape[1])
        assert tree.tokens.shape[1] == 10 and int(tree.depths.max()) == 3
        for node in range(1, tree.tokens.shape[1]):
            path = [n for n in range(tree.tokens.shape[1]) if tree.ancestors[0, node, n]]  # root first
            text = torch.cat([prompt, tree.tokens[:, path]], 1)
            p = llama(text).logits[0].float().softmax(-1)
            start = prompt.shape[1]  # the root's position: its logits score the first drafted token
            expected = torch.prod(torch.stack([p[start + i, text[0, start + i + 1]] for i in range(len(path) - 1)]))
            assert float(tree.estimates[0, node]) == pytest.approx(float(expected), rel=1e-4)


def test_sampling_ceiling_accepts_every_level_when_the_target_is_near_greedy(llama):
    """With q = p and a near one-hot p (T = 0.01 on a peaked tiny target), every level is accepted: the expected
    tau per cycle is tree_depth + 1. At T = 1 it is below that, and it is one expectation per verification."""
    from hf_specdec.bench.sampling_ceiling import self_drafted_generate

    ids = torch.tensor([[5, 17, 42, 9, 33]])
    tree = dict(tree_top_k=2, tree_depth=3, tree_total_tokens=8)
    torch.manual_seed(0)
    cold = llama.generate(ids, custom_generate=self_drafted_generate, draft_model=llama, max_new_tokens=24,
                          do_sample=True, temperature=0.01, top_k=None, top_p=None, return_dict_in_generate=True, **tree)
    assert cold.spec_stats.expected_tau == pytest.approx(4.0, abs=1e-3)
    warm = llama.generate(ids, custom_generate=self_drafted_generate, draft_model=llama, max_new_tokens=24,
                          do_sample=True, temperature=1.0, top_k=None, top_p=None, return_dict_in_generate=True, **tree)
    stats = warm.spec_stats
    assert 1.0 < stats.expected_tau < 4.0 and len(stats.expected_lengths) == stats.target_forwards - 1
    with pytest.raises(ValueError, match="tree_depth \\+ 1"):
        llama.generate(ids, custom_generate=self_drafted_generate, draft_model=llama, max_new_tokens=4, do_sample=False)
