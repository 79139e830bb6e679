"""What every decoding strategy shares: request checks, stats, outputs, and emitting tokens the way stock
`generate` does (stopping criteria after every token, streamer, scores)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList, PrefixConstrainedLogitsProcessor, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..compat import cache_kwargs
from ..tree.structure import DraftTree


@dataclass
class SpecDecodeStats:
    """Counters of one speculative `generate` call.

    target_forwards: target forward passes, the prefill included.
    new_tokens: tokens generated (the first one comes from the prefill).
    accepted_lengths: tokens emitted by each verification forward, the bonus token included.
    draft_forwards: forward passes of the draft.
    tau = mean(accepted_lengths): tokens per verification forward (plain decoding has tau = 1).
    """

    target_forwards: int = 0
    draft_forwards: int = 0
    new_tokens: int = 0
    accepted_lengths: list[int] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return sum(self.accepted_lengths) / len(self.accepted_lengths) if self.accepted_lengths else float("nan")

    def to_dict(self) -> dict:
        return {
            "target_forwards": self.target_forwards,
            "draft_forwards": self.draft_forwards,
            "new_tokens": self.new_tokens,
            "accepted_lengths": list(self.accepted_lengths),
            "tau": self.tau,
        }


@dataclass
class SpecDecodeOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus `spec_stats` (a `SpecDecodeStats`)."""

    spec_stats: SpecDecodeStats | None = None


_UNSUPPORTED = {
    "num_beams": (lambda v: v not in (None, 1), "beam search"),
    "num_return_sequences": (lambda v: v not in (None, 1), "several return sequences"),
    "output_attentions": (bool, "output_attentions"),
    "output_hidden_states": (bool, "output_hidden_states"),
    "guidance_scale": (lambda v: v not in (None, 1, 1.0), "classifier-free guidance"),
    "watermarking_config": (lambda v: v is not None, "watermarking"),
    "prompt_lookup_num_tokens": (lambda v: v is not None, "prompt lookup decoding"),
    "penalty_alpha": (lambda v: v is not None, "contrastive search"),
    "dola_layers": (lambda v: v is not None, "DoLa decoding"),
}


def check_generation_config(strategy: str, generation_config: GenerationConfig) -> None:
    """Raise for options the strategy cannot honour instead of silently ignoring them."""
    for name, (is_set, what) in _UNSUPPORTED.items():
        if is_set(getattr(generation_config, name, None)):
            raise ValueError(
                f"strategy={strategy!r} does not support {what} ({name}={getattr(generation_config, name)!r}); "
                f"remove {name} or call generate without strategy=."
            )


def check_tree_numbers(**numbers) -> None:
    """Tree options (children per node, depth, node budget) are positive integers; the budget counts the root."""
    for name, value in numbers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if numbers.get("tree_total_tokens", 2) < 2:
        raise ValueError("tree_total_tokens counts the root, so it must be at least 2.")


def check_model_kwargs(strategy: str, model_kwargs: dict, allowed: set[str]) -> None:
    extra = sorted(k for k, v in model_kwargs.items() if v is not None and k not in allowed)
    if extra:
        raise ValueError(
            f"strategy={strategy!r} does not support the model inputs {extra}; only input_ids and attention_mask "
            "are handled (no inputs_embeds, multimodal inputs or a pre-filled cache)."
        )


def strip_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """For batch size 1: drop left padding (positions start after it, as stock generate computes them).
    Returns (padding, unpadded ids)."""
    if attention_mask is None or bool(attention_mask.all()):
        return input_ids[:, :0], input_ids
    n_pad = int((attention_mask[0].cumsum(0) == 0).sum())
    if not bool(attention_mask[0, n_pad:].all()):
        raise ValueError("attention_mask may only mask left padding (zeros before the prompt) with this strategy.")
    return input_ids[:, :n_pad], input_ids[:, n_pad:]


def reads_batch_rows(processor) -> bool:
    """Whether a processor's output depends on a row's index in the batch: prefix_allowed_tokens_fn(batch_id,
    ...), or per-row state sized for the request's batch (repetition penalty's padding lengths)."""
    return isinstance(processor, PrefixConstrainedLogitsProcessor) or isinstance(
        getattr(processor, "prompt_ignore_length", None), torch.Tensor
    )


def process_tree_scores(
    logits: torch.Tensor, tree: DraftTree, sequence: torch.Tensor, logits_processor: LogitsProcessorList
) -> torch.Tensor:
    """Apply the logits processors to the target's logits at every tree node, each with its own context
    (the committed sequence plus the path to the node). Nodes of one depth share a context length, so they
    go through the processors as one batch -- except through those that read a row's batch index, which see
    each node alone, as row 0 of the request's one-row batch. logits [1, N, V] float32 -> scores [1, N, V]."""
    if not logits_processor:
        return logits
    paths = tree.path_tokens()[0]  # [N, D]
    scores = torch.empty_like(logits)
    for d in range(int(tree.depths.max()) + 1):
        nodes = (tree.depths[0] == d).nonzero().flatten()
        context = torch.cat([sequence.expand(len(nodes), -1), paths[nodes, :d]], dim=1)
        level = logits[0, nodes]
        for processor in logits_processor:
            if reads_batch_rows(processor):
                level = torch.cat([processor(context[r : r + 1], level[r : r + 1]) for r in range(len(nodes))])
            else:
                level = processor(context, level)
        scores[0, nodes] = level
    return scores


class TokenEmitter:
    """Appends tokens one at a time, like stock decoding, and stops at the first token where a stopping
    criterion fires: an EOS or max_new_tokens inside an accepted path cuts the path there."""

    def __init__(self, sequence, stopping_criteria: StoppingCriteriaList, streamer, keep_scores: bool, keep_logits: bool):
        self.sequence = sequence
        self.stopping_criteria = stopping_criteria
        self.streamer = streamer
        self.scores = [] if keep_scores else None
        self.logits = [] if keep_logits else None
        self.finished = False

    def emit(self, tokens: torch.Tensor, scores: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> int:
        """tokens [n]; scores / logits [n, V] (the distributions they were chosen from). Returns how many
        were kept."""
        kept = 0
        for i in range(tokens.shape[0]):
            self.sequence = torch.cat([self.sequence, tokens[None, i : i + 1]], dim=-1)
            kept += 1
            if self.scores is not None:
                self.scores.append(scores[i : i + 1])
            if self.logits is not None:
                self.logits.append(logits[i : i + 1])
            if bool(self.stopping_criteria(self.sequence, scores[i : i + 1] if scores is not None else None).any()):
                self.finished = True
                break
        if self.streamer is not None:
            self.streamer.put(tokens[:kept].cpu())
        return kept

    def result(self, generation_config: GenerationConfig, cache, stats: SpecDecodeStats):
        if self.streamer is not None:
            self.streamer.end()
        if not generation_config.return_dict_in_generate:
            return self.sequence
        return SpecDecodeOutput(
            sequences=self.sequence,
            **cache_kwargs(cache),
            scores=tuple(self.scores) if self.scores is not None else None,
            logits=tuple(self.logits) if self.logits is not None else None,
            spec_stats=stats,
        )
