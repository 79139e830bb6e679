"""Spec-Bench on this machine: stock greedy `generate` (1.00x), transformers prompt lookup decoding,
strategy="fspad" with the shipped FSPAD head (its defaults: lookup drafts merged into cost-sized trees; or
`fspad/lookup=0`, the head alone; `fspad@K,D,N` a fixed tree) and with the EAGLE-2 baseline head, and
strategy="spechub" with the SpecHub / RRS / RRSw verifiers on trees of sampled children (the FSPAD head
drafting), interleaved per question.

    hf-specdec bench --per-category 4 --max-new-tokens 128 --temperatures 0 1 --repeats 3
    hf-specdec bench --per-category 3 --temperatures 0.6 1 --methods stock rrs@7 rrsw@7 spechub@7

Protocol (Spec-Bench, hemingkx/Spec-Bench): each question is asked through the chat template; MT-bench
questions have two turns, the second asked after the method's own first answer. Reported per category
group and overall: tau (new tokens per target forward, the prefill included, counted by a hook on the
target's decoder, so it is the same measure for every method), tokens/s, speedup against stock (ratio of
total tokens/s) and, greedy only, the share of answers identical to stock's. Every method answers each
question before the next question starts, in an order that rotates per question, so machine noise hits
all methods alike. Writes JSON (all per-answer records) and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import torch

from ..prepacked import prepacked_linears
from ..strategies.calibration import cost_curve_for
from ..strategies.spechub import full_tree_size
from ..tree import EstimateCalibration

DEV_QUESTIONS = Path(__file__).resolve().parent / "data" / "spec_bench_dev.jsonl"  # shipped (data/README.md)
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
GROUPS = ["multi-turn conversation", "translation", "summarization", "qa", "math_reasoning", "rag"]


def group_of(category: str) -> str:
    return "multi-turn conversation" if category in MT_BENCH else category


def load_questions(path, per_category: int | None = None) -> list[dict]:
    """Spec-Bench rows ({question_id, category, turns}; prompt-pool rows {id, source, prompt} also work);
    with `per_category`, the first N of each group
    (MT-bench categories taken round-robin, so a small N still spans them)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if "prompt" in row and "turns" not in row:  # a training-pool row: its source is its category
            rows[i] = row = {"question_id": row.get("id", i), "category": row.get("source", "prompt"), "turns": [row["prompt"]]}
        if not row.get("turns") or "category" not in row:
            raise ValueError(f"{path}: question {row.get('question_id')} needs 'category' and non-empty 'turns'.")
        if not isinstance(row.get("question_id"), int):  # a text id (e.g. the data builders' "tr-en-de-17"):
            row["seed_id"] = zlib.crc32(str(row.get("question_id", i)).encode())  # a stable number to seed with
    if per_category is None:
        return rows
    by_group: dict[str, list[list[dict]]] = defaultdict(list)
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_cat[row["category"]].append(row)
    for cat, cat_rows in by_cat.items():
        by_group[group_of(cat)].append(cat_rows)
    picked = []
    for group, lists in by_group.items():
        taken = []
        for i in range(max(len(rows) for rows in lists)):
            taken.extend(rows[i] for rows in lists if i < len(rows))
        picked.extend(taken[:per_category])
    return picked


