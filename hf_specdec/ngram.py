"""N-gram tables for Superposed Decoding (research/superposed.md section 1, step 3).

For each order n, the table keeps two sorted arrays of 64-bit hashes with counts: contexts (the n - 1 tokens
before a position) with how often they occur, and (context, next token) pairs with how often they occur.
A query is a `searchsorted` over them, vectorised for every draft and candidate token at once. Tables are
saved as safetensors (hashes int64, counts int32) with the tokenizer's fingerprint in the metadata, and read
back through safetensors' memory-mapped loader.

    p_ngram(x | ctx) = sum_n lambda_n c_n(ctx_{n-1}, x) / sum_y c_n(ctx_{n-1}, y)

Plain count ratios, no smoothing or backoff; an order whose context never occurred adds nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# The paper's interpolation weights lambda_n for n = 2..6 (they sum to 0.5).
PAPER_WEIGHTS = {2: 0.01, 3: 0.04, 4: 0.15, 5: 0.18, 6: 0.12}
_MULTIPLIER = 0x9E3779B97F4A7C15 - (1 << 64)  # odd 64-bit constant (as a signed int64); overflow wraps


def hash_windows(windows: torch.Tensor) -> torch.Tensor:
    """Hash the rows of windows [..., w] (token ids) to int64: h <- h * M + (token + 1), wrapping mod 2^64.
    Extending a context's hash by one token gives the (context, token) pair's hash."""
    h = torch.zeros(windows.shape[:-1], dtype=torch.int64, device=windows.device)
    for j in range(windows.shape[-1]):
        h = extend_hash(h, windows[..., j])
    return h


def extend_hash(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return h * _MULTIPLIER + (tokens.to(torch.int64) + 1)


def _lookup(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """values at the positions of queries in the sorted keys; 0 where a query is absent."""
    if keys.numel() == 0:
        return torch.zeros(queries.shape, dtype=values.dtype)
    idx = torch.searchsorted(keys, queries.reshape(-1)).clamp(max=keys.numel() - 1).reshape(queries.shape)
    return torch.where(keys[idx] == queries, values[idx], 0)


class NgramTable:
    """Counts of orders `orders` over a token corpus. `weights[n]` = lambda_n; `tokenizer_hash` names the
    tokenizer the corpus was tokenised with (checked against the target's)."""

    def __init__(self, arrays: dict[str, torch.Tensor], weights: dict[int, float], vocab_size: int,
                 tokenizer_hash: str | None = None, target_fingerprint: list[float] | None = None):
        self.arrays = arrays
        self.weights = dict(weights)
        self.vocab_size = vocab_size
        self.tokenizer_hash = tokenizer_hash
        self.target_fingerprint = target_fingerprint  # embedding fingerprint of a model this table is the default for

    @property
    def orders(self) -> list[int]:
        return sorted(self.weights)

    # ---- building -------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]], vocab_size: int, weights: dict[int, float] = PAPER_WEIGHTS,
              tokenizer_hash: str | None = None, min_count: int = 1) -> "NgramTable":
        """Count every order's contexts and (context, token) pairs within each sequence (never across two).
        `min_count` drops rarer pairs to shrink the table; context totals keep every occurrence, so the
        kept ratios are unchanged."""
        seqs = [torch.as_tensor(list(s), dtype=torch.int64) for s in sequences]
        arrays = {}
        for n in sorted(weights):
            pair_hashes, ctx_hashes = [], []
            for s in seqs:
                if s.numel() < n:
                    continue
                windows = s.unfold(0, n, 1)  # [W, n]
                ctx = hash_windows(windows[:, :-1])
                ctx_hashes.append(ctx)
                pair_hashes.append(extend_hash(ctx, windows[:, -1]))
            ctx_all = torch.cat(ctx_hashes) if ctx_hashes else torch.zeros(0, dtype=torch.int64)
            pair_all = torch.cat(pair_hashes) if pair_hashes else torch.zeros(0, dtype=torch.int64)
            ctx_keys, ctx_counts = torch.unique(ctx_all, sorted=True, return_counts=True)
            pair_keys, occurrence, pair_counts = torch.unique(pair_all, sorted=True, return_inverse=True,
                                                              return_counts=True)
            keep = pair_counts >= min_count
            # a context none of whose pairs survived contributes 0 anyway: drop it too
            used = torch.unique(ctx_all[keep[occurrence]])
            ctx_keep = torch.isin(ctx_keys, used)
            ctx_keys, ctx_counts = ctx_keys[ctx_keep], ctx_counts[ctx_keep]
            arrays[f"{n}.context"] = ctx_keys
            arrays[f"{n}.context_count"] = ctx_counts.to(torch.int32)
            arrays[f"{n}.pair"] = pair_keys[keep]
            arrays[f"{n}.pair_count"] = pair_counts[keep].to(torch.int32)
        return cls(arrays, weights, vocab_size, tokenizer_hash)

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer, **kwargs) -> "NgramTable":
        """Build from raw texts tokenised with `tokenizer` (no special tokens)."""
        from .draft.base import tokenizer_hash

        sequences = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
        return cls.build(sequences, vocab_size=len(tokenizer), tokenizer_hash=tokenizer_hash(tokenizer), **kwargs)

    # ---- querying -------------------------------------------------------------------------------------------

    def counts(self, n: int, contexts: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_n(ctx, x) [k, m] and c_n(ctx) [k] for contexts [k, >= n-1] (their last n - 1 tokens) and
        candidates [k, m]."""
        ctx = hash_windows(contexts[:, contexts.shape[1] - (n - 1):].cpu())
        total = _lookup(self.arrays[f"{n}.context"], self.arrays[f"{n}.context_count"], ctx)
        pairs = extend_hash(ctx[:, None], candidates.cpu())
        return _lookup(self.arrays[f"{n}.pair"], self.arrays[f"{n}.pair_count"], pairs), total

    def probs(self, contexts: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """p_ngram(x | ctx) [k, m] (float32, on the candidates' device) for each draft's context [k, L] and
        candidate tokens [k, m]: sum_n lambda_n c_n(ctx, x) / c_n(ctx), skipping orders whose context is
        unseen or longer than L + 1."""
        out = torch.zeros(candidates.shape, dtype=torch.float32)
        for n in self.orders:
            if contexts.shape[1] < n - 1:
                continue
            pair, total = self.counts(n, contexts, candidates)
            seen = total > 0
            ratio = pair.float() / torch.where(seen, total, 1).float()[:, None]
            out += self.weights[n] * torch.where(seen[:, None], ratio, 0.0)
        return out.to(candidates.device)

    # ---- saving / loading -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        meta = {"weights": json.dumps({str(n): w for n, w in self.weights.items()}),
                "vocab_size": str(self.vocab_size), "tokenizer_hash": self.tokenizer_hash or "",
                "format": "hf_specdec.ngram/1", "target_fingerprint": json.dumps(self.target_fingerprint)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.arrays.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NgramTable":
        """A table saved by `save`: a local .safetensors file, a folder holding `ngram.safetensors`, or a Hub
        repo id with that file."""
        path = _resolve(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "hf_specdec.ngram/1":
                raise ValueError(f"{path} is not an hf_specdec n-gram table (no 'hf_specdec.ngram/1' metadata).")
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        weights = {int(n): w for n, w in json.loads(meta["weights"]).items()}
        fingerprint = json.loads(meta.get("target_fingerprint", "null"))
        return cls(arrays, weights, int(meta["vocab_size"]), meta.get("tokenizer_hash") or None, fingerprint)

    def check_tokenizer(self, tokenizer, vocab_size: int | None = None) -> None:
        """Raise unless the table was built with this tokenizer (or, without one, this vocabulary size)."""
        from .draft.base import tokenizer_hash

        if tokenizer is not None and self.tokenizer_hash and tokenizer_hash(tokenizer) != self.tokenizer_hash:
            raise ValueError("The n-gram table was built with another tokenizer than the target's; build one with "
                             "the target's tokenizer (hf-specdec ngram --model ...).")
        if vocab_size is not None and vocab_size < self.vocab_size:
            raise ValueError(f"The n-gram table covers {self.vocab_size} tokens but the target only {vocab_size}: it "
                             "was built with another tokenizer.")

    def num_entries(self) -> int:
        return sum(v.numel() for k, v in self.arrays.items() if k.endswith(".pair"))


def _resolve(path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        return p / "ngram.safetensors"
    if isinstance(path, str) and path.count("/") == 1 and not p.exists():
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(path, "ngram.safetensors"))
    raise FileNotFoundError(f"No n-gram table at {path}.")


def read_corpus(path: str | os.PathLike, fields: Sequence[str], limit: int | None = None) -> list[str]:
    """Texts from a JSONL file (the listed string fields of each row, each a separate text) or a plain text
    file (one text per non-empty line)."""
    texts = []
    with open(path) as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            line = line.strip()
            if not line:
                continue
            if str(path).endswith(".jsonl"):
                row = json.loads(line)
                texts.extend(row[k] for k in fields if isinstance(row.get(k), str) and row[k])
            else:
                texts.append(line)
    return texts


def main(argv=None):
    import argparse
    import time

    p = argparse.ArgumentParser(prog="hf-specdec ngram", description="Build an n-gram table for strategy='superposed'.")
    p.add_argument("--corpus", required=True, help="JSONL (see --fields) or a text file, one text a line")
    p.add_argument("--fields", nargs="+", default=["prompt", "reference"], help="JSONL string fields to count")
    p.add_argument("--model", default=None, help="the target whose tokenizer to use (default: embedded SmolLM2)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many rows")
    p.add_argument("--min-count", type=int, default=1, help="drop (context, token) pairs seen fewer times")
    p.add_argument("--default-for-model", action="store_true",
                   help="record the model's embedding fingerprint: the table becomes its default (ngram=None)")
    p.add_argument("--out", required=True, help="output .safetensors file or folder")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from .default_model import default_target, default_target_path

    tokenizer = AutoTokenizer.from_pretrained(args.model or default_target_path())
    start = time.perf_counter()
    texts = read_corpus(args.corpus, args.fields, args.limit)
    table = NgramTable.from_texts(texts, tokenizer, min_count=args.min_count)
    if args.default_for_model:
        from transformers import AutoModelForCausalLM

        from .draft.base import embedding_fingerprint

        model = AutoModelForCausalLM.from_pretrained(args.model) if args.model else default_target()[0]
        table.target_fingerprint = embedding_fingerprint(model.get_input_embeddings().weight)
    out = Path(args.out)
    out = out / "ngram.safetensors" if out.suffix != ".safetensors" else out
    table.save(out)
    print(f"{len(texts)} texts, {table.num_entries():,} (context, token) entries over orders {table.orders}, "
          f"{out.stat().st_size / 2**20:.1f} MiB -> {out} ({time.perf_counter() - start:.0f} s)")
    return 0
