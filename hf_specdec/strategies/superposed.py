"""strategy="superposed": Superposed Decoding (Shen et al., arXiv 2405.18400; research/superposed.md).

k drafts from one forward pass per step. The model reads one *superposed* token per step: the mixture
sum_i gamma_i E[last token of draft i], gamma = softmax of the drafts' scores, fed through `inputs_embeds`
(any transformers causal LM, no fork). Its next-token distribution p_theta is shared by all drafts; each draft
interpolates it with its own n-gram distribution, and the k best (draft, token) extensions survive, like
beam search without k forwards.

Per step, with S_i the cumulative log score of draft i:
    p_theta = softmax(logits / tau), truncated to its n_token_sample most likely tokens and renormalised
    log p_f(x | d_i) = (1 - alpha) log p_theta(x) + alpha log p_ngram(x | d_i)
    candidates S_i + log p_f(x | d_i) over all (i, x); the best 2k; the best k that do not end in EOS go on,
    EOS-ended ones move to the finished pool.
Output: alive and finished drafts ranked by their mean log score S / length, best first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

from ..compat import CACHE_KWARGS, cache_kwargs, given_cache
from ..ngram import NgramTable
from ..prepacked import check_prepack, prepacked_linears
from .common import check_generation_config, check_model_kwargs, check_prompt, processor_options, strip_left_padding

DEFAULT_K = 3
DEFAULT_ALPHA = 0.54  # the paper's n-gram weight
DEFAULT_TEMPERATURE = 0.06  # the paper's LM temperature tau
NO_NGRAM_PENALTY = 200.0  # a draft none of whose candidates the n-gram table knows: -200 on the log scale
SHIPPED_TABLE = Path(__file__).resolve().parents[1] / "pretrained" / "smollm2-135m-instruct-ngram" / "ngram.safetensors"


@dataclass
class SuperposedOutput(GenerateBeamDecoderOnlyOutput):
    """`sequences` [k, L] best first (padded with pad_token_id after EOS / the end) and `sequences_scores`
    [k] (mean log score per new token, the ranking key)."""


def interpolate(log_p_theta: torch.Tensor, p_ngram: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """log p_f = (1 - alpha) log p_theta + alpha log p_ngram, [k, m] over the m kept candidates. Zero n-gram
    mass gives -inf; a draft with no n-gram mass on any candidate gets (1 - alpha) log p_theta - 200 instead.
    Without n-grams (or alpha = 0) it is log p_theta."""
    if p_ngram is None or alpha == 0:
        return log_p_theta
    mixed = (1 - alpha) * log_p_theta + alpha * p_ngram.log()
    unknown = (p_ngram > 0).sum(-1, keepdim=True) == 0
    return torch.where(unknown, (1 - alpha) * log_p_theta - NO_NGRAM_PENALTY, mixed)


def superposed_embedding(embedding: torch.nn.Embedding, last_tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """sum_i gamma_i E[last_tokens_i] with gamma = softmax(scores): [k] tokens, [k] scores -> [1, 1, H]
    (drafts sharing a last token add their weights)."""
    gamma = scores.float().softmax(-1)
    vectors = embedding(last_tokens).float()  # [k, H]
    return (gamma[:, None] * vectors).sum(0).to(embedding.weight.dtype)[None, None]


def resolve_ngram(ngram, model, tokenizer) -> NgramTable | None:
    """ngram=False: off; an NgramTable, a path or a Hub id: that table; None: the shipped table when the
    model is the embedded SmolLM2 (else an error saying how to give one)."""
    if ngram is False:
        return None
    if isinstance(ngram, NgramTable):
        table = ngram
    elif ngram is not None:
        table = NgramTable.load(ngram)
    else:
        from ..draft.base import embedding_fingerprint, same_fingerprint

        table = NgramTable.load(SHIPPED_TABLE) if SHIPPED_TABLE.exists() else None
        fingerprint = table.target_fingerprint if table is not None else None
        if fingerprint is None or not same_fingerprint(
            fingerprint, embedding_fingerprint(model.get_input_embeddings().weight)
        ):
            raise ValueError(
                "strategy='superposed' needs an n-gram table for this model: pass ngram=NgramTable.load(path) or a "
                "path / Hub id (build one with `hf-specdec ngram --model ...`), or ngram=False to decode without "
                "the n-gram term. Only the embedded SmolLM2 target has a shipped table."
            )
    table.check_tokenizer(tokenizer, model.get_output_embeddings().weight.shape[0])
    return table


def check_request(generation_config: GenerationConfig, logits_processor, stopping_criteria, k, alpha, temperature,
                  n_token_sample):
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"num_return_sequences (the number of drafts k) must be a positive integer, got {k!r}.")
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"superposed_alpha must be in [0, 1], got {alpha!r}.")
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"superposed_temperature must be > 0, got {temperature!r}.")
    if not isinstance(n_token_sample, int) or n_token_sample < k:
        raise ValueError(f"n_token_sample must be an integer >= k = {k}, got {n_token_sample!r}.")
    if generation_config.do_sample:
        raise ValueError("strategy='superposed' is deterministic (its own temperature, superposed_temperature): "
                         "remove do_sample=True, or sample with stock generate.")
    if generation_config.num_beams not in (None, 1):
        raise ValueError("strategy='superposed' is its own beam-like search: remove num_beams.")
    check_generation_config("superposed", generation_config, allowed=("num_return_sequences", "num_beams"))
    if logits_processor:
        raise ValueError(f"strategy='superposed' applies no logits processors; remove "
                         f"{', '.join(processor_options(logits_processor))}.")
    other = [type(c).__name__ for c in stopping_criteria
             if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria, MaxTimeCriteria))]
    if other:
        raise ValueError(f"strategy='superposed' stops at max_new_tokens / max_length / EOS / max_time only; "
                         f"unsupported stopping criteria: "
                         f"{', '.join(other)} (stop_strings too).")


@torch.no_grad()
def superposed_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    num_return_sequences: int | None = None,
    ngram=None,
    superposed_alpha: float = DEFAULT_ALPHA,
    superposed_temperature: float = DEFAULT_TEMPERATURE,
    n_token_sample: int | None = None,
    tokenizer=None,
    draft_model=None,
    streamer=None,
    synced_gpus: bool = False,
    prepack_target: bool | None = None,
    **model_kwargs,
):
    """Superposed Decoding: `model.generate(ids, strategy="superposed", num_return_sequences=k,
    max_new_tokens=n, ngram=table | path | False, superposed_alpha=0.54, superposed_temperature=0.06,
    n_token_sample=3k)`. Returns k sequences [k, L + n], best first (`return_dict_in_generate=True` adds
    `sequences_scores`). `prepack_target`: the model's linear layers on prepacked weights, as for
    strategy="fspad" (hf_specdec/prepacked.py; default: on for a CPU model whose copy stays within 4 GiB):
    every step is a one-token forward, where the weight reorder F.linear does per call costs most."""
    check_prompt("superposed", input_ids)
    k = DEFAULT_K if num_return_sequences is None else num_return_sequences
    n_token_sample = 3 * k if n_token_sample is None else n_token_sample
    check_request(generation_config, logits_processor, stopping_criteria, k, superposed_alpha,
                  superposed_temperature, n_token_sample)
    if draft_model is not None:
        raise ValueError("strategy='superposed' uses no draft model: remove assistant_model.")
    if streamer is not None:
        raise ValueError("strategy='superposed' returns k drafts at the end; it cannot stream one sequence: "
                         "remove streamer.")
    if synced_gpus:
        raise NotImplementedError("strategy='superposed' does not support synced_gpus.")
    if input_ids.shape[0] != 1:
        raise NotImplementedError(f"strategy='superposed' takes one prompt at a time (got {input_ids.shape[0]}).")
    check_model_kwargs("superposed", model_kwargs,
                       {"attention_mask", "use_cache", "logits_to_keep", "position_ids"} | CACHE_KWARGS)
    given = given_cache(model_kwargs)
    if given is not None and given.get_seq_length() > 0:
        raise ValueError("strategy='superposed' starts from an empty cache; do not pass a filled cache.")
    # holes in the mask get strip_left_padding's error (which names a mask derived from pad_token_id)
    padding, _ = strip_left_padding(input_ids, model_kwargs.get("attention_mask"), generation_config.pad_token_id)
    if padding.shape[1]:
        raise ValueError("strategy='superposed' takes one unpadded prompt: drop the left padding (the zeros of "
                         "attention_mask).")
    table = resolve_ngram(ngram, model, tokenizer)
    alpha = superposed_alpha if table is not None else 0.0
    with prepacked_linears(model, check_prepack(model, prepack_target)):
        return _superposed_search(model, input_ids, stopping_criteria, generation_config, k, n_token_sample, table,
                                  alpha, superposed_temperature)


def _superposed_search(model, input_ids, stopping_criteria, generation_config, k, n_token_sample, table, alpha,
                       superposed_temperature):
    """superposed_generate's search, its request checked."""

    prompt_len = input_ids.shape[1]
    max_new = (generation_config.max_length - prompt_len if generation_config.max_new_tokens is None
               else generation_config.max_new_tokens)
    eos = generation_config.eos_token_id
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long,
                           device=input_ids.device)
    pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else (
        int(eos_ids[0]) if eos_ids.numel() else 0)
    embedding = model.get_input_embeddings()
    cache = DynamicCache(config=model.config)

    def next_log_probs(**inputs):
        """The shared, truncated p_theta: (candidate tokens [m], log-probs [m])."""
        position = cache.get_seq_length()
        n = inputs["input_ids"].shape[1] if "input_ids" in inputs else 1
        out = model(**inputs, **cache_kwargs(cache), use_cache=True,
                    position_ids=torch.arange(position, position + n, device=input_ids.device)[None])
        logits = out.logits[0, -1].float() / superposed_temperature
        top_logits, candidates = logits.topk(min(n_token_sample, logits.shape[-1]))
        return candidates, top_logits.log_softmax(-1)

    def extension_scores(drafts, candidates, log_p_theta):
        """log p_f [k', m] for each draft (prompt + new tokens) and the shared candidates."""
        p_ngram = None
        if table is not None and alpha > 0:
            contexts = torch.cat([input_ids.expand(drafts.shape[0], -1), drafts], 1)
            p_ngram = table.probs(contexts[:, -(max(table.orders) - 1):], candidates.expand(drafts.shape[0], -1))
        return interpolate(log_p_theta[None], p_ngram, alpha)

    alive = input_ids.new_zeros(1, 0)  # [k', t] new tokens of the live drafts
    scores = torch.zeros(1, device=input_ids.device)
    finished: list[tuple[torch.Tensor, float]] = []
    candidates, log_p_theta = next_log_probs(input_ids=input_ids)
    for step in range(max_new):
        log_p_f = extension_scores(alive, candidates, log_p_theta)  # [k', m]
        total = (scores[:, None] + log_p_f).flatten()
        best = total.topk(min(2 * k, total.numel())).indices
        parents, tokens = best // log_p_f.shape[1], candidates[best % log_p_f.shape[1]]
        keep = []
        for rank in range(best.numel()):
            if not torch.isfinite(total[best[rank]]):
                break
            extended = torch.cat([alive[parents[rank]], tokens[rank : rank + 1]])
            if bool(torch.isin(tokens[rank], eos_ids)):
                finished.append((extended, float(total[best[rank]])))
            elif len(keep) < k:
                keep.append(rank)
        if not keep:
            break
        keep_t = torch.tensor(keep, device=input_ids.device)
        alive = torch.cat([alive[parents[keep_t]], tokens[keep_t, None]], 1)
        scores = total[best[keep_t]]
        if step + 1 == max_new or len(finished) >= k:
            break
        # max_new_tokens and EOS are handled above; this is where max_time (or a max_length) stops the search.
        if bool(stopping_criteria(torch.cat([input_ids.expand(alive.shape[0], -1), alive], 1), None).all()):
            break
        mixture = superposed_embedding(embedding, alive[:, -1], scores)
        candidates, log_p_theta = next_log_probs(inputs_embeds=mixture)

    ranked = [(alive[i], float(scores[i])) for i in range(alive.shape[0])] + finished
    ranked.sort(key=lambda d: -d[1] / max(d[0].numel(), 1))
    ranked = ranked[:k]
    width = max(d.numel() for d, _ in ranked)
    sequences = torch.full((len(ranked), prompt_len + width), pad, dtype=input_ids.dtype, device=input_ids.device)
    sequences[:, :prompt_len] = input_ids
    for row, (draft, _) in enumerate(ranked):
        sequences[row, prompt_len : prompt_len + draft.numel()] = draft
    if not generation_config.return_dict_in_generate:
        return sequences
    mean_scores = torch.tensor([s / max(d.numel(), 1) for d, s in ranked], device=input_ids.device)
    return SuperposedOutput(sequences=sequences, sequences_scores=mean_scores, **cache_kwargs(cache))
