"""Data preparation commands (both resumable: run the same command again after a kill).

    hf-specdec distill  --per-source 400 --out runs/smollm2/responses.jsonl      # the target answers the prompts
    hf-specdec features --samples runs/smollm2/responses.jsonl --out runs/smollm2/features
    hf-specdec features --prompts my_chats.jsonl --out runs/mine/features          # responses from the file
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from .data import read_conversations, read_samples, reference_sample, self_distill, write_reference_samples
from .features import extract_features


def select_per_source(path, per_source: int | None, limit: int | None, only_sources=None, skip: int = 0) -> list:
    """The first `per_source` rows of each `source` after its first `skip` (rows without one share a single
    bucket), file order; with `only_sources`, rows of those sources alone. `skip` reaches prompts an earlier
    run with `per_source=skip` did not answer."""
    conversations = read_conversations(path)
    if per_source is None and not only_sources and not skip:
        return conversations[:limit]
    sources = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                sources[str(row.get("id", line_no))] = row.get("source", "")
    taken, counts = [], defaultdict(int)
    for conv in conversations:
        source = sources.get(conv.id, "")
        if only_sources and source not in only_sources:
            continue
        counts[source] += 1
        if counts[source] <= skip:
            continue
        if per_source is None or counts[source] <= skip + per_source:
            taken.append(conv)
    return taken[:limit]


def load_target(name: str | None, dtype: torch.dtype, adapter: str | None = None):
    """The target (the embedded default when `name` is None) and its tokenizer; `adapter` applies a PEFT adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name is None:
        from ..default_model import default_target

        model, tokenizer = default_target(dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError):  # a folder without tokenizer files: fine for stored token ids
            tokenizer = None
    if adapter is not None:
        PeftModel = require_training_extra("peft", "--adapter").PeftModel

        # Merged, so the head sees exactly the adapted model's features and can borrow its (adapted) weights.
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    return model, tokenizer


def load_target_tokenizer(name: str | None):
    """The tokenizer of the target (the embedded default when `name` is None), without loading the model."""
    from transformers import AutoTokenizer

    if name is None:
        from ..default_model import default_target_path

        return AutoTokenizer.from_pretrained(default_target_path())
    return AutoTokenizer.from_pretrained(name)


def require_training_extra(module: str, what: str):
    """Import one of the training extra's packages (peft, accelerate), or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{what} needs `{module}`, part of the training extra: pip install 'hf_specdec[train]'.") from error


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --adapter, --dtype: which target produces the training data (see `load_target`)."""
    p.add_argument("--model", default=None, help="target model id or folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="PEFT adapter to merge into the target (recorded with the data)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))


def distill_main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec distill", description="Answer training prompts with the target.")
    p.add_argument("--prompts", required=True, help="prompts JSONL (e.g. the training pool)")
    p.add_argument("--out", required=True, help="JSONL of {id, input_ids, loss_mask} (appended to; resumable)")
    add_target_arguments(p)
    p.add_argument("--per-source", type=int, default=None, help="take the first N prompts of each source")
    p.add_argument("--skip-per-source", type=int, default=0,
                   help="skip the first N prompts of each source (those an earlier --per-source N run answered)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--min-prompt-tokens", type=int, default=0, help="skip shorter prompts (long-context data)")
    p.add_argument("--sources", nargs="+", default=None, help="only rows of these sources")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1 instead of greedy")
    p.add_argument("--references", action="store_true",
                   help="write each row's own `reference` as the response instead of generating one")
    args = p.parse_args(argv)

    if args.skip_per_source < 0:
        p.error(f"--skip-per-source must be >= 0, got {args.skip_per_source}.")
    conversations = select_per_source(args.prompts, args.per_source, args.limit, args.sources, args.skip_per_source)
    if args.references:
        if args.sample:
            p.error("--references writes the rows' own answers; --sample has nothing to sample. Drop one of them.")
        write_reference_samples(load_target_tokenizer(args.model), conversations, args.out,
                                args.max_prompt_tokens, args.min_prompt_tokens)
        return 0
    model, tokenizer = load_target(args.model, DTYPES[args.dtype], args.adapter)
    self_distill(
        model,
        tokenizer,
        conversations,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        min_prompt_tokens=args.min_prompt_tokens,
        do_sample=args.sample,
    )
    return 0


def features_main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec features", description="Extract target features for head training.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", nargs="+", help="JSONL(s) written by `hf-specdec distill` ({id, input_ids, loss_mask})")
    src.add_argument("--prompts", help="prompts JSONL whose `reference` / last assistant turn is the response")
    p.add_argument("--out", required=True, help="feature folder (manifest.json + safetensors shards)")
    add_target_arguments(p)
    p.add_argument("--per-source", type=int, default=None, help="with --prompts: the first N rows of each source")
    p.add_argument("--min-response-tokens", type=int, default=8, help="with --prompts: skip shorter references")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-length", type=int, default=1024)
    args = p.parse_args(argv)

    model, tokenizer = load_target(args.model, DTYPES[args.dtype], args.adapter)
    if args.samples:
        samples = [s for path in args.samples for s in read_samples(path)]
    elif tokenizer is None:
        p.error(f"--prompts needs the target's tokenizer (for its chat template); {args.model} has none.")
    else:
        samples = []
        for conv in select_per_source(args.prompts, args.per_source, None):
            s = reference_sample(tokenizer, conv)
            if s is not None and sum(s["loss_mask"]) >= args.min_response_tokens:
                s["id"] = f"ref-{s['id']}"
                samples.append(s)
    extract_features(model, samples[: args.limit], args.out, max_length=args.max_length, adapter=args.adapter)
    return 0
