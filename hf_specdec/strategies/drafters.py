"""Drafters: a draft model plus its own KV cache, behind the `Drafter` protocol of the engine.

HeadDrafter runs an FSPAD / EAGLE head, which reads pairs (x_{t+1}, f_t) of a token and the target's feature
one position earlier; CausalLMDrafter runs an ordinary small causal LM that shares the target's vocabulary.
Both expand tree levels with a tree mask over their cache, and both rewind their cache after a cycle and
recompute the accepted tokens (the head with the target's own features, which is what it was trained on).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..draft.base import DraftHead
from ..tree import GrowingCache, check_compactable, crop_cache, tree_mask_builder, tree_mask_for
from ..tree.ragged import Slots, chain_ancestors, last_real
from .common import SpecDecodeStats
from .engine import target_forward


class HeadDrafter:
    """A draft head (FSPAD / EAGLE-2, EAGLE-3). Its cache holds one entry per target position except the
    root's: head position t reads (x_{t+1}, f_t)."""

    def __init__(self, head: DraftHead, stats: SpecDecodeStats):
        self.head = self.model = head
        self.cache = GrowingCache()  # written in place: the head updates and crops it several times per cycle
        self.stats = stats
        self.feature_layers = head.feature_layers
        self._tree_mask = None  # tree_mask_builder(head), bound on first use (inside the engine's tree_attention_for)

    def tree_mask(self, ancestors: torch.Tensor, cached: int) -> torch.Tensor:
        """`tree_mask_for(self.head, ...)`, with the head's attention implementation and dtype read once: a
        drafter serves one generate call, whose implementation does not change while it decodes."""
        if self._tree_mask is None:
            self._tree_mask = tree_mask_builder(self.head)
        return self._tree_mask(ancestors, cached)

    def start(self, prompt, first, features, valid=None):
        """`valid` [B, L]: which prompt slots hold tokens (a left-padded batch); None for one unpadded row."""
        pairs = torch.cat([prompt[:, 1:], first[:, None]], 1)
        if valid is None:
            return self.catch_up(pairs, features, 0)
        return self.catch_up(pairs, features, Slots(valid[:, :0]), real=valid)

    def catch_up(self, tokens: torch.Tensor, features: torch.Tensor, cached: "int | Slots", real=None):
        """Feed pairs (x_{t+1}, f_t) for t = cached..cached+P-1 (rewinding anything after `cached`).
        Returns the draft's (log-probs [B, V], feature [B, H]) after the last one: what the next root's
        children are drawn from.

        For a batch, `cached` is the rows' `Slots` and `real` [B, P] says which of the P new slots hold a
        pair in each row (rows accept paths of different lengths); the output is each row's last real pair."""
        P = tokens.shape[1]
        if isinstance(cached, Slots):
            crop_cache(self.cache, cached.width)
            positions, mask = cached.positions_of(real), cached.mask(self.head, chain_ancestors(real))
            bound = cached.width + P
        else:
            bound = cached + P
            crop_cache(self.cache, cached)
            positions = torch.arange(cached, cached + P, device=tokens.device)[None]
            # The new pairs see the whole cache and each other causally: a chain is a tree whose ancestors are
            # the lower triangle, so the expansion's mask path serves (packed for the tree attention kernel).
            chain = torch.ones(P, P, dtype=torch.bool, device=tokens.device).tril()[None]
            mask = self.tree_mask(chain, cached)
        out = self.head(input_ids=tokens, features=features, position_ids=positions, attention_mask=mask,
                        cache=self.cache, max_position=bound)
        self.stats.draft_forwards += 1
        if real is None:
            hidden, features = out.hidden_states[:, -1], out.features[:, -1]
        else:  # each row's last real pair
            rows, last = torch.arange(tokens.shape[0], device=tokens.device), last_real(real)
            hidden, features = out.hidden_states[rows, last], out.features[rows, last]
        return self.head.compute_logits(hidden).float().log_softmax(-1), features

    def expand(self, cached: "int | Slots"):
        """The `expand` callback for a tree whose root sits at head position cached - 1 (for a batch: each
        row's last cached position)."""

        def expand(tokens, features, slot_ancestors, depth):
            if isinstance(cached, Slots):
                mask, positions = cached.mask(self.head, slot_ancestors), cached.positions(torch.full_like(tokens, depth - 1))
                bound = cached.width + depth
            else:
                mask = self.tree_mask(slot_ancestors, cached)
                positions = torch.full(tokens.shape, cached + depth - 1, device=tokens.device)
                bound = cached + depth
            out = self.head(input_ids=tokens, features=features, position_ids=positions, attention_mask=mask,
                            cache=self.cache, max_position=bound)
            self.stats.draft_forwards += 1
            return self.head.compute_logits(out.hidden_states).float().log_softmax(-1), out.features

        return expand

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop the batch rows that finished (a head with per-row state of its own, like the tests' oracle,
        follows through its own `keep_rows`)."""
        self.cache.keep_rows(rows)
        if hasattr(self.head, "keep_rows"):
            self.head.keep_rows(rows)


class PendingCatchUp:
    """A head catch-up not run yet: the pairs (x_{t+1}, f_t) of one or more cycles from head position `cached`
    on. Called, it runs them in one forward (once) and returns the draft state; a cycle whose tree needs no head
    leaves it uncalled, and the next cycle's pairs are appended to it (`DeferredHeadDrafter`)."""

    def __init__(self, drafter: HeadDrafter, tokens: torch.Tensor, features: torch.Tensor, cached: int):
        self.drafter, self.tokens, self.features, self.cached = drafter, tokens, features, cached
        self.state = None

    def __call__(self):
        if self.state is None:
            self.state = HeadDrafter.catch_up(self.drafter, self.tokens, self.features, self.cached)
        return self.state


