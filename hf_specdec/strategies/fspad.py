"""strategy="fspad": tree speculative decoding with an FSPAD (or EAGLE-2) draft head.

One cycle, with L committed tokens of which the last one (the root) is not yet in the target's cache:
    1. grow an EAGLE-2 tree from the root with the head (the head has its own KV cache);
    2. verify the whole tree in one target forward (tree mask after the cached prefix, depth positions);
    3. accept the longest valid path, emit its tokens and the target's bonus token;
    4. compact the target cache to prefix + accepted path; rewind the head's cache and feed it the accepted
       tokens with the target's own features, which gives the next root's draft distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..draft import FSPADDraftModel
from ..tree import (
    check_compactable,
    compact_cache,
    crop_cache,
    grow_tree,
    tree_attention_mask,
    tree_position_ids,
)
from ..verification import verify_greedy, verify_sampling
from .common import (
    SpecDecodeStats,
    TokenEmitter,
    check_generation_config,
    check_model_kwargs,
    process_tree_scores,
    strip_left_padding,
)

# Measured on the 2-core CPU with SmolLM2-135M in bf16 (see README, "Tree shape"): a verification forward of
# 16 tokens costs ~1.25x one token there, while the GPU default of 60 tokens costs ~3x.
DEFAULT_TREE = {"tree_top_k": 4, "tree_depth": 4, "tree_total_tokens": 16}


@dataclass(frozen=True)
class TreeShape:
    """EAGLE-2 dynamic tree parameters: children per expanded node, draft depth, node budget (root included)."""

    top_k: int
    depth: int
    total_tokens: int

    @classmethod
    def resolve(cls, head: FSPADDraftModel, **given) -> "TreeShape":
        """Generate kwargs win, then the head's generation_config, then DEFAULT_TREE."""
        head_config = getattr(head, "generation_config", None)
        values = {}
        for name, default in DEFAULT_TREE.items():
            value = given.get(name)
            if value is None and head_config is not None:
                value = getattr(head_config, name, None)
            values[name] = default if value is None else value
        shape = cls(values["tree_top_k"], values["tree_depth"], values["tree_total_tokens"])
        for name, value in zip(DEFAULT_TREE, (shape.top_k, shape.depth, shape.total_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if shape.total_tokens < 2:
            raise ValueError("tree_total_tokens counts the root, so it must be at least 2.")
        return shape


def target_forward(model, input_ids, cache, position_ids, attention_mask=None):
    """One target forward through its decoder and lm_head: (features [B, q, H], logits [B, q, V] float32).
    Features are the last hidden states after the final norm: what the head reads."""
    out = model.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    )
    features = out.last_hidden_state
    logits = model.get_output_embeddings()(features).float()
    cap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return features, logits


class HeadDrafter:
    """Runs the head against its own KV cache: catching up on accepted tokens, and expanding tree levels."""

    def __init__(self, head: FSPADDraftModel, stats: SpecDecodeStats):
        self.head = head
        self.cache = DynamicCache()
        self.stats = stats

    def catch_up(self, tokens: torch.Tensor, features: torch.Tensor, start: int):
        """Feed pairs (x_{t+1}, f_t) for t = start..start+q-1 (rewinding anything after `start`).
        Returns the draft's (log-probs [B, V], feature [B, H]) after the last one: what the next root's
        children are drawn from."""
        crop_cache(self.cache, start)
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)[None]
        out = self.head(input_ids=tokens, features=features, position_ids=positions, past_key_values=self.cache)
        self.stats.draft_forwards += 1
        logits = self.head.compute_logits(out.hidden_states[:, -1]).float()
        return logits.log_softmax(-1), out.features[:, -1]

    def expand(self, prefix_len: int):
        """The `expand` callback of `grow_tree` for a tree whose root sits at head position prefix_len - 1."""

        def expand(tokens, features, slot_ancestors, depth):
            mask = tree_attention_mask(slot_ancestors, prefix_len, self.head.dtype)
            positions = torch.full(tokens.shape, prefix_len + depth - 1, device=tokens.device)
            out = self.head(
                input_ids=tokens, features=features, position_ids=positions,
                attention_mask=mask, past_key_values=self.cache,
            )
            self.stats.draft_forwards += 1
            return self.head.compute_logits(out.hidden_states).float().log_softmax(-1), out.features

        return expand


def _choose(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """The next token from processed scores [B, V], as stock generate picks it."""
    if do_sample:
        return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)
    return scores.argmax(-1)


