"""Per answer, what `hf-specdec bench` recorded: new tokens, tau, speedup against stock on the same question and
ms per target forward, for one category and temperature. In bf16 each method decodes its own text, so a
category's speedups compare answers of different lengths; this shows where.

    python examples/per_answer.py bench_results/specbench_bf16.json qa [--temperature 0]
"""

import argparse
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("category")
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args()
    answers = {}
    for r in json.load(open(args.results))["records"]:
        if r["category"] == args.category and r["temperature"] == args.temperature:
            answers.setdefault((r["question_id"], r["turn"]), {})[r["method"]] = r
    print("| question, turn | method | new tokens | tau | speedup vs stock | ms per target forward |")
    print("|---|---|---|---|---|---|")
    for (question, turn), methods in answers.items():
        stock = methods["stock"]["seconds"] / methods["stock"]["new_tokens"]
        for method, r in methods.items():
            cycles = max(r["target_forwards"] - 1, 1)  # the prefill is no cycle
            tau = 1.0 if method == "stock" else r["new_tokens"] / cycles
            print(f"| {question}, {turn} | {method} | {r['new_tokens']} | {tau:.2f} | "
                  f"{stock / (r['seconds'] / r['new_tokens']):.2f}x | {r['seconds'] / r['target_forwards'] * 1000:.0f} |")


if __name__ == "__main__":
    main()
