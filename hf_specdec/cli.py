"""`hf-specdec` command line: one subcommand a module (see COMMANDS)."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("hf_specdec.demo", "the default model with and without strategy='fspad': texts, tau, speedup"),
    "costs": ("hf_specdec.bench.costs", "cost of a tree verification forward and of one head step"),
    "ceiling": ("hf_specdec.bench.ceiling", "speed at a known draft accuracy (oracle head) per tree shape"),
    "sampling-ceiling": ("hf_specdec.bench.sampling_ceiling", "expected tau at T > 0: the head against the target drafting its own tree (q = p)"),
    "bench": ("hf_specdec.bench.specbench", "Spec-Bench: stock vs prompt lookup vs fspad / EAGLE-2 heads vs spechub rules"),
    "bench-batch": ("hf_specdec.bench.batch", "batched stock greedy vs batched fspad, B = 1, 2, 4, 8: tokens/s, identity"),
    "acceptance": ("hf_specdec.bench.acceptance", "per-node acceptance of RRS / RRSw / SpecHub on real (p, q) pairs"),
    "bench-superposed": ("hf_specdec.bench.superposed", "superposed drafts vs greedy / nucleus / beam: time, perplexity"),
    "bench-kernels": ("hf_specdec.bench.kernels", "Triton tree kernels vs the torch paths they replace (GPU)"),
    "calibrate": ("hf_specdec.bench.costs:calibrate_main", "measure (or show) this machine's cost curve for tree sizing"),
    "calibrate-lookup": ("hf_specdec.bench.lookup_calibration", "acceptance estimates of lookup drafts: fit + reliability table"),
    "overhead": ("hf_specdec.bench.overhead", "host time per fspad cycle with a tiny random model (forwards nearly free)"),
    "hook-cost": ("hf_specdec.bench.hook_cost", "stock generate (no strategy=) with the import's hook vs without it"),
    "profile": ("hf_specdec.bench.profile", "where strategy='fspad' spends its time (cProfile breakdown)"),
    "distill": ("hf_specdec.training.prepare:distill_main", "answer training prompts with the target (self-distillation)"),
    "make-prompts": ("hf_specdec.training.prompts", "translation / back-translation / second-turn prompts for distill"),
    "data-stats": ("hf_specdec.training.prompts:stats_main", "token counts and length histogram of distilled samples"),
    "features": ("hf_specdec.training.prepare:features_main", "extract target features for head training"),
    "train": ("hf_specdec.training.train", "train an FSPAD / EAGLE-2 head on extracted features (resumable)"),
    "evaluate": ("hf_specdec.training.train:evaluate_main", "held-back top-1 / top-3 of saved heads on one feature split"),
    "convert": ("hf_specdec.training.export:convert_main", "a draft head from EAGLE / FSPAD-reference layouts into ours (and back)"),
    "ngram": ("hf_specdec.ngram", "build an n-gram table (for strategy='superposed') from a text corpus"),
    "export": ("hf_specdec.training.export", "a trained head as a Hub-ready folder with its tuned tree shape"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: hf-specdec COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:17s} {help_text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib

    module, _, function = COMMANDS[argv[0]][0].partition(":")
    return getattr(importlib.import_module(module), function or "main")(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