@torch.no_grad()
def fspad_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    draft_model: FSPADDraftModel | None = None,
    streamer=None,
    tokenizer=None,
    tree_top_k: int | None = None,
    tree_depth: int | None = None,
    tree_total_tokens: int | None = None,
    synced_gpus: bool = False,
    **model_kwargs,
):
    """Tree speculative decoding. Usable as `model.generate(..., strategy="fspad", assistant_model=head)`
    after `import hf_specdec`, or without the hook as `model.generate(..., custom_generate=fspad_generate,
    draft_model=head)`."""
    head = draft_model
    if head is None:
        raise ValueError(
            "strategy='fspad' needs a draft head: pass assistant_model=FSPADDraftModel.from_pretrained(...) "
            "(or FSPADDraftModel.from_target(model) for an untrained one)."
        )
    if not isinstance(head, FSPADDraftModel):
        raise TypeError(
            f"strategy='fspad' needs an FSPADDraftModel as assistant_model, got {type(head).__name__}. "
            "For an ordinary small draft LM use stock assisted generation (no strategy=)."
        )
    check_generation_config("fspad", generation_config)
    if input_ids.shape[0] != 1:
        raise NotImplementedError(
            f"strategy='fspad' supports batch size 1 for now (got {input_ids.shape[0]}); call generate once per prompt."
        )
    if synced_gpus:
        raise NotImplementedError("strategy='fspad' does not support synced_gpus.")
    check_model_kwargs("fspad", model_kwargs, {"attention_mask", "past_key_values", "use_cache", "position_ids", "logits_to_keep"})
    shape = TreeShape.resolve(head, tree_top_k=tree_top_k, tree_depth=tree_depth, tree_total_tokens=tree_total_tokens)
    head.attach_target(model, tokenizer=tokenizer)

    cache = model_kwargs.get("past_key_values")
    if cache is None:
        cache = DynamicCache(config=model.config)
    check_compactable(cache)
    if cache.get_seq_length() > 0:
        raise ValueError("strategy='fspad' starts from an empty cache; do not pass a filled past_key_values.")

    padding, prompt = strip_left_padding(input_ids, model_kwargs.get("attention_mask"))
    do_sample = generation_config.do_sample
    stats = SpecDecodeStats()
    emitter = TokenEmitter(
        prompt, stopping_criteria, streamer,
        keep_scores=generation_config.return_dict_in_generate and generation_config.output_scores,
        keep_logits=generation_config.return_dict_in_generate and generation_config.output_logits,
    )
    if streamer is not None:
        streamer.put(input_ids.cpu())

    # Prefill: the target's features for the prompt and its first token.
    L = prompt.shape[1]
    features, logits = target_forward(model, prompt, cache, torch.arange(L, device=prompt.device)[None])
    stats.target_forwards += 1
    scores = logits_processor(prompt, logits[:, -1])
    first = _choose(scores, do_sample)
    emitter.emit(first, scores, logits[:, -1])
    stats.new_tokens += 1

    drafter = HeadDrafter(head, stats)
    if not emitter.finished:
        log_probs, draft_feature = drafter.catch_up(torch.cat([prompt[:, 1:], first[:, None]], 1), features, 0)
    draft_to_target = head.draft_to_target if head.config.draft_vocab_size is not None else None

    while not emitter.finished:
        root = emitter.sequence[:, -1]  # committed, not yet in the target cache; the cache holds L tokens
        tree = grow_tree(
            drafter.expand(L), root, log_probs, draft_feature,
            shape.top_k, shape.depth, shape.total_tokens, draft_to_target,
        )
        mask = tree_attention_mask(tree.ancestors, L, model.dtype)
        features, logits = target_forward(model, tree.tokens, cache, tree_position_ids(tree.depths, L), mask)
        stats.target_forwards += 1
        scores = process_tree_scores(logits, tree, emitter.sequence, logits_processor)
        if do_sample:
            verdict = verify_sampling(tree, scores.softmax(-1))
        else:
            verdict = verify_greedy(tree, scores)
        path = verdict.path[0]
        compact_cache(cache, torch.cat([torch.arange(L, device=path.device), L + path]))

        new_tokens = torch.cat([tree.tokens[0, path[1:]], verdict.next_tokens])
        kept = emitter.emit(new_tokens, scores[0, path], logits[0, path])
        stats.accepted_lengths.append(kept)
        stats.new_tokens += kept
        if emitter.finished:
            break
        log_probs, draft_feature = drafter.catch_up(new_tokens[None], features[:, path], L)
        L += path.shape[0]

    return emitter.result(generation_config, cache, stats, padding)
