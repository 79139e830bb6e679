"""Training-pool prompts no head may train on: the prompts tree shapes, lookup rates and estimate calibrations
are tuned on (held_out_pool.json says which rows and why).

They are named by the sha1 of their prompt text rather than by row id, so every data builder can drop them from
any file, whatever its ids, and a user's own data never matches by accident. A derived sample (a second turn
after a held-out exchange, a translation of a held-out prompt) is dropped with it: it contains the text.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

HELD_OUT_FILE = Path(__file__).with_name("held_out_pool.json")


def prompt_digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    return tuple(json.loads(HELD_OUT_FILE.read_text(encoding="utf-8"))["rows"])


@lru_cache(maxsize=1)
def held_out_digests() -> frozenset[str]:
    return frozenset(row["sha1"] for row in _rows())


def is_held_out(messages: list[dict]) -> bool:
    """Whether any user turn of a conversation is a held-out prompt."""
    digests = held_out_digests()
    return any(m.get("role") == "user" and prompt_digest(m.get("content", "")) in digests for m in messages)


def held_out_rows(pool_path, split: str) -> list[dict]:
    """The pool's rows of one split ('tune' or 'calibration'), in file order, each prompt once."""
    wanted = {row["sha1"] for row in _rows() if row["split"] == split}
    if not wanted:
        raise ValueError(f"no held-out split {split!r}; the splits are 'tune' and 'calibration'")
    rows, seen = [], set()
    with open(pool_path, encoding="utf-8") as f:  # not str.splitlines: prompts may hold U+2028
        for row in map(json.loads, f):
            digest = prompt_digest(row.get("prompt", ""))
            if digest in wanted and digest not in seen:  # a prompt the pool holds twice is taken once
                seen.add(digest)
                rows.append(row)
    if len(rows) != len(wanted):
        raise ValueError(f"{pool_path} holds {len(rows)} of the {len(wanted)} held-out {split!r} prompts: "
                         "is it the training pool (../shared/data/train_prompts.jsonl)?")
    return rows
