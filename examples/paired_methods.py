"""Two methods of `hf-specdec bench`, answer by answer, pooled over runs (say, several --seed runs at T=1): each
one's tau, speedup against stock and ms per target forward over all the answers, and the per-answer differences
B - A with their standard errors: tau (the bench's: new tokens per target forward, the prefill counted) and
log(tokens per second), also with the expected tokens of `--expected-tau` where the runs have them. At T > 0
each method samples its own text, so one run cannot tell two close methods apart; the standard errors say how
far apart they are.

    python examples/paired_methods.py run_seed0.json run_seed1.json --methods fspad eagle2 [--temperature 1]
"""

import argparse
import json
import math
import statistics


def mean_and_error(values: list[float]) -> str:
    return f"{statistics.mean(values):+.3f} +- {statistics.stdev(values) / len(values) ** 0.5:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="JSON files written by hf-specdec bench")
    ap.add_argument("--methods", nargs=2, required=True, metavar=("A", "B"))
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    answers = []  # {method: record} per (file, question, turn)
    for path in args.results:
        by_answer = {}
        for r in json.load(open(path))["records"]:
            if r["temperature"] == args.temperature:
                by_answer.setdefault((r["question_id"], r["turn"]), {})[r["method"]] = r
        answers += [a for a in by_answer.values() if {"stock", *args.methods} <= a.keys()]
    stock_rate = sum(a["stock"]["new_tokens"] for a in answers) / sum(a["stock"]["seconds"] for a in answers)
    keys = ["new_tokens"] + (["expected_new_tokens"] if all("expected_new_tokens" in a[m] for a in answers
                                                           for m in args.methods) else [])
    print(f"{len(answers)} answers at T={args.temperature:g}\n")
    print("| method | tokens | tau | speedup | ms per target forward |\n|---|---|---|---|---|")
    for m in args.methods:
        forwards, seconds = sum(a[m]["target_forwards"] for a in answers), sum(a[m]["seconds"] for a in answers)
        for key in keys:
            tokens = sum(a[m][key] for a in answers)
            label = "expected" if key == "expected_new_tokens" else "accepted"
            print(f"| {m} | {label} | {tokens / forwards:.3f} | {tokens / seconds / stock_rate:.3f}x | "
                  f"{1000 * seconds / forwards:.1f} |")
    a, b = args.methods
    print(f"\n| per answer, {b} - {a} | tau | log(tokens per second) |\n|---|---|---|")
    for key in keys:
        tau = [x[b][key] / x[b]["target_forwards"] - x[a][key] / x[a]["target_forwards"] for x in answers]
        rate = [math.log((x[b][key] / x[b]["seconds"]) / (x[a][key] / x[a]["seconds"])) for x in answers]
        label = "expected tokens" if key == "expected_new_tokens" else "accepted tokens"
        print(f"| {label} | {mean_and_error(tau)} (sd {statistics.stdev(tau):.3f}) | {mean_and_error(rate)} |")


if __name__ == "__main__":
    main()