class ForwardCounter:
    """Counts forward passes of a module (the target's decoder: every method calls it once per step)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def remove(self):
        self._handle.remove()


MULTIDRAFT = ("spechub", "rrs", "rrsw")  # strategy="spechub" with this verifier, the shipped FSPAD head drafting


def parse_method(name: str) -> tuple[str, dict]:
    """'stock', 'pld', 'fspad', 'eagle2', or a head method with a tree shape: 'fspad@top_k,depth,total_tokens';
    or a multi-draft rule on a tree of sampled children: 'spechub@N', 'rrs@N', 'rrsw@N' (N tree tokens, root
    included; two children per node, the depth of the smallest full binary tree holding N), or '...@N,W' with
    W children per node. A head method may end with options: '/lookup=N' (lookup_tokens=N; 0: the head alone),
    '/choose' (lookup_mode="choose"), '/raw' (estimate_calibration=False: the head's raw path probabilities),
    '/context-free' (the cost curve without its long-context measurement: every cycle sized as after 256 tokens),
    '/isolated-costs' (the cost curve of the isolated measurements, not refitted to whole cycles),
    '/head-gate' (head_gate=True: cycles may skip a head whose recent drafts did not pay), '/exact' (draft_int8=False:
    the head on its own weights, not the int8 copies a CPU head drafts from by default), '/unpacked'
    (prepack_target=False: the target's linear layers as F.linear runs them, hf_specdec/prepacked.py; spechub / rrs /
    rrsw take it too), '/head-cost=X' (the
    cost curve with its head steps X times what was measured: how sizing would draft where head steps cost more,
    or less, relative to a verification), '/calibration=PATH', last (estimate_calibration from a JSON of maps,
    {"greedy": {x, y}, "sampling": {x, y}}, the one for the decoding mode; the shipped head's are in its
    folder's estimate_calibration.json). 'stock/prepacked' and 'pld/prepacked': stock decoding or transformers' prompt
    lookup with the target's linear layers prepacked as strategy="fspad" runs them by default (what of fspad's
    speed-up is the packing's)."""
    name, *options = name.split("/")
    extra = {}
    for i, option in enumerate(options):  # a calibration PATH may hold '/': it takes the rest of the name
        if option.startswith(("calibration=", "lookup-rates=")):
            options[i:] = ["/".join(options[i:])]
            break
    for option in options:
        if option == "prepacked" and name in ("stock", "pld"):
            extra["prepacked_target"] = True
            continue
        if option == "unpacked" and name.partition("@")[0] in MULTIDRAFT:
            extra["prepack_target"] = False
            continue
        if name.partition("@")[0] not in ("fspad", "eagle2"):
            raise ValueError(f"Method {name}/{option}: options after '/' follow fspad or eagle2 only (stock and pld "
                             "take '/prepacked').")
        if option == "choose":
            extra["lookup_mode"] = "choose"
        elif option == "raw":
            extra["estimate_calibration"] = False
        elif option == "context-free":
            extra["context_free_costs"] = True
        elif option == "isolated-costs":
            extra["isolated_costs"] = True
        elif option == "head-gate":
            extra["head_gate"] = True
        elif option == "exact":
            extra["draft_int8"] = False
        elif option == "unpacked":
            extra["prepack_target"] = False
        elif option.startswith("head-cost=") and _positive_float(option[10:]):
            extra["head_cost_scale"] = float(option[10:])
        elif option.startswith("calibration=") and option[12:]:
            extra["estimate_calibration_file"] = option[12:]
        elif option.startswith("lookup-rates=") and option[13:]:
            extra["lookup_rates_file"] = option[13:]
        elif option.startswith("lookup=") and option[7:].isdigit():
            extra["lookup_tokens"] = int(option[7:])
        else:
            raise ValueError(f"Method {name}/{option}: options are '/lookup=N' (N >= 0), '/choose', '/raw', '/context-free', '/isolated-costs', '/head-gate', '/exact', '/unpacked', "
                             "'/head-cost=X' (X > 0), '/calibration=PATH' and '/lookup-rates=PATH'.")
    base, tree_kwargs = _parse_base(name)
    return base, {**tree_kwargs, **extra}


def load_estimate_calibration(path: str, sampling: bool) -> EstimateCalibration:
    """The map for one decoding mode from a JSON of {"greedy": {x, y}, "sampling": {x, y}}."""
    mode = "sampling" if sampling else "greedy"
    try:
        return EstimateCalibration.from_dict(json.loads(Path(path).read_text())[mode])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"/calibration={path}: need a JSON file with a {mode!r} map ({{'x': [...], 'y': [...]}}); "
                         f"{type(err).__name__}: {err}") from None


def load_lookup_rates(path: str, sampling: bool) -> dict[int, tuple[float, float]]:
    """The lookup rates for one decoding mode from a JSON of {"greedy": {n: [a, g]}, "sampling": {...}}."""
    mode = "sampling" if sampling else "greedy"
    try:
        return {int(n): (float(a), float(g)) for n, (a, g) in json.loads(Path(path).read_text())[mode].items()}
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"/lookup-rates={path}: need a JSON file with a {mode!r} table ({{'1': [a, g], ...}}); "
                         f"{type(err).__name__}: {err}") from None


