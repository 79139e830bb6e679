"""The tree speculative decoding loop every tree strategy runs; the strategies differ only in how the tree is
grown and how it is verified.

One cycle, with L committed tokens in the target's cache and the last committed token (the root) not yet in
it:
    1. `grow(committed, draft_state, L)`: a tree grows from the root (the last of the committed tokens, which
       lookup drafts read too);
    2. the target verifies the whole tree in one forward (tree mask after the cached prefix, depth positions);
    3. `verify(tree, scores)` picks the accepted path and the target's next token after it;
    4. the target cache is compacted to prefix + accepted path, the tokens are emitted (stopping criteria per
       token), and the drafter catches up on them, which gives the next root's draft state.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from ..compat import CACHE_KWARGS, cache_kwargs, given_cache
from ..tree import (
    DraftTree,
    check_compactable,
    check_tree_attention,
    compact_cache,
    tree_attention_for,
    tree_mask_builder,
    tree_position_ids,
)
from ..verification import Verdict, first_argmax
from .common import (
    SpecDecodeStats,
    TokenEmitter,
    check_generation_config,
    check_model_kwargs,
    check_prompt,
    left_padding_mask,
    process_tree_scores,
    strip_left_padding,
)

# What a drafter hands the tree grower for the root: (draft log-probs [B, V'] after the root, feature [B, H]
# or None for drafts that do not read the target's features).
DraftState = tuple[torch.Tensor, "torch.Tensor | None"]

MODEL_INPUTS = {"attention_mask", "use_cache", "position_ids", "logits_to_keep"} | CACHE_KWARGS


class Drafter(Protocol):
    model: torch.nn.Module  # the draft network (its attention implementation may be switched while decoding)
    # the target features it reads: None for the last hidden state, else the decoder layers whose input
    # hidden states are concatenated (EAGLE-3); see target_forward
    feature_layers: tuple[int, ...] | None

    def start(self, prompt: torch.Tensor, first: torch.Tensor, features: torch.Tensor) -> DraftState:
        """Read the prompt [B, L] (with the target's features [B, L, H]) and the first new token [B]."""

    def catch_up(self, tokens: torch.Tensor, features: torch.Tensor, cached: int) -> DraftState:
        """Read the tokens [B, P] emitted by a cycle that started with `cached` tokens in the target cache
        (the accepted draft tokens, then the target's next token), with the target's features at the
        accepted path [B, P] (root first), dropping whatever the tree growth left behind."""

    def expand(self, cached: int) -> Callable:
        """The tree growers' `expand` callback for a tree rooted after `cached` target-cache tokens."""


def target_forward(model, input_ids, cache, position_ids, attention_mask=None, logits_to_keep: int = 0,
                   feature_layers: tuple[int, ...] | None = None):
    """One forward of a causal LM: (features [B, q, H'], logits [B, k, V] float32 for the last k =
    logits_to_keep positions, all of them for 0).

    The model's own forward, so whatever it does after its lm_head (Cohere's logit_scale, Granite's
    logits_scaling, Gemma's softcapping) is part of the logits. Features are the decoder's output (the last
    hidden states after the final norm, what an FSPAD / EAGLE-2 head reads) or, with `feature_layers`, the
    hidden states entering those decoder layers concatenated (what an EAGLE-3 head reads, H' = 3H), taken by
    hooks on those layers alone rather than by materialising every layer's states. A prefill needs logits at
    its last position only (logits_to_keep=1): the lm_head at every prompt position is a fifth of SmolLM2's
    weights applied to the whole prompt for nothing."""
    captured, caller = {}, threading.get_ident()
    decoder = model.get_decoder()

    # the hooks sit on modules other threads may run at the same time: each keeps its own call's tensors
    def capture_output(module, args, out):
        if threading.get_ident() == caller:
            captured["out"] = out.last_hidden_state

    def capture_input(index):
        def hook(module, args, kwargs):
            if threading.get_ident() == caller:
                captured[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    if feature_layers is None:
        hooks = [decoder.register_forward_hook(capture_output)]
    else:
        hooks = [decoder.layers[i].register_forward_pre_hook(capture_input(i), with_kwargs=True) for i in feature_layers]
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **cache_kwargs(cache),
        )
    finally:
        for hook in hooks:
            hook.remove()
    features = captured["out"] if feature_layers is None else torch.cat([captured[i] for i in feature_layers], -1)
    return features, out.logits.float()


def choose_token(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """The next token from processed scores [B, V], as stock generate picks it."""
    if do_sample:
        return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)
    return first_argmax(scores)


def open_request(strategy: str, model, input_ids, generation_config: GenerationConfig, synced_gpus: bool,
                 model_kwargs: dict, draft=None, extra_options: set[str] = frozenset(), batched: bool = False):
    """Checks shared by the tree strategies (the target's and the draft's among them); returns (cache, left
    padding, unpadded prompt) for one row, or with `batched` (a strategy that decodes B > 1 rows together) and
    several rows: (cache, None, `left_padding_mask` [B, L])."""
    check_prompt(strategy, input_ids)
    check_generation_config(strategy, generation_config)
    for network in (model, draft):
        if network is not None:
            check_tree_attention(network)
    B = input_ids.shape[0]
    if B != 1 and not batched:
        raise NotImplementedError(
            f"strategy={strategy!r} supports batch size 1 for now (got {B}); call generate once per prompt "
            "(strategy='fspad' takes batches)."
        )
    if synced_gpus:
        raise NotImplementedError(f"strategy={strategy!r} does not support synced_gpus.")
    check_model_kwargs(strategy, model_kwargs, MODEL_INPUTS | set(extra_options))
    cache = given_cache(model_kwargs)
    if cache is None:
        cache = DynamicCache(config=model.config)
    check_compactable(cache)
    if cache.get_seq_length() > 0:
        raise ValueError(f"strategy={strategy!r} starts from an empty cache; do not pass a filled cache.")
    if B > 1:
        return cache, None, left_padding_mask(input_ids, model_kwargs.get("attention_mask"), generation_config.pad_token_id)
    padding, prompt = strip_left_padding(input_ids, model_kwargs.get("attention_mask"), generation_config.pad_token_id)
    return cache, padding, prompt


def run_tree_decoding(
    model,
    prompt: torch.Tensor,
    padding: torch.Tensor,
    cache: DynamicCache,
    drafter: Drafter,
    grow: Callable[[torch.Tensor, DraftState, int], DraftTree],
    verify: Callable[[DraftTree, torch.Tensor], Verdict],
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    streamer,
    stats: SpecDecodeStats,
):
    """The decoding loop (module docstring). `verify` gets the target's processed scores [1, N, V]. Where the
    Triton kernels serve (hf_specdec.accel), target and draft attend with the tree attention kernel."""
    with tree_attention_for(model, drafter.model):
        return _decode(model, prompt, padding, cache, drafter, grow, verify, logits_processor, stopping_criteria,
                       generation_config, streamer, stats)


def _decode(model, prompt, padding, cache, drafter, grow, verify, logits_processor, stopping_criteria,
            generation_config, streamer, stats):
    # Logits processors and stopping criteria see the padded sequence, as in stock generate (max_length and
    # min_new_tokens count the padding); the model sees the prompt alone at positions 0..L-1.
    emitter = TokenEmitter(
        torch.cat([padding, prompt], -1), stopping_criteria, streamer,
        keep_scores=generation_config.return_dict_in_generate and generation_config.output_scores,
        keep_logits=generation_config.return_dict_in_generate and generation_config.output_logits,
    )
    if streamer is not None:
        streamer.put(emitter.sequence.cpu())

    # Prefill: the target's features for the prompt and its first token.
    L = prompt.shape[1]
    features, logits = target_forward(model, prompt, cache, torch.arange(L, device=prompt.device)[None],
                                      logits_to_keep=1, feature_layers=drafter.feature_layers)
    stats.target_forwards += 1
    scores = logits_processor(emitter.sequence, logits[:, -1])
    first = choose_token(scores, generation_config.do_sample)
    emitter.emit(first, scores, logits[:, -1])
    stats.new_tokens += 1
    if not emitter.finished:
        draft_state = drafter.start(prompt, first, features)

    tree_mask = tree_mask_builder(model)  # the attention implementation is fixed for the call (run_tree_decoding)
    while not emitter.finished:
        tree = grow(emitter.sequence[:, padding.shape[1]:], draft_state, L)
        mask = tree_mask(tree.ancestors, L)
        features, logits = target_forward(model, tree.tokens, cache, tree_position_ids(tree.depths, L), mask,
                                          feature_layers=drafter.feature_layers)
        stats.target_forwards += 1
        scores = process_tree_scores(logits, tree, emitter.sequence, logits_processor)
        verdict = verify(tree, scores)
        path = verdict.path[0]
        compact_cache(cache, L, path)

        new_tokens = torch.cat([tree.tokens[0, path[1:]], verdict.next_tokens])
        kept = emitter.emit(new_tokens, scores[0, path], logits[0, path])
        stats.accepted_lengths.append(kept)
        stats.new_tokens += kept
        if emitter.finished:
            break
        draft_state = drafter.catch_up(new_tokens[None], features[:, path], L)
        L += path.shape[0]

    return emitter.result(generation_config, cache, stats)
