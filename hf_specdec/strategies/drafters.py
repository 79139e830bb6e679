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
from ..tree import check_compactable, crop_cache, tree_mask_for
from .common import SpecDecodeStats
from .engine import target_forward


class HeadDrafter:
    """A draft head (FSPAD / EAGLE-2, EAGLE-3). Its cache holds one entry per target position except the
    root's: head position t reads (x_{t+1}, f_t)."""

    def __init__(self, head: DraftHead, stats: SpecDecodeStats):
        self.head = self.model = head
        self.cache = DynamicCache()
        self.stats = stats
        self.feature_layers = head.feature_layers

    def start(self, prompt, first, features):
        return self.catch_up(torch.cat([prompt[:, 1:], first[:, None]], 1), features, 0)

    def catch_up(self, tokens: torch.Tensor, features: torch.Tensor, cached: int):
        """Feed pairs (x_{t+1}, f_t) for t = cached..cached+P-1 (rewinding anything after `cached`).
        Returns the draft's (log-probs [B, V], feature [B, H]) after the last one: what the next root's
        children are drawn from."""
        crop_cache(self.cache, cached)
        P = tokens.shape[1]
        positions = torch.arange(cached, cached + P, device=tokens.device)[None]
        # The new pairs see the whole cache and each other causally: a chain is a tree whose ancestors are the
        # lower triangle, so the expansion's mask path serves (packed for the tree attention kernel).
        chain = torch.ones(P, P, dtype=torch.bool, device=tokens.device).tril()[None]
        out = self.head(input_ids=tokens, features=features, position_ids=positions,
                        attention_mask=tree_mask_for(self.head, chain, cached), cache=self.cache)
        self.stats.draft_forwards += 1
        logits = self.head.compute_logits(out.hidden_states[:, -1]).float()
        return logits.log_softmax(-1), out.features[:, -1]

    def expand(self, cached: int):
        """The `expand` callback for a tree whose root sits at head position cached - 1."""

        def expand(tokens, features, slot_ancestors, depth):
            mask = tree_mask_for(self.head, slot_ancestors, cached)
            positions = torch.full(tokens.shape, cached + depth - 1, device=tokens.device)
            out = self.head(
                input_ids=tokens, features=features, position_ids=positions,
                attention_mask=mask, cache=self.cache,
            )
            self.stats.draft_forwards += 1
            return self.head.compute_logits(out.hidden_states).float().log_softmax(-1), out.features

        return expand


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
