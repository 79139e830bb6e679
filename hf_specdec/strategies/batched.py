"""The engine's cycle (strategies/engine.py) for a batch of B > 1 left-padded prompts.

Every step that costs a forward is batched: the target's prefill, the head's tree growth (one head forward
per level for all rows), one target forward over all rows' trees, and one head catch-up. What is per row is
cheap host work: lookup drafts, logits processors, verification and emitting tokens with the stopping
criteria -- each row exactly as it would run alone, so its output is what it would get alone.

Rows accept paths of different lengths; the caches keep one slot layout with per-row holes
(tree/ragged.py). A row that finishes leaves the batch; the others go on.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..tree import DraftTree, tree_attention_for
from ..tree.ragged import Slots, chain_ancestors, first_slots, gather_paths, keep_cache_rows, pad_paths, stack_trees
from ..verification import Verdict
from .common import SpecDecodeOutput, SpecDecodeStats, TokenEmitter, process_tree_scores, processors_for_row
from .engine import Drafter, choose_token, target_forward

# grow(committed rows (each [1, T_b], padding stripped), draft state [B, ...], slots) -> one tree per row
BatchGrow = Callable[[list[torch.Tensor], tuple, Slots], list[DraftTree]]


class RowsWithoutState:
    """A batch grower that keeps nothing per row: rows leaving the batch need no bookkeeping."""

    def __init__(self, grow: BatchGrow):
        self.grow = grow

    def __call__(self, committed, draft_state, slots):
        return self.grow(committed, draft_state, slots)

    def keep_rows(self, rows) -> None:
        pass


def check_batch_options(strategy: str, generation_config: GenerationConfig, streamer) -> None:
    """What a batch cannot give: a streamer (stock streamers take one row too), per-step scores / logits
    (stock computes them for finished rows from their padding; we never run those rows)."""
    if streamer is not None:
        raise ValueError(f"strategy={strategy!r}: a streamer takes one row; call generate once per prompt to "
                         "stream, or drop streamer= for a batch.")
    if generation_config.return_dict_in_generate and (generation_config.output_scores or generation_config.output_logits):
        raise NotImplementedError(
            f"strategy={strategy!r} does not return output_scores / output_logits for a batch (finished rows are "
            "not run any more, so their later scores do not exist); call generate once per prompt for them."
        )


def pad_token_for(generation_config: GenerationConfig):
    """The token stock puts after a row's end: pad_token_id, else (as stock falls back) the first EOS id."""
    pad = generation_config.pad_token_id
    if pad is None:
        eos = generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return pad


def run_batched_tree_decoding(
    model,
    input_ids: torch.Tensor,
    valid: torch.Tensor,
    cache: DynamicCache,
    drafter: Drafter,
    grow: BatchGrow,
    verify: Callable[[DraftTree, torch.Tensor], Verdict],
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    stats: SpecDecodeStats,
):
    """The decoding loop for B rows (module docstring). input_ids [B, L] left-padded, valid [B, L] its
    non-padding slots. `grow` keeps per-row state of its own (lookup indices) and follows the batch through
    `grow.keep_rows`. Returns what stock generate returns for the batch: sequences right-padded after each
    row's end (or a SpecDecodeOutput with per-row stats in spec_stats.rows). The masks are dense (the tree
    attention kernel takes one row), so only the CPU's grouped sdpa is switched on (`tree_attention_for`)."""
    with tree_attention_for(model, drafter.model, tree_kernel=False):
        return _decode_batch(model, input_ids, valid, cache, drafter, grow, verify, logits_processor,
                             stopping_criteria, generation_config, stats)