class DeferredHeadDrafter(HeadDrafter):
    """A HeadDrafter for one row whose catch-ups wait until a tree asks for the head: `start` and `catch_up`
    return a `PendingCatchUp`. A cycle drafted without the head (lookup drafts alone, or a plain decoding step)
    so costs no head forward, and its pairs are fed with the next cycle's in one. The head's cache is
    untouched until then, so it still ends at the pending pairs' first position. Batches catch up at once."""

    def __init__(self, head: DraftHead, stats: SpecDecodeStats):
        super().__init__(head, stats)
        self.pending: PendingCatchUp | None = None

    # start is HeadDrafter's: one row's prompt pairs go through catch_up below, a batch's (Slots) at once

    def catch_up(self, tokens, features, cached, real=None):
        if isinstance(cached, Slots):
            return super().catch_up(tokens, features, cached, real)
        last = self.pending
        if last is not None and last.state is None:  # the last cycle drafted without the head
            self.pending = PendingCatchUp(self, torch.cat([last.tokens, tokens], 1), torch.cat([last.features, features], 1),
                                          last.cached)
        else:
            self.pending = PendingCatchUp(self, tokens, features, cached)
        return self.pending


def check_draft_lm(draft, target, strategy: str) -> None:
    """An ordinary draft LM must be a decoder-only LM over the target's vocabulary."""
    if not (hasattr(draft, "get_decoder") and draft.get_output_embeddings() is not None):
        raise TypeError(
            f"strategy={strategy!r} needs a causal LM (with a decoder and an lm_head) or an FSPAD head as "
            f"assistant_model, got {type(draft).__name__}."
        )
    if getattr(draft.config, "is_encoder_decoder", False):
        raise TypeError(f"strategy={strategy!r}: the draft {type(draft).__name__} is an encoder-decoder model.")
    ours, theirs = draft.get_output_embeddings().weight.shape[0], target.get_output_embeddings().weight.shape[0]
    if ours != theirs:
        raise ValueError(
            f"strategy={strategy!r}: the draft LM predicts {ours} tokens but the target {theirs}; the draft must "
            "share the target's tokenizer and vocabulary (for another tokenizer use stock assisted generation "
            "with assistant_tokenizer=, without strategy=)."
        )


class CausalLMDrafter:
    """An ordinary causal LM draft. Its cache holds every committed token, the root included."""

    feature_layers = None  # it reads no target features

    def __init__(self, draft, stats: SpecDecodeStats):
        self.draft = self.model = draft
        self.cache = DynamicCache(config=draft.config)
        check_compactable(self.cache)
        self.stats = stats

    def _feed(self, tokens: torch.Tensor, start: int):
        crop_cache(self.cache, start)
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)[None]
        _, logits = target_forward(self.draft, tokens, self.cache, positions, logits_to_keep=1)
        self.stats.draft_forwards += 1
        return logits[:, -1].log_softmax(-1), None

    def start(self, prompt, first, features):
        return self._feed(torch.cat([prompt, first[:, None]], 1), 0)

    def catch_up(self, tokens, features, cached):
        return self._feed(tokens, cached + 1)  # the cycle's root sat at position `cached`

    def expand(self, cached: int):
        """The `expand` callback for a tree whose root sits at position `cached` (in the cache already)."""

        def expand(tokens, features, slot_ancestors, depth):
            mask = tree_mask_for(self.draft, slot_ancestors, cached + 1)
            positions = torch.full(tokens.shape, cached + depth, device=tokens.device)
            _, logits = target_forward(self.draft, tokens, self.cache, positions, mask)
            self.stats.draft_forwards += 1
            return logits.log_softmax(-1), None

        return expand
