"""What every decoding strategy shares: request checks, stats, outputs, and emitting tokens the way stock
`generate` does (stopping criteria after every token, streamer, scores)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers import (
    EncoderNoRepeatNGramLogitsProcessor,
    EncoderRepetitionPenaltyLogitsProcessor,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationConfig,
    LogitsProcessorList,
    MinPLogitsWarper,
    PrefixConstrainedLogitsProcessor,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
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
    rows: for a batch, each row's own counters (target_forwards: the forwards it took part in); the batch's
    forwards are shared, its new_tokens and accepted_lengths are all the rows' together.
    expected_lengths: when asked for (`track_expected_tau=True` with sampling), each verification's expected
    tokens under the sampling rule (1 + `verification.expected_accepted`); expected_tau is their mean, tau
    without the noise of the accepted draws.
    """

    target_forwards: int = 0
    draft_forwards: int = 0
    new_tokens: int = 0
    accepted_lengths: list[int] = field(default_factory=list)
    rows: list["SpecDecodeStats"] | None = None
    expected_lengths: list[float] | None = None

    @property
    def tau(self) -> float:
        return sum(self.accepted_lengths) / len(self.accepted_lengths) if self.accepted_lengths else float("nan")

    @property
    def expected_tau(self) -> float:
        lengths = self.expected_lengths
        return sum(lengths) / len(lengths) if lengths else float("nan")

    def to_dict(self) -> dict:
        return {
            "target_forwards": self.target_forwards,
            "draft_forwards": self.draft_forwards,
            "new_tokens": self.new_tokens,
            "accepted_lengths": list(self.accepted_lengths),
            "tau": self.tau,
            **({"rows": [row.to_dict() for row in self.rows]} if self.rows is not None else {}),
            **({"expected_lengths": list(self.expected_lengths), "expected_tau": self.expected_tau}
               if self.expected_lengths is not None else {}),
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


def check_generation_config(strategy: str, generation_config: GenerationConfig, allowed: tuple[str, ...] = ()) -> None:
    """Raise for options the strategy cannot honour instead of silently ignoring them (`allowed`: those the
    strategy gives its own meaning)."""
    for name, (is_set, what) in _UNSUPPORTED.items():
        if name not in allowed and is_set(getattr(generation_config, name, None)):
            raise ValueError(
                f"strategy={strategy!r} does not support {what} ({name}={getattr(generation_config, name)!r}); "
                f"remove {name} or call generate without strategy=."
            )


# The generate option behind each of stock's logits processors, for errors that must name what the user set.
PROCESSOR_OPTIONS = {
    "RepetitionPenaltyLogitsProcessor": "repetition_penalty",
    "EncoderRepetitionPenaltyLogitsProcessor": "encoder_repetition_penalty",
    "NoRepeatNGramLogitsProcessor": "no_repeat_ngram_size",
    "EncoderNoRepeatNGramLogitsProcessor": "encoder_no_repeat_ngram_size",
    "NoBadWordsLogitsProcessor": "bad_words_ids",
    "SequenceBiasLogitsProcessor": "sequence_bias",
    "MinLengthLogitsProcessor": "min_length",
    "MinNewTokensLengthLogitsProcessor": "min_new_tokens",
    "PrefixConstrainedLogitsProcessor": "prefix_allowed_tokens_fn",
    "ForcedBOSTokenLogitsProcessor": "forced_bos_token_id",
    "ForcedEOSTokenLogitsProcessor": "forced_eos_token_id",
    "InfNanRemoveLogitsProcessor": "remove_invalid_values",
    "ExponentialDecayLengthPenalty": "exponential_decay_length_penalty",
    "LogitNormalization": "renormalize_logits",
    "SuppressTokensLogitsProcessor": "suppress_tokens",
    "SuppressTokensAtBeginLogitsProcessor": "begin_suppress_tokens",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor": "guidance_scale",
    "ClassifierFreeGuidanceLogitsProcessor": "guidance_scale",
    "WatermarkLogitsProcessor": "watermarking_config",
    "SynthIDTextWatermarkLogitsProcessor": "watermarking_config",
    "TemperatureLogitsWarper": "temperature",
    "TopKLogitsWarper": "top_k",
    "TopPLogitsWarper": "top_p",
    "MinPLogitsWarper": "min_p",
    "TypicalLogitsWarper": "typical_p",
    "EpsilonLogitsWarper": "epsilon_cutoff",
    "EtaLogitsWarper": "eta_cutoff",
}


def processor_options(processors) -> list[str]:
    """The generate options that made these processors (a processor passed in logits_processor= by class)."""
    names = []
    for processor in processors:
        cls = type(processor).__name__
        name = PROCESSOR_OPTIONS.get(cls, f"logits_processor=[{cls}(...)]")
        if name not in names:
            names.append(name)
    return names


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


def check_prompt(strategy: str, input_ids) -> None:
    """The prompt must be a non-empty [B, L] tensor of integer token ids. Stock generate fails on these deep
    inside the model (an embedding or attention error); say what is wrong before anything runs."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"strategy={strategy!r} needs input_ids as a torch tensor of token ids, got "
                        f"{type(input_ids).__name__}; e.g. tokenizer(text, return_tensors='pt').input_ids.")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be integer token ids (torch.long), got dtype {input_ids.dtype}; pass "
                        "input_ids.long() if the values are token ids, or inputs_embeds to stock generate for "
                        "embeddings.")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {list(input_ids.shape)}; add the batch "
                         "dimension with input_ids[None].")
    if input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {list(input_ids.shape)}): strategy={strategy!r} needs at "
                         "least one prompt token; start from the BOS token (tokenizer.bos_token_id) for an "
                         "unconditional generation.")


def strip_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_token_id=None):
    """For batch size 1: drop left padding (positions start after it, as stock generate computes them).
    Returns (padding, unpadded ids). `pad_token_id` only words the error for a mask with holes."""
    if attention_mask is None or bool(attention_mask.all()):
        return input_ids[:, :0], input_ids
    n_pad = int((attention_mask[0].cumsum(0) == 0).sum())
    if not bool(attention_mask[0, n_pad:].all()):
        holes = (attention_mask[0, n_pad:] == 0).nonzero().flatten().add(n_pad).tolist()
        where = ", ".join(map(str, holes[:8])) + (", ..." if len(holes) > 8 else "")
        message = (f"attention_mask masks position(s) {where} inside the prompt; this strategy takes left "
                   "padding only (zeros before the prompt).")
        if pad_token_id is not None and bool((input_ids[0, holes] == pad_token_id).all()):
            message += (f" No attention_mask given? transformers derived one from pad_token_id={pad_token_id}, "
                        f"which occurs in input_ids at position(s) {where}. If those tokens are text, pass "
                        "attention_mask=torch.ones_like(input_ids) (or set a pad_token_id the prompt does not "
                        "contain).")
        raise ValueError(message)
    return input_ids[:, :n_pad], input_ids[:, n_pad:]


def left_padding_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_token_id=None) -> torch.Tensor:
    """For a batch: [B, L] bool, which slots hold prompt tokens; every row must be left padding, then its
    prompt (the checks and errors of `strip_left_padding`, row by row)."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    for b in range(input_ids.shape[0]):
        try:
            strip_left_padding(input_ids[b : b + 1], attention_mask[b : b + 1], pad_token_id)
        except ValueError as error:
            raise ValueError(f"Row {b} of the batch: {error}") from None
        if not bool(attention_mask[b].any()):
            raise ValueError(f"Row {b} of the batch is all padding (its attention_mask is all zeros); every row "
                             "needs at least one prompt token.")
    return attention_mask.bool()


def processors_for_row(processors: LogitsProcessorList, row: int) -> LogitsProcessorList:
    """The request's processors as they act on row `row` of the batch when it is processed alone (as row 0 of
    a one-row batch): prefix_allowed_tokens_fn still gets batch id `row`; a repetition penalty still skips
    this row's own padding; the encoder repetition penalty and encoder n-gram ban read this row's prompt. The
    others hold no per-row state and are shared."""
    out = LogitsProcessorList()
    for processor in processors:
        if isinstance(processor, PrefixConstrainedLogitsProcessor):
            fn = processor._prefix_allowed_tokens_fn
            processor = copy.copy(processor)
            processor._prefix_allowed_tokens_fn = lambda batch_id, sent, fn=fn: fn(row, sent)
        elif isinstance(getattr(processor, "prompt_ignore_length", None), torch.Tensor):
            processor = copy.copy(processor)
            processor.prompt_ignore_length = processor.prompt_ignore_length[row : row + 1]
        elif isinstance(processor, EncoderRepetitionPenaltyLogitsProcessor):
            processor = copy.copy(processor)
            processor.encoder_input_ids = processor.encoder_input_ids[row : row + 1]
        elif isinstance(processor, EncoderNoRepeatNGramLogitsProcessor):
            processor = copy.copy(processor)
            processor.generated_ngrams, processor.batch_size = [processor.generated_ngrams[row]], 1
        out.append(processor)
    return out


def reads_batch_rows(processor) -> bool:
    """Whether a processor's output depends on a row's index in the batch: prefix_allowed_tokens_fn(batch_id,
    ...), or per-row state sized for the request's batch (repetition penalty's padding lengths)."""
    return isinstance(processor, PrefixConstrainedLogitsProcessor) or isinstance(
        getattr(processor, "prompt_ignore_length", None), torch.Tensor
    )


# Stock processors whose output at a row depends on that row's scores alone (and their own settings), never on
# the tokens before it: the sampling warpers.
SCORES_ONLY_PROCESSORS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper,
                          TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper)


def process_tree_scores(
    logits: torch.Tensor, tree: DraftTree, sequence: torch.Tensor, logits_processor: LogitsProcessorList
) -> torch.Tensor:
    """Apply the logits processors to the target's logits at every tree node, each with its own context
    (the committed sequence plus the path to the node). Nodes of one depth share a context length, so they
    go through the processors as one batch -- except through those that read a row's batch index, which see
    each node alone, as row 0 of the request's one-row batch. Where every processor reads the scores alone
    (sampling with temperature, top-k, top-p, ...), all nodes go through them at once. logits [1, N, V] float32
    -> scores [1, N, V]."""
    if not logits_processor:
        return logits
    if all(type(processor) in SCORES_ONLY_PROCESSORS for processor in logits_processor):
        scores = logits[0]
        for processor in logits_processor:
            scores = processor(sequence.expand(scores.shape[0], -1), scores)
        return scores[None]
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