def _positive_float(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _parse_base(name: str) -> tuple[str, dict]:
    base, _, tree = name.partition("@")
    if base in MULTIDRAFT:
        try:
            n, width = ([int(v) for v in tree.split(",")] + [2])[:2] if tree else (15, 2)
        except ValueError:
            raise ValueError(f"Method {name!r}: after '@' give the node budget N or N,W.") from None
        if n < 2 or width < 1:
            raise ValueError(f"Method {name!r}: the budget counts the root (>= 2) and W >= 1.")
        depth = 1
        while width > 1 and full_tree_size(width, depth) < n:
            depth += 1
        depth = n - 1 if width == 1 else depth
        return base, {"verifier": base, "drafts_per_node": width, "tree_depth": depth, "tree_total_tokens": n}
    if base not in ("stock", "pld", "fspad", "eagle2") or (tree and base in ("stock", "pld")):
        raise ValueError(f"Unknown method {name!r}: use stock, pld, fspad, eagle2, fspad@K,D,N / eagle2@K,D,N, "
                         "each optionally /lookup=N, /choose, /raw, /context-free, /isolated-costs, /head-gate, /exact and /head-cost=X, or spechub / rrs / rrsw [@N[,W]].")
    if not tree:
        return base, {}
    try:
        k, d, n = (int(v) for v in tree.split(","))
    except ValueError:
        raise ValueError(f"Method {name!r}: the tree shape after '@' must be three integers K,D,N.") from None
    return base, {"tree_top_k": k, "tree_depth": d, "tree_total_tokens": n}


def method_kwargs(name: str, heads: dict, pld_tokens: int) -> dict:
    base, tree = parse_method(name)
    if base == "stock":
        return dict(tree)  # its only option: prepacked_target
    if base == "pld":
        return {"prompt_lookup_num_tokens": pld_tokens, **tree}
    if base in MULTIDRAFT:
        return {"assistant_model": heads["fspad"], "strategy": "spechub", **tree}
    return {"assistant_model": heads[base], "strategy": "fspad", **tree}


def run(target, tokenizer, questions, methods, heads, temperatures, max_new_tokens, pld_tokens=10, seed=0,
        progress=True, repeats=1, expected_tau=False) -> list[dict]:
    """Answer every question with every method at every temperature; one record per (method, turn).

    With `repeats` > 1 every turn is answered that many times by every method (methods interleaved within
    each repeat, the order rotating) and a record keeps the median time; the answers themselves are
    deterministic (greedy, or sampling from a fixed seed), so the first one carries the conversation on.
    With `expected_tau`, a strategy="fspad" answer at T > 0 also records `expected_new_tokens`: its tokens with
    each cycle's accepted count replaced by its expectation under the sampling rule (`track_expected_tau`)."""
    from tqdm.auto import tqdm

    counter = ForwardCounter(target.get_decoder())
    records = []
    jobs = [(q, t) for t in temperatures for q in questions]

    def answer(name, ids, temperature, turn_i, question):
        sampling = {"do_sample": False} if temperature == 0 else {
            "do_sample": True, "temperature": float(temperature), "top_k": None, "top_p": None}
        if temperature:
            torch.manual_seed(seed + question.get("seed_id", question["question_id"]) * 7 + turn_i)
        counter.count = 0
        start = time.perf_counter()
        kwargs = method_kwargs(name, heads, pld_tokens)
        context_free, head_cost = kwargs.pop("context_free_costs", False), kwargs.pop("head_cost_scale", None)
        isolated = kwargs.pop("isolated_costs", False)
        if "estimate_calibration_file" in kwargs:
            kwargs["estimate_calibration"] = load_estimate_calibration(kwargs.pop("estimate_calibration_file"),
                                                                       sampling=bool(temperature))
        if "lookup_rates_file" in kwargs:
            kwargs["lookup_calibration"] = load_lookup_rates(kwargs.pop("lookup_rates_file"), sampling=bool(temperature))
        if context_free or head_cost is not None or isolated:
            curve = cost_curve_for(target, kwargs["assistant_model"], isolated=isolated, int8=kwargs.get("draft_int8"),
                                   prepack=kwargs.get("prepack_target"))
            if head_cost is not None:
                curve = dataclasses.replace(curve, head_step_ms=head_cost * curve.head_step_ms,
                                            long_head_step_ms=head_cost * curve.long_head_step_ms)
            if context_free:
                curve = dataclasses.replace(curve, long_context=0, long_verify_ms=(), long_head_step_ms=0.0)
            kwargs["cost_curve"] = curve
        track = expected_tau and temperature > 0 and kwargs.get("strategy") == "fspad"
        if track:
            kwargs.update(track_expected_tau=True, return_dict_in_generate=True)
        with prepacked_linears(target, kwargs.pop("prepacked_target", False)):
            out = target.generate(ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                                  **sampling, **kwargs)
        elapsed = time.perf_counter() - start
        sequences = out.sequences if hasattr(out, "sequences") else out
        new = sequences[0, ids.shape[1]:].tolist()
        extra = {}
        if track:
            stats = out.spec_stats
            extra["expected_new_tokens"] = len(new) - sum(stats.accepted_lengths) + sum(stats.expected_lengths)
        return new, counter.count, elapsed, extra

    try:
        for job_i, (question, temperature) in enumerate(tqdm(jobs, desc="spec-bench", disable=not progress)):
            histories = {m: [] for m in methods}
            for turn_i, turn in enumerate(question["turns"]):
                prompts, answers, seconds = {}, {}, defaultdict(list)
                for name in methods:
                    histories[name].append({"role": "user", "content": turn})
                    prompts[name] = tokenizer.apply_chat_template(histories[name], add_generation_prompt=True,
                                                                  return_tensors="pt", return_dict=True)["input_ids"]
                for rep in range(repeats):
                    shift = (job_i + rep) % len(methods)
                    for name in methods[shift:] + methods[:shift]:  # rotate who goes first
                        new, forwards, elapsed, extra = answer(name, prompts[name], temperature, turn_i, question)
                        answers.setdefault(name, (new, forwards, extra))
                        seconds[name].append(elapsed)
                for name in methods:
                    new, forwards, extra = answers[name]
                    histories[name].append({"role": "assistant",
                                            "content": tokenizer.decode(new, skip_special_tokens=True)})
                    records.append({
                        "question_id": question["question_id"], "category": question["category"],
                        "group": group_of(question["category"]), "turn": turn_i, "temperature": temperature,
                        "method": name, "new_tokens": len(new), "target_forwards": forwards,
                        "seconds": statistics.median(seconds[name]), "seconds_each": seconds[name], "tokens": new,
                        **extra,
                    })
    finally:
        counter.remove()
    return records


def summarize(records: list[dict], methods: list[str]) -> list[dict]:
    """Rows per (temperature, group, method) plus an 'overall' group."""
    rows = []
    for temperature in sorted({r["temperature"] for r in records}):
        recs = [r for r in records if r["temperature"] == temperature]
        groups = [g for g in GROUPS if any(r["group"] == g for r in recs)]
        groups += sorted({r["group"] for r in recs} - set(groups)) + ["overall"]
        stock_answers = {(r["question_id"], r["turn"]): r["tokens"] for r in recs if r["method"] == "stock"}
        for group in groups:
            in_group = [r for r in recs if group == "overall" or r["group"] == group]
            base = [r for r in in_group if r["method"] == "stock"]
            base_rate = sum(r["new_tokens"] for r in base) / sum(r["seconds"] for r in base) if base else None
            for m in methods:
                mine = [r for r in in_group if r["method"] == m]
                if not mine:
                    continue
                rate = sum(r["new_tokens"] for r in mine) / sum(r["seconds"] for r in mine)
                row = {
                    "temperature": temperature, "group": group, "method": m, "answers": len(mine),
                    "tau": sum(r["new_tokens"] for r in mine) / sum(r["target_forwards"] for r in mine),
                    "tokens_per_s": rate, "speedup": rate / base_rate if base_rate else None,
                }
                if all("expected_new_tokens" in r for r in mine):
                    expected = sum(r["expected_new_tokens"] for r in mine)
                    row["expected_tau"] = expected / sum(r["target_forwards"] for r in mine)
                    row["expected_speedup"] = (expected / sum(r["seconds"] for r in mine) / base_rate
                                               if base_rate else None)
                if temperature == 0 and m != "stock" and stock_answers:
                    # only first turns compare like with like: second turns follow each method's own answer
                    pairs = [(r["tokens"], stock_answers.get((r["question_id"], r["turn"]))) for r in mine if r["turn"] == 0]
                    row["match_rate"] = statistics.mean(a == b for a, b in pairs) if pairs else None
                rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    # with --expected-tau: tau and speedup with every sampled cycle's accepted count replaced by its expectation
    expected = any("expected_tau" in r for r in rows)
    extra_head = " E[tau] | E[speedup] |" if expected else ""
    lines = [f"Spec-Bench ({meta['questions']} questions), {meta['model']}, {meta['dtype']}, {meta['machine']}, "
             f"{meta['date']}, max_new_tokens {meta['max_new_tokens']}", "",
             "| T | category | method | tau | tok/s | speedup | identical to stock (greedy, turn 1) |" + extra_head,
             "|---|---|---|---|---|---|---|" + "---|---|" * expected]
    for r in rows:
        match = f"{r['match_rate']:.0%}" if r.get("match_rate") is not None else "-"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        extra = ""
        if expected:
            e_tau = f"{r['expected_tau']:.2f}" if "expected_tau" in r else "-"
            e_speed = f"{r['expected_speedup']:.2f}x" if r.get("expected_speedup") is not None else "-"
            extra = f" {e_tau} | {e_speed} |"
        lines.append(f"| {r['temperature']:g} | {r['group']} | {r['method']} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} "
                     f"| {speed} | {match} |" + extra)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    for temperature in sorted({r["temperature"] for r in rows}):
        sub = [r for r in rows if r["temperature"] == temperature and r["method"] != "stock"]
        groups = list(dict.fromkeys(r["group"] for r in sub))
        methods = list(dict.fromkeys(r["method"] for r in sub))
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / max(len(methods), 1)
        for k, m in enumerate(methods):
            vals = [next((r["speedup"] for r in sub if r["group"] == g and r["method"] == m), 0) for g in groups]
            ax.bar([i + k * width for i in range(len(groups))], vals, width, label=m)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(groups))], groups, rotation=20, fontsize=8)
        ax.set_ylabel("speedup vs stock")
        ax.set_title(f"Spec-Bench, T={temperature:g}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.with_name(f"{path.stem}_T{temperature:g}{path.suffix}"))
        plt.close(fig)
    return True


def load_heads(target, tokenizer, draft: str | None, baseline: str | None, methods: list[str]) -> dict:
    from ..draft import FSPADDraftModel
    from ..heads import default_baseline_draft, default_draft

    bases = {parse_method(m)[0] for m in methods}
    heads = {}
    if "fspad" in bases or bases & set(MULTIDRAFT):
        heads["fspad"] = (FSPADDraftModel.from_pretrained(draft, dtype=target.dtype).attach_target(target, tokenizer)
                          if draft else default_draft(target, tokenizer))
    if "eagle2" in bases:
        heads["eagle2"] = (FSPADDraftModel.from_pretrained(baseline, dtype=target.dtype).attach_target(target, tokenizer)
                           if baseline else default_baseline_draft(target, tokenizer))
    return heads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-specdec bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", default=str(DEV_QUESTIONS), help="Spec-Bench style JSONL")
    p.add_argument("--per-category", type=int, default=None, help="first N questions of each category group")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0])
    p.add_argument("--methods", nargs="+", default=["stock", "pld", "fspad", "fspad/lookup=0"],
                   help="stock, pld, fspad, eagle2; a head method may name its tree: fspad@K,D,N (top_k, depth, "
                        "total tokens; default: the head's own generation_config); sampling only: spechub, rrs, "
                        "rrsw on binary trees of sampled children, optionally @N (tree tokens) or @N,W (W children)")
    p.add_argument("--model", default=None, help="target folder or id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--draft", default=None, help="FSPAD head folder or id (default: the shipped head)")
    p.add_argument("--baseline-draft", default=None, help="EAGLE-2 head folder or id (default: the shipped baseline)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--pld-tokens", type=int, default=10, help="prompt_lookup_num_tokens for the pld method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="time every answer N times (methods interleaved within each repeat) and keep the median")
    p.add_argument("--out", default="bench_results/specbench.json")
    p.add_argument("--plot", action="store_true", help="also save a speedup bar chart per temperature (matplotlib)")
    p.add_argument("--expected-tau", action="store_true",
                   help="at T > 0, also report E[tau] and E[speedup] of the fspad / eagle2 methods: each cycle's "
                        "accepted count replaced by its expectation under the sampling rule, which removes the "
                        "noise of the draws (costs a softmax normaliser over each tree's scores)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for m in args.methods:
        try:
            parse_method(m)
        except ValueError as e:
            parser.error(str(e))
    if 0 in args.temperatures and any(parse_method(m)[0] in MULTIDRAFT for m in args.methods):
        parser.error("spechub / rrs / rrsw are sampling methods: give --temperatures above 0 (e.g. 0.6 1).")
    if "stock" not in args.methods:
        args.methods = ["stock"] + args.methods  # the baseline every speedup is measured against
    from ..training.prepare import load_target

    target, tokenizer = load_target(args.model, getattr(torch, args.dtype))
    heads = load_heads(target, tokenizer, args.draft, args.baseline_draft, args.methods)
    questions = load_questions(args.questions, args.per_category)
    # warm-up: one short answer per method, untimed
    run(target, tokenizer, questions[:1], args.methods, heads, args.temperatures[:1], 8, args.pld_tokens, progress=False)
    records = run(target, tokenizer, questions, args.methods, heads, args.temperatures, args.max_new_tokens,
                  args.pld_tokens, args.seed, repeats=args.repeats, expected_tau=args.expected_tau)
    rows = summarize(records, args.methods)
    meta = {
        "command": "hf-specdec bench " + " ".join(argv if argv is not None else sys.argv[2:]),
        "model": args.model or "SmolLM2-135M-Instruct", "dtype": args.dtype, "questions": len(questions),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if not torch.cuda.is_available()
        else torch.cuda.get_device_name(), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
        "heads": {k: str(getattr(h, "name_or_path", "")) for k, h in heads.items()},
    }
    table = markdown(rows, meta)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "records": records}, indent=1))
    out.with_suffix(".md").write_text(table)
    if args.plot and not plot(rows, out.with_suffix(".png")):
        print("--plot: matplotlib is not installed; skipped the chart")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
