"""Training data for draft heads: prompts -> tokenized conversations with a response mask.

Input rows (JSONL, one object a line) take either form:
    {"id": ..., "prompt": "...", "reference": "..."}                   (our pool, ../shared/data)
    {"id": ..., "messages": [{"role": "user", "content": ...}, ...]}   (chat; a last assistant turn is the reference)

Responses come either from the file (`reference`) or from the target itself (self-distillation, `self_distill`),
which records the exact token ids the target produced, so the head learns the target's own continuations.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .held_out import is_held_out

logger = logging.get_logger(__name__)


@dataclass
class Conversation:
    id: str
    messages: list[dict]  # the prompt turns (ending with a user turn)
    reference: str | None  # the response that came with the row, if any


def read_conversations(path, limit: int | None = None) -> list[Conversation]:
    """Read a prompts JSONL (either form above). Rows without a usable prompt raise with their line number.
    Rows holding a held-out pool prompt (training/held_out.py) are left out, and how many is logged."""
    rows, held_out = [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" in row:
                messages = list(row["messages"])
                reference = None
                if messages and messages[-1].get("role") == "assistant":
                    reference = messages.pop()["content"]
            elif "prompt" in row:
                messages = [{"role": "user", "content": row["prompt"]}]
                reference = row.get("reference")
            else:
                raise ValueError(f"{path}:{line_no}: a row needs a 'prompt' or a 'messages' field; it has {sorted(row)}.")
            if not messages or messages[-1].get("role") != "user":
                raise ValueError(f"{path}:{line_no}: the prompt turns must end with a user turn.")
            if is_held_out(messages):
                held_out += 1
                continue
            rows.append(Conversation(str(row.get("id", line_no - 1)), messages, reference))
            if limit is not None and len(rows) >= limit:
                break
    if held_out:
        logger.warning(f"hf_specdec: left out {held_out} rows of {path} that hold prompts kept for tuning "
                       "(hf_specdec/training/held_out_pool.json)")
    return rows


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The chat-template token ids of the prompt turns, ending with the assistant header."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def reference_sample(tokenizer, conv: Conversation) -> dict | None:
    """input_ids and loss mask (1 on response tokens) for a conversation answered by its reference."""
    if not conv.reference:
        return None
    prompt = prompt_ids(tokenizer, conv.messages)
    full = tokenizer.apply_chat_template(
        conv.messages + [{"role": "assistant", "content": conv.reference}], tokenize=True
    )
    if hasattr(full, "keys"):
        full = full["input_ids"]
    full = list(full)
    if full[: len(prompt)] != prompt:  # templates that rewrite earlier turns: fall back to concatenation
        full = prompt + tokenizer(conv.reference, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            full.append(tokenizer.eos_token_id)
    return {"id": conv.id, "input_ids": full, "loss_mask": [0] * len(prompt) + [1] * (len(full) - len(prompt))}


def _done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    done = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):  # a line cut by a kill: regenerated
                pass
    return done


@torch.no_grad()
def self_distill(
    model,
    tokenizer,
    conversations: list[Conversation],
    out_path,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    max_prompt_tokens: int = 1024,
    min_prompt_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> Path:
    """Answer each conversation with the target itself and append {id, input_ids, loss_mask} rows to `out_path`.

    Resumable: rows already in the file are skipped, and each batch is flushed as it finishes. Prompts are
    batched by length (left padding) so that little compute goes to padding. Prompts longer than
    `max_prompt_tokens` or shorter than `min_prompt_tokens` are skipped.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out_path)
    todo = []
    for conv in conversations:
        if conv.id in done:
            continue
        ids = prompt_ids(tokenizer, conv.messages)
        if min_prompt_tokens <= len(ids) <= max_prompt_tokens:
            todo.append((conv.id, ids))
    todo.sort(key=lambda item: len(item[1]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
    device = model.device
    with open(out_path, "a", encoding="utf-8") as out, tqdm(total=len(todo), desc="self-distill", unit="prompt") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            width = max(len(ids) for _, ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, ids) in enumerate(batch):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            if do_sample:
                torch.manual_seed(seed + start)
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
            )[:, width:].tolist()
            for (conv_id, ids), response in zip(batch, generated):
                # keep the response up to and including its first EOS
                cut = next((i + 1 for i, tok in enumerate(response) if tok in eos_ids), len(response))
                response = response[:cut]
                row = {"id": conv_id, "input_ids": ids + response, "loss_mask": [0] * len(ids) + [1] * len(response)}
                out.write(json.dumps(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(batch))
    return out_path


def write_reference_samples(tokenizer, conversations: list[Conversation], out_path, max_prompt_tokens: int = 1024,
                            min_prompt_tokens: int = 0, min_response_tokens: int = 8) -> Path:
    """`self_distill`'s rows with each conversation's own reference as the response (`reference_sample`): no
    generation, so a head can train on the pool's written answers (the target still labels every position).
    Rows without a reference, with fewer than `min_response_tokens` response tokens, or whose prompt falls
    outside [min_prompt_tokens, max_prompt_tokens] are skipped. Appends, skipping ids already in the file."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out_path)
    with open(out_path, "a", encoding="utf-8") as out:
        for conv in conversations:
            if conv.id in done:
                continue
            row = reference_sample(tokenizer, conv)
            if row is None:
                continue
            n_prompt = row["loss_mask"].count(0)
            if min_prompt_tokens <= n_prompt <= max_prompt_tokens and sum(row["loss_mask"]) >= min_response_tokens:
                out.write(json.dumps(row) + "\n")
    return out_path


def read_samples(path) -> list[dict]:
    """Rows written by `self_distill` (or any JSONL of {id, input_ids, loss_mask}); cut lines are skipped."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return samples
