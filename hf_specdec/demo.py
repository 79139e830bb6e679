"""The main job: the default model answers a prompt with stock greedy `generate` and with strategy="fspad";
prints both texts, whether they are identical, tau and the measured time ratio (interleaved runs, medians).

    hf-specdec demo --prompt "..." --max-new-tokens 128 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .default_model import default_target
from .draft import FSPADDraftModel
from .heads import DEFAULT_DRAFT, default_draft


def load_draft(target, tokenizer, path: str | None):
    if path is None:
        return default_draft(target, tokenizer), f"the shipped FSPAD head ({DEFAULT_DRAFT})"
    if path == "untrained":  # shows the engine's overhead: every draft rejected
        torch.manual_seed(0)
        return FSPADDraftModel.from_target(target, tokenizer=tokenizer), "an untrained head"
    return FSPADDraftModel.from_pretrained(path, dtype=target.dtype).attach_target(target, tokenizer), path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="Explain in a few sentences why the sky is blue.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each method (interleaved)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--draft", default=None, help="a head folder or Hub id, or 'untrained' (default: the shipped head)")
    args = parser.parse_args(argv)

    target, tok = default_target(dtype=getattr(torch, args.dtype))
    draft, draft_name = load_draft(target, tok, args.draft)
    ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False)

    def stock():
        return target.generate(ids, **common)

    def fspad():
        return target.generate(ids, assistant_model=draft, strategy="fspad", return_dict_in_generate=True,
                               tokenizer=tok, **common)

    stock(), fspad()  # warm-up
    times = {"stock": [], "fspad": []}
    for _ in range(args.runs):
        for name, fn in (("stock", stock), ("fspad", fspad)):
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            if name == "stock":
                ref = result
            else:
                out = result
    new = ref.shape[1] - ids.shape[1]
    t_stock, t_fspad = statistics.median(times["stock"]), statistics.median(times["fspad"])
    print(f"target: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized; {args.dtype}, CPU, {torch.get_num_threads()} threads); draft: {draft_name}; "
          "strategy='fspad' with its defaults (lookup drafts merged into trees sized by this machine's costs)")
    print(f"prompt: {args.prompt}\n")
    print("--- stock greedy generate ---")
    print(tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True))
    print("\n--- strategy='fspad' ---")
    print(tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True))
    print()
    ours, theirs = out.sequences[0, ids.shape[1]:].tolist(), ref[0, ids.shape[1]:].tolist()
    parted = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if parted is None and len(ours) != len(theirs):
        parted = min(len(ours), len(theirs))
    print(f"identical output: {torch.equal(ref, out.sequences)}"
          + (f" (texts part at new token {parted}: bf16 rounding, see README)" if parted is not None else ""))
    print(f"tau (tokens per target forward): {out.spec_stats.tau:.2f}; target forwards: "
          f"{out.spec_stats.target_forwards} for {out.spec_stats.new_tokens} tokens")
    print(f"time, median of {args.runs}: stock {t_stock:.2f}s ({new / t_stock:.1f} tok/s), fspad {t_fspad:.2f}s "
          f"({out.spec_stats.new_tokens / t_fspad:.1f} tok/s); speedup {t_stock / t_fspad:.2f}x")


if __name__ == "__main__":
    main()