def _decode_batch(model, input_ids, valid, cache, drafter, grow, verify, logits_processor, stopping_criteria,
                  generation_config, stats):
    B = input_ids.shape[0]
    n_pad = (~valid).sum(-1).tolist()
    emitters = [TokenEmitter(input_ids[b : b + 1], stopping_criteria, None, False, False) for b in range(B)]
    processors = [processors_for_row(logits_processor, b) for b in range(B)]
    stats.rows = [SpecDecodeStats() for _ in range(B)]

    def emit(b, tokens, scores):
        kept = emitters[b].emit(tokens, scores)
        stats.rows[b].target_forwards += 1
        stats.rows[b].new_tokens += kept
        return kept

    # Prefill: one forward over the padded prompts, each row seeing its own tokens at its own positions.
    slots = Slots(valid[:, :0])
    features, logits = target_forward(model, input_ids, cache, slots.positions_of(valid),
                                      slots.mask(model, chain_ancestors(valid)), logits_to_keep=1,
                                      feature_layers=drafter.feature_layers)
    stats.target_forwards += 1
    slots = Slots(valid)
    first = torch.empty(B, dtype=torch.long, device=input_ids.device)
    for b in range(B):
        scores = processors[b](emitters[b].sequence, logits[b : b + 1, -1])
        first[b : b + 1] = choose_token(scores, generation_config.do_sample)
        emit(b, first[b : b + 1], scores)
    active = list(range(B))

    def drop_finished(*per_row):
        """Remove finished rows from the batch: caches, slots, the drafter's and the grower's state."""
        nonlocal active, slots
        keep = [i for i, b in enumerate(active) if not emitters[b].finished]
        if len(keep) == len(active):
            return per_row
        rows = torch.tensor(keep, dtype=torch.long, device=input_ids.device)
        keep_cache_rows(cache, rows)
        slots = slots.keep_rows(rows)
        drafter.keep_rows(rows)
        grow.keep_rows(rows)
        active = [active[i] for i in keep]
        return tuple(x[rows] if isinstance(x, torch.Tensor) else [x[i] for i in keep] for x in per_row)

    features, first, prompt_valid, prompt = drop_finished(features, first, valid, input_ids)
    if active:
        draft_state = drafter.start(prompt, first, features, valid=prompt_valid)

    while active:
        committed = [emitters[b].sequence[:, n_pad[b]:] for b in active]
        trees = grow(committed, draft_state, slots)
        tokens, depths, ancestors = stack_trees(trees)
        prefix_len = slots.width
        features, logits = target_forward(model, tokens, cache, slots.positions(depths), slots.mask(model, ancestors),
                                          feature_layers=drafter.feature_layers)
        stats.target_forwards += 1

        paths, emitted = [], []
        for i, (b, tree) in enumerate(zip(active, trees)):
            row_logits = logits[i : i + 1, : tree.num_nodes]
            scores = process_tree_scores(row_logits, tree, emitters[b].sequence, processors[b])
            verdict = verify(tree, scores)
            path = verdict.path[0]
            new = torch.cat([tree.tokens[0, path[1:]], verdict.next_tokens])
            kept = emit(b, new, scores[0, path])
            stats.rows[b].accepted_lengths.append(kept)
            paths.append(path)
            emitted.append(new)

        features, paths, emitted = drop_finished(features, paths, emitted)
        if not active:
            break
        at, counts = pad_paths(paths)
        width = at.shape[1]
        gather_paths(cache, prefix_len, at)
        new_tokens = torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[0])) for t in emitted])
        path_features = features.gather(1, at[..., None].expand(-1, -1, features.shape[-1]))
        draft_state = drafter.catch_up(new_tokens, path_features, slots, real=first_slots(counts, width))
        slots = slots.append(counts, width)

    for row in stats.rows:
        stats.new_tokens += row.new_tokens
        stats.accepted_lengths += row.accepted_lengths
    return batch_result([e.sequence for e in emitters], generation_config, stats)


def batch_result(sequences: list[torch.Tensor], generation_config: GenerationConfig, stats: SpecDecodeStats):
    """The rows right-padded to the longest, with the token stock pads finished rows with."""
    longest = max(s.shape[1] for s in sequences)
    pad = pad_token_for(generation_config)
    if pad is None and any(s.shape[1] < longest for s in sequences):
        raise ValueError("Rows of the batch ended at different lengths and there is no pad_token_id (or "
                         "eos_token_id) to pad them with; set generation_config.pad_token_id.")
    out = torch.cat([torch.nn.functional.pad(s, (0, longest - s.shape[1]), value=pad if pad is not None else 0)
                     for s in sequences])
    if not generation_config.return_dict_in_generate:
        return out
    return SpecDecodeOutput(sequences=out, spec_stats=stats)
